"""Multi-device scaling of training throughput: weak (fixed envs per device) and strong (fixed total).

Each point is a fresh `python -m jaxdqn.train` process on the first N devices (`--num_devices N`),
training for a fixed number of env steps with the defaults; the figure is its training env steps/s
(compile excluded). Weak scaling keeps envs and batch per device fixed (global num_envs and
batch_size grow with N); strong scaling splits a fixed global num_envs and batch.

    python -m benchmarks.scaling --devices 1 2 4 --out benchmarks/results/scaling_h100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_sps(num_devices: int, num_envs: int, batch_size: int, iterations: int, scratch: Path) -> dict:
    log_dir = scratch / f"run-{num_devices}-{num_envs}"
    command = [sys.executable, "-m", "jaxdqn.train", "--num_devices", str(num_devices), "--num_envs", str(num_envs),
               "--batch_size", str(batch_size), "--buffer_size", str(max(262_144, num_envs * 64)),
               "--total_steps", str(iterations * num_envs), "--chunk_steps", str(32 * num_envs),
               "--eval_frequency", str(iterations * num_envs), "--quiet", "--compile_cache", str(scratch / "cache"),
               "--log_dir", str(log_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    summary = json.loads((log_dir / "summary.json").read_text())
    return {key: summary[key] for key in ("sps", "updates_per_s", "train_s", "compile_s", "device")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--weak_envs", type=int, nargs="+", default=[4096, 65536], help="envs per device")
    parser.add_argument("--strong_envs", type=int, default=16384, help="global envs for strong scaling")
    parser.add_argument("--iterations", type=int, default=96, help="vector steps per run")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for per_device in args.weak_envs:
            for n in args.devices:
                rows.append({"mode": "weak", "devices": n, "num_envs": per_device * n,
                             **train_sps(n, per_device * n, 256 * n, args.iterations, Path(scratch))})
                print(json.dumps(rows[-1]), flush=True)
        for n in args.devices:
            rows.append({"mode": "strong", "devices": n, "num_envs": args.strong_envs,
                         **train_sps(n, args.strong_envs, 256, args.iterations, Path(scratch))})
            print(json.dumps(rows[-1]), flush=True)
    base = {(row["mode"], row["num_envs"] // row["devices"] if row["mode"] == "weak" else row["num_envs"]): row
            for row in rows if row["devices"] == min(args.devices) and "sps" in row}
    lines = ["| mode | devices | num_envs (global) | env steps/s | updates/s | efficiency |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "sps" not in row:
            lines.append(f"| {row['mode']} | {row['devices']} | {row['num_envs']:,} | {row['error']} | | |")
            continue
        key = (row["mode"], row["num_envs"] // row["devices"] if row["mode"] == "weak" else row["num_envs"])
        reference = base[key]
        ideal = reference["sps"] * row["devices"] / min(args.devices)
        lines.append(f"| {row['mode']} | {row['devices']} | {row['num_envs']:,} | {row['sps']:.3g} | "
                     f"{row['updates_per_s']:.3g} | {row['sps'] / ideal:.0%} |")
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
