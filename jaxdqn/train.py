"""Command line and host loop: `python -m jaxdqn.train --env cartpole --num_envs 4096`.

Trains a Deep Q-Network (Mnih et al. 2013) on thousands of vectorized gymnax environments. The
training itself is one jitted XLA program (`DQN.run_chunk` under `shard_map`, compiled once); this
host loop only calls it chunk after chunk and, between chunks, evaluates the greedy policy, writes
metrics and shows progress. The flags of the original PyTorch trainer (`--environment`, `--lr`,
`--batch_size`, `--gamma`, `--eps`, `--min_eps`, `--buffer_size`, `--max_grad_norm`,
`--target_update_frequency`, `--n_workers`) keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from jaxdqn.reporting import process_start_time

PROCESS_START = process_start_time()

import jax  # noqa: E402  (the process start is read before the slow imports)
import numpy as np  # noqa: E402

from jaxdqn import parallel  # noqa: E402
from jaxdqn.agent import DQN  # noqa: E402
from jaxdqn.config import TrainConfig, add_config_flags, build_config, make_parser  # noqa: E402
from jaxdqn.networks import make_network  # noqa: E402
from jaxdqn.registry import ConfigError, EnvSpec, get_spec, make_env  # noqa: E402
from jaxdqn.reporting import RunLog, plot_learning_curve, summary_line  # noqa: E402

DEFAULT_COMPILE_CACHE = os.environ.get("JAXDQN_COMPILE_CACHE", str(Path.home() / ".cache" / "jaxdqn" / "xla"))


@dataclasses.dataclass
class Program:
    """The built pieces of a run: environment, network, trainer and its compiled-on-demand functions."""

    config: TrainConfig
    spec: EnvSpec
    dqn: DQN
    mesh: Any
    init: Any
    run_chunk: Any
    evaluate: Any

    @property
    def num_devices(self) -> int:
        return self.mesh.size


def build_program(config: TrainConfig) -> Program:
    """Builds env, network and the jitted init / chunk / evaluation functions for `config`."""
    spec, env, env_params = make_env(config.env)
    mesh = parallel.make_mesh(config.num_devices)
    num_devices = mesh.size
    if config.num_envs % num_devices:
        raise ConfigError(f"--num_envs {config.num_envs} does not divide evenly over {num_devices} devices")
    if config.batch_size % num_devices:
        raise ConfigError(f"--batch_size {config.batch_size} does not divide evenly over {num_devices} devices")
    obs_shape = env.observation_space(env_params).shape
    network = make_network(obs_shape, env.action_space(env_params).n, config, spec.make_network)
    dqn = DQN(config, env, env_params, network, num_devices=num_devices, axis_name=parallel.AXIS)
    evaluate = jax.jit(dqn.evaluate, static_argnums=2)
    return Program(config, spec, dqn, mesh, parallel.make_init(dqn, mesh),
                   parallel.make_run_chunk(dqn, mesh, config.chunk_iterations), evaluate)


def enable_compile_cache(path: str | None) -> None:
    """Turns on JAX's persistent compilation cache, so that an identical second run does not compile."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def default_log_dir(env_name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in env_name)
    return Path("runs") / f"{safe}-{stamp}"


def train(config: TrainConfig, log_dir: Path | None = None, show_progress: bool = True,
          stream=sys.stderr) -> dict[str, Any]:
    """Trains per `config`, writing outputs to `log_dir` (None: write nothing); returns the summary."""
    startup_s = time.time() - PROCESS_START
    program = build_program(config)
    dqn, threshold = program.dqn, program.spec.solved_threshold
    steps_per_chunk = config.chunk_iterations * config.num_envs

    compile_start = time.time()
    state = program.init(jax.random.key(config.seed), config.hparams)
    run_chunk = program.run_chunk.lower(state).compile()
    params = parallel.first_device(state.params)
    eval_key = jax.random.key(config.seed + 1)
    evaluate = program.evaluate.lower(params, eval_key, config.eval_episodes).compile()
    jax.block_until_ready(state)
    compile_s = time.time() - compile_start

    log = RunLog(log_dir, config.num_chunks * steps_per_chunk, program.spec.name, show_progress, stream)
    log.write_json("config.json", dataclasses.asdict(config))
    train_start = time.time()
    eval_s = 0.0
    solved_at: tuple[int, float] | None = None
    last_eval = None
    for chunk in range(config.num_chunks):
        state, metrics = run_chunk(state)
        metrics = jax.tree.map(np.asarray, parallel.first_device(metrics))
        env_steps = int(metrics.iteration) * config.num_envs
        last_chunk = chunk == config.num_chunks - 1
        row = {
            "env_steps": env_steps,
            "updates": int(metrics.updates),
            "wall_s": time.time() - PROCESS_START,
            "sps": env_steps / max(time.time() - train_start, 1e-9),
            "train_return": float(metrics.train_return),
            "eval_return": None,
            "loss": float(metrics.loss),
            "epsilon": float(metrics.epsilon),
        }
        if (chunk + 1) % config.eval_every_chunks == 0 or last_chunk:
            eval_start = time.time()
            returns, lengths = evaluate(parallel.first_device(state.params), jax.random.fold_in(eval_key, chunk))
            returns, lengths = np.asarray(returns), np.asarray(lengths)
            eval_s += time.time() - eval_start
            last_eval = (returns, lengths, env_steps)
            row["eval_return"] = float(returns.mean())
            if solved_at is None and threshold is not None and returns.mean() >= threshold:
                solved_at = (env_steps, time.time() - PROCESS_START)
        log.add_row(row)
        if config.until_solved and solved_at is not None:
            break
    train_s = time.time() - train_start
    log.close()

    returns, lengths, env_steps = last_eval
    summary = {
        "env": program.spec.name,
        "num_envs": config.num_envs,
        "num_devices": program.num_devices,
        "device": jax.devices()[0].device_kind,
        "total_steps": env_steps,
        "updates": int(metrics.updates),
        "startup_s": startup_s,
        "compile_s": compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "wall_s": time.time() - PROCESS_START,
        "sps": env_steps / train_s,
        "updates_per_s": int(metrics.updates) / train_s,
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_return_min": float(returns.min()),
        "eval_return_max": float(returns.max()),
        "eval_length_mean": float(lengths.mean()),
        "eval_episodes": int(returns.size),
        "solved_threshold": threshold,
        "steps_to_solve": solved_at[0] if solved_at else None,
        "seconds_to_solve": solved_at[1] if solved_at else None,
        "seed": config.seed,
        "jax_version": jax.__version__,
        "log_dir": str(log_dir) if log_dir is not None else None,
    }
    if log_dir is not None:
        plot_learning_curve(log.rows, log_dir / "learning_curve.png", program.spec.name, threshold)
        summary["wall_s"] = time.time() - PROCESS_START
        log.write_json("summary.json", summary)
    return summary


def make_train_parser() -> argparse.ArgumentParser:
    parser = make_parser("jaxdqn.train", "Train a Deep Q-Network on vectorized gymnax environments. "
                         "Flags marked [original flag] are those of the original PyTorch trainer.")
    add_config_flags(parser)
    parser.add_argument("--compile_cache", default=DEFAULT_COMPILE_CACHE, metavar="DIR",
                        help="JAX persistent compilation cache folder ($JAXDQN_COMPILE_CACHE)")
    parser.add_argument("--no_compile_cache", action="store_true", help="do not use the compilation cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-chunk log lines")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    flags = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(TrainConfig)}
    spec = get_spec(flags["env"] or TrainConfig.env)
    return build_config(flags, spec)


def main(argv: list[str] | None = None) -> int:
    args = make_train_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        enable_compile_cache(None if args.no_compile_cache else args.compile_cache)
        log_dir = Path(config.log_dir) if config.log_dir else default_log_dir(config.env)
        summary = train(config, log_dir=log_dir, show_progress=not args.quiet)
    except ConfigError as error:
        print(f"jaxdqn.train: error: {error}", file=sys.stderr)
        return 2
    print(summary_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
