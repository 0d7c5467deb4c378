"""Checks a command makes before any work: code the user asked for, memory that fits, outputs it can write.

Each check raises `ConfigError` with a one-line reason, before anything is compiled or written. Then
`claim_dir` creates an output folder and holds an exclusive lock on it while the run writes there, so
that two runs never write into one folder.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxdqn.errors import ConfigError

RUN_FILES = ("config.json", "metrics.csv", "summary.json")  # what a run writes into its log folder


def check_no_empty_values(flags: dict[str, Any]) -> None:
    """Refuses a name or path flag given as '' (it would silently mean the default, or the current folder)."""
    for name, value in flags.items():
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"--{name} needs a value, got {value!r}")


# Code a checkpoint names ---------------------------------------------------------------------

def check_checkpoint_env(checkpoint_env: str, named_env: str | None, trust: bool) -> None:
    """Refuses to import the module that a checkpoint's config names as its environment (importing runs its
    code) unless the user named an environment (`--env`) or passed `--trust_checkpoint_code`.
    Registered names and gymnax ids import nothing of the checkpoint's."""
    from jaxdqn.registry import is_import_path

    if named_env is None and not trust and is_import_path(checkpoint_env):
        module = checkpoint_env.partition(":")[0]
        raise ConfigError(f"the checkpoint's environment {checkpoint_env!r} would import module {module!r}, running "
                          f"its code; pass --env {checkpoint_env} (or --trust_checkpoint_code) if you trust it")


# Memory --------------------------------------------------------------------------------------

def estimate_memory(config, env, env_params, network, num_agents: int = 1, training: bool = True) -> dict[str, int]:
    """Rough bytes of the largest arrays a run keeps in device memory, by what they hold and the flag that sizes them.

    Counts, for each of `num_agents` agents: the replay buffer (buffer_size transitions: two observations
    and 16 bytes of action, reward and flags, plus 4 of priority); the network's parameters times 5 (online,
    target, Adam's two moments, the gradient); the training envs' states and observations; a chunk's random
    keys (8 bytes per env step); the activations of acting (num_envs) and of one gradient update
    (batch_size), 4 bytes per hidden unit each; and the evaluation's eval_episodes env states,
    observations, keys and activations. With `training=False` (evaluating a saved agent) only the
    parameters, once, and the evaluation. XLA's temporaries and the compiled code are not counted, so the
    true need is higher; the estimate only has to catch what cannot fit.
    """
    import jax
    import jax.numpy as jnp

    def nbytes(tree) -> int:
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))

    # Shapes only: nothing is allocated, compiled or run.
    key = jax.eval_shape(jax.random.key, 0)
    obs, env_state = jax.eval_shape(env.reset, key, env_params)
    obs_bytes, env_bytes = nbytes(obs), nbytes(obs) + nbytes(env_state)
    params = jax.eval_shape(network.init, key, jax.ShapeDtypeStruct((1, *obs.shape), jnp.float32))
    activations = 4 * sum(config.hidden_sizes)  # bytes per sample through the hidden layers
    evaluation = config.eval_episodes * (2 * env_bytes + 16 + 2 * activations)
    if not training:
        return {"parameters (--hidden_sizes)": nbytes(params), "evaluation episodes (--episodes)": evaluation}
    transitions = config.buffer_rows * config.num_envs
    parts = {
        "replay buffer (--buffer_size)": transitions * (2 * obs_bytes + 16 + 4 * config.prioritized),
        "parameters, target, Adam moments and gradient (--hidden_sizes)": 5 * nbytes(params),
        "training envs (--num_envs)": config.num_envs * (2 * env_bytes + activations),
        "a chunk's random keys (--chunk_steps)": 8 * config.chunk_iterations * config.num_envs,
        "gradient update activations (--batch_size)": config.batch_size * 3 * activations,
        "evaluation episodes (--eval_episodes)": evaluation,
    }
    return {name: size * num_agents for name, size in parts.items()}


def available_memory() -> tuple[int | None, str]:
    """`(bytes, what)`: the first device's memory limit (GPU), or the machine's physical memory (CPU)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
        except (ValueError, OSError):
            return None, "physical memory"
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001  (not every backend reports memory)
        limit = None
    return limit, f"{device.device_kind} memory"


def check_memory(parts: dict[str, int], num_agents: int = 1, num_devices: int = 1) -> None:
    """Refuses a run whose estimated arrays (`estimate_memory`) exceed the memory it has, naming the largest.

    `num_devices`: the devices the run shards over; their shares are compared with one device's memory on
    GPUs, and added up on the CPU, whose devices share the machine's memory.
    """
    import jax

    limit, what = available_memory()
    if limit is None:
        return
    total = sum(parts.values())
    if jax.devices()[0].platform != "cpu":
        total //= num_devices  # roughly: the buffer and envs are split over the devices
    if total <= limit:
        return
    largest = sorted(parts.items(), key=lambda item: -item[1])[:2]
    agents = f" for {num_agents:,} agents (--num_seeds, --sweep)" if num_agents > 1 else ""
    detail = ", ".join(f"{name} {_size(size)}" for name, size in largest)
    raise ConfigError(f"the run needs about {_size(total)} of memory{agents}, more than the {_size(limit)} of {what} "
                      f"this machine has; largest: {detail}")


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if num_bytes < 1000 or unit == "PB":
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1000
    return ""


# Output folders and files --------------------------------------------------------------------

def check_writable(path: Path, flag: str, hint: str = "") -> None:
    """Refuses `path` unless it is (or can become) a folder in which files can be written.

    It creates and removes a file in the nearest existing folder: permission bits tell nothing for root,
    nor on a read-only mount, and a path under a file or in /proc fails only when written.
    """
    existing = Path(path).absolute()
    while not existing.is_dir():
        if existing.exists() or existing.is_symlink():  # a file (or a dangling link) where a folder must be
            place = "is" if existing == Path(path).absolute() else f"is under {existing}, which is"
            raise ConfigError(f"{flag} {path} {place} a file, not a folder")
        existing = existing.parent
    error = _write_error(existing)
    if error is not None:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({error}){hint}")


def _write_error(folder: Path) -> str | None:
    """Why no file can be created in `folder`, or None: creates and removes one (the only test that holds for
    root, read-only mounts and /proc alike)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".jaxdqn-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return error.strerror or str(error)
    return None


def check_output_file(path: Path, flag: str) -> None:
    """Refuses a file path that cannot be written: its folder must exist and take files, and the file, if it
    exists, must open for writing (it is not changed here)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist")
    error = _write_error(path.parent)
    if error is not None:
        raise ConfigError(f"{flag} {path}: cannot write in {path.parent} ({error})")
    if path.exists():
        try:
            with open(path, "a"):  # appending nothing leaves the file as it is
                pass
        except OSError as error:
            raise ConfigError(f"{flag} {path}: cannot write it ({error.strerror or error})") from None


def check_log_dir(log_dir: Path, *, overwrite: bool, own: Path | None = None) -> None:
    """Refuses a log folder that cannot be written, or that holds an earlier run's outputs (which this run would
    replace) unless `overwrite`, or unless it is `own`, the folder of the run being resumed."""
    check_writable(log_dir, "--log_dir")
    earlier = [name for name in RUN_FILES if (log_dir / name).exists()]
    if earlier and not overwrite and not (own is not None and _same(log_dir, own)):
        raise ConfigError(f"--log_dir {log_dir} holds an earlier run's outputs ({', '.join(earlier)}); pass "
                          f"--overwrite to replace them (its summary.json is kept as summary.<steps>.json), "
                          f"or choose a new folder")


def _same(first: Path, second: Path) -> bool:
    return Path(first).resolve() == Path(second).resolve()


def default_log_dir(env_name: str, root: Path = Path("runs")) -> Path:
    """`root/<env>-<date>-<time>`: the log folder of a run not given one (`claim_dir(..., unique=True)` makes it
    unique)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in env_name)
    return root / f"{safe}-{stamp}"


@contextlib.contextmanager
def claim_dir(folder: Path, flag: str, unique: bool = False) -> Iterator[Path]:
    """Creates `folder` if needed and holds an exclusive lock on it until the block ends; yields the folder.

    Another run claiming it meanwhile gets a ConfigError. The lock is the kernel's (`flock`), so it ends with
    the process, even when killed. With `unique` the folder is always a new one: `-2`, `-3`, ... is added
    to its name while that name is taken (`mkdir` fails for the second of two runs started in the same
    second). If the block fails, the folders made here are removed again while empty.
    """
    made = [parent for parent in folder.parents if not parent.exists()]  # nearest first, as removed
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if unique:
            folder = _new_folder(folder)
            made.insert(0, folder)
        elif not folder.exists():
            folder.mkdir()
            made.insert(0, folder)
    except OSError as error:
        raise ConfigError(f"{flag} {folder}: cannot create it ({error.strerror or error})") from None
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{flag} {folder} is in use by another run writing there; wait for it to end, "
                              f"or choose another folder") from None
        yield folder
    except BaseException:
        for path in made:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    finally:
        os.close(handle)


def _new_folder(folder: Path) -> Path:
    """Makes `folder`, or `folder-2`, `folder-3`, ... if taken; returns the one made."""
    for attempt in range(1, 10_000):
        candidate = folder if attempt == 1 else folder.with_name(f"{folder.name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ConfigError(f"no free folder name like {folder}; pass --log_dir")
