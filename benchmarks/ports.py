"""Throughput of the ported simulators: vmapped JAX port vs the Gymnasium reference stepped in Python.

    python -m benchmarks.ports [--out results/ports] [--envs Taxi-v4 CliffWalking-v1]
                               [--num_envs 4096 65536] [--steps 1000] [--reference_steps 20000]

For each port and each `--num_envs`, one jitted `lax.scan` of `--steps` vector steps runs the vmapped
`env.step` (auto-reset included) with uniformly random actions drawn inside the scan; it is compiled
first and timed over `--repeats` runs (the best is reported). The rewards and observations are
summed into the result so that XLA cannot skip computing them (a trainer feeds the observations to
its network; a loop that discarded them would time less than the env's real work). The reference is
`gymnasium.make(id)` stepped one env at a time in a Python loop with random actions, resetting when
an episode ends: the way a host-side DQN loop uses it. Results go to `<out>.json` and a markdown
table to `<out>.md`. Runs on JAX's default device (CPU or GPU), which the results record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import checks
from benchmarks.machine import cpu_model, default_out, report_written
from jaxdqn import registry
from jaxdqn.errors import OneLineParser


def port_steps_per_second(name: str, num_envs: int, steps: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Env steps per second of the vmapped port (all envs together)."""
    _, env, params = registry.make_env(name)
    num_actions = env.action_space(params).n
    batch_reset = jax.vmap(env.reset, in_axes=(0, None))
    batch_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def run(key):
        key, reset_key = jax.random.split(key)
        _, state = batch_reset(jax.random.split(reset_key, num_envs), params)

        def body(carry, _):
            state, key, total = carry
            key, action_key, step_key = jax.random.split(key, 3)
            actions = jax.random.randint(action_key, (num_envs,), 0, num_actions, jnp.int32)
            obs, state, reward, _, _, _ = batch_step(jax.random.split(step_key, num_envs), state, actions, params)
            # Use the observations too, or XLA drops them: a trainer feeds them to its network.
            checksum = reward.sum() + sum(leaf.sum() for leaf in jax.tree.leaves(obs))
            return (state, key, total + checksum), None

        (_, _, total), _ = jax.lax.scan(body, (state, key, jnp.float32(0)), None, length=steps)
        return total  # a result that depends on every step, so nothing is optimised away

    started = time.perf_counter()
    compiled = jax.jit(run).lower(jax.random.key(seed)).compile()
    compile_s = time.perf_counter() - started
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        compiled(jax.random.key(seed + repeat)).block_until_ready()
        times.append(time.perf_counter() - started)
    best = min(times)
    return {"env": name, "implementation": "JAX port (jit, vmap)", "num_envs": num_envs, "steps": steps * num_envs,
            "seconds": best, "steps_per_second": steps * num_envs / best, "compile_seconds": compile_s}


def reference_steps_per_second(name: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """Env steps per second of `gymnasium.make(name)`, one env stepped in Python."""
    import gymnasium

    env = gymnasium.make(name)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, env.action_space.n, steps).tolist()
    env.reset(seed=seed)
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - started
    return {"env": name, "implementation": "Gymnasium (Python, 1 env)", "num_envs": 1, "steps": steps,
            "seconds": seconds, "steps_per_second": steps / seconds, "compile_seconds": 0.0}


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    cpu = cpu_model()
    return {"jax_backend": device.platform, "device": device.device_kind, "cpu": cpu, "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [f"Ports vs Gymnasium on {info['device']} ({info['jax_backend']}; CPU: {info['cpu']}, "
             f"{info['cpu_count']} cores; JAX {info['jax']})", "",
             "| env | implementation | envs | env steps/s | vs Gymnasium |", "|---|---|---:|---:|---:|"]
    reference = {row["env"]: row["steps_per_second"] for row in results if row["num_envs"] == 1}
    for row in results:
        speedup = f"{row['steps_per_second'] / reference[row['env']]:,.1f}x" if row["env"] in reference else "-"
        lines.append(f"| {row['env']} | {row['implementation']} | {row['num_envs']:,} | "
                     f"{row['steps_per_second']:,.0f} | {speedup} |")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.ports", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json and PREFIX.md (default: benchmarks/results/ports_<machine>)")
    parser.add_argument("--envs", nargs="+", default=["Taxi-v4", "CliffWalking-v1"],
                        help="registered envs; a Gymnasium row needs the port's `reference = \"gymnasium:ID\"`")
    parser.add_argument("--num_envs", nargs="+", type=int, default=[4096, 65536], help="vmapped batch sizes")
    parser.add_argument("--steps", type=int, default=1000, help="vector steps per timed port run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each port configuration")
    parser.add_argument("--reference_steps", type=int, default=20_000, help="steps of the Gymnasium reference")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "num_envs", "steps", "repeats", "reference_steps")
    checks.seed(parser, args)
    references = {}  # every env built before any is timed
    for name in args.envs:
        try:
            references[name] = getattr(registry.make_env(name)[1], "reference", None) or ""
        except registry.ConfigError as error:
            parser.error(str(error))

    results = []
    for name, reference in references.items():
        if reference.startswith("gymnasium:"):  # the port's reference, as jaxdqn.check_port uses it
            results.append(reference_steps_per_second(reference.partition(":")[2], args.reference_steps, args.seed))
            results[-1]["env"] = name
            print(f"{name}: Gymnasium {results[-1]['steps_per_second']:,.0f} steps/s", flush=True)
        for num_envs in args.num_envs:
            results.append(port_steps_per_second(name, num_envs, args.steps, args.repeats, args.seed))
            print(f"{name}: port x{num_envs} {results[-1]['steps_per_second']:,.0f} steps/s "
                  f"(compile {results[-1]['compile_seconds']:.1f}s)", flush=True)
    info = machine()
    out = Path(args.out) if args.out else default_out("ports", info["device"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps({"machine": info, "args": vars(args),
                                                             "results": results}, indent=2))
    table = markdown(results, info)
    out.with_name(out.name + ".md").write_text(table)
    print(table)
    report_written("ports", out.with_name(out.name + ".json"), out.with_name(out.name + ".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
