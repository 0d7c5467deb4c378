"""Compiled programs kept on disk, so that a repeated run neither traces nor compiles them.

JAX's persistent compilation cache (also on, see `jaxdqn.train`) skips XLA's compilation, but a run
still has to trace and lower every program before it can look it up, which for a short CartPole run
takes about as long as the training itself (docs/performance.md, "Cached start"). This cache stores
the compiled executables (`jax.experimental.serialize_executable`) under a key computed before any
tracing, from everything that shapes them: the run's config, the environment and network, the source
files of jaxdqn (`jaxdqn.envs` included) and of the packages defining the environment's and the
network's classes, the library versions, the devices, the XLA flags and the JAX settings that change
what a trace produces. Code that the environment imports from other packages is not part of the key:
after editing such code, delete the `programs/` folder of the compile cache (or run with
`--no_compile_cache`).

A cache can never make a run fail. A missing entry means the programs are compiled (and stored); an
entry that cannot be read, authenticated or loaded, or a loaded program whose first call fails, means
one warning line and a compile, as if there had been no entry. What is stored and how:

- Only executables that XLA compiled in this process. On the CPU, an executable that JAX's own cache
  loaded serializes without its compiled functions, and its entry would fail at its first call
  ("Function ... not found"): a program that JAX's cache served is not stored here (an entry may hold
  some of a run's programs; the others are looked up in JAX's cache each time).
- Entries are pickles (JAX serializes executables that way), so nothing is unpickled that this user did
  not write: each entry carries an HMAC-SHA256 of its bytes under a random key kept in the folder's
  `key` file, readable by its owner alone; an entry without the right MAC is ignored, never loaded.

It is used for single-process runs only; with `jax.distributed` every process compiles.

The folder is bounded: after each store, the least recently used entries (by modification time,
which a load renews) are deleted until the rest fit in `MAX_BYTES` (an entry is a few MB for
CartPole's default programs). The entry just written is always kept.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import hmac
import importlib.metadata
import inspect
import os
import pickle
import platform
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable

FORMAT = "jaxdqn-programs-2"
MAGIC = FORMAT.encode() + b"\n"  # an entry: MAGIC, the MAC of the payload, the payload (a pickle)
KEY_BYTES = MAC_BYTES = 32
# Settings that change the programs a trace produces (beyond the config): read at key time.
_JAX_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                 "jax_threefry_partitionable", "jax_numpy_rank_promotion")
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "gymnax", "numpy")
# Config fields that only the host loop reads: runs differing in them share programs.
HOST_ONLY_FIELDS = ("seed", "log_dir", "until_solved", "eval_frequency")
MAX_BYTES = 1 << 30  # the programs folder's size bound: 1 GiB, a few hundred configurations


def _package_files(module_name: str, top_level: bool = True) -> set[Path]:
    """Every `.py` file of the top-level package holding `module_name` (or that module's own file).

    With `top_level=False`, of the package `module_name` itself (`jaxdqn.envs` lives outside jaxdqn's folder).
    """
    top = sys.modules.get(module_name.partition(".")[0] if top_level else module_name)
    location = getattr(top, "__file__", None)
    if location is None:
        return set()
    if Path(location).name == "__init__.py":  # a package: its whole tree, helpers included
        return set(Path(location).parent.rglob("*.py"))
    return {Path(location)}


def _source_files(objects: list[Any]) -> list[Path]:
    """The `.py` files of jaxdqn, of `jaxdqn.envs`, and of the packages defining `objects` (env, network).

    A whole package rather than one module, so that editing a helper module of a ported simulator
    also changes the key. Code outside those packages is not covered (see the module docstring).
    """
    import jaxdqn.envs  # noqa: F401  (registered by now; imported here in case it is not)

    files = _package_files("jaxdqn") | _package_files("jaxdqn.envs", top_level=False)
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


def _warn(message: str) -> None:
    print(f"jaxdqn: {message}", file=sys.stderr, flush=True)


class _JaxCacheHits(threading.local):
    """Counts, per thread, the compiles that JAX's persistent cache served (`jax.monitoring` events).

    A program is compiled in a thread of its own, so the count of that thread tells whether XLA compiled
    it here or JAX's cache loaded it.
    """

    count = 0

    def listen(self, event: str, **_) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.count += 1


_jax_cache_hits = _JaxCacheHits()


def _compile_here(lowered: Any) -> tuple[Any, bool]:
    """`(compiled, fresh)`: `fresh` is False when JAX's persistent cache served the executable."""
    hits = _jax_cache_hits.count
    compiled = lowered.compile()
    return compiled, _jax_cache_hits.count == hits


jax.monitoring.register_event_listener(_jax_cache_hits.listen)


def _secret(folder: Path) -> bytes | None:
    """The folder's MAC key, made on first use; None if it is not this user's alone (then no cache)."""
    path = folder / "key"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(KEY_BYTES))
        status = path.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o077:
            _warn(f"compiled-program cache not used: {path} is not readable by its owner alone")
            return None
        for _ in range(100):  # another run may have created the file and not yet written it
            key = path.read_bytes()
            if len(key) == KEY_BYTES:
                return key
            time.sleep(0.01)
        _warn(f"compiled-program cache not used: {path} is damaged (delete it)")
    except OSError as error:
        _warn(f"compiled-program cache not used: {error}")
    return None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _read_blobs(path: Path, key: bytes) -> dict[str, Any] | None:
    """The serialized programs of the entry at `path`: None if there is none; raises if it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # no entry: the usual first run
        return None
    header, payload = data[:len(MAGIC) + MAC_BYTES], data[len(MAGIC) + MAC_BYTES:]
    if not header.startswith(MAGIC) or not hmac.compare_digest(header[len(MAGIC):], _mac(key, payload)):
        raise _Untrusted
    return pickle.loads(payload)  # authenticated above: written by this user's runs


class _Untrusted(Exception):
    """An entry without a valid MAC: damaged, or not written by this user."""


def _load(path: Path, key: bytes, devices: Mapping[str, list[Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(blobs, programs)` of the entry at `path`, both empty (with a warning line) if it is unusable.

    An entry may hold some of the programs only (those compiled fresh when it was written).
    """
    try:
        blobs = _read_blobs(path, key)
    except _Untrusted:
        _warn(f"compiled-program cache entry {path.name} is damaged or was not written by this user; "
              "ignored, compiling")
        return {}, {}
    except OSError as error:
        _warn(f"compiled-program cache entry {path.name} unreadable ({error}); compiling")
        return {}, {}
    except Exception as error:  # noqa: BLE001  (authentic but not loadable here)
        _warn(f"compiled-program cache entry {path.name} could not be loaded ({type(error).__name__}); compiling")
        return {}, {}
    if blobs is None:
        return {}, {}
    try:
        names = [name for name in devices if name in blobs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:  # loads overlap
            futures = {name: pool.submit(serialize_executable.deserialize_and_load, *blobs[name],
                                         execution_devices=devices[name]) for name in names}
            programs = {name: future.result() for name, future in futures.items()}
    except Exception as error:  # noqa: BLE001  (from another build, or damaged: compile instead)
        _warn(f"compiled-program cache entry {path.name} could not be loaded ({type(error).__name__}); compiling")
        return {}, {}
    try:
        os.utime(path)  # used now: the last entry `_evict` would delete
    except OSError:
        pass
    return {name: blobs[name] for name in names}, programs


def _store(path: Path, key: bytes, blobs: Mapping[str, Any]) -> None:
    """Adds `blobs` to the entry at `path`, keeping the programs another run stored there meanwhile."""
    import filelock  # a dependency of jaxdqn (JAX's cache bound uses it too)

    try:
        with filelock.FileLock(path.with_name(f"{path.name}.lock"), timeout=60):
            try:
                stored = _read_blobs(path, key) or {}
            except Exception:  # noqa: BLE001  (unusable: replaced whole)
                stored = {}
            _write(path, key, {**stored, **blobs})
        _evict(path.parent, keep=path, max_bytes=MAX_BYTES)
    except Exception:  # noqa: BLE001  (a full or read-only folder, a lock held too long: no cache)
        pass


def _write(path: Path, key: bytes, blobs: Mapping[str, Any]) -> None:
    payload = pickle.dumps(dict(blobs))
    partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(partial, "wb") as file:
        file.write(MAGIC + _mac(key, payload) + payload)
    os.replace(partial, path)  # readers see a whole entry or none


class _FirstCallGuard:
    """A loaded program whose first call, if it fails, warns, compiles the program afresh and calls that.

    The arguments of the first call are copied before it, since a failed call may have consumed donated
    buffers. After one successful call the loaded program is trusted.
    """

    def __init__(self, name: str, program: Any, lower: Callable[[], Any]):
        self.name, self.program, self.lower, self.checked = name, program, lower, False

    def __call__(self, *args):
        if self.checked:
            return self.program(*args)
        spare = jax.tree.map(lambda leaf: leaf.copy() if isinstance(leaf, jax.Array) else leaf, args)
        try:
            outputs = self.program(*args)
            jax.block_until_ready(outputs)
        except jax.errors.JaxRuntimeError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _warn(f"a cached program ({self.name}) failed to run ({first_line}); compiling it")
            self.program = self.lower().compile()
            outputs = self.program(*spare)
        self.checked = True
        return outputs


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
            entry.with_name(f"{entry.name}.lock").unlink(missing_ok=True)
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
      `({name: compiled program}, loaded)`; `loaded` is True when nothing was compiled (a loaded program
      is wrapped so that a failure of its first call compiles it instead). Programs the entry lacks are
      compiled and added to it, if XLA compiled them here (not JAX's cache). Tracing is
      serial (it holds the GIL); XLA compiles each program in a thread of its own as soon as it is
      traced, while the next one is traced: put the longest compile first.
    """
    secret = _secret(cache_dir) if cache_dir is not None and key is not None else None
    path = cache_dir / f"{key}.programs" if secret is not None else None
    blobs, loaded = _load(path, secret, devices) if path is not None else ({}, {})
    programs = {name: _FirstCallGuard(name, program, lowerers[name]) for name, program in loaded.items()}
    missing = [name for name in lowerers if name not in programs]
    if not missing:
        return programs, True
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(missing)) as pool:
        futures = {name: pool.submit(_compile_here, lowerers[name]()) for name in missing}
        compiled = {name: future.result() for name, future in futures.items()}
    programs.update({name: program for name, (program, _) in compiled.items()})
    try:
        fresh = {name: serialize_executable.serialize(program) for name, (program, is_fresh) in compiled.items()
                 if is_fresh}
    except Exception:  # noqa: BLE001  (a backend that cannot serialize: no cache)
        fresh = {}
    if path is not None and fresh:
        _store(path, secret, {**blobs, **fresh})  # the loaded ones as they were read, never re-serialized
    return programs, False
