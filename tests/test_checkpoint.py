"""Orbax checkpoints: save and restore, resume (also after SIGKILL), the evaluate CLI, and bad input.

Most tests share one uninterrupted reference run (`reference`), trained once in a subprocess with a
checkpoint every 16 chunks; the other runs resume from its checkpoints and must end bit-identical
to it. Subprocesses share one compilation cache, so an identical program compiles once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdqn import checkpoint
from jaxdqn.registry import ConfigError
from tests.conftest import CHEAP_COMPILE, ROOT, cheap_compile_env, subprocess_env

# 16 envs x 4 vector steps = 64 env steps per chunk; 64 chunks.
TINY = ["--env", "cartpole", "--num_envs", "16", "--hidden_sizes", "16", "--chunk_steps", "64",
        "--total_steps", "4096", "--buffer_size", "256", "--batch_size", "32", "--updates_per_step", "2",
        "--learning_starts", "64", "--eps_decay_steps", "1024", "--eval_frequency", "1024",
        "--eval_episodes", "8", "--quiet"]
TOTAL_STEPS = 4096
STEPS_PER_CHUNK = 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


def run_cli(module: str, *args, cache: Path | None = None, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    cache_flags = ["--compile_cache", str(cache)] if cache is not None else ["--no_compile_cache"]
    return subprocess.run([sys.executable, "-m", module, *map(str, args), *cache_flags], cwd=ROOT,
                          env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)




def train_cli(*args, cache: Path | None = None, **env) -> subprocess.CompletedProcess:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {CHEAP_COMPILE}".strip()
    return run_cli("jaxdqn.train", *args, cache=cache, **env)


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@dataclasses.dataclass
class Run:
    checkpoints: Path
    log_dir: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Run:
    """The uninterrupted run: replay buffer saved, checkpoints every 16 chunks, all four kept."""
    root = tmp_path_factory.mktemp("reference")
    run = Run(root / "ckpt", root / "log")
    check_ok(train_cli(*TINY, "--log_dir", run.log_dir, "--save_model", run.checkpoints, "--save_buffer",
                       "--checkpoint_frequency", 16, "--keep_checkpoints", 4, cache=cache_dir))
    return run


def saved_state(directory: Path, step: int) -> dict:
    """A checkpoint's `state` item as a nested dict of numpy arrays (PRNG keys as their raw data)."""
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return jax.tree.map(_raw, restored.state)


def _raw(leaf) -> np.ndarray:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def assert_trees_equal(a, b, skip: tuple[str, ...] = ()) -> None:
    """Bit-identical leaves, compared by path (paths containing a `skip` word are left out)."""
    flat_a = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(a)}
    flat_b = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(b)}
    keep = lambda path: not any(word in path for word in skip)  # noqa: E731
    assert sorted(filter(keep, flat_a)) == sorted(filter(keep, flat_b))
    differing = [path for path in flat_a if keep(path) and not np.array_equal(_raw(flat_a[path]), _raw(flat_b[path]))]
    assert not differing, f"leaves differ: {differing}"


def read_rows(log_dir: Path) -> list[dict[str, str]]:
    lines = (log_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def deterministic_columns(rows: list[dict[str, str]]) -> list[tuple]:
    return [(row["env_steps"], row["updates"], row["train_return"], row["eval_return"], row["loss"], row["epsilon"])
            for row in rows]


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders` with its size and modification time, to show that nothing changed."""
    files = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                stat = path.stat()
                files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


def tiny_config(**overrides):
    from jaxdqn.config import TrainConfig

    values = dict(env="CartPole-v1", num_envs=16, total_steps=256, buffer_size=256, batch_size=32, updates_per_step=2,
                  learning_starts=32, chunk_steps=64, eval_episodes=8, hidden_sizes=(16,), eps_decay_steps=256)
    values.update(overrides)
    return TrainConfig(**values).validate()


# Save and restore, in process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_program():
    """`tiny_config()` and its program, compiled once for the in-process tests."""
    from jaxdqn.train import build_program

    config = tiny_config()
    return config, build_program(config)


def initial_state(config, program, seed: int):
    return program.init(np.int32(seed), config.hparams)


def one_chunk_state(config, program, seed: int = 3):
    """A state after one chunk (4 iterations of 16 envs: step 64), its replay buffer partly filled."""
    state, _ = program.run_chunk(initial_state(config, program, seed))
    return state


def tiny_saver(directory: Path, config, save_buffer: bool = False) -> checkpoint.Checkpointer:
    return checkpoint.Checkpointer(checkpoint.CheckpointOptions(directory, save_buffer=save_buffer), config,
                                   num_devices=1, obs_shape=(4,), num_actions=2)


def test_save_then_restore_is_bit_identical_and_gives_the_same_greedy_actions(tiny_program, tmp_path):
    import jaxdqn
    from jaxdqn import parallel

    config, program = tiny_program
    state = one_chunk_state(config, program)
    for save_buffer in (True, False):
        directory = tmp_path / f"buffer_{save_buffer}"
        saver = tiny_saver(directory, config, save_buffer)
        step = saver.save(state, rows=[{"env_steps": 64, "loss": float("nan")}], solved_at=None)
        saver.close()
        assert step == 64 and checkpoint.complete_steps(directory) == [64]

        found = checkpoint.find(directory)
        assert found.config == config and found.step == 64 and found.iteration == 4
        assert found.meta["rows"] == [{"env_steps": 64, "loss": None}]
        template = initial_state(config, program, seed=99)  # other params, keys, envs
        restored = checkpoint.restore_state(found, template, num_devices=1)
        if save_buffer:
            assert_trees_equal(restored, state)
            assert int(parallel.first_device(restored.buffer.filled_rows)) == 4
        else:  # everything but the buffer, which restarts empty
            assert_trees_equal(restored, state, skip=(".buffer",))
            assert int(parallel.first_device(restored.buffer.filled_rows)) == 0

        policy, loaded_config = jaxdqn.load_policy(directory)
        assert loaded_config == config
        obs = parallel.first_device(state.obs)  # [16, 4]
        expected = jnp.argmax(program.dqn.network.apply(parallel.first_device(state.params), obs), axis=-1)
        np.testing.assert_array_equal(policy(obs), expected)
        np.testing.assert_array_equal(jax.jit(policy)(obs), expected)  # jittable


def test_a_buffer_saved_field_by_field_by_format_2_resumes_packed(tiny_program, tmp_path):
    """Format 2 saved each field of the buffer apart; restoring packs it into this version's layout."""
    config, program = tiny_program
    state = one_chunk_state(config, program)
    assert state.buffer.layout is not None  # CartPole's float32 observations are packed
    by_field = state.replace(buffer=state.buffer.replace(data=state.buffer.transitions, layout=None))
    saver = tiny_saver(tmp_path / "older", config, save_buffer=True)
    saver.save(by_field, rows=[], solved_at=None)
    saver.close()
    for meta_file in (tmp_path / "older").glob("*/meta/metadata"):  # as format 2 wrote its meta
        meta_file.write_text(meta_file.read_text().replace(f'"format": {checkpoint.FORMAT_VERSION}', '"format": 2'))
    found = checkpoint.find(tmp_path / "older")
    assert found.meta["format"] == 2
    restored = checkpoint.restore_state(found, initial_state(config, program, seed=99), num_devices=1)
    assert restored.buffer.layout == state.buffer.layout
    assert_trees_equal(restored, state)


def test_save_returns_once_copied_to_host_and_another_thread_writes_in_order(tiny_program, tmp_path, monkeypatch):
    config, program = tiny_program
    state = one_chunk_state(config, program)
    expected = jax.tree.map(lambda leaf: np.array(_raw(leaf)), state)  # copies: the next chunk donates `state`
    directory = tmp_path / "ckpt"
    saver = tiny_saver(directory, config, save_buffer=True)
    orbax_save, release = saver.manager.save, threading.Event()
    writes = []  # (step, thread, whether the test released the write): the writes wait for the test

    def held_save(step, *args, **kwargs):
        writes.append((step, threading.current_thread(), release.wait(timeout=20)))
        return orbax_save(step, *args, **kwargs)

    monkeypatch.setattr(saver.manager, "save", held_save)
    try:
        assert saver.save(state, rows=[], solved_at=None) == 64
        state, _ = program.run_chunk(state)  # donates the saved state's buffers while its write waits
        assert saver.save(state, rows=[], solved_at=None) == 128
        assert saver.saved_steps == [64, 128] and checkpoint.complete_steps(directory) == []
    finally:
        release.set()
        saver.close()
    assert [step for step, _, _ in writes] == [64, 128]
    assert all(thread is not threading.current_thread() and released for _, thread, released in writes)
    assert checkpoint.complete_steps(directory) == [64, 128]
    template = initial_state(config, program, seed=99)
    assert_trees_equal(checkpoint.restore_state(checkpoint.find(directory, step=64), template, 1), expected)


def test_a_failed_background_write_is_raised_by_the_next_save_or_by_close(tiny_program, tmp_path, monkeypatch):
    config, program = tiny_program
    state = one_chunk_state(config, program)

    def failing_save(step, *args, **kwargs):
        raise OSError(f"disk full at step {step}")

    saver = tiny_saver(tmp_path / "next_save", config)
    monkeypatch.setattr(saver.manager, "save", failing_save)
    assert saver.save(state, rows=[], solved_at=None) == 64  # the write fails later, on the writer thread
    concurrent.futures.wait(saver.pending_writes)
    with pytest.raises(OSError, match="disk full at step 64"):
        saver.save(state, rows=[], solved_at=None)
    saver.close()  # the error was raised once; nothing is left to write
    assert saver.saved_steps == [64] and checkpoint.complete_steps(tmp_path / "next_save") == []

    saver = tiny_saver(tmp_path / "close", config)
    orbax_close, closed = saver.manager.close, []

    def recorded_close():
        closed.append(True)
        orbax_close()

    monkeypatch.setattr(saver.manager, "save", lambda step, *args, **kwargs: False)  # Orbax declines
    monkeypatch.setattr(saver.manager, "close", recorded_close)
    assert saver.save(state, rows=[], solved_at=None) == 64
    with pytest.raises(RuntimeError, match="declined to save step 64"):
        saver.close()
    assert closed == [True]  # the manager is released all the same


def test_unfinished_save_is_never_picked_up_and_is_cleaned_on_resume(reference, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(reference.checkpoints, directory)
    # What a run killed mid-save leaves: a later step still under Orbax's temporary name, half written.
    unfinished = directory / f"{TOTAL_STEPS + 64}{checkpoint.TMP_SUFFIX}"
    shutil.copytree(directory / str(TOTAL_STEPS), unfinished)
    for data in (unfinished / "state" / "d").iterdir():
        data.write_bytes(data.read_bytes()[:10])
    found = checkpoint.find(directory)
    assert found.step == TOTAL_STEPS and checkpoint.complete_steps(directory) == [1024, 2048, 3072, 4096]
    # Resuming into the same folder is allowed and removes the unfinished save.
    assert checkpoint.check_save_dir(directory, resume=found) == [unfinished]
    saver = checkpoint.Checkpointer(checkpoint.CheckpointOptions(directory), found.config, num_devices=1,
                                    obs_shape=(4,), num_actions=2, resume=found)
    saver.close()
    assert not unfinished.exists()
    assert checkpoint.complete_steps(directory) == [1024, 2048, 3072, 4096]

    only_unfinished = tmp_path / "only_unfinished"
    only_unfinished.mkdir()
    shutil.move(str(directory / "1024"), only_unfinished / f"1024{checkpoint.TMP_SUFFIX}")
    with pytest.raises(ConfigError, match="no complete checkpoint.*unfinished"):
        checkpoint.find(only_unfinished)


def test_save_dir_rules(reference, tmp_path):
    found = checkpoint.find(reference.checkpoints, step=2048)
    latest = checkpoint.find(reference.checkpoints)
    assert checkpoint.check_save_dir(tmp_path / "new") == []
    assert checkpoint.check_save_dir(reference.checkpoints, resume=latest) == []
    with pytest.raises(ConfigError, match="after the resumed step 2048"):
        checkpoint.check_save_dir(reference.checkpoints, resume=found)
    later = checkpoint.check_save_dir(reference.checkpoints, resume=found, overwrite=True)
    assert sorted(path.name for path in later) == ["3072", "4096"]
    with pytest.raises(ConfigError, match="another run"):
        checkpoint.check_save_dir(reference.checkpoints)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        checkpoint.check_save_dir(tmp_path)
    assert checkpoint.check_save_dir(tmp_path, overwrite=True) == []  # the user's files are never removed


# Resume ------------------------------------------------------------------------------------------

def test_reference_run_checkpoints_every_16_chunks_and_at_the_end(reference):
    assert checkpoint.complete_steps(reference.checkpoints) == [1024, 2048, 3072, 4096]
    found = checkpoint.find(reference.checkpoints)
    assert found.buffer_saved and found.meta["num_devices"] == 1 and found.meta["log_dir"] == str(reference.log_dir)
    assert [row["env_steps"] for row in found.meta["rows"]] == list(range(64, TOTAL_STEPS + 1, 64))
    state = saved_state(reference.checkpoints, TOTAL_STEPS)
    summary = json.loads((reference.log_dir / "summary.json").read_text())
    assert int(state["iteration"][0]) * 16 == TOTAL_STEPS == summary["total_steps"]
    assert int(state["updates"][0]) == summary["updates"]
    assert summary["last_checkpoint_step"] == TOTAL_STEPS and summary["resumed_from_step"] is None


@pytest.fixture(scope="module")
def resumed(reference, tmp_path_factory, cache_dir) -> Run:
    """The reference resumed from its 2048-step checkpoint into new folders, saving without the buffer."""
    root = tmp_path_factory.mktemp("resumed")
    run = Run(root / "ckpt", root / "log")
    check_ok(train_cli("--load_model", reference.checkpoints, "--load_step", 2048, "--save_model", run.checkpoints,
                       "--log_dir", run.log_dir, "--no-save_buffer", "--quiet", cache=cache_dir))
    return run


def test_resume_with_buffer_ends_bit_identical_to_the_uninterrupted_run(reference, resumed):
    assert checkpoint.complete_steps(resumed.checkpoints) == [3072, 4096]  # the frequency is inherited
    final = saved_state(resumed.checkpoints, TOTAL_STEPS)
    assert final["buffer"] is None  # saved without it
    assert_trees_equal(final, saved_state(reference.checkpoints, TOTAL_STEPS), skip=(".buffer", "['buffer']"))
    # metrics.csv holds the rows before the resume too, and every row matches the uninterrupted run's
    assert deterministic_columns(read_rows(resumed.log_dir)) == deterministic_columns(read_rows(reference.log_dir))
    summary = json.loads((resumed.log_dir / "summary.json").read_text())
    assert summary["total_steps"] == TOTAL_STEPS and summary["resumed_from_step"] == 2048


def test_resume_without_buffer_refills_it_and_schedules_continue(reference, resumed, tmp_path, cache_dir):
    log_dir = tmp_path / "log"
    check_ok(train_cli("--load_model", resumed.checkpoints, "--load_step", 3072, "--log_dir", log_dir,
                       "--save_model", tmp_path / "ckpt", cache=cache_dir))
    rows = read_rows(log_dir)[3072 // STEPS_PER_CHUNK:]
    reference_rows = read_rows(reference.log_dir)[3072 // STEPS_PER_CHUNK:]
    assert [row["env_steps"] for row in rows] == [row["env_steps"] for row in reference_rows]
    assert [row["epsilon"] for row in rows] == [row["epsilon"] for row in reference_rows]  # same schedule
    # Learning waits until the refilled buffer holds learning_starts (64) env steps = 4 vector steps of
    # 16 envs before a vector step: the first chunk after the resume (4 vector steps, 2 updates each)
    # fills it and does not learn, the next learns in all of its steps.
    updates_at_resume = int(read_rows(reference.log_dir)[3072 // STEPS_PER_CHUNK - 1]["updates"])
    updates_per_chunk, first_chunk_updates = 4 * 2, 0
    assert [int(row["updates"]) for row in rows] == [
        updates_at_resume + first_chunk_updates + updates_per_chunk * chunk for chunk in range(len(rows))]
    final = saved_state(tmp_path / "ckpt", TOTAL_STEPS)
    assert int(final["updates"][0]) == int(reference_rows[-1]["updates"]) - (updates_per_chunk - first_chunk_updates)
    counts = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(final["opt_state"])
              if "count" in jax.tree_util.keystr(path)]
    assert counts and all(int(count[0]) == int(final["updates"][0]) for count in counts)  # lr schedule continues


def test_sigkill_mid_run_then_resume_finishes_like_the_uninterrupted_run(reference, tmp_path, cache_dir):
    directory, log_dir = tmp_path / "ckpt", tmp_path / "log"
    command = [sys.executable, "-m", "jaxdqn.train", *TINY, "--log_dir", str(log_dir), "--save_model", str(directory),
               "--checkpoint_frequency", "1", "--save_buffer", "--compile_cache", str(cache_dir)]
    process = subprocess.Popen(command, cwd=ROOT, env=cheap_compile_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600  # the first checkpoint, however loaded the machine
        while not checkpoint.complete_steps(directory) and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # a few more chunks and saves; the kill lands at an arbitrary point
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    steps_before = checkpoint.complete_steps(directory)
    assert steps_before and steps_before[-1] < TOTAL_STEPS
    assert not (log_dir / "summary.json").exists()

    check_ok(train_cli("--load_model", directory, "--checkpoint_frequency", 1000, cache=cache_dir))
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["total_steps"] == TOTAL_STEPS and summary["resumed_from_step"] == steps_before[-1]
    steps_after = checkpoint.complete_steps(directory)
    # The resumed run saves only at the end (frequency 1000); --keep_checkpoints 3 (default) keeps the last three.
    assert steps_after == sorted(steps_before + [TOTAL_STEPS])[-3:]
    assert not [path for path in directory.iterdir() if checkpoint.TMP_SUFFIX in path.name]
    assert_trees_equal(saved_state(directory, TOTAL_STEPS), saved_state(reference.checkpoints, TOTAL_STEPS))
    assert deterministic_columns(read_rows(log_dir)) == deterministic_columns(read_rows(reference.log_dir))


# Evaluate ----------------------------------------------------------------------------------------

def test_evaluate_cli_end_to_end(reference, tmp_path, cache_dir):
    from jaxdqn.evaluate import evaluate

    before = snapshot(reference.checkpoints)
    out = tmp_path / "results.json"
    result = run_cli("jaxdqn.evaluate", "--load_model", reference.checkpoints, "--environment", "CartPole-v1",
                     "--episodes", 12, "--seed", 5, "--load_step", 3072, "--out", out, cache=cache_dir)
    check_ok(result)
    assert "return" in result.stdout and "mean length" in result.stdout and "12 greedy episodes" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["episodes"] == 12 == len(saved["returns"]) and saved["checkpoint_step"] == 3072
    assert saved["return_min"] <= saved["return_mean"] <= saved["return_max"]
    assert saved["return_std"] == pytest.approx(float(np.std(saved["returns"])))
    assert snapshot(reference.checkpoints) == before  # --out elsewhere: the checkpoint folder is untouched
    # the same numbers in process: restoring and evaluating is deterministic
    again = evaluate(reference.checkpoints, step=3072, episodes=12, seed=5)
    assert again["returns"] == saved["returns"] and again["lengths"] == saved["lengths"]

    check_ok(run_cli("jaxdqn.evaluate", "--load_model", reference.checkpoints, cache=cache_dir))
    default = json.loads((reference.checkpoints / "eval.json").read_text())
    assert default["checkpoint_step"] == TOTAL_STEPS and default["episodes"] == 8  # the run's eval_episodes
    (reference.checkpoints / "eval.json").unlink()


def test_four_device_run_resumes_on_four_like_the_uninterrupted_run_evaluates_on_one_not_resumes(tmp_path, cache_dir,
                                                                                                capfd):
    """Trained and resumed in 4-device processes; evaluated, and refused a resume, in this one-device process."""
    from jaxdqn.evaluate import main as evaluate_main
    from jaxdqn.train import main as train_main

    four_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    directory = tmp_path / "ckpt"
    check_ok(train_cli(*TINY, "--total_steps", 512, "--save_model", directory, "--log_dir", tmp_path / "log",
                       "--save_buffer", "--checkpoint_frequency", 4, cache=cache_dir, **four_devices))
    assert checkpoint.complete_steps(directory) == [256, 512]
    assert checkpoint.find(directory).meta["num_devices"] == 4
    resumed = tmp_path / "resumed"
    check_ok(train_cli("--load_model", directory, "--load_step", 256, "--save_model", resumed,
                       "--log_dir", tmp_path / "resumed_log", cache=cache_dir, **four_devices))
    assert checkpoint.complete_steps(resumed) == [512]
    assert_trees_equal(saved_state(resumed, 512), saved_state(directory, 512))
    assert evaluate_main(["--load_model", str(directory), "--no_compile_cache"]) == 0
    assert json.loads((directory / "eval.json").read_text())["checkpoint_step"] == 512
    before = snapshot(tmp_path)
    capfd.readouterr()
    assert train_main(["--load_model", str(directory), "--total_steps", "1024", "--no_compile_cache"]) == 2
    assert capfd.readouterr().err.splitlines() == [
        "jaxdqn.train: error: the checkpoint was saved by a run on 4 device(s), this run has 1; resume on 4 "
        "(evaluating it needs only one)"]
    assert snapshot(tmp_path) == before


# Bad input: one line on stderr, exit code 2, nothing written ------------------------------------

@pytest.fixture(scope="module")
def damaged(reference, tmp_path_factory) -> dict[str, Path]:
    """Copies of the reference checkpoints, each damaged in one way."""
    root = tmp_path_factory.mktemp("damaged")
    folders = {}
    for name in ("truncated_params", "deleted_manifest", "empty", "foreign", "format_1"):
        folders[name] = root / name
    shutil.copytree(reference.checkpoints, folders["truncated_params"])
    for data in (folders["truncated_params"] / str(TOTAL_STEPS) / "params" / "d").iterdir():
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    shutil.copytree(reference.checkpoints, folders["deleted_manifest"])
    (folders["deleted_manifest"] / str(TOTAL_STEPS) / "state" / "manifest.ocdbt").unlink()
    shutil.copytree(reference.checkpoints, folders["format_1"])  # as an older jaxdqn wrote its meta
    for meta_file in folders["format_1"].glob("*/meta/metadata"):
        meta_file.write_text(meta_file.read_text().replace(f'"format": {checkpoint.FORMAT_VERSION}', '"format": 1'))
    folders["empty"].mkdir()
    folders["foreign"].mkdir()
    (folders["foreign"] / "notes.txt").write_text("not a checkpoint")
    return folders


def test_a_checkpoint_of_the_older_format_still_evaluates(reference, damaged):
    from jaxdqn.evaluate import evaluate

    older = evaluate(damaged["format_1"], step=3072, episodes=6, seed=2)
    assert older["returns"] == evaluate(reference.checkpoints, step=3072, episodes=6, seed=2)["returns"]


BAD_INPUTS = {
    "evaluate_missing_folder": (
        "jaxdqn.evaluate", lambda ref, bad, tmp: ["--load_model", tmp / "missing"], "no such folder"),
    "evaluate_no_checkpoint": (
        "jaxdqn.evaluate", lambda ref, bad, tmp: ["--load_model", bad["empty"]], "holds no complete checkpoint"),
    "evaluate_env_mismatch": (
        "jaxdqn.evaluate", lambda ref, bad, tmp: ["--load_model", ref.checkpoints, "--env", "Acrobot-v1"],
        "does not fit Acrobot-v1"),
    "evaluate_truncated": (
        "jaxdqn.evaluate", lambda ref, bad, tmp: ["--load_model", bad["truncated_params"]],
        "corrupt or truncated.*--load_step 3072"),
    "evaluate_missing_step": (
        "jaxdqn.evaluate", lambda ref, bad, tmp: ["--load_model", ref.checkpoints, "--load_step", 100],
        "no checkpoint at step 100"),
    "train_deleted_file": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", bad["deleted_manifest"], "--total_steps", 8192],
        "corrupt or truncated"),
    "train_save_over_another_run": (
        "jaxdqn.train", lambda ref, bad, tmp: [*TINY, "--save_model", ref.checkpoints, "--log_dir", tmp / "log"],
        "already holds checkpoints of another run"),
    "train_save_into_foreign_folder": (
        "jaxdqn.train", lambda ref, bad, tmp: [*TINY, "--save_model", bad["foreign"], "--log_dir", tmp / "log"],
        "not empty and holds no checkpoints"),
    "train_shape_override": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", ref.checkpoints, "--num_envs", 32,
                                               "--save_model", tmp / "new", "--log_dir", tmp / "log"],
        "--num_envs 32 differs from the checkpoint's 16"),
    "train_env_override": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", ref.checkpoints, "--env", "Acrobot-v1",
                                               "--log_dir", tmp / "log"],
        "--env Acrobot-v1 differs from the checkpoint's CartPole-v1"),
    "train_already_done": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", ref.checkpoints, "--log_dir", tmp / "log"],
        "already at --total_steps 4096"),
    "train_load_step_without_load_model": (
        "jaxdqn.train", lambda ref, bad, tmp: [*TINY, "--load_step", 1024, "--log_dir", tmp / "log"],
        "--load_step needs --load_model"),
    "train_zero_checkpoint_frequency": (
        "jaxdqn.train", lambda ref, bad, tmp: [*TINY, "--save_model", tmp / "new", "--checkpoint_frequency", 0,
                                               "--log_dir", tmp / "log"],
        "--checkpoint_frequency must be positive"),
    "train_resume_older_format": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", bad["format_1"], "--total_steps", 8192,
                                               "--save_model", tmp / "new", "--log_dir", tmp / "log"],
        "checkpoint format 1 comes from an older jaxdqn"),
    "train_missing_folder": (
        "jaxdqn.train", lambda ref, bad, tmp: ["--load_model", tmp / "missing", "--log_dir", tmp / "log"],
        "no such folder"),
}


# Through a real process, whose whole stderr must be the one line (Orbax and the restore are imported and run
# there); the other cases call the module's `main` in this process, from the empty test folder.
IN_A_PROCESS = {"evaluate_truncated", "train_deleted_file"}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, reference, damaged, tmp_path, cache_dir, capfd,
                                                         monkeypatch):
    import importlib
    import re

    module, make_args, message = BAD_INPUTS[case]
    args = make_args(reference, damaged, tmp_path)
    before = snapshot(reference.checkpoints, reference.log_dir, *damaged.values(), tmp_path)
    if case in IN_A_PROCESS:
        result = run_cli(module, *args, cache=cache_dir)
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)  # a default runs/ folder would land here
        capfd.readouterr()
        try:
            code = importlib.import_module(module).main([*map(str, args), "--no_compile_cache"])
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
        stderr = capfd.readouterr().err
    assert code == 2, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(reference.checkpoints, reference.log_dir, *damaged.values(), tmp_path) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no log or checkpoint folder was created
