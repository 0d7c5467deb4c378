"""MinAtar against the wall clock: jaxdqn's greedy return over time, beside PQN's when its runner is given.

For each game, one `python -m jaxdqn.train --env GAME --num_seeds K --total_steps T` process trains K agents
at once (its evaluations, every `--eval_frequency` env steps, give the return against the seconds since the
process started). With `--pqn RUNNER`, a script that runs PQN (Gallici et al. 2025, "Simplifying Deep Temporal
Difference Learning") with its published MinAtar config and prints one JSON line (`RUNNER GAME T K`, as the
purejaxql MinAtar runner beside this project does), PQN runs on the same game, seeds and budget, in the same
call. The table gives each system's final greedy return, its time, and jaxdqn's return at PQN's wall time;
the PNG per game plots both curves against wall-clock seconds.

    python -m benchmarks.minatar --games Breakout-MinAtar Seaquest-MinAtar --seeds 10 --pqn anchors/run_pqn_minatar.py
    python -m benchmarks.minatar --games Breakout-MinAtar --seeds 2 --total_steps 200000 --out /tmp/m -- --num_envs 64

`--variant LABEL="FLAGS"` adds a jaxdqn run with those flags on every game (its rows and curves are named
"jaxdqn LABEL"), so that a candidate change is measured beside the defaults and PQN in the same call.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import checks
from benchmarks.machine import default_out, report_written
from benchmarks.quality import run_env
from jaxdqn.errors import OneLineParser

PQN_BUDGET = 10_000_000  # env steps of PQN's published MinAtar runs


def jaxdqn_row(game: str, seeds: int, total_steps: int, extra: list[str], scratch: Path,
               system: str = "jaxdqn") -> dict:
    """Trains `seeds` agents on `game`; the quality table's row plus the curve [(wall s, mean greedy return)]."""
    scratch = scratch / system.replace(" ", "_")  # a log folder per variant
    scratch.mkdir(parents=True, exist_ok=True)
    row = run_env(game, seeds, ["--total_steps", str(total_steps), *extra], scratch)
    row["system"] = system
    if "error" not in row:
        with open(Path(row.pop("curve")).parent / "metrics.csv") as metrics:
            row["curve"] = [(float(r["wall_s"]), float(r["eval_return"])) for r in csv.DictReader(metrics)
                            if r["eval_return"]]
    return row


def pqn_curve(record: dict, process_s: float) -> list[tuple[float, float]]:
    """PQN's greedy tests against wall seconds: its runner reports the run's length (`run_s`) and the env step
    of each test; a test at env step s is placed at (process_s - run_s) + run_s x s / total_steps, the run
    taken to go at an even pace after start-up and compiling."""
    start = process_s - record["run_s"]
    total = record["env_steps_per_seed"]
    return [(start + record["run_s"] * step / total, mean) for step, mean, _, _ in record.get("test_curve", [])]


def pqn_row(runner: Path, game: str, seeds: int, total_steps: int, timeout: float) -> dict:
    command = [sys.executable, str(runner), game, str(total_steps), str(seeds)]
    start = time.time()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"system": "pqn", "env": game, "error": f"did not finish within {timeout:g} s"}
    process_s = time.time() - start
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        errors = result.stderr.strip().splitlines()
        return {"system": "pqn", "env": game, "error": errors[-1] if errors else f"exit code {result.returncode}"}
    record = json.loads(lines[-1])
    return {"system": "pqn", "env": game, "seeds": record["seeds"], "env_steps": record["env_steps_per_seed"],
            "final_return_mean": record["final_return_mean"], "final_return_min": record["final_return_min"],
            "final_return_max": record["final_return_max"], "compile_s": record["compile_s"],
            "wall_s": process_s, "curve": pqn_curve(record, process_s)}


def printed(row: dict) -> dict:
    """Prints a run's row (curve included) as it finishes, so that a call cut short keeps the runs it had."""
    print(json.dumps(row), flush=True)
    return row


def return_at(curve: list[tuple[float, float]], wall_s: float) -> float | None:
    """The last evaluation's return at or before `wall_s` seconds (None if none came that early)."""
    reached = [value for seconds, value in curve if seconds <= wall_s]
    return reached[-1] if reached else None


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"MinAtar against the wall clock on {device}", "",
             "| game | system | seeds | env steps | final greedy return: mean (worst–best seed) | compile (s) | "
             "wall (s) | jaxdqn's return at PQN's wall time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['env']} | {row['system']} | failed: {row['error']} | | | | | |")
            continue
        worst = row.get("final_return_min")
        best = row.get("final_return_max", max(row.get("per_seed", [worst])))
        at_pqn = ""
        pqn = next((r for r in rows if r["system"] == "pqn" and r["env"] == row["env"] and "error" not in r), None)
        if row["system"].startswith("jaxdqn") and pqn is not None:
            value = return_at(row["curve"], pqn["wall_s"])
            at_pqn = "no evaluation yet" if value is None else f"{value:.1f} (at {pqn['wall_s']:.0f} s)"
        lines.append(f"| {row['env']} | {row['system']} | {row['seeds']} | {row['env_steps']:,} | "
                     f"{row['final_return_mean']:.1f} ({worst:.1f}–{best:.1f}) | "
                     f"{row['compile_s']:.1f} | {row['wall_s']:.1f} | {at_pqn} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], game: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row["env"] == game and "error" not in row:
            seconds, returns = zip(*row["curve"]) if row["curve"] else ((), ())
            axes.plot(seconds, returns, marker="o", markersize=3,
                      label=f"{row['system']} ({row['seeds']} seeds, mean)")
    axes.set(title=f"{game}: greedy return against wall-clock time", xlabel="seconds since the process started",
             ylabel="greedy return")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.minatar", description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=["Breakout-MinAtar", "Seaquest-MinAtar"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--total_steps", type=int, default=PQN_BUDGET, help="env steps per agent, both systems")
    parser.add_argument("--pqn", default=None, metavar="RUNNER", help="PQN's runner script (RUNNER GAME STEPS SEEDS "
                        "prints one JSON line); without it, jaxdqn alone")
    parser.add_argument("--pqn_timeout", type=float, default=600.0, help="seconds PQN may take per game")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json, PREFIX.md and PREFIX_<game>.png (default: "
                             "benchmarks/results/minatar_<machine>)")
    parser.add_argument("--variant", action="append", default=[], metavar='LABEL="FLAGS"',
                        help='also runs jaxdqn with these flags added, as "jaxdqn LABEL" (repeatable), e.g. '
                             '--variant lambda="--n_step 4 --td_lambda 0.65"')
    parser.add_argument("extra", nargs="*", help="more flags for jaxdqn.train, after -- (every jaxdqn run)")
    return parser


def parse_variants(parser: argparse.ArgumentParser, variants: list[str]) -> list[tuple[str, list[str]]]:
    """`LABEL="FLAGS"` strings as (system name, flags)."""
    parsed = []
    for variant in variants:
        label, equals, flags = variant.partition("=")
        if not equals or not label.strip() or any(c.isspace() for c in label.strip()):
            parser.error(f'--variant {variant!r}: expected LABEL="FLAGS", a label without spaces')
        try:
            parsed.append((f"jaxdqn {label.strip()}", shlex.split(flags)))
        except ValueError as error:
            parser.error(f"--variant {variant!r}: {error}")
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "seeds", "total_steps", "pqn_timeout")
    checks.env_names(parser, args.games)
    if args.pqn is not None and not Path(args.pqn).is_file():
        parser.error(f"--pqn {args.pqn}: no such file")
    variants = [("jaxdqn", [])] + parse_variants(parser, args.variant)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for game in args.games:
            for system, flags in variants:
                rows.append(printed(jaxdqn_row(game, args.seeds, args.total_steps, [*args.extra, *flags],
                                               Path(scratch), system)))
            if args.pqn is not None:
                rows.append(printed(pqn_row(Path(args.pqn), game, args.seeds, args.total_steps, args.pqn_timeout)))
    if all("error" in row for row in rows):
        print(markdown(rows, "unknown"))
        print(f"{parser.prog}: error: every run failed", file=sys.stderr)
        return 1
    device = next((row["device"] for row in rows if "device" in row), "unknown")
    out = Path(args.out) if args.out else default_out("minatar", device)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = [out.parent / f"{out.name}_{game}.png" for game in args.games]
    for game, path in zip(args.games, plots):
        plot(rows, game, path)
    out.with_suffix(".json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "device": device,
                                                    "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, device))
    print(markdown(rows, device))
    report_written("minatar", out.with_suffix(".json"), out.with_suffix(".md"), *plots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
