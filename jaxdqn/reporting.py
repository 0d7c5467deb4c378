"""What a run shows and writes: the progress bar or log lines, metrics.csv, the learning curve, summary.json.

Everything here runs on the host between jitted chunks and never inside the XLA program. The rows written
to metrics.csv also feed the run's TensorBoard and W&B writers, if any (`jaxdqn.loggers`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when a run has writers: `--help` reads this module's process_start_time
    from jaxdqn.loggers import ChunkStats, MetricWriter

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
    """Writes config.json and metrics.csv, shows progress on the terminal (or as log lines), and feeds `writers`
    (TensorBoard, W&B: `jaxdqn.loggers.open_writers`) each row, which it closes with itself."""

    def __init__(self, log_dir: Path | None, total_steps: int, env_name: str, show_progress: bool = True,
                 stream: TextIO = sys.stderr, writers: Sequence[MetricWriter] = ()):
        self.log_dir = log_dir
        self.rows: list[dict[str, Any]] = []
        self.stream = stream
        self.show_progress = show_progress
        self.writers = list(writers)
        self._bar = None
        self._csv_file = None
        try:
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                self._csv_file = open(log_dir / "metrics.csv", "w", newline="")
                self._csv = csv.DictWriter(self._csv_file, fieldnames=METRIC_COLUMNS)
                self._csv.writeheader()
            if show_progress and stream.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=total_steps, unit="step", unit_scale=True, desc=env_name, file=stream,
                                 dynamic_ncols=True)
        except BaseException:
            self.close()  # the writers it was given too
            raise

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        if self.log_dir is not None:
            (self.log_dir / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")

    def add_row(self, row: dict[str, Any], stats: ChunkStats | None = None) -> None:
        """Adds a chunk's row (metrics.csv's columns, and more); `stats` adds what the writers log beyond it."""
        self.rows.append(row)
        if self._csv_file is not None:
            self._csv.writerow({key: _number(row.get(key)) for key in METRIC_COLUMNS})
            self._csv_file.flush()
        if self.writers and stats is not None:
            from jaxdqn.loggers import chunk_scalars

            scalars = chunk_scalars(row, stats)
            for writer in self.writers:
                writer.write(row["env_steps"], scalars)
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
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close()


def plot_learning_curve(rows: list[dict[str, Any]], path: Path, title: str, threshold: float | None) -> None:
    """The run at a glance, saved as a PNG: returns, TD loss and epsilon against env steps, one above the other.

    Returns: the exploring episodes' (training) and the greedy evaluations', with the agents' min-to-max band
    when a population trained (--num_seeds, --sweep) and the env's solved threshold. The loss is drawn on a
    log scale when it spans more than a decade; chunks before the first update have none.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    figure, (returns, loss, epsilon) = plt.subplots(3, 1, figsize=(7, 6), sharex=True, dpi=100,
                                                    gridspec_kw={"height_ratios": (2.2, 1, 1)})
    steps = [row["env_steps"] for row in rows]
    returns.plot(steps, [_finite(row.get("train_return")) for row in rows], color="tab:blue",
                 label="training (exploring)")
    evaluated = [row for row in rows if _finite(row.get("eval_return")) is not None]
    if evaluated:
        eval_steps = [row["env_steps"] for row in evaluated]
        several = all("eval_return_agents" in row for row in evaluated)
        returns.plot(eval_steps, [row["eval_return"] for row in evaluated], color="tab:orange", marker="o",
                     markersize=3, label="greedy evaluation" + (" (mean over agents)" if several else ""))
        if several:  # the spread of a population of agents (--num_seeds, --sweep)
            returns.fill_between(eval_steps, [min(row["eval_return_agents"]) for row in evaluated],
                                 [max(row["eval_return_agents"]) for row in evaluated], color="tab:orange",
                                 alpha=0.2, label="agents' min to max")
    if threshold is not None:
        returns.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"solved ({threshold:g})")
    returns.set_ylabel("episode return")
    returns.set_title(title)
    returns.legend(loc="best", fontsize="small", framealpha=0.8)

    losses = [_finite(row.get("loss")) for row in rows]
    loss.plot(steps, losses, color="tab:red")
    positive = [value for value in losses if value is not None and value > 0]
    if positive and max(positive) > 10 * min(positive):  # a loss spanning decades: each one visible
        loss.set_yscale("log")
    loss.set_ylabel("TD loss")

    epsilon.plot(steps, [_finite(row.get("epsilon")) for row in rows], color="tab:green")
    epsilon.set_ylim(0, 1.05)
    epsilon.set_ylabel("epsilon")
    epsilon.set_xlabel("env steps")
    epsilon.xaxis.set_major_formatter(EngFormatter())
    for axes in (returns, loss, epsilon):
        axes.grid(alpha=0.3)
    figure.align_ylabels()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _finite(value: Any) -> float | None:
    """`value` as a float to plot, or None (a gap in the line) when it is missing, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


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
