"""Orbax checkpoints of a training run: save asynchronously, resume after a crash, load a greedy policy.

A checkpoint is one step folder of an `ocp.CheckpointManager`, named by the run's env steps, holding
four items written together (`ocp.args.Composite`):

- `state`: the whole `TrainerState` as the trainer carries it, with its leading device axis (online
  and target parameters, optimizer state, iteration and update counters, RNG keys, env states,
  observations, episode statistics, hyperparameters) and, with `save_buffer`, the replay buffer;
- `params`: device 0's online parameters without the device axis, so that a run trained on N devices
  can be evaluated on one (`jaxdqn.evaluate`, `load_policy`);
- `config`: the run's `TrainConfig` as JSON, enough to rebuild the environment and the network;
- `meta`: JSON bookkeeping: counters, device count, observation shape and action count, whether the
  buffer is inside, the metrics rows so far (so that a resumed run's metrics.csv is complete).

Saving is asynchronous: `Checkpointer.save` blocks the training loop only to copy the arrays to host
memory (so the next chunk may donate the state's buffers); one background thread then writes them with
Orbax, in the order they were saved, and `close` waits for it. Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` once every item is committed; on a local disk
that rename is the commit, so a run killed mid-save leaves only a tmp folder, which is never listed as a
step and is removed when the run is resumed.

Resuming without the buffer: the buffer restarts empty, and the resumed run acts (epsilon-greedy,
on the epsilon schedule) without learning until it has collected `max(learning_starts, batch_size)`
new env steps, rounded up to whole chunks: the same warm-up as the start of a run. These env steps
count toward `total_steps`; the iteration, update and optimizer counts, hence the epsilon and
learning-rate schedules, continue from the checkpoint.

Every unusable input (missing folder, no complete checkpoint, a network that does not fit the
environment, a corrupt or truncated checkpoint, parameters that are not finite, a folder holding another
run) raises `ConfigError` with a one-line reason, before anything is written.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import errno
import functools
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdqn import __version__, parallel
from jaxdqn.config import TrainConfig
from jaxdqn.errors import one_line
from jaxdqn.registry import ConfigError

# 2: the optimizer state is over the parameters raveled into one vector. 3: a replay buffer of float32
# observations is saved packed (`jaxdqn.buffer.PackedLayout`); format 2 saved it field by field.
FORMAT_VERSION = 3
RESUMABLE_FORMATS = (2, 3)  # older formats still evaluate: their `params` item is unchanged
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # how Orbax names a step folder that is still being written
# Settings that fix the shapes of the saved arrays: a resumed run may not change them.
SHAPE_FIELDS = ("env", "num_envs", "buffer_size", "hidden_sizes", "layer_norm", "dueling", "n_step", "prioritized",
                "learner", "num_atoms", "num_quantiles", "noisy")
# What every checkpoint's config holds (format 1 on): without them the network cannot be rebuilt as it was saved.
REQUIRED_CONFIG = ("env", "num_envs", "buffer_size", "hidden_sizes", "layer_norm")
# Where `--overwrite` moves the checkpoints it replaces until the run's first own checkpoint is complete.
REPLACED = ".replaced"
_REQUIRED_META = ("iteration", "num_devices", "obs_shape", "num_actions", "buffer_saved")


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """Where and how often a run saves.

    Attributes:
      directory: the checkpoint folder (one sub-folder per saved step).
      frequency: chunks (of `chunk_steps` env steps each) between checkpoints; the end is always saved.
      keep: how many of the latest checkpoints to keep.
      save_buffer: also save the replay buffer (large: buffer_size transitions).
      overwrite: replace checkpoints already in `directory` (of another run, or later than the resumed step).
    """

    directory: Path
    frequency: int = 10
    keep: int = 3
    save_buffer: bool = False
    overwrite: bool = False

    def validate(self) -> "CheckpointOptions":
        if self.frequency <= 0:
            raise ConfigError(f"--checkpoint_frequency must be positive, got {self.frequency}")
        if self.keep <= 0:
            raise ConfigError(f"--keep_checkpoints must be positive, got {self.keep}")
        return self


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint found on disk: its folder, step, config and bookkeeping (not its arrays)."""

    directory: Path
    step: int  # env steps
    config: TrainConfig
    meta: dict[str, Any]

    @property
    def buffer_saved(self) -> bool:
        return bool(self.meta["buffer_saved"])

    @property
    def iteration(self) -> int:
        return int(self.meta["iteration"])


# Finding and reading ---------------------------------------------------------------------------

def _manager(directory: Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(**options))


def _unfinished(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if TMP_SUFFIX in path.name)


def complete_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints in `directory` (unfinished tmp folders are not steps)."""
    if not directory.is_dir():
        return []
    manager = _manager(directory, create=False)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def find(directory: str | Path, step: int | None = None, flag: str = "--load_model") -> Checkpoint:
    """Finds the latest complete checkpoint in `directory` (or the one at `step`) and reads its config.

    Raises:
      ConfigError: no such folder, no complete checkpoint, no such step, or an unreadable config.
    """
    directory = Path(directory)
    if not directory.exists():
        raise ConfigError(f"{flag} {directory}: no such folder")
    if not directory.is_dir():
        raise ConfigError(f"{flag} {directory}: not a folder")
    steps = complete_steps(directory)
    if not steps:
        unfinished = _unfinished(directory)
        detail = (f" (only an unfinished save, {unfinished[0]}, from a run stopped while saving)"
                  if unfinished else "")
        if (directory / REPLACED).is_dir():
            detail += (f"; {directory / REPLACED} holds the checkpoints an --overwrite run replaced before it was "
                       f"stopped: move them back into {directory} to resume them")
        raise ConfigError(f"{flag} {directory} holds no complete checkpoint{detail}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(f"{flag} {directory} has no checkpoint at step {step} (steps: {_list(steps)})")
    missing = [item for item in ("state", "params", "config", "meta") if not (directory / str(step) / item).is_dir()]
    if missing:
        raise ConfigError(f"{directory / str(step)} is not a jaxdqn checkpoint, or is damaged: no "
                          f"{', '.join(missing)} item")
    manager = _manager(directory, create=False)
    try:
        with _quiet_orbax():
            restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                                      meta=ocp.args.JsonRestore()))
        config, meta = _checked_config(restored.config, directory / str(step)), dict(restored.meta)
        if meta.get("format", 0) > FORMAT_VERSION:
            raise ConfigError(f"{flag} {directory}: checkpoint format {meta['format']} is newer than this "
                              f"jaxdqn reads ({FORMAT_VERSION}); upgrade jaxdqn")
        missing = [key for key in _REQUIRED_META if key not in meta]
        if missing:
            raise KeyError(f"meta lacks {missing}")
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001  (Orbax/JSON raise many types for damaged files)
        raise _corrupt(directory, step, steps, error) from None
    finally:
        manager.close()
    return Checkpoint(directory=directory, step=step, config=config, meta=meta)


def _checked_config(values: Any, where: Path) -> TrainConfig:
    """The saved config as a `TrainConfig`; a missing or invalid field is a ConfigError naming it (never a default)."""
    if not isinstance(values, dict):
        raise ConfigError(f"checkpoint {where}: its config is not a JSON object")
    missing = [name for name in REQUIRED_CONFIG if name not in values]
    if missing:
        raise ConfigError(f"checkpoint {where}: its config lacks {', '.join(missing)}")
    try:
        return TrainConfig.from_dict(values).validate()
    except ConfigError as error:
        raise ConfigError(f"checkpoint {where} has an invalid config: {error}") from None


def _list(steps: Sequence[int]) -> str:
    return ", ".join(str(step) for step in steps[-6:]) if len(steps) <= 6 else \
        f"{steps[0]}, ..., " + ", ".join(str(step) for step in steps[-4:])


def _corrupt(directory: Path, step: int, steps: Sequence[int], error: BaseException) -> ConfigError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    earlier = [other for other in steps if other < step]
    hint = f"; try an earlier one with --load_step {earlier[-1]}" if earlier else ""
    return ConfigError(f"checkpoint {directory / str(step)} is corrupt or truncated "
                       f"({type(error).__name__}: {reason}){hint}")


@contextlib.contextmanager
def _quiet_orbax():
    """Keeps a failed restore to one error: Orbax's abandoned async readers otherwise print tracebacks
    ("Event loop is closed", "coroutine ... was never awaited", TensorStore's own errors) later, through
    `sys.unraisablehook` or asyncio's "Task exception was never retrieved" log record."""
    previous = sys.unraisablehook
    sys.unraisablehook = _drop_orbax_unraisable(previous)
    # Installed before the restore: the readers' errors may be logged before the restore fails.
    logging.getLogger("asyncio").addFilter(_from_orbax_record)  # adding it again is a no-op
    yield
    sys.unraisablehook = previous  # after a failure the hook stays: those readers die later


def _from_orbax(text: str, traceback_object) -> bool:
    """Whether an error was raised in Orbax's or TensorStore's code (by its message or its frames)."""
    if "Event loop is closed" in text or "orbax" in text or "_read_array" in text or "tensorstore" in text:
        return True
    while traceback_object is not None:
        filename = traceback_object.tb_frame.f_code.co_filename
        if "orbax" in filename or "tensorstore" in filename:
            return True
        traceback_object = traceback_object.tb_next
    return False


def _quiet_failed_writes() -> None:
    """Keeps a failed save (a full disk) to the one error `Checkpointer._write` raises: Orbax's threads also log
    it with tracebacks, and TensorStore's callbacks print "Event loop is closed" tracebacks after it."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_from_orbax_record)  # adding it again is a no-op
    if not getattr(sys.excepthook, "drops_closed_loop", False):
        previous = sys.excepthook

        def hook(kind, value, traceback_object) -> None:
            if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
                previous(kind, value, traceback_object)

        hook.drops_closed_loop = True
        sys.excepthook = hook


def _drop_orbax_unraisable(previous: Callable) -> Callable:
    def hook(unraisable) -> None:
        if _from_orbax(f"{unraisable.exc_value!r} {unraisable.object!r}", unraisable.exc_traceback):
            return
        previous(unraisable)

    return hook


def _from_orbax_record(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for records about exceptions raised in Orbax or TensorStore."""
    if record.exc_info and record.exc_info[1] is not None:
        return not _from_orbax(repr(record.exc_info[1]), record.exc_info[2])
    return not _from_orbax(record.getMessage(), None)


# Checking compatibility ------------------------------------------------------------------------

def check_env(checkpoint: Checkpoint, env_name: str, obs_shape: Sequence[int], num_actions: int) -> None:
    """Raises ConfigError if the checkpoint's network cannot take this env's observations and actions."""
    saved_shape, saved_actions = tuple(checkpoint.meta["obs_shape"]), int(checkpoint.meta["num_actions"])
    if tuple(obs_shape) != saved_shape or int(num_actions) != saved_actions:
        raise ConfigError(
            f"the checkpoint's network ({checkpoint.config.env}: observations {saved_shape}, {saved_actions} "
            f"actions) does not fit {env_name} (observations {tuple(obs_shape)}, {num_actions} actions)")


def check_devices(checkpoint: Checkpoint, num_devices: int) -> None:
    """Raises ConfigError unless the run resumes on as many devices as the checkpoint was saved from."""
    saved_devices = int(checkpoint.meta["num_devices"])
    if saved_devices != num_devices:
        raise ConfigError(f"the checkpoint was saved by a run on {saved_devices} device(s), this run has "
                          f"{num_devices}; resume on {saved_devices} (evaluating it needs only one)")


def check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
    """Raises ConfigError if `config` changes a setting that fixes the checkpoint's array shapes."""
    for name in SHAPE_FIELDS:
        old, new = getattr(saved, name), getattr(config, name)
        if old != new:
            raise ConfigError(f"--{name} {_flag_value(new)} differs from the checkpoint's {_flag_value(old)}; a "
                              f"resumed run keeps the settings that fix array shapes ({', '.join(SHAPE_FIELDS)})")


def _flag_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_save_dir(directory: str | Path, *, overwrite: bool = False, resume: Checkpoint | None = None) -> list[Path]:
    """Checks that `directory` may receive this run's checkpoints; returns the folders to remove first.

    A new or empty folder is fine. A folder of checkpoints is accepted when the run resumes from its
    latest one; resuming from an earlier step, or saving over another run, needs `overwrite`, which
    replaces the later (or all) step folders (`Checkpointer` deletes them once its first checkpoint is
    complete). A non-empty folder without checkpoints needs `overwrite` too (its files are left alone).
    Unfinished saves (Orbax tmp folders) in an accepted folder are removed.

    Raises:
      ConfigError: the folder holds another run (or later checkpoints) and `overwrite` is off.
    """
    directory = Path(directory)
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise ConfigError(f"--save_model {directory} is a file, not a folder")
    if not any(directory.iterdir()):
        return []
    steps = complete_steps(directory)
    unfinished = [directory / name for name in _unfinished(directory)]  # saves cut short: never usable
    same = resume is not None and resume.directory.resolve() == directory.resolve()
    if same:
        later = [step for step in steps if step > resume.step]
        if later and not overwrite:
            raise ConfigError(f"{directory} holds checkpoints after the resumed step {resume.step} (steps "
                              f"{_list(later)}); pass --overwrite to delete them, or --save_model a new folder")
        return [directory / str(step) for step in later] + unfinished
    if not overwrite:
        if steps or unfinished:
            raise ConfigError(f"--save_model {directory} already holds checkpoints of another run; resume it "
                              f"with --load_model {directory}, or pass --overwrite to replace them")
        replaced = (f" (only {directory / REPLACED}: checkpoints an --overwrite run replaced before it was stopped)"
                    if (directory / REPLACED).is_dir() else "")
        raise ConfigError(f"--save_model {directory} is not empty and holds no checkpoints{replaced}; use a new "
                          f"folder or pass --overwrite")
    return [directory / str(step) for step in steps] + unfinished


# Saving ----------------------------------------------------------------------------------------

class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only or removed folder); the CLI prints one line."""


class Checkpointer:
    """Saves a run's checkpoints asynchronously, keeping the latest `options.keep`.

    `save` copies the state to host memory on the calling thread and hands the Orbax write to one
    background thread; a failed write is raised by the next `save` or by `close`.

    Args:
      options: folder, frequency, retention, whether to save the buffer.
      config: the run's settings, saved as JSON beside the arrays.
      num_devices: devices the state is sharded over (its leading axis).
      obs_shape, num_actions: the env's observation shape and action count (checked on restore).
      log_dir: the run's output folder, reused by a resumed run.
      resume: the checkpoint this run resumed from, if any (may share `options.directory`).
    """

    def __init__(self, options: CheckpointOptions, config: TrainConfig, *, num_devices: int,
                 obs_shape: Sequence[int], num_actions: int, log_dir: Path | None = None,
                 resume: Checkpoint | None = None):
        self.options = options.validate()
        _quiet_failed_writes()
        # Unfinished saves are never usable: removed now. The checkpoints this run replaces (--overwrite) are
        # moved into REPLACED and deleted once this run's first checkpoint is complete: a run stopped before
        # that leaves them there.
        self.replaced = Path(options.directory) / REPLACED
        for folder in check_save_dir(options.directory, overwrite=options.overwrite, resume=resume):
            if TMP_SUFFIX in folder.name:
                shutil.rmtree(folder)
                continue
            self.replaced.mkdir(exist_ok=True)
            if (self.replaced / folder.name).exists():  # left by an earlier stopped run: older than this one
                shutil.rmtree(self.replaced / folder.name)
            folder.rename(self.replaced / folder.name)
        self.config = config
        self.static_meta = {
            "format": FORMAT_VERSION,
            "num_devices": num_devices,
            "obs_shape": [int(size) for size in obs_shape],
            "num_actions": int(num_actions),
            "buffer_saved": options.save_buffer,
            "log_dir": str(log_dir) if log_dir is not None else None,
            "checkpoint_frequency": options.frequency,
            "keep_checkpoints": options.keep,
            "jaxdqn_version": __version__,
            "jax_version": jax.__version__,
        }
        # Orbax saves synchronously, on the writer thread: that thread is what makes saving asynchronous.
        self.manager = _manager(Path(options.directory), max_to_keep=options.keep, create=True,
                                enable_async_checkpointing=False)
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self.pending_writes: list[concurrent.futures.Future] = []  # in save order: one writer thread
        self.saved_steps: list[int] = []  # steps whose save was started
        self.blocking_s = 0.0  # time the training loop spent inside `save`
        self.close_s = 0.0  # time `close` waited for the last checkpoints to be written

    def save(self, state, *, rows: list[dict[str, Any]], solved_at: tuple[int, float] | None) -> int:
        """Starts saving `state` (with its device axis); returns its step (env steps) once the arrays are
        copied to host memory, while the files are written in the background.

        Raises:
          Exception: the error of an earlier save whose write failed (raised once, here or by `close`).
        """
        start = time.time()
        self._collect_writes(wait=False)
        host_state = jax.device_get(state if self.options.save_buffer else state.replace(buffer=None))
        iteration, updates = (int(parallel.first_device(leaf)) for leaf in (host_state.iteration, host_state.updates))
        step = iteration * self.config.num_envs
        meta = dict(self.static_meta, iteration=iteration, updates=updates, env_steps=step,
                    rows=[_json_row(row) for row in rows], solved_at=list(solved_at) if solved_at else None,
                    saved_at=datetime.datetime.now().isoformat(timespec="seconds"))
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state),
            params=ocp.args.StandardSave(parallel.first_device(host_state.params)),
            config=ocp.args.JsonSave(dataclasses.asdict(self.config)),
            meta=ocp.args.JsonSave(meta),
        )
        self.pending_writes.append(self.writer.submit(self._write, step, items))
        self.saved_steps.append(step)
        self.blocking_s += time.time() - start
        return step

    def _write(self, step: int, items: ocp.args.Composite) -> None:
        """Runs on the writer thread: writes one checkpoint and returns once it is committed; then the
        checkpoints it replaces (`REPLACED`) are deleted.

        Raises:
          CheckpointWriteError: the write failed (a full disk, a read-only or removed folder); the earlier
            checkpoints are kept, and Orbax's unfinished tmp folder is removed when the run is resumed.
        """
        try:
            saved = self.manager.save(step, args=items)
            if saved:
                self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001  (Orbax and TensorStore raise many types for I/O errors)
            raise CheckpointWriteError(f"the checkpoint at env step {step:,} could not be written to "
                                       f"{self.options.directory} ({_io_reason(error)}); the earlier checkpoints "
                                       f"there are kept") from error
        if not saved:
            raise RuntimeError(f"Orbax declined to save step {step} in {self.options.directory}")
        if self.replaced.is_dir():
            shutil.rmtree(self.replaced)

    def _collect_writes(self, wait: bool) -> None:
        """Forgets the finished writes (with `wait`, all of them once finished), raising the first one's error."""
        while self.pending_writes and (wait or self.pending_writes[0].done()):
            self.pending_writes.pop(0).result()

    def close(self) -> None:
        """Waits for the pending saves to be written (raising the first error, if any) and releases the manager."""
        start = time.time()
        try:
            self._collect_writes(wait=True)
        finally:
            self.writer.shutdown(wait=True)  # also after an error or Ctrl-C: the later saves finish too
            self.manager.close()
            self.close_s += time.time() - start


def _io_reason(error: Exception) -> str:
    """A short reason for a failed write: the OS's words, where TensorStore's long message holds them."""
    text = one_line(error)
    if not isinstance(error, OSError):
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOENT, errno.EIO):
            if os.strerror(code) in text:
                return os.strerror(code)
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with NaN as None (plain JSON)."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}


# Restoring -------------------------------------------------------------------------------------

def _abstract(tree):
    """Shapes, dtypes and shardings of `tree`'s arrays: what `StandardRestore` restores into."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), tree)


def restore_state(checkpoint: Checkpoint, template, num_devices: int):
    """Restores the training state into the shapes and shardings of `template` (a freshly built state).

    The hyperparameters come from `template` (so overrides such as --lr apply); without a saved
    buffer, the template's empty buffer is used.

    Raises:
      ConfigError: another device count, or a corrupt checkpoint.
    """
    check_devices(checkpoint, num_devices)
    saved_format = checkpoint.meta.get("format", 0)
    if saved_format not in RESUMABLE_FORMATS:
        raise ConfigError(f"{checkpoint.directory}: checkpoint format {saved_format} comes from an older jaxdqn "
                          f"whose optimizer state this version cannot resume (it resumes format {FORMAT_VERSION}); "
                          f"python -m jaxdqn.evaluate still evaluates it")
    target = template if checkpoint.buffer_saved else template.replace(buffer=None)
    layout = template.buffer.layout
    buffer_by_field = checkpoint.buffer_saved and saved_format < 3 and layout is not None
    if buffer_by_field:  # restored field by field as format 2 saved it, then packed
        sharding = template.buffer.data.sharding
        target = target.replace(buffer=target.buffer.replace(
            data=jax.jit(layout.unpack, out_shardings=sharding)(template.buffer.data), layout=None))
    restored = _restore_item(checkpoint, "state", _abstract(target))
    restored = jax.device_put(restored, jax.tree.map(lambda leaf: leaf.sharding, target))
    if buffer_by_field:
        restored = restored.replace(buffer=restored.buffer.replace(
            data=jax.jit(layout.pack, out_shardings=sharding)(restored.buffer.data), layout=layout))
    if not checkpoint.buffer_saved:
        restored = restored.replace(buffer=template.buffer)
    return restored.replace(hparams=template.hparams)


def restore_params(checkpoint: Checkpoint, abstract_params):
    """Restores device 0's online parameters into `abstract_params` (shapes; placed on one device)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                            abstract_params)
    return _restore_item(checkpoint, "params", abstract)


def _restore_item(checkpoint: Checkpoint, name: str, abstract):
    manager = _manager(checkpoint.directory, create=False)
    try:
        with _quiet_orbax():
            restored = manager.restore(checkpoint.step, args=ocp.args.Composite(**{
                name: ocp.args.StandardRestore(abstract)}))
        return restored[name]
    except Exception as error:  # noqa: BLE001  (Orbax/TensorStore raise many types for damaged files)
        where = checkpoint.directory / str(checkpoint.step)
        if "tree structure" in str(error).lower():
            raise ConfigError(f"checkpoint {where}: its {name} item is laid out differently from what this jaxdqn "
                              f"builds from its config (written by another version?)") from None
        if "not compatible with the stored shape" in str(error):
            raise ConfigError(f"checkpoint {where} does not match the arrays built from its config: "
                              f"{str(error).splitlines()[0][:200]}") from None
        raise _corrupt(checkpoint.directory, checkpoint.step, complete_steps(checkpoint.directory), error) from None
    finally:
        manager.close()


# A saved agent as a policy ---------------------------------------------------------------------

@dataclasses.dataclass
class SavedAgent:
    """A restored agent: its environment, learner (with its network) and device-0 parameters."""

    checkpoint: Checkpoint
    env_name: str
    env: Any
    env_params: Any
    learner: Any  # jaxdqn.learners.Learner
    params: Any

    @property
    def network(self):
        return self.learner.network

    @property
    def config(self) -> TrainConfig:
        return self.checkpoint.config


def load_agent(directory: str | Path, step: int | None = None, env: str | None = None) -> SavedAgent:
    """Restores the agent saved in `directory`; the env and network come from its config unless `env` is given.

    Raises:
      ConfigError: see `find`, `check_env`, `restore_params` and `check_finite`.
    """
    from jaxdqn.learners import build_learner
    from jaxdqn.registry import make_env

    checkpoint = find(directory, step)
    spec, environment, env_params = make_env(env or checkpoint.config.env)
    obs_shape = environment.observation_space(env_params).shape
    num_actions = environment.action_space(env_params).n
    check_env(checkpoint, spec.name, obs_shape, num_actions)
    learner = build_learner(checkpoint.config, obs_shape, num_actions, spec.make_network)
    abstract = jax.eval_shape(learner.network.init, jax.random.key(0), jnp.zeros((1, *obs_shape), jnp.float32))
    params = restore_params(checkpoint, abstract)
    check_finite(checkpoint, params)
    return SavedAgent(checkpoint, spec.name, environment, env_params, learner, params)


def check_finite(checkpoint: Checkpoint, params) -> None:
    """Raises ConfigError if any saved parameter is NaN or infinite (a run that diverged; jaxdqn.train
    never saves one, but an older version or another tool may have)."""
    if all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params)):
        return
    earlier = [step for step in complete_steps(checkpoint.directory) if step < checkpoint.step]
    hint = (f"; pick a step saved before it diverged with --load_step (earlier steps: {_list(earlier)})"
            if earlier else "")
    raise ConfigError(f"checkpoint {checkpoint.directory / str(checkpoint.step)}: its parameters are not finite "
                      f"(NaN or inf: the run diverged){hint}")


@functools.partial(jax.jit, static_argnums=0)
def _greedy_actions(learner, params, obs: jnp.ndarray) -> jnp.ndarray:
    return learner.greedy(params, obs)


def load_policy(directory: str | Path, step: int | None = None,
                env: str | None = None) -> tuple[Callable[[jax.Array], jax.Array], TrainConfig]:
    """Loads a saved agent as a greedy policy.

    Args:
      directory: a checkpoint folder written by `python -m jaxdqn.train --save_model DIR`.
      step: the checkpoint's step (env steps); default the latest.
      env: an environment name overriding the checkpoint's (its observations must fit the network).

    Returns:
      `(policy, config)`: `policy(obs) -> actions` maps a batch of observations `[batch, *obs_shape]`
      to greedy actions `[batch]` (int32) and may be called inside `jax.jit`; `config` is the run's
      `TrainConfig`.
    """
    agent = load_agent(directory, step, env)
    learner, params = agent.learner, agent.params

    def policy(obs: jnp.ndarray) -> jnp.ndarray:
        return _greedy_actions(learner, params, obs)

    return policy, agent.config
