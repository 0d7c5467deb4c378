"""The learning-quality benchmark runs end to end on the CPU and reports every seed, and failures as rows."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, subprocess_env
from tests.test_cli import TINY


def test_quality_table_end_to_end(tmp_path):
    out = tmp_path / "quality"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--envs", "CartPole-v1", "Pendulum-v1", "--seeds", "2",
         "--out", str(out), "--", *TINY],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == \
        f"benchmarks.quality: wrote {out}.json, {out}.md, {tmp_path / 'quality_CartPole-v1.png'}"
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    cartpole, pendulum = rows
    assert cartpole["seeds"] == 2 and len(cartpole["per_seed"]) == 2
    assert cartpole["final_return_min"] == min(cartpole["per_seed"])
    assert cartpole["env_steps"] == 256 and cartpole["seeds_solved"] in (0, 1, 2)
    assert (tmp_path / cartpole["curve"]).stat().st_size > 1000
    assert "DQN needs discrete actions" in pendulum["error"]  # a failing env is a row, not a crash
    table = out.with_suffix(".md").read_text()
    assert "| CartPole-v1 | 2 |" in table and "| Pendulum-v1 | failed:" in table
