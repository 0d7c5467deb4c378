"""Multi-device scaling: training throughput (weak and strong) and time to solve CartPole on 1..N devices.

Throughput: each point is a fresh `python -m jaxdqn.train` run on the first N devices
(`--num_devices N`) with the defaults (but learning from the first chunk on, which leaves the default
`--learning_starts` of 32,768 env steps at 1,024 envs and more), and its figure is the steady training
env steps/s: env steps over wall time from the end of the first chunk to the end of the last (from
metrics.csv). The first chunk is reported apart (`first_chunk_s`): it carries one-time costs of a
fresh process, such as creating the NCCL communicators of a multi-device program, which in a short
run would swamp the steady rate. Weak scaling keeps envs and batch per device fixed (global num_envs
and batch_size grow with N); strong scaling splits a fixed global num_envs and batch. Each point is
run for every `--sync` mode and, with `--processes`, also as N processes of one GPU each (`jax.distributed` on
localhost, `CUDA_VISIBLE_DEVICES` per process) besides one process driving N GPUs.

Time to solve: `python -m jaxdqn.train --env cartpole --until_solved` with every default (4096 envs in
all, split over the devices), as the README's command runs on a machine with N GPUs; cold (empty
compilation cache) and cached, as in `benchmarks.time_to_solve`.

    python -m benchmarks.scaling --devices 1 2 4 --sync grads params --processes --out benchmarks/results/scaling_h100
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import checks
from benchmarks import time_to_solve as tts
from benchmarks.machine import default_out, report_written
from jaxdqn.config import TrainConfig
from jaxdqn.errors import OneLineParser


def train_sps(num_devices: int, num_envs: int, batch_size: int, iterations: int, scratch: Path, sync: str,
              processes: bool) -> dict:
    """Trains one point; returns process 0's figures (or the error). `processes`: one process per GPU."""
    log_dir = scratch / f"run-{num_devices}-{num_envs}-{sync}-{processes}"
    while log_dir.exists():  # a folder of its own: a weak and a strong point may have the same num_envs
        log_dir = log_dir.with_name(log_dir.name + "+")
    # Learning starts within the first chunk (timed apart), so that the steady rate is always training's.
    learning_starts = min(TrainConfig.learning_starts, 32 * num_envs)
    command = [sys.executable, "-m", "jaxdqn.train", "--num_envs", str(num_envs),
               "--learning_starts", str(learning_starts), "--batch_size", str(batch_size),
               "--buffer_size", str(max(262_144, num_envs * 64)),
               "--total_steps", str(iterations * num_envs), "--chunk_steps", str(32 * num_envs),
               "--eval_frequency", str(iterations * num_envs), "--quiet", "--compile_cache", str(scratch / "cache"),
               "--sync", sync, "--log_dir", str(log_dir)]
    # stderr goes to files: a pipe left unread while waiting on another process could fill and stall it.
    logs = [scratch / f"{log_dir.name}.{index}.err" for index in range(num_devices if processes else 1)]
    if not processes:
        launches = [([*command, "--num_devices", str(num_devices)], dict(os.environ))]
    else:
        address = f"127.0.0.1:{random.randrange(20_000, 30_000)}"
        launches = [([*command, "--coordinator_address", address, "--num_processes", str(num_devices),
                      "--process_id", str(index)], {**os.environ, "CUDA_VISIBLE_DEVICES": str(index)})
                    for index in range(num_devices)]
    runs = []
    for (arguments, environment), log in zip(launches, logs):
        with open(log, "w") as stderr:
            runs.append(subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=stderr, env=environment))
    for run in runs:
        run.wait()
    if any(run.returncode != 0 for run in runs):  # every failed process's last line: the first may only echo
        lines = [(log.read_text().strip().splitlines() or ["failed"])[-1] for log in logs]
        return {"error": " / ".join(f"process {index}: {line}" for index, (run, line) in enumerate(zip(runs, lines))
                                    if run.returncode != 0)}
    summary = json.loads((log_dir / "summary.json").read_text())
    return {**steady_rates(log_dir / "metrics.csv"), "sps_whole_run": summary["sps"],
            **{key: summary[key] for key in ("train_s", "compile_s", "device")}}


def steady_rates(metrics_csv: Path) -> dict:
    """Env steps/s and updates/s from the end of the first chunk to the end of the last, and the first chunk's time."""
    with open(metrics_csv) as file:
        rows = [{key: float(value) for key, value in row.items() if key in ("env_steps", "updates", "wall_s", "sps")}
                for row in csv.DictReader(file)]
    if len(rows) < 2:
        raise SystemExit(f"{metrics_csv}: at least 2 chunks are needed to time the steady rate (raise --iterations)")
    first, last = rows[0], rows[-1]
    seconds = last["wall_s"] - first["wall_s"]
    return {"sps": (last["env_steps"] - first["env_steps"]) / seconds,
            "updates_per_s": (last["updates"] - first["updates"]) / seconds,
            # a row's sps counts from the start of training, so its env steps over its sps is the time since then
            "first_chunk_s": first["env_steps"] / first["sps"],
            "chunk_s": seconds / (len(rows) - 1)}


def time_to_solve(num_devices: int, scratch: Path) -> list[dict]:
    """The README's CartPole command on `num_devices` devices, cold and then with the compile cache."""
    cache = scratch / f"tts-cache-{num_devices}"
    rows = []
    for run in ("cold", "cached"):
        try:
            summary = tts.run_once("cartpole", 4096, cache, scratch / f"tts-{num_devices}-{run}",
                                   ["--num_devices", str(num_devices)])
        except SystemExit as failure:  # reported in the table; the other points still run
            rows.append({"devices": num_devices, "run": run, "error": str(failure)})
            continue
        rows.append({"devices": num_devices, "run": run,
                     **{key: summary[key] for key in ("seconds_to_solve_from_start", "steps_to_solve", "wall_s",
                                                      "startup_s", "compile_s", "train_s", "device")}})
    return rows


def efficiency_table(rows: list[dict], devices: list[int]) -> list[str]:
    """Markdown rows; efficiency is env steps/s against the fewest devices' rate times the device ratio."""
    def reference(row: dict) -> tuple[str, int]:  # weak: envs per device; strong: envs in all
        return row["mode"], row["num_envs"] // row["devices"] if row["mode"] == "weak" else row["num_envs"]

    base = {reference(row): row for row in rows if row["devices"] == min(devices) and "sps" in row}
    lines = ["| mode | devices | processes | --sync | num_envs (global) | env steps/s | updates/s | efficiency "
             "| first chunk (s) | steady chunk (s) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        sync = row["sync"] if row["devices"] > 1 else "-"
        head = f"| {row['mode']} | {row['devices']} | {row['processes']} | {sync} | {row['num_envs']:,}"
        if "sps" not in row:
            lines.append(f"{head} | {row['error']} | | | | |")
            continue
        if reference(row) in base:  # else the fewest devices' point failed: no efficiency
            row["efficiency"] = row["sps"] / (base[reference(row)]["sps"] * row["devices"] / min(devices))
        efficiency = f"{row['efficiency']:.0%}" if "efficiency" in row else "-"
        lines.append(f"{head} | {row['sps']:.3g} | {row['updates_per_s']:.3g} | {efficiency} "
                     f"| {row['first_chunk_s']:.2f} | {row['chunk_s']:.3f} |")
    return lines


def _seconds(value: float | None) -> str:
    return "not solved" if value is None else f"{value:.2f}"


def plot(rows: list[dict], solves: list[dict], path: Path) -> None:
    """Weak-scaling efficiency per layout (left) and CartPole time to solve (right) against devices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    weak = [row for row in rows if row["mode"] == "weak" and "efficiency" in row]
    one_device_sizes = {row["num_envs"] for row in weak if row["devices"] == 1}
    lines = {}
    for row in weak:
        per_device = row["num_envs"] // row["devices"]
        label = f"{per_device:,} envs/device, --sync {row['sync']}" + (
            f", {row['processes']} processes" if row["processes"] > 1 else "")
        # the one-device point (efficiency 1) belongs to every line of its size
        points = lines.setdefault(label, {1: 1.0} if per_device in one_device_sizes else {})
        points[row["devices"]] = row["efficiency"]
    for label, points in lines.items():
        if len(points) > 1:
            left.plot(sorted(points), [100 * points[n] for n in sorted(points)], marker="o", label=label)
    left.axhline(90, color="grey", linestyle="--", linewidth=1, label="90% target")
    left.set(xlabel="devices", ylabel="weak-scaling efficiency (%)", ylim=(0, 110), title="training env steps/s")
    left.legend(fontsize=7)
    for run in ("cold", "cached"):
        points = [(row["devices"], row["seconds_to_solve_from_start"]) for row in solves
                  if row["run"] == run and row.get("seconds_to_solve_from_start") is not None]
        if points:
            right.plot(*zip(*points), marker="o", label=run)
    right.set(xlabel="devices", ylabel="seconds from process start", ylim=(0, None),
              title="time to solve CartPole (defaults, 4096 envs in all)")
    if right.lines:  # none with --no_solve, or when every run failed
        right.legend()
    for axis in (left, right):
        axis.set_xticks(sorted({row["devices"] for row in rows}))
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weak_envs", type=int, nargs="+", default=[4096, 65536], help="envs per device")
    parser.add_argument("--strong_envs", type=int, default=16384, help="global envs for strong scaling")
    parser.add_argument("--iterations", type=int, default=192,
                        help="vector steps per run, in chunks of 32 (the first chunk is timed apart)")
    parser.add_argument("--sync", nargs="+", default=["grads"], choices=["grads", "params"],
                        help="jaxdqn.train --sync modes to measure")
    parser.add_argument("--processes", action="store_true",
                        help="also run each multi-device point as one process per GPU (CUDA GPUs only)")
    parser.add_argument("--no_solve", action="store_true", help="skip the time-to-solve runs")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json, PREFIX.md and PREFIX.png (default: benchmarks/results/"
                             "scaling_<machine>, the machine with the most --devices)")
    return parser


def check_devices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 unless every point can run: positive sizes, two chunks at least, and device counts that exist
    here and split the strong point's envs and the batch of 256 (strong and time-to-solve runs) evenly."""
    checks.positive(parser, args, "devices", "weak_envs", "strong_envs", "iterations")
    if args.iterations <= 32:
        parser.error(f"--iterations must be more than 32 (two chunks of 32, the first timed apart), "
                     f"got {args.iterations}")
    for n in args.devices:
        if 256 % n or args.strong_envs % n:
            parser.error(f"--devices {n}: the strong point's {args.strong_envs} envs and batch of 256 must divide "
                         f"evenly over the devices")
    available = checks.device_count()
    if available is not None and max(args.devices) > available:
        parser.error(f"--devices {max(args.devices)} asked for, but JAX finds {available} device(s) here")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    check_devices(parser, args)
    layouts = [False, True] if args.processes else [False]
    rows, solves = [], []
    with tempfile.TemporaryDirectory() as scratch:
        points = [("weak", per_device * n, 256 * n, n) for per_device in args.weak_envs for n in args.devices]
        points += [("strong", args.strong_envs, 256, n) for n in args.devices]
        for mode, num_envs, batch_size, n in points:
            for sync in args.sync:
                for processes in layouts:
                    if (processes or sync != args.sync[0]) and n == 1:
                        continue  # one device: no collectives, one process
                    rows.append({"mode": mode, "devices": n, "num_envs": num_envs, "sync": sync,
                                 "processes": n if processes else 1,
                                 **train_sps(n, num_envs, batch_size, args.iterations, Path(scratch), sync, processes)})
                    print(json.dumps(rows[-1]), flush=True)
        if not args.no_solve:
            for n in args.devices:
                solves += time_to_solve(n, Path(scratch))
                print(json.dumps(solves[-2:]), flush=True)
    device = next((row["device"] for row in rows if "device" in row), "unknown")
    failed = all("error" in row for row in rows + solves)
    text = (f"Training throughput scaling on {device} (defaults, {args.iterations} vector steps per run; env "
            f"steps/s and updates/s after the first chunk)\n\n" + "\n".join(efficiency_table(rows, args.devices)) + "\n")
    if solves:
        text += ("\nTime to solve CartPole, `python -m jaxdqn.train --env cartpole --until_solved --num_devices N` "
                 "(defaults: 4096 envs in all)\n\n| devices | run | seconds to solve (from process start) | env steps | start-up (s) "
                 "| compile (s) |\n|---:|---|---:|---:|---:|---:|\n")
        text += "".join(f"| {row['devices']} | {row['run']} | {row['error']} | | | |\n" if "error" in row else
                        f"| {row['devices']} | {row['run']} | {_seconds(row['seconds_to_solve_from_start'])} "
                        f"| {row['steps_to_solve'] or '-'} | {row['startup_s']:.2f} | {row['compile_s']:.2f} |\n"
                        for row in solves)
    if failed:  # nothing measured: nothing written
        print(text)
        print(f"{parser.prog}: error: every run failed", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else default_out("scaling", device, max(args.devices))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"),
                                                    "rows": rows, "time_to_solve": solves}, indent=1))
    out.with_suffix(".md").write_text(text)
    plot(rows, solves, out.with_suffix(".png"))
    print(text)
    report_written("scaling", *(out.with_suffix(suffix) for suffix in (".json", ".md", ".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
