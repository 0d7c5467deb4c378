"""Several devices, one program: 4 CPU devices (XLA's host-platform device count) in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, subprocess_env

FOUR_DEVICES = "--xla_force_host_platform_device_count=4"

PARAMS_IDENTICAL = """
import json, sys
import jax, numpy as np
from jaxdqn.config import TrainConfig
from jaxdqn.parallel import Communicators
from jaxdqn.train import build_program
config = TrainConfig(num_envs=64, total_steps=64 * 48, buffer_size=64 * 16, batch_size=64, updates_per_step=4,
                     learning_starts=256, chunk_steps=64 * 16, hidden_sizes=(32,), sync=sys.argv[1]).validate()
program = build_program(config)
communicators = Communicators(program.mesh)
communicators.wait()
state = program.init(0, config.hparams)
for _ in range(config.num_chunks):
    state, metrics = program.run_chunk(state)
leaves = [np.asarray(leaf) for leaf in jax.tree.leaves((state.params, state.target_params, state.opt_state))]
print(json.dumps({
    "devices": program.num_devices,
    "communicators_ready": communicators.ready,
    "identical": all(bool((leaf == leaf[0]).all()) for leaf in leaves),
    "updates": np.asarray(state.updates).tolist(),
    "envs_differ": bool((np.asarray(state.obs)[0] != np.asarray(state.obs)[1]).any()),
    "buffer_envs": int(state.buffer.transitions.action.shape[2]),
    "params_sum": float(sum(np.asarray(leaf)[0].sum() for leaf in jax.tree.leaves(state.params))),
}))
"""


def train_on_four_devices(sync: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PARAMS_IDENTICAL, sync], cwd=ROOT,
                            env=subprocess_env(XLA_FLAGS=FOUR_DEVICES), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_parameters_identical_on_every_device_after_training():
    report = train_on_four_devices("grads")
    assert report["devices"] == 4
    assert report["communicators_ready"]  # the background all-reduce over the 4 devices summed to 4
    assert report["identical"]
    assert report["updates"] == [(48 - 4) * 4] * 4  # the first 4 of 48 vector steps fill learning_starts
    assert report["envs_differ"]  # each device steps its own environments
    assert report["buffer_envs"] == 16  # each device keeps its own quarter of the buffer


def test_local_sgd_averages_parameters_after_every_vector_step():
    """`--sync params`: each device learns on its own samples; the averages make them agree again."""
    local, synchronous = train_on_four_devices("params"), train_on_four_devices("grads")
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


TWO_PROCESS_WORKER = """
import sys
from jaxdqn import distributed
distributed.initialize_from_argv("worker", sys.argv[1:])
import jax, numpy as np
from jaxdqn import parallel
from jaxdqn.config import TrainConfig
from jaxdqn.parallel import Communicators
from jaxdqn.train import build_program
config = TrainConfig(num_envs=64, total_steps=64 * 32, buffer_size=64 * 16, batch_size=64, updates_per_step=2,
                     learning_starts=256, chunk_steps=64 * 16, hidden_sizes=(16,)).validate()
program = build_program(config)
communicators = Communicators(program.mesh)
communicators.wait()
state = program.init(0, config.hparams)
for _ in range(config.num_chunks):
    state, _ = program.run_chunk(state)
import hashlib
digests = set()  # one digest of the parameter bytes per local device
for position in range(len(jax.local_devices())):
    copy = b"".join(np.asarray(leaf.addressable_shards[position].data).tobytes() for leaf in jax.tree.leaves(state.params))
    digests.add(hashlib.sha256(copy).hexdigest())
print("RESULT", jax.process_index(), jax.process_count(), program.num_devices, ",".join(sorted(digests)),
      int(parallel.first_device(state.updates)))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_one_run_and_agree_on_parameters():
    """Two real processes (2 CPU devices each) join with jax.distributed and train one 4-device program."""
    flags = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2"]
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    workers = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_WORKER, *flags, "--process_id", str(index)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    results = {}
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
        fields = next(line for line in stdout.splitlines() if line.startswith("RESULT")).split()
        results[int(fields[1])] = fields[2:]
    assert set(results) == {0, 1}
    for process_count, devices, _, updates in results.values():
        assert (process_count, devices, updates) == ("2", "4", str((32 - 4) * 2))
    # each process saw one digest for its two devices' copies, and both processes the same one
    assert "," not in results[0][2] and results[0][2] == results[1][2]


def test_distributed_flags_given_partly_are_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "jaxdqn.train", "--num_processes", "2"], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("jaxdqn.train: error: distributed flags given partly: also pass "
                                     "--coordinator_address, --process_id")


def test_two_processes_through_the_command_line_evaluate_and_summarise(tmp_path):
    """`python -m jaxdqn.train` in two processes of one CPU device each: both evaluate, process 0 writes."""
    flags = ["--coordinator_address", f"127.0.0.1:{_free_port()}", "--num_processes", "2", "--env", "cartpole",
             "--num_envs", "32", "--batch_size", "64", "--total_steps", "2048", "--buffer_size", "1024",
             "--chunk_steps", "512", "--eval_frequency", "1024", "--eval_episodes", "8", "--hidden_sizes", "16",
             "--learning_starts", "64", "--quiet", "--compile_cache", str(tmp_path / "cache"),
             "--log_dir", str(tmp_path / "run")]
    workers = [subprocess.Popen([sys.executable, "-m", "jaxdqn.train", *flags, "--process_id", str(index)], cwd=ROOT,
                                env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(2)]
    outputs = [worker.communicate(timeout=180) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_devices"] == 2 and summary["total_steps"] == 2048
    assert summary["eval_episodes"] == 8 and summary["eval_return_mean"] > 0
    assert "eval return" in outputs[0][0] and "eval return" not in outputs[1][0]  # only process 0 prints
