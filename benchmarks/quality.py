"""Learning-quality table: the defaults, several seeds in one program each, on the standard tasks.

For each environment (and each learner and num_envs asked for), one `python -m jaxdqn.train --env ENV
--num_seeds K` process trains K agents at once; the table gives the final greedy return over agents
(mean ± std, IQM, worst), how many agents reached the env's threshold, the env steps and the wall time,
and the learning curves are copied beside it.

    python -m benchmarks.quality --out benchmarks/results/quality_h100          # 10 seeds, four tasks
    python -m benchmarks.quality --envs CartPole-v1 --seeds 2 --out /tmp/q -- --total_steps 200000
    python -m benchmarks.quality --envs CartPole-v1 Acrobot-v1 --num_envs 16 128 4096 65536   # the defaults at any size
    python -m benchmarks.quality --envs Breakout-MinAtar --learners dqn c51 qrdqn rainbow   # rainbow: --preset rainbow
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import checks
from benchmarks.machine import default_out, report_written
from jaxdqn.errors import OneLineParser

DEFAULT_ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Breakout-MinAtar")


def learner_flags(learner: str) -> list[str]:
    """jaxdqn.train's flags for a learner's name: dqn, c51, qrdqn, or rainbow (the preset)."""
    return ["--preset", "rainbow"] if learner == "rainbow" else ["--learner", learner]


def run_env(env: str, seeds: int, extra: list[str], scratch: Path, learner: str = "dqn",
            num_envs: int | None = None) -> dict:
    label = env + (f"_{learner}" if learner != "dqn" else "") + (f"_{num_envs}" if num_envs else "")
    log_dir = scratch / label
    size = ["--num_envs", str(num_envs)] if num_envs else []
    command = [sys.executable, "-m", "jaxdqn.train", "--env", env, "--num_seeds", str(seeds), "--quiet",
               "--log_dir", str(log_dir), *learner_flags(learner), *size, *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"env": env, "learner": learner, "num_envs": num_envs,
                "error": lines[-1] if lines else f"exit code {result.returncode}"}
    summary = json.loads((log_dir / "summary.json").read_text())
    means = [agent["eval_return_mean"] for agent in summary["agents"]] if "agents" in summary else [
        summary["eval_return_mean"]]
    solved = sorted(agent["steps_to_solve"] for agent in summary.get("agents", []) if agent["steps_to_solve"])
    threshold = summary["solved_threshold"]
    config = json.loads((log_dir / "config.json").read_text())
    return {
        "env": env, "learner": learner, "label": label, "num_envs": config["num_envs"], "seeds": len(means),
        "device": summary["device"],
        "final_return_mean": sum(means) / len(means),
        "final_return_std": (sum((m - sum(means) / len(means)) ** 2 for m in means) / len(means)) ** 0.5,
        "final_return_iqm": summary.get("agents_eval_return_iqm", means[0]),
        "final_return_min": min(means),
        "solved_threshold": threshold,
        "seeds_solved": sum(m >= threshold for m in means) if threshold is not None else None,
        "seeds_reached": len(solved) if "agents" in summary else None,  # reached the threshold at some evaluation
        "median_steps_to_solve": solved[len(solved) // 2] if solved else None,
        "env_steps": summary["total_steps"], "wall_s": summary["wall_s"], "train_s": summary["train_s"],
        "compile_s": summary["compile_s"],
        "per_seed": means, "curve": log_dir / "learning_curve.png",
    }


def markdown(rows: list[dict]) -> str:
    device = next((row["device"] for row in rows if "device" in row), "unknown")
    lines = [f"Learning quality with the defaults on {device}", "",
             "| env | learner | num_envs | seeds | final greedy return (mean ± std) | IQM | worst seed | "
             "seeds ≥ threshold at the end | seeds that reached it | median env steps to first reach it | env steps | "
             "wall (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['env']} | {row['learner']} | {row['num_envs'] or ''} | failed: {row['error']} "
                         f"| | | | | | | | |")
            continue
        solved = f"{row['seeds_solved']}/{row['seeds']} (≥ {row['solved_threshold']:g})" \
            if row["seeds_solved"] is not None else "-"
        lines.append(f"| {row['env']} | {row['learner']} | {row['num_envs']:,} | {row['seeds']} | "
                     f"{row['final_return_mean']:.1f} ± {row['final_return_std']:.1f} | "
                     f"{row['final_return_iqm']:.1f} | {row['final_return_min']:.1f} | {solved} | "
                     f"{'-' if row.get('seeds_reached') is None else row['seeds_reached']} | "
                     f"{'-' if row.get('median_steps_to_solve') is None else format(row['median_steps_to_solve'], ',')} | "
                     f"{row['env_steps']:,} | {row['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--learners", nargs="+", default=["dqn"], choices=("dqn", "c51", "qrdqn", "rainbow"),
                        help="a row per learner (rainbow: --preset rainbow)")
    parser.add_argument("--num_envs", nargs="+", type=int, default=None,
                        help="a row per num_envs (default: the env's own), all other flags at their defaults")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json, PREFIX.md and PREFIX_<env>.png learning curves "
                             "(default: benchmarks/results/quality_<machine>)")
    parser.add_argument("extra", nargs="*", help="more flags for jaxdqn.train, after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "seeds")
    if args.num_envs and min(args.num_envs) <= 0:
        parser.error(f"--num_envs must be positive, got {min(args.num_envs)}")
    checks.env_names(parser, args.envs)  # an env known but untrainable (Pendulum-v1) fails in its row
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for env in args.envs:
            for learner in args.learners:
                for num_envs in args.num_envs or [None]:
                    rows.append(run_env(env, args.seeds, args.extra, Path(scratch), learner, num_envs))
                    print(json.dumps({key: value for key, value in rows[-1].items() if key != "curve"}, default=str),
                          flush=True)
        if all("error" in row for row in rows):  # nothing measured: nothing written
            print(markdown(rows))
            print(f"{parser.prog}: error: every environment failed", file=sys.stderr)
            return 1
        device = next((row["device"] for row in rows if "device" in row), "unknown")
        out = Path(args.out) if args.out else default_out("quality", device)
        out.parent.mkdir(parents=True, exist_ok=True)
        for row in rows:  # the learning curves, copied out of the scratch folder
            if "curve" in row:
                curve = out.parent / f"{out.name}_{row['label']}.png"
                shutil.copyfile(row["curve"], curve)
                row["curve"] = curve.name
    out.with_suffix(".json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    report_written("quality", out.with_suffix(".json"), out.with_suffix(".md"),
                   *(out.parent / row["curve"] for row in rows if "curve" in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
