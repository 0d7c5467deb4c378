"""A registered port trains through the CLI with its registered defaults (and, if built, evaluates)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, cheap_compile_env


def test_cliffwalking_port_trains_to_its_threshold_through_the_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", "--env", "cliffwalking", "--until_solved", "--quiet",
         "--no_compile_cache", "--log_dir", str(tmp_path)],
        cwd=ROOT, env=cheap_compile_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env"] == "CliffWalking-v1"
    assert summary["num_envs"] == 256  # the port's registered default, not the trainer's
    assert summary["steps_to_solve"] is not None
    assert summary["eval_return_mean"] >= -13.0
