"""Small user-facing frictions, each kept fixed: repeated --sweep flags, the benchmarks' README commands,
the summary line's time bases, what a resumed run says and keeps, and a fast, complete --help."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.test_cli import TINY


# 1. --sweep given several times --------------------------------------------------------------------------

def test_repeated_sweep_flags_form_one_grid():
    from jaxdqn import population
    from jaxdqn.train import config_from_args, make_train_parser

    args = make_train_parser().parse_args(["--sweep", "lr=1e-4,1e-3", "--sweep", "tau=0.05,1"])
    config = config_from_args(args)
    assert config.sweep == ("lr=1e-4,1e-3", "tau=0.05,1")
    points = [dict(agent.point) for agent in population.make_agents(config)]
    assert points == [{"lr": 1e-4, "tau": 0.05}, {"lr": 1e-4, "tau": 1.0},
                      {"lr": 1e-3, "tau": 0.05}, {"lr": 1e-3, "tau": 1.0}]
    # several keys after one --sweep still work, and mix with a repeated flag
    args = make_train_parser().parse_args(["--sweep", "lr=1e-4", "gamma=0.9", "--sweep", "tau=1"])
    assert args.sweep == ["lr=1e-4", "gamma=0.9", "tau=1"]


def test_a_sweep_key_given_twice_is_one_line_and_exit_2(capsys, tmp_path):
    from jaxdqn.train import main

    code = main([*TINY, "--sweep", "lr=1e-4", "--sweep", "lr=1e-3", "--log_dir", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--sweep lr given twice" in lines[0], lines
    assert not (tmp_path / "run").exists()


# 2. every `python -m benchmarks.X ...` command in the docs parses -----------------------------------------

def documented_benchmark_commands() -> list[str]:
    """Inline `python -m benchmarks...` spans (which may wrap over lines) and such lines in code blocks."""
    commands = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        commands += [" ".join(span.split()) for span in re.findall(r"`(python -m benchmarks\.[^`]*)`", text)]
        commands += re.findall(r"^(python -m benchmarks\.\S.*)$", text, flags=re.MULTILINE)
    return commands


def test_the_docs_name_benchmark_commands():
    modules = {command.split()[2] for command in documented_benchmark_commands()}
    assert {"benchmarks.time_to_solve", "benchmarks.throughput", "benchmarks.scaling", "benchmarks.quality",
            "benchmarks.ports", "benchmarks.checkpointing"} <= modules


@pytest.mark.parametrize("command", documented_benchmark_commands())
def test_a_documented_benchmark_command_parses_with_its_own_parser(command):
    argv = shlex.split(command.split("#", 1)[0])
    module = importlib.import_module(argv[2])
    try:
        module.make_parser().parse_args(argv[3:])
    except SystemExit as exit_info:
        pytest.fail(f"{command!r} does not parse (exit {exit_info.code})")


def test_a_benchmark_without_out_writes_under_results_named_after_itself_and_the_machine():
    from benchmarks.machine import default_out

    assert default_out("throughput", "NVIDIA H100 80GB HBM3").as_posix() == \
        "benchmarks/results/throughput_nvidia_h100_80gb_hbm3"
    assert default_out("scaling", "NVIDIA H100 80GB HBM3", 4).name == "scaling_4x_nvidia_h100_80gb_hbm3"
    assert re.fullmatch(r"time_to_solve_\d+core_cpu", default_out("time_to_solve", "cpu").name)


# 3. the summary line names its time bases ------------------------------------------------------------------

SUMMARY = {"env": "CartPole-v1", "eval_return_mean": 500.0, "eval_return_std": 0.0, "eval_episodes": 128,
           "steps_to_solve": 786_432, "seconds_to_solve_from_start": 36.94, "total_steps": 3_014_656,
           "steps_trained": 3_014_656, "train_s": 17.5, "sps": 1.72e5, "compile_s": 3.7, "wall_s": 40.2,
           "num_devices": 1, "device": "cpu", "resumed_from_step": None}


def test_the_summary_line_says_which_time_counts_from_start_and_which_is_training():
    from jaxdqn.reporting import summary_line

    assert summary_line(SUMMARY) == (
        "CartPole-v1: eval return 500.0 ± 0.0 over 128 episodes; solved at 786,432 env steps, 36.9s after start; "
        "trained 3,014,656 env steps in 17.5s (1.72e+05 steps/s, compile 3.7s, wall 40.2s) on 1 cpu")
    resumed = dict(SUMMARY, resumed_from_step=1_000_000, steps_trained=2_014_656)
    assert "solved at 786,432 env steps, before the resume; trained 2,014,656 env steps (resumed at 1,000,000) in " \
        in summary_line(resumed)


# 4. a resumed run says so and keeps the summary it replaces -------------------------------------------------

def test_a_resumed_run_says_so_on_stderr_and_keeps_the_earlier_summary(capsys, tmp_path, monkeypatch):
    import jaxdqn.train
    from jaxdqn.train import main

    # The resumed run has the first run's config, so it loads the first run's compiled programs (`--compile_cache`)
    # instead of compiling them again; JAX's own persistent cache stays off in this process.
    monkeypatch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
    tiny = [flag for flag in TINY if flag != "--no_compile_cache"]
    cache, checkpoints, log_dir = (str(tmp_path / name) for name in ("cache", "ckpt", "log"))
    assert main([*tiny, "--quiet", "--compile_cache", cache, "--save_model", checkpoints, "--checkpoint_frequency",
                 "2", "--log_dir", log_dir]) == 0  # checkpoints at 128 and 256 env steps
    capsys.readouterr()
    assert main(["--load_model", checkpoints, "--load_step", "128", "--overwrite", "--quiet",
                 "--compile_cache", cache]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "resuming" in line]
    assert len(said) == 1 and re.fullmatch(rf"jaxdqn\.train: resuming {re.escape(checkpoints)} from env step 128 "
                                           r"\(checkpoint of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", said[0]), captured.err
    assert "trained 128 env steps (resumed at 128) in" in captured.out
    summary = json.loads((tmp_path / "log" / "summary.json").read_text())
    earlier = json.loads((tmp_path / "log" / "summary.256.json").read_text())
    assert summary["resumed_from_step"] == 128 and summary["steps_trained"] == 128 and summary["total_steps"] == 256
    assert summary["previous_summary"] == "summary.256.json"
    assert earlier["resumed_from_step"] is None and earlier["steps_trained"] == 256
    assert "seconds_to_solve_from_start" in earlier and "seconds_to_solve" not in earlier


def test_keeping_a_summary_never_replaces_a_kept_one(tmp_path):
    from jaxdqn.reporting import keep_previous_summary

    assert keep_previous_summary(tmp_path) is None
    for _ in range(2):
        (tmp_path / "summary.json").write_text(json.dumps({"total_steps": 512}))
        keep_previous_summary(tmp_path)
    (tmp_path / "summary.json").write_text("not json")
    keep_previous_summary(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "summary.512.2.json", "summary.512.json", "summary.previous.json"]


# 5. --help: fast (no JAX), every choice listed, each default said once --------------------------------------

HEAVY_MODULES = {"jax", "jaxlib", "gymnax", "flax", "matplotlib", "tensorboardX", "tensorboard", "wandb"}


def help_and_imports(module: str, *command: str) -> tuple[str, set[str]]:
    """`python -m module [command] --help`'s output, and the names of the modules it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *command, "--help"], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    return result.stdout, imported


def flag_helps(text: str) -> dict[str, str]:
    """Each option's help, from its `  --flag` line to the next one, on one line."""
    blocks = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    return {block.split()[0]: " ".join(block.split()) for block in blocks if block.startswith("  -")}


@pytest.mark.parametrize("command", [("jaxdqn.train",), ("jaxdqn.evaluate",), ("jaxdqn",), ("jaxdqn", "train"),
                                     ("jaxdqn", "evaluate"), ("jaxdqn", "check-port"), ("jaxdqn.check_port",)])
def test_help_imports_no_jax_and_says_each_default_once(command):
    text, imported = help_and_imports(*command)
    assert not imported & HEAVY_MODULES, imported & HEAVY_MODULES
    helps = flag_helps(text)
    assert helps
    repeated = [flag for flag, help_text in helps.items() if help_text.count("(default") > 1]
    assert not repeated, [helps[flag] for flag in repeated]


def test_train_help_lists_the_choices_of_choice_valued_flags():
    text, _ = help_and_imports("jaxdqn.train")
    helps = flag_helps(text)
    assert helps["--loss"].startswith("--loss {huber,mse}")
    assert helps["--sync"].startswith("--sync {grads,params}")
    assert helps["--acting_precision"].startswith("--acting_precision {float32,bfloat16}")


def test_a_config_built_in_code_is_checked_against_the_same_choices():
    from jaxdqn.config import TrainConfig
    from jaxdqn.errors import ConfigError

    with pytest.raises(ConfigError, match="--loss must be huber or mse, got 'l1'"):
        TrainConfig(loss="l1").validate()
