"""The learning-quality benchmark: a row's figures from a run's summary, against hand-computed numbers; and the
benchmark end to end on the CPU, every seed reported and a failing env as a row."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from tests.conftest import ROOT, cheap_compile_env
from tests.test_cli import TINY



def test_a_row_counts_the_agents_at_or_above_the_threshold(tmp_path, monkeypatch):
    """Two agents at 475 and 474 against CartPole's 475: one solved (the threshold itself counts)."""
    from benchmarks import quality

    commands = []

    def run(command, **kwargs):  # what `python -m jaxdqn.train --num_seeds 2` writes
        commands.append(command)
        log_dir = tmp_path / command[command.index("--log_dir") + 1]
        log_dir.mkdir(parents=True)
        agents = [{"eval_return_mean": 475.0, "steps_to_solve": 4096},
                  {"eval_return_mean": 474.0, "steps_to_solve": None}]
        (log_dir / "summary.json").write_text(json.dumps({
            "agents": agents, "agents_eval_return_iqm": 474.5, "solved_threshold": 475.0, "device": "cpu",
            "total_steps": 4096, "wall_s": 3.0, "train_s": 2.0, "compile_s": 1.0}))
        (log_dir / "config.json").write_text(json.dumps({"env": "CartPole-v1", "num_envs": 4096, "num_seeds": 2}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(quality, "subprocess", types.SimpleNamespace(run=run))
    row = quality.run_env("CartPole-v1", 2, ["--lr", "1e-3"], tmp_path)
    (command,) = commands
    assert command[command.index("--num_seeds") + 1] == "2" and command[-2:] == ["--lr", "1e-3"]
    assert row["seeds"] == 2 and row["per_seed"] == [475.0, 474.0] and row["seeds_solved"] == 1
    assert row["final_return_mean"] == pytest.approx(474.5) and row["final_return_std"] == pytest.approx(0.5)
    assert row["final_return_min"] == 474.0 and row["final_return_iqm"] == 474.5 and row["env_steps"] == 4096
    assert row["compile_s"] == 1.0
    table = quality.markdown([row])
    assert "| 474.5 ± 0.5 | 474.5 | 474.0 | 1/2 (≥ 475) |" in table


def test_quality_table_end_to_end(tmp_path):
    out = tmp_path / "quality"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--envs", "CartPole-v1", "Pendulum-v1", "--seeds", "2",
         "--out", str(out), "--", *TINY],
        cwd=ROOT, env=cheap_compile_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == \
        f"benchmarks.quality: wrote {out}.json, {out}.md, {tmp_path / 'quality_CartPole-v1.png'}"
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    cartpole, pendulum = rows
    assert cartpole["seeds"] == 2 and len(cartpole["per_seed"]) == 2
    assert cartpole["env_steps"] == 256 and cartpole["solved_threshold"] == 475.0  # the run's, from its summary
    assert (tmp_path / cartpole["curve"]).stat().st_size > 1000
    assert "DQN needs discrete actions" in pendulum["error"]  # a failing env is a row, not a crash
    table = out.with_suffix(".md").read_text()
    assert "| CartPole-v1 | dqn | 16 | 2 |" in table and "| Pendulum-v1 | dqn |  | failed:" in table
