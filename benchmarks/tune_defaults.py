"""Derives the trainer's defaults: many agents (seeds x traced hyperparameters) trained in one program.

For each setting that changes shapes (updates per vector step, batch size, buffer size, network
widths), one program trains `--seeds` x grid agents at once (`jax.vmap` over `Trainer.init` and
`Trainer.run_chunk`), evaluates every agent's greedy policy after each chunk, and reports, per grid point,
how many seeds reached the env's threshold, when, and whether they stayed there. This is how the
defaults in `jaxdqn/config.py` were chosen (docs/design-notes.md, "Defaults for thousands of environments").

    python -m benchmarks.tune_defaults --shapes '{"updates_per_step": 8}' '{"updates_per_step": 16}' \
        --grid '{"lr": [3e-4, 1e-3], "tau": [0.05, 1.0]}' --seeds 4 --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import checks
from benchmarks.machine import default_out, report_written
from jaxdqn.agent import build_trainer
from jaxdqn.config import HParams, TrainConfig
from jaxdqn.errors import ConfigError, OneLineParser
from jaxdqn.population import SWEEPABLE


def run_shape(base: TrainConfig, grid: dict[str, list[float]], seeds: int) -> list[dict]:
    """Trains every (grid point, seed) agent of one shape setting in one vmapped program."""
    spec, dqn = build_trainer(base)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    agents = [(point, seed) for point in points for seed in range(seeds)]
    hparams = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[
        HParams.from_config(dataclasses.replace(base, **point)) for point, _ in agents])
    keys = jnp.stack([jax.random.key(base.seed + seed) for _, seed in agents])

    start = time.time()
    state = jax.jit(jax.vmap(dqn.init))(keys, hparams)
    chunk = jax.jit(jax.vmap(lambda s: dqn.run_chunk(s, base.chunk_iterations)), donate_argnums=0)
    evaluate = jax.jit(jax.vmap(lambda p, k: dqn.evaluate(p, k, base.eval_episodes)))
    curves = []
    for index in range(base.num_chunks):
        state, _ = chunk(state)
        returns, _ = evaluate(state.params, jax.random.split(jax.random.key(10_000 + index), len(agents)))
        curves.append(np.asarray(returns).mean(axis=1))
    seconds = time.time() - start
    curves = np.stack(curves, axis=1)  # [agents, evaluations]
    steps_per_eval = base.chunk_iterations * base.num_envs
    threshold = spec.solved_threshold
    results = []
    for point in points:
        rows = [i for i, (p, _) in enumerate(agents) if p == point]
        first = [int(np.argmax(curves[i] >= threshold)) if (curves[i] >= threshold).any() else None for i in rows]
        results.append({
            "shape": {key: getattr(base, key) for key in ("updates_per_step", "batch_size", "buffer_size",
                                                         "hidden_sizes", "target_update_frequency",
                                                         "eps_decay_steps", "layer_norm", "double")},
            "point": point,
            "solved_seeds": sum(f is not None for f in first),
            "seeds": len(rows),
            "median_steps_to_solve": (float(np.median([(f + 1) * steps_per_eval for f in first if f is not None]))
                                      if any(f is not None for f in first) else None),
            "final_return_mean": float(curves[rows, -1].mean()),
            "last3_return_min": float(curves[rows, -3:].min()),
            "curves": curves[rows].round(1).tolist(),
            "program_seconds": seconds,
        })
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.tune_defaults", description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--shapes", nargs="+", default=["{}"], help="JSON TrainConfig overrides, one program each")
    parser.add_argument("--grid", default="{}", help='JSON {"lr": [...], ...} over traced hyperparameters')
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--base", default="{}", help="JSON overrides shared by every shape")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to write the results as JSON "
                             "(default: benchmarks/results/tune_defaults_<machine>.json)")
    return parser


def _json(parser: argparse.ArgumentParser, flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        parser.error(f"{flag} {text!r}: not JSON ({error})")
    if not isinstance(value, dict):
        parser.error(f"{flag} {text!r}: expected a JSON object")
    return value


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[TrainConfig], dict]:
    """Every shape's config and the grid, checked before any training (exit 2 on the first bad one)."""
    checks.positive(parser, args, "seeds")
    env = checks.env_names(parser, [args.env])[0]
    base, grid = _json(parser, "--base", args.base), _json(parser, "--grid", args.grid)
    for key, values in grid.items():
        if key not in SWEEPABLE:
            parser.error(f"--grid key {key!r}: not a traced hyperparameter; sweepable: {', '.join(SWEEPABLE)}")
        if not (isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values)):
            parser.error(f"--grid {key}: expected a non-empty list of numbers, got {values!r}")
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    configs = []
    for shape in args.shapes:
        overrides = {key: tuple(value) if isinstance(value, list) else value  # JSON has no tuples
                     for key, value in {**base, **_json(parser, "--shapes", shape)}.items()}
        unknown = sorted(set(overrides) - known)
        if "env" in overrides:
            parser.error(f"--shapes {shape!r} or --base: give the environment with --env")
        if unknown:
            parser.error(f"--shapes {shape!r} or --base: unknown setting {unknown[0]!r}")
        try:
            config = TrainConfig(env=env, **overrides).validate()
        except ConfigError as error:
            parser.error(f"--shapes {shape!r}: {error}")
        for values in itertools.product(*grid.values()):  # each grid point must be valid too
            point = dict(zip(grid, values))
            try:
                dataclasses.replace(config, **point).validate()
            except ConfigError as error:
                parser.error(f"--grid point {point} with --shapes {shape!r}: {error}")
        configs.append(config)
    return configs, grid


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    configs, grid = check_args(parser, args)
    results = []
    for config in configs:
        for row in run_shape(config, grid, args.seeds):
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curves"}), flush=True)
    device = jax.devices()[0].device_kind
    out = Path(args.out) if args.out else default_out("tune_defaults", device).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "results": results}, indent=1))
    report_written("tune_defaults", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
