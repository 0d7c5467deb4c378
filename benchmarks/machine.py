"""What machine a benchmark ran on, for the figures it writes down, and where its results go by default."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path("benchmarks") / "results"  # relative to the project root, where `python -m benchmarks.X` runs


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_slug(device_kind: str, devices: int = 1) -> str:
    """The machine in a file name: `2core_cpu` for JAX's CPU backend, else the device's kind, e.g.
    `nvidia_h100_80gb_hbm3`, or `4x_nvidia_h100_80gb_hbm3` for several devices."""
    if device_kind.lower() == "cpu":
        return f"{os.cpu_count()}core_cpu"
    name = re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_")
    return f"{devices}x_{name}" if devices > 1 else name


def default_out(benchmark: str, device_kind: str, devices: int = 1) -> Path:
    """Where a benchmark writes when `--out` is not given: `benchmarks/results/<benchmark>_<machine>`."""
    return RESULTS / f"{benchmark}_{machine_slug(device_kind, devices)}"


def report_written(benchmark: str, *paths: Path) -> None:
    """The benchmark's last line: where its results are."""
    print(f"benchmarks.{benchmark}: wrote {', '.join(str(path) for path in paths)}", flush=True)
