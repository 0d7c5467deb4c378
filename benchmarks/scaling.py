"""Multi-device scaling of training throughput: weak (fixed envs per device) and strong (fixed total).

Each point is a fresh `python -m jaxdqn.train` run on the first N devices (`--num_devices N`),
training for a fixed number of env steps with the defaults; the figure is its training env steps/s
(compile excluded). Weak scaling keeps envs and batch per device fixed (global num_envs and
batch_size grow with N); strong scaling splits a fixed global num_envs and batch. Each point is run
for every `--sync` mode (gradients averaged every update, or parameters once per vector step) and,
with `--processes`, also as N processes of one GPU each (`jax.distributed` on localhost,
`CUDA_VISIBLE_DEVICES` per process) besides one process driving N GPUs.

    python -m benchmarks.scaling --devices 1 2 4 --sync grads params --processes --out benchmarks/results/scaling_h100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_sps(num_devices: int, num_envs: int, batch_size: int, iterations: int, scratch: Path, sync: str,
              processes: bool) -> dict:
    """Trains one point; returns process 0's figures (or the error). `processes`: one process per GPU."""
    log_dir = scratch / f"run-{num_devices}-{num_envs}-{sync}-{processes}"
    command = [sys.executable, "-m", "jaxdqn.train", "--num_envs", str(num_envs),
               "--batch_size", str(batch_size), "--buffer_size", str(max(262_144, num_envs * 64)),
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
    return {key: summary[key] for key in ("sps", "updates_per_s", "train_s", "compile_s", "device")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weak_envs", type=int, nargs="+", default=[4096, 65536], help="envs per device")
    parser.add_argument("--strong_envs", type=int, default=16384, help="global envs for strong scaling")
    parser.add_argument("--iterations", type=int, default=96, help="vector steps per run")
    parser.add_argument("--sync", nargs="+", default=["grads"], choices=["grads", "params"],
                        help="jaxdqn.train --sync modes to measure")
    parser.add_argument("--processes", action="store_true",
                        help="also run each multi-device point as one process per GPU (CUDA GPUs only)")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()
    layouts = [False, True] if args.processes else [False]
    rows = []
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
    base = {(row["mode"], row["num_envs"] // row["devices"] if row["mode"] == "weak" else row["num_envs"]): row
            for row in rows if row["devices"] == min(args.devices) and "sps" in row}
    lines = ["| mode | devices | processes | --sync | num_envs (global) | env steps/s | updates/s | efficiency |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        sync = row["sync"] if row["devices"] > 1 else "-"
        head = f"| {row['mode']} | {row['devices']} | {row['processes']} | {sync} | {row['num_envs']:,}"
        if "sps" not in row:
            lines.append(f"{head} | {row['error']} | | |")
            continue
        key = (row["mode"], row["num_envs"] // row["devices"] if row["mode"] == "weak" else row["num_envs"])
        reference = base[key]
        ideal = reference["sps"] * row["devices"] / min(args.devices)
        lines.append(f"{head} | {row['sps']:.3g} | {row['updates_per_s']:.3g} | {row['sps'] / ideal:.0%} |")
    device = next((row["device"] for row in rows if "device" in row), "unknown")
    text = (f"Training throughput scaling on {device} (defaults, {args.iterations} vector "
            f"steps per run)\n\n") + "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
