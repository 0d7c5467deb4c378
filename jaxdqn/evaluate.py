"""Evaluates a saved agent: `python -m jaxdqn.evaluate --load_model DIR [--env NAME] [--episodes N]`
(also `jaxdqn evaluate ...` and `jaxdqn-evaluate ...`).

The original project's tester, for Orbax checkpoints written by `python -m jaxdqn.train --save_model
DIR`: it restores the agent's network from the checkpoint's config (device 0's parameters, so a run
trained on several devices evaluates on one), runs N greedy episodes at once as one vmapped program
(`jaxdqn.agent.evaluate_greedy`), prints the mean, std, min and max return and the mean length, and
writes them to eval.json (in DIR unless --out says otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from jaxdqn.cli import make_evaluate_parser
from jaxdqn.errors import ConfigError, one_line

# JAX is imported where it is used, so that `--help` and bad flags answer without its start-up; the flags are
# `jaxdqn.cli.make_evaluate_parser`'s.


def evaluate(directory: str | Path, step: int | None = None, env: str | None = None, episodes: int | None = None,
             seed: int = 0) -> dict[str, Any]:
    """Restores the agent in `directory` and runs greedy episodes; returns the results (see eval.json).

    Raises:
      ConfigError: an unusable checkpoint (damaged, or parameters that are not finite) or env (see
        `jaxdqn.checkpoint.load_agent`), episodes <= 0, a seed outside int32, episodes that do not fit in memory.
    """
    import dataclasses

    import jax
    import numpy as np

    from jaxdqn import preflight
    from jaxdqn.agent import evaluate_greedy
    from jaxdqn.checkpoint import load_agent
    from jaxdqn.config import INT32_MAX, INT32_MIN

    if episodes is not None and episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    if not INT32_MIN <= seed <= INT32_MAX:
        raise ConfigError(f"--seed must be between {INT32_MIN} and {INT32_MAX} (int32), got {seed}")
    agent = load_agent(directory, step, env)
    episodes = episodes or agent.config.eval_episodes
    config = dataclasses.replace(agent.config, eval_episodes=episodes)
    preflight.check_memory(preflight.estimate_memory(config, agent.env, agent.env_params, agent.network, training=False))
    run = jax.jit(evaluate_greedy, static_argnums=(0, 2, 5))
    start = time.time()
    returns, lengths = run(agent.env, agent.env_params, agent.learner, agent.params, jax.random.key(seed), episodes)
    returns, lengths = np.asarray(returns), np.asarray(lengths)
    return {
        "env": agent.env_name,
        "checkpoint_dir": str(agent.checkpoint.directory),
        "checkpoint_step": agent.checkpoint.step,
        "trained_env": agent.config.env,
        "episodes": int(returns.size),
        "seed": seed,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
        "seconds": time.time() - start,
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "device": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
    }


def result_line(result: dict[str, Any]) -> str:
    return (f"{result['env']} (checkpoint {result['checkpoint_dir']} at {result['checkpoint_step']:,} env steps): "
            f"return {result['return_mean']:.1f} ± {result['return_std']:.1f} (min {result['return_min']:.1f}, "
            f"max {result['return_max']:.1f}), mean length {result['length_mean']:.1f}, "
            f"over {result['episodes']} greedy episodes (seed {result['seed']})")


def output_path(args: argparse.Namespace) -> Path:
    if args.out is None:
        return Path(args.load_model) / "eval.json"
    out = Path(args.out)
    return out / "eval.json" if out.is_dir() else out


def main(argv: list[str] | None = None) -> int:
    args = make_evaluate_parser().parse_args(argv)
    try:
        from jaxdqn import preflight
        from jaxdqn.checkpoint import find
        from jaxdqn.train import DEFAULT_COMPILE_CACHE, enable_compile_cache

        preflight.check_no_empty_values(vars(args))  # --out '' would mean the current folder
        # Before any work: the checkpoint is readable, its env is one the user asked for, the output writable.
        checkpoint = find(args.load_model, args.load_step)
        preflight.check_checkpoint_env(checkpoint.config.env, args.env, args.trust_checkpoint_code)
        if args.video is not None:  # watching instead of evaluating: its own checks, then one line naming the file
            from jaxdqn import video

            return video.main(args, checkpoint)
        path = output_path(args)
        preflight.check_output_file(path, "--out")  # by default DIR/eval.json
        enable_compile_cache(None if args.no_compile_cache else (args.compile_cache or DEFAULT_COMPILE_CACHE))
        result = evaluate(args.load_model, args.load_step, args.env, args.episodes, args.seed)
    except ConfigError as error:
        print(f"jaxdqn.evaluate: error: {error}", file=sys.stderr)
        return 2
    try:
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as error:  # a full disk, or the folder removed meanwhile
        print(f"jaxdqn.evaluate: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(result_line(result), flush=True)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
