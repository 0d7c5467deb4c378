"""Several devices, one program: 4 CPU devices (XLA's host-platform device count) in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import CHEAP_COMPILE, ROOT, cheap_compile_env, subprocess_env

FOUR_DEVICES = f"--xla_force_host_platform_device_count=4 {CHEAP_COMPILE}"

# argv: --sync modes. Trains the same run once per mode; prints one JSON line per mode.
PARAMS_IDENTICAL = """
import json, sys
import jax, numpy as np
from jaxdqn.config import TrainConfig
from jaxdqn.parallel import Communicators
from jaxdqn.train import build_program
for sync in sys.argv[1:]:
    config = TrainConfig(num_envs=64, total_steps=64 * 48, buffer_size=64 * 16, batch_size=64, updates_per_step=4,
                         learning_starts=256, chunk_steps=64 * 16, hidden_sizes=(32,), sync=sync).validate()
    program = build_program(config)
    communicators = Communicators(program.mesh)
    communicators.wait()
    state = program.init(0, config.hparams)
    for _ in range(config.num_chunks):
        state, metrics = program.run_chunk(state)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves((state.params, state.target_params, state.opt_state))]
    print(json.dumps({
        "sync": sync,
        "devices": program.num_devices,
        "communicators_ready": communicators.ready,
        "identical": all(bool((leaf == leaf[0]).all()) for leaf in leaves),
        "updates": np.asarray(state.updates).tolist(),
        "envs_differ": bool((np.asarray(state.obs)[0] != np.asarray(state.obs)[1]).any()),
        "buffer_envs": int(state.buffer.transitions.action.shape[2]),
        "params_sum": float(sum(np.asarray(leaf)[0].sum() for leaf in jax.tree.leaves(state.params))),
    }), flush=True)
"""


@pytest.fixture(scope="module")
def four_devices() -> dict[str, dict]:
    """One process with 4 CPU devices trains the same run with `--sync grads` and with `--sync params`."""
    result = subprocess.run([sys.executable, "-c", PARAMS_IDENTICAL, "grads", "params"], cwd=ROOT,
                            env=subprocess_env(XLA_FLAGS=FOUR_DEVICES), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {report["sync"]: report for report in reports}


def test_parameters_identical_on_every_device_after_training(four_devices):
    report = four_devices["grads"]
    assert report["devices"] == 4
    assert report["communicators_ready"]  # the background all-reduce over the 4 devices summed to 4
    assert report["identical"]
    assert report["updates"] == [(48 - 4) * 4] * 4  # the first 4 of 48 vector steps fill learning_starts
    assert report["envs_differ"]  # each device steps its own environments
    assert report["buffer_envs"] == 16  # each device keeps its own quarter of the buffer


def test_local_sgd_averages_parameters_after_every_vector_step(four_devices):
    """`--sync params`: each device learns on its own samples; the averages make them agree again."""
    local, synchronous = four_devices["params"], four_devices["grads"]
    assert local["identical"]
    assert local["updates"] == synchronous["updates"]
    assert abs(local["params_sum"] - synchronous["params_sum"]) > 1e-3  # a different algorithm, not a relabel


def test_four_devices_learn_cartpole(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", "--env", "cartpole", "--num_envs", "4096", "--until_solved",
         "--quiet", "--no_compile_cache", "--log_dir", str(tmp_path)],
        cwd=ROOT, env=subprocess_env(XLA_FLAGS=FOUR_DEVICES), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_devices"] == 4
    assert summary["steps_to_solve"] is not None and summary["eval_return_mean"] >= 475.0


def test_more_devices_than_exist_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "jaxdqn.train", "--n_workers", "8", "--no_compile_cache"],
                            cwd=ROOT, env=subprocess_env(XLA_FLAGS=FOUR_DEVICES), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "jaxdqn.train: error: --num_devices 8 asked for, but only 4 CPU device(s) exist"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_distributed_flags_given_partly_are_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "jaxdqn.train", "--num_processes", "2"], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("jaxdqn.train: error: distributed flags given partly: also pass "
                                     "--coordinator_address, --process_id")


def _metrics_rows(log_dir) -> list[tuple[str, ...]]:
    """metrics.csv's columns that do not depend on the clock, row by row."""
    import csv

    columns = ("env_steps", "updates", "train_return", "eval_return", "loss", "epsilon")
    with open(log_dir / "metrics.csv") as file:
        return [tuple(row[column] for column in columns) for row in csv.DictReader(file)]


def test_two_processes_of_two_devices_train_as_one_process_of_four(tmp_path):
    """`python -m jaxdqn.train` in two processes of two CPU devices each (jax.distributed): one 4-device run, which
    process 0 alone prints and writes, and whose every chunk's metrics and final evaluation are those of one
    process driving four devices with the same flags.

    The metrics average the losses and sum the episodes of all four devices, so a process whose parameters,
    environments or samples drifted from the one-process run (gradients not averaged across the processes, another
    device's random streams) would show here; the one-process run's devices hold identical parameters
    (`test_parameters_identical_on_every_device_after_training`).
    """
    flags = ["--env", "cartpole", "--num_envs", "64", "--batch_size", "64", "--total_steps", "2048",
             "--buffer_size", "1024", "--chunk_steps", "512", "--eval_frequency", "1024", "--eval_episodes", "8",
             "--hidden_sizes", "16", "--learning_starts", "64", "--updates_per_step", "2", "--quiet"]
    distributed = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2",
                   "--compile_cache", str(tmp_path / "cache"), "--log_dir", str(tmp_path / "run")]
    two_devices = cheap_compile_env(2)
    workers = [subprocess.Popen([sys.executable, "-m", "jaxdqn.train", *flags, *distributed, "--process_id",
                                 str(index)], cwd=ROOT, env=two_devices, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    one_process = subprocess.Popen([sys.executable, "-m", "jaxdqn.train", *flags, "--no_compile_cache",
                                    "--log_dir", str(tmp_path / "one_process")], cwd=ROOT,
                                   env=subprocess_env(XLA_FLAGS=FOUR_DEVICES), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=300) for process in (*workers, one_process)]
    for process, (_, stderr) in zip((*workers, one_process), outputs):
        assert process.returncode == 0, stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["num_devices"], summary["total_steps"], summary["eval_episodes"]) == (4, 2048, 8)
    assert summary["updates"] == (32 - 1) * 2  # 32 vector steps, the first fills learning_starts; 2 updates each
    assert "eval return" in outputs[0][0] and "eval return" not in outputs[1][0]  # only process 0 prints
    reference = json.loads((tmp_path / "one_process" / "summary.json").read_text())
    assert reference["num_devices"] == 4
    assert _metrics_rows(tmp_path / "run") == _metrics_rows(tmp_path / "one_process")
    for key in ("updates", "eval_return_mean", "eval_return_std", "eval_length_mean"):
        assert summary[key] == reference[key], key
