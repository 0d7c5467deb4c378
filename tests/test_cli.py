"""The training CLI end to end: outputs, the original's flags, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from jaxdqn.train import main
from tests.conftest import ROOT, cheap_compile_env, subprocess_env

TINY = ["--num_envs", "16", "--total_steps", "256", "--buffer_size", "256", "--batch_size", "32",
        "--updates_per_step", "2", "--learning_starts", "64", "--chunk_steps", "64", "--eval_frequency", "128",
        "--eval_episodes", "8", "--hidden_sizes", "16", "--no_compile_cache"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`python -m jaxdqn.train` with the original trainer's flag names (--environment, --lr, --gamma, --eps,
    --min_eps, --n_workers ...): the finished process and its log folder."""
    log_dir = tmp_path_factory.mktemp("cli_run")
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", "--environment", "CartPole-v1", "--lr", "1e-3", "--gamma", "0.98",
         "--eps", "0.9", "--min_eps", "0.1", "--max_grad_norm", "5", "--target_update_frequency", "4",
         "--n_workers", "1", *TINY, "--log_dir", str(log_dir)],
        cwd=ROOT, env=cheap_compile_env(), capture_output=True, text=True, timeout=300,
    )
    return result, log_dir


def test_cli_end_to_end_writes_every_output(cli_run):
    result, tmp_path = cli_run
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
        (["--updates_per_step=-1"], "--updates_per_step must be >= 0"),
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


# The `jaxdqn` command, its console scripts, and --config --------------------------------------------------

def test_the_jaxdqn_command_runs_each_command_with_the_same_flags():
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=subprocess_env(), capture_output=True,
                              text=True, timeout=60)

    listing = run("jaxdqn", "--help")
    assert listing.returncode == 0 and all(name in listing.stdout for name in ("train", "evaluate", "check-port"))
    for command, module in (("train", "jaxdqn.train"), ("evaluate", "jaxdqn.evaluate")):
        assert run("jaxdqn", command, "--help").stdout == run(module, "--help").stdout
    assert "--reference" in run("jaxdqn", "check-port", "--help").stdout
    for argv, message in ((["jaxdqn", "trian"], "jaxdqn: error: argument COMMAND: invalid choice: 'trian'"),
                          (["jaxdqn"], "jaxdqn: error: the following arguments are required: COMMAND"),
                          (["jaxdqn", "train", "--lr", "fast"], "jaxdqn.train: error: argument --lr: invalid float")):
        result = run(*argv)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(message), result.stderr


def test_the_console_scripts_are_jaxdqn_cli_entry_points(capsys):
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"jaxdqn", "jaxdqn-train", "jaxdqn-evaluate"}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module == "jaxdqn.cli"
        entry = getattr(importlib.import_module(module), function)
        argv = ["train", "--help"] if name == "jaxdqn" else ["--help"]
        with pytest.raises(SystemExit) as exit_info:
            entry(argv)
        assert exit_info.value.code == 0
        assert "--load_model" in capsys.readouterr().out


def test_check_port_flags_default_to_the_checks_own_defaults():
    from jaxdqn import check_port
    from jaxdqn.cli import make_check_port_parser

    args = make_check_port_parser().parse_args(["--env", "Taxi-v4"])
    assert (args.episodes, args.num_envs) == (check_port.DEFAULT_EPISODES, check_port.CONTRACT_ENVS)


def saved_config(path, **values):
    """A config.json as a run writes it (every field), with `values` changed."""
    import dataclasses

    from jaxdqn.config import TrainConfig

    path.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(TrainConfig(), **values)), indent=2))
    return path


def test_flags_given_with_config_override_the_file_and_env_defaults_fill_only_what_it_lacks(tmp_path):
    from jaxdqn.train import config_from_args, make_train_parser

    def config(*argv):
        return config_from_args(make_train_parser().parse_args(list(argv)))

    # A full config.json: every setting is the file's, even where the env has defaults (MountainCar's total_steps).
    full = saved_config(tmp_path / "config.json", env="MountainCar-v0", total_steps=65_536, gamma=0.9,
                        hidden_sizes=(16, 8), sweep=("lr=1e-4,1e-3",), log_dir=str(tmp_path))
    assert (config("--config", str(full)).total_steps, config("--config", str(full)).gamma) == (65_536, 0.9)
    assert config("--config", str(tmp_path)).hidden_sizes == (16, 8)  # the run's folder names its config.json
    rerun = config("--gamma", "0.95", "--config", str(full), "--hidden_sizes", "32")
    assert (rerun.env, rerun.total_steps, rerun.gamma, rerun.hidden_sizes, rerun.sweep) == \
        ("MountainCar-v0", 65_536, 0.95, (32,), ("lr=1e-4,1e-3",))
    assert rerun.log_dir is None  # a rerun writes to a folder of its own
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"env": "MountainCar-v0", "gamma": 0.9}))
    assert (config("--config", str(partial)).total_steps, config("--config", str(partial)).gamma) == (10_000_000, 0.9)


def test_a_saved_config_reruns_the_run_exactly(cli_run, tmp_path, capsys):
    first_dir = cli_run[1]  # the run of the original's flags, rerun from its config.json alone
    assert main(["--config", str(first_dir / "config.json"), "--quiet", "--no_compile_cache",
                 "--log_dir", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    first, again = (json.loads((folder / "config.json").read_text()) for folder in (first_dir, tmp_path / "again"))
    assert first.pop("log_dir") == str(first_dir) and again.pop("log_dir") == str(tmp_path / "again")
    assert again == first and first["gamma"] == 0.98 and first["lr"] == 1e-3
    learned = ("env_steps", "updates", "train_return", "eval_return", "loss", "epsilon")
    rows = [[{key: row[key] for key in learned} for row in csv.DictReader((folder / "metrics.csv").open())]
            for folder in (first_dir, tmp_path / "again")]
    assert rows[0] == rows[1] and len(rows[0]) == 4


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.json", None, r"--config \S+missing\.json: no such file"),
        ("folder", "folder", r"--config \S+folder: a folder without a config\.json"),
        ("binary.json", b"\x89PNG\r\n\x1a\n\xff", r"not a run's config\.json \(not text\)"),
        ("broken.json", '{"lr": 1e-3,', r"not a run's config\.json \(not JSON: "),
        ("list.json", "[1, 2]", r"not a run's config\.json \(a JSON object of settings\), but a JSON list"),
        ("summary.json", json.dumps({"env": "CartPole-v1", "eval_return_mean": 500.0, "sps": 1e5}),
         r"not a run's config\.json: unknown keys eval_return_mean, sps"),
        ("typed.json", json.dumps({"lr": "fast"}), r"--lr must be a number, got 'fast'"),
    ],
)
def test_an_unusable_config_file_is_one_line_and_exit_2(capsys, tmp_path, name, content, message):
    import re

    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    log_dir = tmp_path / "run"
    assert main(["--config", str(path), "--log_dir", str(log_dir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxdqn.train: error: ") and re.search(message, lines[0]), lines
    assert not log_dir.exists()


def test_config_with_load_model_is_one_line_and_exit_2(capsys, tmp_path):
    config = saved_config(tmp_path / "config.json")
    assert main(["--config", str(config), "--load_model", str(tmp_path / "ckpt")]) == 2
    assert capsys.readouterr().err.strip() == ("jaxdqn.train: error: --config and --load_model do not combine: a "
                                               "resumed run keeps its checkpoint's config (flags given with "
                                               "--load_model change it)")
