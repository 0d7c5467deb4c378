"""The training CLI end to end: outputs, the original's flags, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from jaxdqn.train import main
from tests.conftest import ROOT, subprocess_env

TINY = ["--num_envs", "16", "--total_steps", "256", "--buffer_size", "256", "--batch_size", "32",
        "--updates_per_step", "2", "--learning_starts", "64", "--chunk_steps", "64", "--eval_frequency", "128",
        "--eval_episodes", "8", "--hidden_sizes", "16", "--no_compile_cache"]


def test_cli_end_to_end_writes_every_output(tmp_path):
    # The original trainer's flag names: --environment, --lr, --gamma, --eps, --min_eps, --n_workers ...
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", "--environment", "CartPole-v1", "--lr", "1e-3", "--gamma", "0.98",
         "--eps", "0.9", "--min_eps", "0.1", "--max_grad_norm", "5", "--target_update_frequency", "4",
         "--n_workers", "1", *TINY, "--log_dir", str(tmp_path)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    required = {"env", "num_envs", "num_devices", "total_steps", "compile_s", "train_s", "wall_s", "sps",
                "eval_return_mean", "eval_return_std", "eval_episodes", "solved_threshold", "steps_to_solve",
                "seconds_to_solve_from_start"}
    assert required <= set(summary)
    assert summary["env"] == "CartPole-v1" and summary["num_envs"] == 16 and summary["num_devices"] == 1
    assert summary["total_steps"] == 256 and summary["eval_episodes"] == 8
    assert summary["solved_threshold"] == 475.0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["gamma"] == 0.98 and config["eps"] == 0.9 and config["min_eps"] == 0.1
    assert config["max_grad_norm"] == 5.0 and config["target_update_frequency"] == 4 and config["num_devices"] == 1
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(row["env_steps"]) for row in rows] == [64, 128, 192, 256]
    assert [row["eval_return"] != "" for row in rows] == [False, True, False, True]
    assert set(rows[0]) == {"env_steps", "updates", "wall_s", "sps", "train_return", "eval_return", "loss", "epsilon"}
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert result.stdout.strip().splitlines()[-1].startswith("CartPole-v1: eval return")


def test_help_documents_every_flag_and_unit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--environment", "--save_model", "--load_model", "--n_workers", "--target_update_frequency",
                 "--checkpoint_frequency", "--lr", "--batch_size", "--gamma", "--eps", "--min_eps",
                 "--buffer_size", "--max_grad_norm", "--until_solved", "--double", "--tau", "--loss"):
        assert flag in text, flag
    assert "gradient updates between target-network updates" in text
    assert "env steps" in text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env", "NoSuchEnv-v9"], "unknown environment 'NoSuchEnv-v9'"),
        (["--env", "Pendulum-v1"], "DQN needs discrete actions"),
        (["--gamma", "0"], "--gamma must be in (0, 1]"),
        (["--gamma", "1.5"], "--gamma must be in (0, 1]"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--lr=-1e-3"], "--lr must be > 0"),
        (["--eps", "0.1", "--min_eps", "0.2"], "--min_eps (0.2) must not exceed --eps (0.1)"),
        (["--eps", "1.5"], "--eps must be in [0, 1]"),
        (["--min_eps=-0.1"], "--min_eps must be in [0, 1]"),
        (["--sync", "sometimes"], "argument --sync: invalid choice: 'sometimes'"),
        (["--batch_size", "512", "--buffer_size", "256"], "--batch_size (512) must not exceed --buffer_size (256)"),
        (["--num_envs", "0"], "--num_envs must be positive"),
        (["--total_steps=-5"], "--total_steps must be positive"),
        (["--updates_per_step", "0"], "--updates_per_step must be positive"),
        (["--num_devices", "8"], "only 1 CPU device(s) exist"),
        (["--lr", "fast"], "invalid float value: 'fast'"),
        (["--loss", "l1"], "argument --loss: invalid choice: 'l1'"),
        (["--acting_precision", "float16"], "argument --acting_precision: invalid choice: 'float16'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, flags, message):
    log_dir = tmp_path / "run"
    try:
        code = main([*TINY, *flags, "--log_dir", str(log_dir)])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert message in lines[0]
    assert not log_dir.exists()  # nothing was written


def test_num_envs_not_dividing_over_devices_is_rejected():
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", *TINY, "--num_envs", "18", "--num_devices", "4"],
        cwd=ROOT, env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "jaxdqn.train: error: --num_envs 18 does not divide evenly over 4 devices"


@pytest.mark.parametrize("module", ["checkpointing", "classic_dqn", "ports", "quality", "scaling", "throughput",
                                    "time_to_solve", "tune_defaults"])
def test_every_benchmark_reports_a_bad_flag_in_one_line_with_exit_2(capsys, module):
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--no_such_flag"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m benchmarks.{module}: error: "), lines
