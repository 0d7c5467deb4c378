"""Every discrete-action gymnax environment trains through the CLI on 2 CPU devices, and on 1 device
one environment of each observation kind.

A run on one device is the same program as on two, with a mesh of one and no collectives, and an env's
own code runs alike on each device. What the trainer builds per env follows from its observations: the
Q-network from their rank (a convolutional one for images) and the replay buffer's layout from their
dtype (float32 rows packed, others stored field by field). So every id trains on 2 devices, and on 1
device the ids in ONE_DEVICE, which cover every (rank, dtype) that gymnax's discrete envs have (checked).

Each device count is one subprocess that calls `jaxdqn.train.main` once per env id with a tiny budget
(see RUN_ENVS): one Python start-up for all the envs. The two subprocesses run side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys

from jaxdqn.registry import gymnax, spaces  # gymnax as jaxdqn imports it, and its spaces
from tests.conftest import FAST_COMPILE, ROOT, subprocess_env

# gymnax downloads MNIST for this env. It passes if it trains (the download worked, or the data is in
# /tmp/mnist already) or if, the download failing (no internet, as on the machines this was written on),
# it stops with the one-line error of `jaxdqn.registry._make_gymnax`, exit 2.
NEEDS_DOWNLOAD = "MNISTBandit-bsuite"

# argv: number of devices, log folder, env ids. Prints one JSON line: {env id: [exit code, stderr]}.
RUN_ENVS = """
import contextlib, io, json, sys, traceback
from jaxdqn.train import main
devices, log_root, results = sys.argv[1], sys.argv[2], {}
for name in sys.argv[3:]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(["--env", name, "--num_envs", "4", "--total_steps", "64", "--chunk_steps", "32",
                         "--buffer_size", "32", "--batch_size", "8", "--updates_per_step", "1",
                         "--learning_starts", "16", "--eval_frequency", "64", "--eval_episodes", "2",
                         "--hidden_sizes", "16", "--num_devices", devices, "--no_compile_cache", "--quiet",
                         "--log_dir", f"{log_root}/{name}"])
        except BaseException:  # noqa: BLE001  (reported for this env; the next ones still run)
            traceback.print_exc()
            code = "exception"
    results[name] = [code, stderr.getvalue()]
print(json.dumps(results))
"""


# One env per observation kind (rank, dtype), the cheapest of its kind to compile: these also train on 1 device.
ONE_DEVICE = ("CartPole-v1", "Catch-bsuite", "Breakout-MinAtar", "FourRooms-misc", "FrozenLake-misc")


def discrete_action_ids() -> tuple[list[str], dict[str, tuple[int, str]]]:
    """gymnax's ids whose action space is discrete, in gymnax's order, and each buildable one's observation kind."""
    import jax

    ids, kinds = [], {}
    for name in gymnax.registered_envs:
        if name == NEEDS_DOWNLOAD:  # a 10-armed bandit; not built here, which would download MNIST
            ids.append(name)
            continue
        env, params = gymnax.make(name)
        if isinstance(env.action_space(params), spaces.Discrete):
            ids.append(name)
            obs, _ = jax.eval_shape(env.reset, jax.random.key(0), params)  # traced only: nothing runs
            kinds[name] = (len(env.observation_space(params).shape), obs.dtype.name)
    return ids, kinds


def test_every_discrete_gymnax_env_trains_on_two_devices_and_each_observation_kind_on_one(tmp_path):
    names, kinds = discrete_action_ids()
    assert {"CartPole-v1", "Asterix-MinAtar", "Catch-bsuite", "FrozenLake-misc"} <= set(names)
    assert {kinds[name] for name in ONE_DEVICE} == set(kinds.values()), "a kind of observation without a 1-device run"
    # Compiling is nearly all of this test's time: XLA's CPU backend with its optimization off and without
    # its MLIR fusion emitters compiles these programs in about 40% of the default's CPU time.
    runs = {}
    for devices, ids in ((2, names), (1, list(ONE_DEVICE))):
        env = subprocess_env(XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count={devices}",
                             JAX_PLATFORMS="cpu")
        command = [sys.executable, "-c", RUN_ENVS, str(devices), str(tmp_path / str(devices)), *ids]
        runs[devices] = (ids, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True))
    for devices, (ids, process) in runs.items():
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        results = json.loads(stdout.strip().splitlines()[-1])
        assert list(results) == ids
        for name, (code, env_stderr) in results.items():
            if name == NEEDS_DOWNLOAD and code == 2:  # MNIST not downloadable: one line, nothing written
                lines = env_stderr.strip().splitlines()
                assert len(lines) == 1 and "could not load its data" in lines[0], env_stderr
                assert not (tmp_path / str(devices) / name).exists()
                continue
            assert code == 0, f"{name} on {devices} device(s):\n{env_stderr[-3000:]}"
            summary = json.loads((tmp_path / str(devices) / name / "summary.json").read_text())
            assert summary["num_devices"] == devices and summary["total_steps"] == 64
            # 16 vector steps of 4 envs: the first 4 fill learning_starts, then one update each
            assert summary["updates"] == 12 and summary["eval_episodes"] == 2, (name, devices, summary)


def test_continuous_action_env_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxdqn.train", "--env", "Pendulum-v1", "--no_compile_cache",
                             "--log_dir", str(tmp_path / "run")],
                            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("jaxdqn.train: error: environment 'Pendulum-v1' has a Box action space; "
                                     "DQN needs discrete actions")
    assert not (tmp_path / "run").exists()


def test_env_whose_data_cannot_be_downloaded_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    """As MNISTBandit-bsuite offline, wherever this runs: gymnax's download fails with a URLError."""
    import urllib.error

    from jaxdqn.train import main

    def offline(name, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(gymnax, "make", offline)
    code = main(["--env", NEEDS_DOWNLOAD, "--no_compile_cache", "--log_dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "jaxdqn.train: error: environment 'MNISTBandit-bsuite' could not load its data (URLError: <urlopen error "
        "no network>); gymnax downloads MNIST into /tmp/mnist on first use; to run offline, put its four .gz files "
        "there"]
    assert not (tmp_path / "run").exists()
