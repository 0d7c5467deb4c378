"""Compiled programs kept on disk, so that a repeated run neither traces nor compiles them.

JAX's persistent compilation cache (also on, see `jaxdqn.train`) skips XLA's compilation, but a run
still has to trace and lower every program before it can look it up: about 1 s of the start of a
CartPole run on an H100, as long as the training itself. This cache stores the compiled executables
(`jax.experimental.serialize_executable`) under a key computed before any tracing, from everything
that shapes them: the run's config, the environment and network, the source files of jaxdqn, of
`envs/` and of the packages defining the environment's and the network's classes, the library
versions, the devices, the XLA flags and the JAX settings that change what a trace produces. A
missing, stale or unreadable entry just means the programs are compiled again (and the entry
rewritten). Code that the environment imports from other packages is not part of the key: after
editing such code, delete the `programs/` folder of the compile cache (or run with `--no_compile_cache`).

It is used for single-process runs only; with `jax.distributed` every process compiles.

The folder is bounded: after each store, the least recently used entries (by modification time,
which a load renews) are deleted until the rest fit in `MAX_BYTES` (an entry is about 3 MB for
CartPole's default programs on an H100). The entry just written is always kept.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import inspect
import os
import pickle
import platform
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable

FORMAT = "jaxdqn-programs-1"
# Settings that change the programs a trace produces (beyond the config): read at key time.
_JAX_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                 "jax_threefry_partitionable", "jax_numpy_rank_promotion")
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "gymnax", "numpy")
# Config fields that only the host loop reads: runs differing in them share programs.
HOST_ONLY_FIELDS = ("seed", "log_dir", "until_solved", "eval_frequency")
MAX_BYTES = 1 << 30  # the programs folder's size bound: 1 GiB, a few hundred configurations


def _package_files(module_name: str) -> set[Path]:
    """Every `.py` file of the top-level package holding `module_name` (or that module's own file)."""
    top = sys.modules.get(module_name.partition(".")[0])
    location = getattr(top, "__file__", None)
    if location is None:
        return set()
    if Path(location).name == "__init__.py":  # a package: its whole tree, helpers included
        return set(Path(location).parent.rglob("*.py"))
    return {Path(location)}


def _source_files(objects: list[Any]) -> list[Path]:
    """The `.py` files of jaxdqn, of the `envs` package, and of the packages defining `objects` (env, network).

    A whole package rather than one module, so that editing a helper module of a ported simulator
    also changes the key. Code outside those packages is not covered (see the module docstring).
    """
    files = _package_files("jaxdqn") | _package_files("envs")
    for obj in objects:
        cls = obj if inspect.isclass(obj) else type(obj)
        files |= _package_files(cls.__module__)
        try:
            files.add(Path(inspect.getsourcefile(cls)))
        except (TypeError, OSError):  # built in, or defined interactively: its repr is in the key
            pass
    return sorted(files)


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def program_key(config, env, env_params, network, devices: list[Any]) -> str:
    """A digest of everything the run's compiled programs depend on."""
    settings = dataclasses.asdict(config)
    for name in HOST_ONLY_FIELDS:
        settings.pop(name, None)
    digest = hashlib.sha256()
    parts = [
        FORMAT, repr(sorted(settings.items())), f"{type(env).__module__}.{type(env).__qualname__}",
        repr(env_params), repr(network), platform.python_version(),
        *(f"{library}={_version(library)}" for library in _LIBRARIES),
        *(f"{name}={jax.config.values.get(name)!r}" for name in _JAX_SETTINGS),
        os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
        str(jax.process_count()), str(len(jax.devices())),
        *(f"{device.platform}:{device.device_kind}:{device.id}" for device in devices),
        devices[0].client.platform_version,
    ]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in _source_files([env, network]):
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _load(path: Path, devices: Mapping[str, list[Any]]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as file:
            saved = pickle.load(file)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(devices)) as pool:  # loads overlap
            futures = {name: pool.submit(serialize_executable.deserialize_and_load, *saved[name],
                                         execution_devices=program_devices)
                       for name, program_devices in devices.items()}
            programs = {name: future.result() for name, future in futures.items()}
        os.utime(path)  # used now: the last entry `_evict` would delete
        return programs
    except Exception:  # noqa: BLE001  (missing, truncated or from another build: compile instead)
        return None


def _store(path: Path, compiled: Mapping[str, Any]) -> None:
    try:
        blobs = {name: serialize_executable.serialize(program) for name, program in compiled.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as file:
            pickle.dump(blobs, file)
        os.replace(partial, path)  # readers see a whole entry or none
        _evict(path.parent, keep=path, max_bytes=MAX_BYTES)
    except Exception:  # noqa: BLE001  (a backend that cannot serialize, a read-only folder: no cache)
        pass


def _evict(folder: Path, keep: Path, max_bytes: int) -> None:
    """Deletes the least recently used entries of `folder` (never `keep`) until the rest fit in `max_bytes`."""
    entries = []
    for entry in folder.glob("*.programs"):
        try:
            status = entry.stat()
        except OSError:  # deleted meanwhile by another run
            continue
        entries.append((status.st_mtime, status.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda item: item[0]):  # oldest first
        if total <= max_bytes:
            break
        if entry != keep:
            entry.unlink(missing_ok=True)
            total -= size


def load_or_compile(lowerers: Mapping[str, Callable[[], Any]], devices: Mapping[str, list[Any]],
                    cache_dir: Path | None, key: str | None) -> tuple[dict[str, Any], bool]:
    """The compiled programs named in `lowerers`, loaded from `cache_dir` or traced and compiled.

    Args:
      lowerers: name -> `() -> jax.stages.Lowered`, called only when the cache has no entry.
      devices: name -> the devices that program runs on (a loaded program must be bound to them).
      cache_dir: the cache folder, or None to always compile.
      key: `program_key(...)` of the run.

    Returns:
      `({name: jax.stages.Compiled}, loaded)`; `loaded` is True when nothing was compiled. Tracing is
      serial (it holds the GIL); XLA compiles each program in a thread of its own as soon as it is
      traced, while the next one is traced: put the longest compile first.
    """
    path = cache_dir / f"{key}.programs" if cache_dir is not None and key is not None else None
    if path is not None and path.exists():
        loaded = _load(path, devices)
        if loaded is not None:
            return loaded, True
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lowerers)) as pool:
        futures = {name: pool.submit(lower().compile) for name, lower in lowerers.items()}
        compiled = {name: future.result() for name, future in futures.items()}
    if path is not None:
        _store(path, compiled)
    return compiled, False
