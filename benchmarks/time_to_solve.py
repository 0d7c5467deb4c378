"""Time-to-solve CartPole-v1 with the defaults, cold and with the compile cache, at several num_envs.

Each measurement is a fresh `python -m jaxdqn.train --until_solved` process, so the times include
Python start-up, imports, device initialisation and compilation, as a user sees them. "cold" runs
with an empty compilation cache, "cached" reruns the same command with the cache it left.

    python -m benchmarks.time_to_solve --num_envs 1024 4096 16384 --out benchmarks/results/tts_gpu

Without `--out` the results go to `benchmarks/results/time_to_solve_<machine>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import checks
from benchmarks.machine import default_out, report_written
from jaxdqn.errors import OneLineParser

FIELDS = ("num_envs", "run", "seconds_to_solve_from_start", "steps_to_solve", "wall_s", "startup_s", "compile_s",
          "train_s", "sps", "updates_per_s", "eval_return_mean")


def run_once(env: str, num_envs: int, cache: Path, log_dir: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "jaxdqn.train", "--env", env, "--num_envs", str(num_envs), "--until_solved",
               "--quiet", "--compile_cache", str(cache), "--log_dir", str(log_dir), *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"benchmark run failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads((log_dir / "summary.json").read_text())


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"Time to solve {rows[0]['env']} (defaults, `--until_solved`) on {device}", "",
             "| num_envs | run | solved after (s, from process start) | env steps to solve | wall (s) | "
             "start-up (s) | compile (s) | env steps/s | updates/s | final eval return |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        seconds = row["seconds_to_solve_from_start"]
        solved = f"{seconds:.1f}" if seconds is not None else "not solved"
        steps = f"{row['steps_to_solve']:,}" if row["steps_to_solve"] is not None else "-"
        lines.append(f"| {row['num_envs']:,} | {row['run']} | {solved} | {steps} | {row['wall_s']:.1f} | "
                     f"{row['startup_s']:.1f} | {row['compile_s']:.1f} | {row['sps']:.3g} | {row['updates_per_s']:.3g} | "
                     f"{row['eval_return_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.time_to_solve", description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num_envs", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json and PREFIX.md (default: benchmarks/results/time_to_solve_<machine>)")
    parser.add_argument("extra", nargs="*", help="more flags for jaxdqn.train, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "num_envs")
    checks.env_names(parser, [args.env])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for num_envs in args.num_envs:
            cache = Path(scratch) / f"cache-{num_envs}"
            for run in ("cold", "cached"):
                summary = run_once(args.env, num_envs, cache, Path(scratch) / f"run-{num_envs}-{run}", args.extra)
                row = {"env": summary["env"], "run": run, **{key: summary.get(key) for key in FIELDS if key != "run"}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    device = summary["device"]
    out = Path(args.out) if args.out else default_out("time_to_solve", device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"),
                                                    "jax_version": summary["jax_version"], "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, device))
    print(markdown(rows, device))
    report_written("time_to_solve", out.with_suffix(".json"), out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
