"""The on-disk cache of compiled programs: a repeated run loads them and trains identically; keys, bad
entries, foreign files and the run sequences that once made it crash all end in a working run."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn import program_cache
from jaxdqn.agent import Trainer
from jaxdqn.train import build_program, train
from tests.conftest import ROOT, cheap_compile_env, subprocess_env


@pytest.fixture(autouse=True)
def without_jax_cache():
    """In-process runs here see no JAX persistent cache that another test may have turned on."""
    before = jax.config.values["jax_enable_compilation_cache"]
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", before)


def run(config, cache_dir):
    return train(config, log_dir=None, show_progress=False, program_cache_dir=cache_dir)


def comparable(summary):
    return {key: summary[key] for key in ("total_steps", "updates", "eval_return_mean", "eval_return_std",
                                          "eval_length_mean")}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A three-chunk run's config and summary, and the cache folder it stored its programs in (tests change copies)."""
    from jaxdqn.config import TrainConfig

    config = TrainConfig(env="CartPole-v1", num_envs=16, total_steps=16 * 4 * 3, buffer_size=256, batch_size=32,
                         updates_per_step=2, learning_starts=64, chunk_steps=16 * 4, eval_frequency=16 * 4,
                         eval_episodes=8, hidden_sizes=(16,), eps_decay_steps=256, target_update_frequency=4).validate()
    cache = tmp_path_factory.mktemp("stored") / "programs"
    before = jax.config.values["jax_enable_compilation_cache"]
    jax.config.update("jax_enable_compilation_cache", False)  # as `without_jax_cache`, which runs after this
    try:
        first = run(config, cache)
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
    return config, cache, first


def copy_of_cache(stored, tmp_path):
    """A copy of the stored run's cache folder (its key file's permissions kept)."""
    return Path(shutil.copytree(stored[1], tmp_path / "programs"))


def test_a_second_run_loads_the_programs_without_tracing_and_trains_identically(stored, tmp_path, monkeypatch):
    config, _, first = stored
    cache = copy_of_cache(stored, tmp_path)
    assert first["programs_loaded"] is False
    assert len(list(cache.glob("*.programs"))) == 1

    traces = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step",
                        lambda self, state, keys=None: traces.append(1) or original(self, state, keys))
    second = run(config, cache)
    assert second["programs_loaded"] is True
    assert traces == []  # nothing was traced
    assert comparable(second) == comparable(first)

    other_seed = run(dataclasses.replace(config, seed=1), cache)  # the seed is an argument, not a constant
    assert other_seed["programs_loaded"] is True
    assert comparable(other_seed) != comparable(first)


def test_the_key_changes_with_what_shapes_the_programs_and_not_with_host_only_settings(small_config):
    def key(config):
        program = build_program(config)
        return program_cache.program_key(config, program.dqn.env, program.dqn.env_params, program.dqn.network,
                                         list(program.mesh.devices.flat))

    base = small_config()
    assert key(base) == key(dataclasses.replace(base, seed=7, log_dir="elsewhere", until_solved=True))
    for change in (dict(num_envs=32), dict(hidden_sizes=(8,)), dict(double=False), dict(total_steps=1024),
                   dict(env="Acrobot-v1")):
        assert key(dataclasses.replace(base, **change)) != key(base), change


def test_the_key_covers_the_environments_source_file():
    from jaxdqn.registry import make_env

    _, env, _ = make_env("CartPole-v1")
    files = {path.name for path in program_cache._source_files([env])}
    assert "cartpole.py" in files and "agent.py" in files


def _signed(cache_dir, payload: bytes) -> bytes:
    """An entry with a valid MAC: what this user's runs would have written."""
    key = (cache_dir / "key").read_bytes()
    return program_cache.MAGIC + program_cache._mac(key, payload) + payload


class _Planted:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_unusable_entry_warns_once_and_is_compiled_again(stored, tmp_path, capfd):
    """Each kind of bad entry in turn: one warning line, a compile as if there were no entry, the entry rewritten."""
    config, _, first = stored
    cache = copy_of_cache(stored, tmp_path)
    (entry,) = cache.glob("*.programs")
    marker = tmp_path / "unpickled"
    planted = pickle.dumps(_Planted(marker))
    damages = {
        "truncated": lambda: entry.read_bytes()[: entry.stat().st_size // 2],
        # authentic, but its executables cannot be loaded by this build
        "another_version": lambda: _signed(cache, pickle.dumps({name: (b"\0" * 64, None, None)
                                                                for name in ("init", "run_chunk", "evaluate")})),
        "planted_pickle": lambda: planted,  # another user's file: no MAC at all
        # a MAC made under another key (another user's cache folder)
        "planted_signed_elsewhere": lambda: program_cache.MAGIC + program_cache._mac(b"k" * 32, planted) + planted,
    }
    for damage, make_bytes in damages.items():
        entry.write_bytes(make_bytes())
        capfd.readouterr()
        again = run(config, cache)
        err = capfd.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("jaxdqn:")]
        assert len(warnings) == 1 and entry.name in warnings[0], (damage, err[-2000:])
        assert not marker.exists(), damage  # nothing was unpickled
        assert again["programs_loaded"] is False, damage
        assert comparable(again) == comparable(first), damage
    assert run(config, cache)["programs_loaded"] is True  # the entry was rewritten


def test_a_key_file_others_can_read_disables_the_cache(stored, tmp_path, capfd):
    config = stored[0]
    cache = copy_of_cache(stored, tmp_path)
    (cache / "key").chmod(0o644)
    capfd.readouterr()
    assert run(config, cache)["programs_loaded"] is False
    assert "readable by its owner alone" in capfd.readouterr().err


def test_a_loaded_program_whose_first_call_fails_is_compiled_again(tmp_path):
    """A real broken executable: on the CPU, one that JAX's own cache loaded serializes without its functions.

    Its first call fails and consumes its donated argument; the guard compiles the program and calls it
    again on a copy of the arguments.
    """
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        def make():  # a fresh jit each time, so that the second compile goes to JAX's cache
            return jax.jit(lambda x: (jnp.arange(x.shape[0]) >> 1).astype(jnp.float32) * x, donate_argnums=0)

        x = jnp.ones(1000)
        make().lower(x).compile()
        from_jax_cache, fresh = program_cache._compile_here(make().lower(x))
        jax_cache_served = not fresh
        reloaded = program_cache.serialize_executable.deserialize_and_load(
            *program_cache.serialize_executable.serialize(from_jax_cache))
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    assert jax_cache_served
    expected = np.asarray((np.arange(1000) >> 1), dtype=np.float32)
    guarded = program_cache._FirstCallGuard("probe", reloaded, lambda: make().lower(jnp.ones(1000)))
    np.testing.assert_array_equal(guarded(jnp.ones(1000)), expected)
    np.testing.assert_array_equal(guarded(jnp.ones(1000)), expected)  # the recompiled program from now on


TINY = ["--env", "cartpole", "--num_envs", "16", "--hidden_sizes", "16", "--chunk_steps", "64",
        "--buffer_size", "256", "--batch_size", "32", "--learning_starts", "64", "--eval_frequency", "128",
        "--eval_episodes", "4", "--quiet"]




def _train(tmp_path, name, *flags, cache="cache", background=False):
    """`python -m jaxdqn.train` with the tiny config, JAX's cache and this cache in `tmp_path/cache`."""
    command = [sys.executable, "-m", "jaxdqn.train", *TINY, "--compile_cache", str(tmp_path / cache),
               "--log_dir", str(tmp_path / "logs" / name), *map(str, flags)]
    env = cheap_compile_env()
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"run {name}: {result.stderr[-3000:]}"
    return json.loads((tmp_path / "logs" / name / "summary.json").read_text())


def test_racing_changing_saving_and_resuming_runs_in_sequence_never_fail(tmp_path):
    """Run sequences that once failed, on one cache: two runs racing to store one entry, then runs whose programs
    came partly from JAX's cache (which once stored executables that could not run), with saves and resumes."""
    # Two runs writing the same entry at once (they once left a partial one): one entry, which first_again loads.
    racers = [_train(tmp_path, name, "--total_steps", 256, "--save_model", tmp_path / name.upper(), background=True)
              for name in ("a", "b")]
    for process in racers:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    assert len(list((tmp_path / "cache" / "programs").glob("*.programs"))) == 1
    _train(tmp_path, "longer", "--total_steps", 384)  # a new chunk; init and evaluation from JAX's cache
    _train(tmp_path, "longer_again", "--total_steps", 384)
    assert _train(tmp_path, "first_again", "--total_steps", 256)["programs_loaded"] is True
    # Resume A longer (a new chunk again), then B, which loads what A's resumed run stored.
    resumed_a = _train(tmp_path, "a_longer", "--total_steps", 512, "--load_model", tmp_path / "A")
    resumed_b = _train(tmp_path, "b_longer", "--total_steps", 512, "--load_model", tmp_path / "B")
    assert resumed_a["total_steps"] == resumed_b["total_steps"] == 512
    for entry in (tmp_path / "cache" / "programs").iterdir():  # what docs/porting.md advises after some edits
        entry.unlink()
    (tmp_path / "cache" / "programs").rmdir()
    _train(tmp_path, "programs_deleted", "--total_steps", 384)
    _train(tmp_path, "programs_deleted_again", "--total_steps", 384)


def test_programs_loaded_on_four_devices_keep_their_devices(tmp_path):
    """The evaluation program runs on one device of four: loaded, it must stay bound to that one."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "jaxdqn.train", "--env", "cartpole", "--num_envs", "16", "--hidden_sizes", "16",
               "--chunk_steps", "64", "--total_steps", "256", "--buffer_size", "256", "--batch_size", "32",
               "--learning_starts", "64", "--eval_frequency", "128", "--eval_episodes", "8", "--quiet",
               "--compile_cache", str(tmp_path / "cache")]
    summaries = []
    four_devices = cheap_compile_env(4)
    for run_index in range(2):
        log_dir = tmp_path / f"run{run_index}"
        result = subprocess.run([*command, "--log_dir", str(log_dir)], cwd=ROOT, capture_output=True, text=True,
                                env=four_devices, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        summaries.append(json.loads((log_dir / "summary.json").read_text()))
    assert [summary["programs_loaded"] for summary in summaries] == [False, True]
    assert summaries[1]["num_devices"] == 4
    assert comparable(summaries[1]) == comparable(summaries[0])


def test_editing_a_helper_module_of_a_ported_env_changes_the_key(small_config, tmp_path, monkeypatch):
    """A port's whole package is in the key, not only the module defining the env class."""
    package = tmp_path / "portpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "physics.py").write_text("GRAVITY = 9.8\n")
    (package / "env.py").write_text(
        "from gymnax.environments.classic_control.cartpole import CartPole\n"
        "from portpkg import physics\n\n\n"
        "class PortedCartPole(CartPole):\n"
        "    gravity = physics.GRAVITY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = small_config(env="portpkg.env:PortedCartPole")

    def key():
        program = build_program(config)
        return program_cache.program_key(config, program.dqn.env, program.dqn.env_params, program.dqn.network,
                                         list(program.mesh.devices.flat))

    before = key()
    assert key() == before
    (package / "physics.py").write_text("GRAVITY = 3.7\n")
    assert key() != before


def test_the_folder_keeps_the_recently_used_entries_within_its_bound(tmp_path):
    """`_evict` deletes the least recently used entries (oldest modification time) beyond the bound."""
    import os

    entries = {}
    for age, name in enumerate(["newest", "recent", "old", "oldest"]):
        entries[name] = tmp_path / f"{name}.programs"
        entries[name].write_bytes(b"x" * 100)
        os.utime(entries[name], (1_000_000 - age * 10, 1_000_000 - age * 10))
    (tmp_path / "notes.txt").write_bytes(b"y" * 1000)  # not an entry: never counted or deleted
    program_cache._evict(tmp_path, keep=entries["oldest"], max_bytes=250)
    left = sorted(path.name for path in tmp_path.iterdir())
    # 400 bytes of entries over a 250-byte bound: "old" goes, then "recent"; "oldest" is the one kept.
    assert left == ["newest.programs", "notes.txt", "oldest.programs"]


def test_a_loaded_entry_counts_as_recently_used(stored, tmp_path):
    import os

    config = stored[0]
    cache = copy_of_cache(stored, tmp_path)
    (entry,) = cache.glob("*.programs")
    os.utime(entry, (1_000_000, 1_000_000))  # as if last used long ago
    assert run(config, cache)["programs_loaded"] is True
    assert entry.stat().st_mtime > 1_000_000


def test_jax_compile_cache_keeps_its_recently_used_entries_within_its_bound(tmp_path):
    """`enable_compile_cache` bounds JAX's own entries too: compiling more programs than fit evicts the oldest."""
    import subprocess
    import sys

    script = """
import sys, jax, jax.numpy as jnp
from jaxdqn.train import enable_compile_cache
enable_compile_cache(sys.argv[1], max_bytes=int(sys.argv[2]))
for power in range(1, 13):  # twelve different programs, each stored on compiling
    jax.jit(lambda x: jnp.sin(x) ** power + jnp.cumsum(x) * power)(jnp.ones(64))
"""
    cache = tmp_path / "xla"

    def entries():  # name -> size, oldest first
        paths = sorted(cache.glob("*-cache"), key=lambda path: path.stat().st_mtime_ns)
        return {path.name: path.stat().st_size for path in paths}

    subprocess.run([sys.executable, "-c", script, str(cache), "-1"], cwd=ROOT, env=subprocess_env(), check=True,
                   timeout=300)  # unbounded: every program is kept
    unbounded = entries()
    assert len(unbounded) >= 12
    bound = 4 * max(unbounded.values())
    for path in cache.iterdir():
        path.unlink()
    subprocess.run([sys.executable, "-c", script, str(cache), str(bound)], cwd=ROOT, env=subprocess_env(), check=True,
                   timeout=300)
    kept = entries()
    assert 1 <= len(kept) < len(unbounded) and sum(kept.values()) <= bound
    assert list(kept) == list(unbounded)[-len(kept):]  # the programs compiled last (same programs, same keys)
