"""Bad input to jaxdqn.check_port and the benchmarks: one line on stderr and exit code 2, before any work;
a benchmark whose every case failed exits 1.

Each case runs the module's `main(argv)` in this process, from an empty folder that must stay empty.
"""

from __future__ import annotations

import importlib

import pytest

# (module, flags, what the one line says, exit code); {tmp} is the test's empty folder.
CASES = [
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--num_envs", "-1"], "--num_envs must be positive, got -1", 2),
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--num_envs", "0"], "--num_envs must be positive, got 0", 2),
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--atol", "nan"], "--atol must be a finite number >= 0, got nan", 2),
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--atol=-1e-5"], "--atol must be a finite number >= 0", 2),
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--episodes", "0"], "--episodes must be positive, got 0", 2),
    ("jaxdqn.check_port", ["--env", "Taxi-v4", "--seed", "-1"], "--seed must be in [0, 2**32), got -1", 2),
    ("benchmarks.classic_dqn", ["--steps", "-1"], "--steps must be positive, got -1", 2),
    ("benchmarks.classic_dqn", ["--steps", "0"], "--steps must be positive, got 0", 2),
    ("benchmarks.classic_dqn", ["--learning_starts", "-5"], "--learning_starts must be >= 0, got -5", 2),
    ("benchmarks.classic_dqn", ["--seed", "-1"], "--seed must be in [0, 2**32)", 2),
    ("benchmarks.throughput", ["--plot_only", "--out", "{tmp}/missing"],
     "--plot_only re-renders {tmp}/missing.json, which cannot be read (FileNotFoundError", 2),
    ("benchmarks.throughput", ["--min_seconds", "nan"], "--min_seconds must be positive, got nan", 2),
    ("benchmarks.throughput", ["--min_seconds", "0"], "--min_seconds must be positive, got 0.0", 2),
    ("benchmarks.throughput", ["--repeats", "0"], "--repeats must be positive, got 0", 2),
    ("benchmarks.throughput", ["--iterations", "-1"], "--iterations must be positive, got -1", 2),
    ("benchmarks.throughput", ["--compare_steps", "0"], "--compare_steps must be positive, got 0", 2),
    ("benchmarks.throughput", ["--classic_steps", "-1"], "--classic_steps must be >= 0, got -1", 2),
    ("benchmarks.throughput", ["--time_budget", "-5"], "--time_budget must be positive, got -5.0", 2),
    ("benchmarks.throughput", ["--env", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.time_to_solve", ["--env", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.time_to_solve", ["--num_envs", "1024", "0"], "--num_envs must be positive, got 0", 2),
    ("benchmarks.quality", ["--envs", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.quality", ["--envs", "CartPole-v1", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.quality", ["--seeds", "0"], "--seeds must be positive, got 0", 2),
    ("benchmarks.scaling", ["--devices", "2"], "--devices 2 asked for, but JAX finds 1 device(s) here", 2),
    ("benchmarks.scaling", ["--devices", "3"], "--devices 3: the strong point's 16384 envs and batch of 256", 2),
    ("benchmarks.scaling", ["--devices", "0"], "--devices must be positive, got 0", 2),
    ("benchmarks.scaling", ["--weak_envs", "64", "-64"], "--weak_envs must be positive, got -64", 2),
    ("benchmarks.scaling", ["--iterations", "32"], "--iterations must be more than 32", 2),
    ("benchmarks.checkpointing", ["--repeats", "0", "--timing_repeats", "0"], "--repeats must be positive, got 0", 2),
    ("benchmarks.checkpointing", ["--timing_repeats", "0"], "--timing_repeats must be positive, got 0", 2),
    ("benchmarks.checkpointing", ["--scratch", "{tmp}/missing"], "--scratch {tmp}/missing: no such folder", 2),
    ("benchmarks.checkpointing", ["--num_devices", "4"], "--num_devices 4 asked for, but only 1 CPU device(s)", 2),
    ("benchmarks.checkpointing", ["--env", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.ports", ["--envs", "Taxi-v4", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.ports", ["--steps", "0"], "--steps must be positive, got 0", 2),
    ("benchmarks.ports", ["--num_envs", "4096", "-4"], "--num_envs must be positive, got -4", 2),
    ("benchmarks.ports", ["--repeats", "0"], "--repeats must be positive, got 0", 2),
    ("benchmarks.ports", ["--reference_steps", "0"], "--reference_steps must be positive, got 0", 2),
    ("benchmarks.ports", ["--seed", "-3"], "--seed must be in [0, 2**32), got -3", 2),
    ("benchmarks.tune_defaults", ["--seeds", "0"], "--seeds must be positive, got 0", 2),
    ("benchmarks.tune_defaults", ["--env", "NoSuch-v0"], "unknown environment 'NoSuch-v0'", 2),
    ("benchmarks.tune_defaults", ["--grid", "lr=1e-3"], "--grid 'lr=1e-3': not JSON", 2),
    ("benchmarks.tune_defaults", ["--grid", '{"batch_size": [64]}'], "--grid key 'batch_size': not a traced", 2),
    ("benchmarks.tune_defaults", ["--grid", '{"lr": [1e-3, -1]}'], "--grid point {'lr': -1}", 2),
    ("benchmarks.tune_defaults", ["--shapes", '{"updates": 8}'], "unknown setting 'updates'", 2),
    ("benchmarks.tune_defaults", ["--shapes", '{"num_envs": 0}'], "--num_envs must be positive, got 0", 2),
]


def run_main(module: str, argv: list[str]) -> int:
    main = importlib.import_module(module).main
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.mark.parametrize("module, flags, message, code", CASES,
                         ids=[f"{module.rpartition('.')[2]} {' '.join(flags)}" for module, flags, *_ in CASES])
def test_bad_input_is_one_line_before_any_work(module, flags, message, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the benchmarks' default outputs are relative to the working folder
    assert run_main(module, [flag.replace("{tmp}", str(tmp_path)) for flag in flags]) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: error: "), captured.err
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert not captured.out and not list(tmp_path.iterdir())  # no work, nothing written


def test_quality_whose_every_env_failed_exits_1_and_writes_nothing(capsys, tmp_path, monkeypatch):
    from benchmarks import quality

    def run_env(env, seeds, extra, scratch, learner="dqn", num_envs=None):  # a failed run's row, as run_env makes it
        return {"env": env, "learner": learner, "num_envs": num_envs, "error": "jaxdqn.train: error: boom"}

    monkeypatch.setattr(quality, "run_env", run_env)
    assert quality.main(["--envs", "CartPole-v1", "Acrobot-v1", "--out", str(tmp_path / "q")]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["python -m benchmarks.quality: error: every environment failed"]
    assert "| Acrobot-v1 | dqn |  | failed: jaxdqn.train: error: boom |" in captured.out
    assert not list(tmp_path.iterdir())


def test_scaling_whose_every_run_failed_exits_1_and_writes_nothing(capsys, tmp_path, monkeypatch):
    from benchmarks import checks, scaling

    monkeypatch.setattr(checks, "device_count", lambda: 1)
    monkeypatch.setattr(scaling, "train_sps", lambda *args: {"error": "process 0: boom"})
    monkeypatch.setattr(scaling, "time_to_solve", lambda n, scratch: [{"devices": n, "run": "cold", "error": "boom"}])
    assert scaling.main(["--devices", "1", "--out", str(tmp_path / "s")]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["python -m benchmarks.scaling: error: every run failed"]
    assert "| weak | 1 | 1 | - | 4,096 | process 0: boom |" in captured.out
    assert not list(tmp_path.iterdir())


def test_scaling_reports_a_point_whose_one_device_base_failed_without_efficiency():
    from benchmarks.scaling import efficiency_table

    rows = [{"mode": "weak", "devices": 1, "num_envs": 64, "sync": "grads", "processes": 1, "error": "boom"},
            {"mode": "weak", "devices": 2, "num_envs": 128, "sync": "grads", "processes": 1, "sps": 10.0,
             "updates_per_s": 1.0, "first_chunk_s": 0.5, "chunk_s": 0.1}]
    assert efficiency_table(rows, [1, 2])[-1] == "| weak | 2 | 1 | grads | 128 | 10 | 1 | - | 0.50 | 0.100 |"
