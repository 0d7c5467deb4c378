"""What a run shows and writes: the progress bar or log lines, metrics.csv, the learning curve, summary.json.

Everything here runs on the host between jitted chunks and never inside the XLA program.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ("env_steps", "updates", "wall_s", "sps", "train_return", "eval_return", "loss", "epsilon")


def process_start_time() -> float:
    """Wall-clock time at which this process started (Linux /proc), else the time of this import."""
    try:
        with open("/proc/self/stat") as stat_file:
            start_ticks = int(stat_file.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class RunLog:
    """Writes config.json and metrics.csv, and shows progress on the terminal (or as log lines)."""

    def __init__(self, log_dir: Path | None, total_steps: int, env_name: str, show_progress: bool = True,
                 stream=sys.stderr):
        self.log_dir = log_dir
        self.rows: list[dict[str, Any]] = []
        self.stream = stream
        self.show_progress = show_progress
        self._bar = None
        self._csv_file = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._csv_file = open(log_dir / "metrics.csv", "w", newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=METRIC_COLUMNS)
            self._csv.writeheader()
        if show_progress and stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, unit="step", unit_scale=True, desc=env_name, file=stream,
                             dynamic_ncols=True)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        if self.log_dir is not None:
            (self.log_dir / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")

    def add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._csv_file is not None:
            self._csv.writerow({key: _number(row.get(key)) for key in METRIC_COLUMNS})
            self._csv_file.flush()
        shown = {
            "sps": f"{row['sps']:.3g}",
            "return": _number(row["train_return"]) or "-",
            "eval": _number(row.get("eval_return")) or "-",
            "eps": f"{row['epsilon']:.3f}",
        }
        if self._bar is not None:
            self._bar.update(row["env_steps"] - self._bar.n)
            self._bar.set_postfix(shown, refresh=True)
        elif self.show_progress:
            text = " ".join(f"{key}={value}" for key, value in shown.items())
            print(f"steps={row['env_steps']} updates={row['updates']} {text}", file=self.stream, flush=True)

    def add_previous_rows(self, rows: list[dict[str, Any]]) -> None:
        """Writes the rows of the run this one resumes (metrics.csv, the learning curve) without showing them."""
        for row in rows:
            self.rows.append(row)
            if self._csv_file is not None:
                self._csv.writerow({key: _number(row.get(key)) for key in METRIC_COLUMNS})
        if self._csv_file is not None:
            self._csv_file.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None


def plot_learning_curve(rows: list[dict[str, Any]], path: Path, title: str, threshold: float | None) -> None:
    """Training and evaluation return against env steps, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [row["env_steps"] for row in rows]
    axes.plot(steps, [row["train_return"] for row in rows], label="training return (exploring)")
    evaluated = [row for row in rows if row.get("eval_return") is not None]
    if evaluated:
        eval_steps = [row["env_steps"] for row in evaluated]
        several = all("eval_return_agents" in row for row in evaluated)
        axes.plot(eval_steps, [row["eval_return"] for row in evaluated], marker="o",
                  label="greedy evaluation return" + (" (mean over agents)" if several else ""))
        if several:  # the spread of a population of agents (--num_seeds, --sweep)
            axes.fill_between(eval_steps, [min(row["eval_return_agents"]) for row in evaluated],
                              [max(row["eval_return_agents"]) for row in evaluated], alpha=0.25,
                              label="agents' min to max")
    if threshold is not None:
        axes.axhline(threshold, color="gray", linestyle="--", label=f"solved ({threshold:g})")
    axes.set_xlabel("env steps")
    axes.set_ylabel("episode return")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def keep_previous_summary(log_dir: Path) -> Path | None:
    """Renames `log_dir/summary.json`, if there is one, to `summary.<its env steps>.json` (never replacing a
    file), so that a resumed run, or another run into the same folder, keeps the summary it would overwrite."""
    path = log_dir / "summary.json"
    if not path.exists():
        return None
    try:
        steps = json.loads(path.read_text())["total_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        steps = "previous"
    kept, copy = log_dir / f"summary.{steps}.json", 1
    while kept.exists():  # the same step twice: resumed twice from one checkpoint
        copy += 1
        kept = log_dir / f"summary.{steps}.{copy}.json"
    path.rename(kept)
    return kept


def summary_line(summary: dict[str, Any]) -> str:
    """The one-line summary printed last. "after start" counts from the process's start (a run resumed after
    solving says so instead); "trained N env steps in T" is this process's training loop alone."""
    steps, resumed_at = summary.get("steps_to_solve"), summary.get("resumed_from_step")
    if steps is None:
        solved = "not solved"
    elif resumed_at is not None and steps <= resumed_at:
        solved = f"solved at {steps:,} env steps, before the resume"
    else:
        solved = f"solved at {steps:,} env steps, {summary['seconds_to_solve_from_start']:.1f}s after start"
    trained = summary["steps_trained"]
    resumed = f" (resumed at {resumed_at:,})" if resumed_at is not None else ""
    agents = f"{summary['num_agents']} agents x " if summary.get("num_agents", 1) > 1 else ""
    return (f"{summary['env']}: eval return {summary['eval_return_mean']:.1f} ± {summary['eval_return_std']:.1f} "
            f"over {agents}{summary['eval_episodes']} episodes; {solved}; trained {trained:,} env steps{resumed} in "
            f"{summary['train_s']:.1f}s ({summary['sps']:.3g} steps/s, compile {summary['compile_s']:.1f}s, "
            f"wall {summary['wall_s']:.1f}s) on {summary['num_devices']} {summary['device']}")
