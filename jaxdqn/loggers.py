"""A run's per-chunk metrics for TensorBoard (`--tensorboard`) and Weights & Biases (`--wandb PROJECT`).

Both are optional extras (`pip install 'jaxdqn[tensorboard]'`, `'jaxdqn[wandb]'`): nothing here imports
them until a run asks for one, so the core install and its import time stay as they are. `check_available`
runs before any training (a missing extra is one line and exit code 2); `open_writers` opens the writers
with the run's other outputs, and `jaxdqn.reporting.RunLog` feeds them each chunk from the row it writes to
metrics.csv, as the scalars of `chunk_scalars`, at the chunk's env step:

- `train/episode_return`, `train/episode_length`: the exploring episodes that ended in the chunk;
- `eval/episode_return`, `eval/episode_length`: the greedy evaluation's episodes (chunks that evaluate);
- `train/td_loss`, `train/q_mean` (when the chunk's metrics have it), `train/epsilon`, `train/learning_rate`;
- `speed/env_steps_per_s`, `speed/updates_per_s`: since the training loop started, as metrics.csv's `sps`.

With several agents in one program (`--num_seeds`, `--sweep`) these tags hold the mean over the agents
(metrics.csv's values) and each agent's own values have its label as a prefix (`lr_0.001_seed_0/train/...`).
A value that is NaN (no episode ended, no update yet) is left out, as metrics.csv leaves its cell empty.

TensorBoard's events file is written with tensorboardX (a small package that needs neither TensorFlow nor
TensorBoard) into the log folder itself, so `tensorboard --logdir runs` shows every run. W&B's files go to
the log folder's `wandb/`; with WANDB_MODE=offline it needs no network (`wandb sync` uploads them later).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from jaxdqn.errors import ConfigError, one_line

# extra: (the flag that needs it, the module it installs)
EXTRAS = {"tensorboard": ("--tensorboard", "tensorboardX"), "wandb": ("--wandb", "wandb")}

# per-agent metric (`ChunkStats.agents`) -> its tag
TAGS = {
    "train_return": "train/episode_return",
    "train_length": "train/episode_length",
    "eval_return": "eval/episode_return",
    "eval_length": "eval/episode_length",
    "loss": "train/td_loss",
    "q_mean": "train/q_mean",
    "epsilon": "train/epsilon",
    "learning_rate": "train/learning_rate",
}


@dataclasses.dataclass(frozen=True)
class LoggingOptions:
    """Which writers a run logs to besides metrics.csv."""

    tensorboard: bool = False
    wandb_project: str | None = None

    def check_available(self) -> LoggingOptions:
        """Raises ConfigError, naming the extra to install, when a writer asked for cannot be imported."""
        for extra, wanted in (("tensorboard", self.tensorboard), ("wandb", self.wandb_project is not None)):
            flag, module = EXTRAS[extra]
            if not wanted:
                continue
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ConfigError(f"{flag} needs the {extra} extra ({module}: {one_line(error)}); install it "
                                  f"with pip install 'jaxdqn[{extra}]' (pip install -e '.[{extra}]' in a checkout)"
                                  ) from None
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise ConfigError("--wandb needs a project name, got ''")
        return self


@dataclasses.dataclass
class ChunkStats:
    """A chunk's figures for the writers beyond metrics.csv's row.

    `agents`: metric name (a key of TAGS) -> one value per agent, in the order of `labels`;
    `labels`: the agents' labels (`jaxdqn.population.Agent.label`), one per agent.
    """

    agents: Mapping[str, Sequence[float]]
    labels: Sequence[str]
    updates_per_s: float


class MetricWriter(Protocol):
    def write(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def _mean(values: Iterable[float]) -> float:
    """The mean of the values that are not NaN (NaN if none), as numpy's nanmean."""
    kept = [float(value) for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else math.nan


def _prefix(label: str) -> str:
    """An agent's label as a tag prefix: TensorBoard's tags keep letters, digits and `_.-/` ("lr=0.001 seed=0" ->
    "lr_0.001_seed_0"), and W&B gets the same."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", label) or "agent"


def chunk_scalars(row: Mapping[str, Any], stats: ChunkStats) -> dict[str, float]:
    """The tags and values written for one chunk (see the module docstring); NaN values are left out."""
    scalars = {tag: _mean(stats.agents[name]) for name, tag in TAGS.items() if name in stats.agents}
    scalars["speed/env_steps_per_s"] = float(row["sps"])
    scalars["speed/updates_per_s"] = float(stats.updates_per_s)
    if len(stats.labels) > 1:
        for index, label in enumerate(stats.labels):
            prefix = _prefix(label)
            scalars.update({f"{prefix}/{tag}": float(stats.agents[name][index])
                            for name, tag in TAGS.items() if name in stats.agents})
    return {tag: value for tag, value in scalars.items() if not math.isnan(value)}


class TensorBoardWriter:
    """Scalars into a TensorBoard events file (`events.out.tfevents.*`) in `log_dir`."""

    def __init__(self, log_dir: Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(log_dir))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()  # a chunk takes seconds: the events are on disk when the chunk's row is

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """Scalars logged to a Weights & Biases run of `project`, its files in `log_dir/wandb/`, the config with it."""

    def __init__(self, project: str, log_dir: Path, config: Mapping[str, Any]):
        import wandb

        folder = log_dir / "wandb"
        existed = folder.exists()
        try:
            # console="off": W&B leaves stdout and stderr (the progress bar, the summary line) alone.
            self._run = wandb.init(project=project, dir=str(log_dir), name=log_dir.name, config=dict(config),
                                   settings=wandb.Settings(console="off", quiet=True, disable_git=True))
        except Exception as error:  # noqa: BLE001  (W&B's own errors: not logged in, no network, ...)
            if not existed:  # a start that failed leaves none of W&B's files behind
                shutil.rmtree(folder, ignore_errors=True)
            raise ConfigError(f"--wandb {project}: W&B did not start: {one_line(error)} (WANDB_MODE=offline "
                              f"logs without an account or a network)") from None

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._run.log(dict(scalars), step=step)

    def close(self) -> None:
        self._run.finish()


def open_writers(options: LoggingOptions | None, log_dir: Path | None, config: Mapping[str, Any]) -> list[MetricWriter]:
    """The writers `options` asks for, writing into `log_dir` (none without a log folder)."""
    if options is None or log_dir is None:
        return []
    writers: list[MetricWriter] = []
    try:
        if options.wandb_project is not None:  # first: the one that can fail to start
            writers.append(WandbWriter(options.wandb_project, log_dir, config))
        if options.tensorboard:
            writers.append(TensorBoardWriter(log_dir))
    except BaseException:
        for writer in writers:
            writer.close()
        raise
    return writers
