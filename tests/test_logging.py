"""TensorBoard and W&B logging: what a run writes is read back with their own readers and matches metrics.csv.

Two tiny runs: one agent through `python -m jaxdqn train --tensorboard --wandb PROJECT` (W&B offline, no
network), whose events file TensorBoard's `EventAccumulator` reads and whose W&B run file is decoded record by
record; and a sweep of two agents in one program, whose events carry each agent's values under its label.
Tests needing an extra skip without it; a missing extra itself is one line and exit code 2, checked here too.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from jaxdqn.loggers import ChunkStats, chunk_scalars
from tests.conftest import ROOT, cheap_compile_env
from tests.test_cli import TINY

EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb",)}
TAGS = {"train/episode_return", "train/episode_length", "eval/episode_return", "eval/episode_length",
        "train/td_loss", "train/epsilon", "train/learning_rate", "speed/env_steps_per_s", "speed/updates_per_s"}


def installed(extra: str) -> bool:
    try:
        for module in EXTRAS[extra]:
            __import__(module)
    except ImportError:
        return False
    return True


def need(extra: str) -> None:
    if not installed(extra):
        pytest.skip(f"the {extra} extra is not installed (pip install -e '.[{extra}]')")


def metrics_csv(log_dir) -> list[dict[str, str]]:
    return list(csv.DictReader((log_dir / "metrics.csv").open()))


def column(rows: list[dict[str, str]], name: str) -> dict[int, float]:
    """metrics.csv's `name` by env step, where it has a value."""
    return {int(row["env_steps"]): float(row[name]) for row in rows if row[name] != ""}


def tensorboard_scalars(log_dir) -> dict[str, dict[int, float]]:
    """Every scalar of the run's events file, read by TensorBoard itself: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(str(log_dir / "events.out.tfevents.*"))
    assert len(events) == 1, events  # in the log folder itself
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def wandb_records(path):
    """The records of a W&B run file (`run-ID.wandb`): LevelDB's log format (32 KiB blocks of records, each
    split into chunks with a 7-byte header: checksum, length, type) after a 7-byte file header, each record a
    `wandb.proto.wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the end of a block too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zeros: the end of what was written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One agent trained by `python -m jaxdqn train` with every installed writer; its log folder."""
    flags = (["--tensorboard"] if installed("tensorboard") else []) + \
        (["--wandb", "jaxdqn-test"] if installed("wandb") else [])
    if not flags:
        pytest.skip("neither the tensorboard nor the wandb extra is installed")
    log_dir = tmp_path_factory.mktemp("logged") / "run"
    result = subprocess.run([sys.executable, "-m", "jaxdqn", "train", *TINY, "--quiet", *flags, "--log_dir",
                             str(log_dir)], cwd=ROOT, env=cheap_compile_env(WANDB_MODE="offline"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("CartPole-v1: eval return"), result.stdout
    return log_dir


def test_tensorboard_events_hold_each_chunks_metrics(logged_run):
    need("tensorboard")
    scalars, rows = tensorboard_scalars(logged_run), metrics_csv(logged_run)
    assert TAGS <= set(scalars), TAGS - set(scalars)
    steps = [64, 128, 192, 256]
    for tag, name in (("train/episode_return", "train_return"), ("eval/episode_return", "eval_return"),
                      ("train/td_loss", "loss"), ("train/epsilon", "epsilon"), ("speed/env_steps_per_s", "sps")):
        expected = column(rows, name)
        assert sorted(scalars[tag]) == sorted(expected), tag  # a chunk without a value (NaN) has no event
        assert all(math.isclose(scalars[tag][step], value, rel_tol=1e-5) for step, value in expected.items()), tag
    assert sorted(scalars["train/epsilon"]) == steps and sorted(scalars["eval/episode_return"]) == [128, 256]
    assert sorted(scalars["train/episode_length"]) == sorted(scalars["train/episode_return"])
    assert sorted(scalars["eval/episode_length"]) == [128, 256]
    assert all(1 <= length <= 500 for length in scalars["eval/episode_length"].values())
    # --lr 5e-4 annealed linearly to 0 over the run's 24 updates (TINY: 16 vector steps, 2 updates each from the 5th)
    rates = [scalars["train/learning_rate"][step] for step in steps]
    assert math.isclose(rates[0], 5e-4, rel_tol=1e-6) and rates[-1] == 0.0 and rates == sorted(rates, reverse=True)
    assert scalars["speed/updates_per_s"][64] == 0 and scalars["speed/updates_per_s"][256] > 0  # from the 5th step
    # mean Q is logged when the chunk's metrics record it (`ChunkMetrics.q_mean`)
    assert all(math.isfinite(value) for value in scalars.get("train/q_mean", {}).values())


def test_the_wandb_offline_run_holds_the_config_and_each_chunks_metrics(logged_run):
    need("wandb")
    runs = list((logged_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    project, config, history = None, {}, {}
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project, name = record.run.project, record.run.display_name
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json or "null")
                     for item in record.history.item}
            history[items["_step"]] = items
    assert project == "jaxdqn-test" and name == "run"
    assert config["env"] == "CartPole-v1" and config["num_envs"] == 16 and config["hidden_sizes"] == [16]
    rows = metrics_csv(logged_run)
    assert sorted(history) == [64, 128, 192, 256]
    assert TAGS <= set(history[256]), TAGS - set(history[256])
    for tag, name in (("eval/episode_return", "eval_return"), ("train/epsilon", "epsilon"), ("train/td_loss", "loss")):
        assert {step: items[tag] for step, items in history.items() if tag in items} == \
            pytest.approx(column(rows, name), rel=1e-5), tag


def test_a_population_logs_each_agent_under_its_label_and_their_mean(tmp_path, monkeypatch, capsys):
    need("tensorboard")
    import jaxdqn.train

    monkeypatch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
    log_dir = tmp_path / "sweep"
    assert jaxdqn.train.main([*TINY, "--sweep", "lr=5e-4,1e-3", "--quiet", "--tensorboard",
                              "--log_dir", str(log_dir)]) == 0
    capsys.readouterr()
    scalars = tensorboard_scalars(log_dir)
    labels = ["lr_0.0005_seed_0", "lr_0.001_seed_0"]
    for label in labels:
        assert {f"{label}/{tag}" for tag in TAGS if not tag.startswith("speed/")} <= set(scalars), label
    assert not any(tag.startswith(tuple(labels)) and "/speed/" in tag for tag in scalars)  # one program: one speed
    for tag in ("eval/episode_return", "train/epsilon", "train/learning_rate"):
        for step, mean in scalars[tag].items():
            agents = [scalars[f"{label}/{tag}"][step] for label in labels]
            assert math.isclose(mean, sum(agents) / 2, rel_tol=1e-5, abs_tol=1e-9), (tag, step)
    first = {label: scalars[f"{label}/train/learning_rate"][64] for label in labels}
    assert first == pytest.approx({labels[0]: 5e-4, labels[1]: 1e-3})  # each agent's own learning rate
    assert column(metrics_csv(log_dir), "eval_return") == pytest.approx(scalars["eval/episode_return"], rel=1e-5)


@pytest.mark.parametrize("flags, module, extra", [(["--tensorboard"], "tensorboardX", "tensorboard"),
                                                  (["--wandb", "project"], "wandb", "wandb")])
def test_a_missing_extra_is_one_line_naming_it_and_exit_2(capsys, tmp_path, monkeypatch, flags, module, extra):
    from jaxdqn.train import main

    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, installed or not
    log_dir = tmp_path / "run"
    assert main([*TINY, *flags, "--log_dir", str(log_dir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxdqn.train: error: {flags[0]} needs the {extra} extra "), lines
    assert f"pip install 'jaxdqn[{extra}]'" in lines[0]
    assert not log_dir.exists()  # checked before anything is written


def test_chunk_scalars_leave_out_nan_and_prefix_each_agents_values():
    nan = math.nan
    row = {"env_steps": 64, "sps": 1000.0}
    stats = ChunkStats({"train_return": [10.0, nan], "loss": [nan, nan], "epsilon": [0.5, 0.7]},
                       ["lr=0.001 seed=0", "lr=0.01 seed=0"], 20.0)
    assert chunk_scalars(row, stats) == {
        "train/episode_return": 10.0, "train/epsilon": 0.6, "speed/env_steps_per_s": 1000.0,
        "speed/updates_per_s": 20.0, "lr_0.001_seed_0/train/episode_return": 10.0,
        "lr_0.001_seed_0/train/epsilon": 0.5, "lr_0.01_seed_0/train/epsilon": 0.7}
    single = ChunkStats({"train_return": [12.0], "q_mean": [3.5]}, ["seed=0"], 0.0)
    assert chunk_scalars(row, single) == {"train/episode_return": 12.0, "train/q_mean": 3.5,
                                          "speed/env_steps_per_s": 1000.0, "speed/updates_per_s": 0.0}


def test_the_learning_curve_is_a_panel_of_return_loss_and_epsilon(tmp_path, monkeypatch):
    import matplotlib.figure

    from jaxdqn.reporting import plot_learning_curve

    saved = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda figure, path, **kwargs: (saved.append(figure), original(figure, path, **kwargs)))
    rows = [{"env_steps": 64 * step, "train_return": math.nan if step == 1 else 10.0 * step,
             "eval_return": 20.0 * step if step % 2 == 0 else None, "loss": math.nan if step == 1 else 10.0 ** -step,
             "epsilon": 1.0 - 0.1 * step, "eval_return_agents": [15.0 * step, 25.0 * step]} for step in range(1, 7)]
    plot_learning_curve(rows, tmp_path / "curve.png", "CartPole-v1", 475.0)
    (figure,) = saved
    assert [axes.get_ylabel() for axes in figure.axes] == ["episode return", "TD loss", "epsilon"]
    assert figure.axes[0].get_title() == "CartPole-v1" and figure.axes[1].get_yscale() == "log"  # decades of loss
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["training (exploring)", "greedy evaluation (mean over agents)", "agents' min to max",
                      "solved (475)"]
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    plot_learning_curve([dict(row, loss=0.5 + 0.1 * index) for index, row in enumerate(rows)], tmp_path / "narrow.png",
                        "CartPole-v1", None)
    assert saved[1].axes[1].get_yscale() == "linear"  # a loss within a decade reads better on a linear scale


def test_a_wandb_start_that_fails_leaves_none_of_its_files_in_an_existing_log_folder(tmp_path, monkeypatch):
    """A log folder that outlives the failed run (a resume's) keeps what it held, and gets no `wandb/`."""
    import wandb

    from jaxdqn.errors import ConfigError
    from jaxdqn.loggers import WandbWriter

    def failing_init(dir, **_):  # as W&B does: its folder is made, then the start fails
        (Path(dir) / "wandb" / "run-1").mkdir(parents=True)
        raise wandb.errors.UsageError("No API key configured.")

    monkeypatch.setattr(wandb, "init", failing_init)
    (tmp_path / "metrics.csv").write_text("kept\n")
    with pytest.raises(ConfigError, match="--wandb project: W&B did not start: No API key configured"):
        WandbWriter("project", tmp_path, {})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.csv"]
