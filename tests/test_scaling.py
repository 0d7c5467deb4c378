"""`benchmarks.scaling`: the steady rate and the first chunk from a run's metrics.csv, against hand-computed numbers."""

from __future__ import annotations

import pytest

from benchmarks.scaling import steady_rates
from jaxdqn.reporting import METRIC_COLUMNS


def _write_metrics(path, rows):
    lines = [",".join(METRIC_COLUMNS)]
    for env_steps, updates, wall_s, sps in rows:
        values = {"env_steps": env_steps, "updates": updates, "wall_s": wall_s, "sps": sps}
        lines.append(",".join(str(values.get(column, "")) for column in METRIC_COLUMNS))
    path.write_text("\n".join(lines) + "\n")


def test_steady_rate_leaves_the_first_chunk_out(tmp_path):
    # Training starts at wall 5.0 s; the first chunk of 1,000 env steps ends at 7.0 s (2 s: one-time costs),
    # the next two take 0.5 s each. A row's sps counts from the start of training.
    metrics = tmp_path / "metrics.csv"
    _write_metrics(metrics, [(1000, 10, 7.0, 1000 / 2.0), (2000, 30, 7.5, 2000 / 2.5), (3000, 50, 8.0, 3000 / 3.0)])
    rates = steady_rates(metrics)
    assert rates["sps"] == pytest.approx(2000 / 1.0)
    assert rates["updates_per_s"] == pytest.approx(40 / 1.0)
    assert rates["first_chunk_s"] == pytest.approx(2.0)
    assert rates["chunk_s"] == pytest.approx(0.5)


def test_one_chunk_is_too_few_to_time(tmp_path):
    metrics = tmp_path / "metrics.csv"
    _write_metrics(metrics, [(1000, 10, 7.0, 500.0)])
    with pytest.raises(SystemExit, match="at least 2 chunks"):
        steady_rates(metrics)


def test_benchmark_runs_end_to_end_on_two_cpu_devices(tmp_path):
    """Weak and strong points on 1 and 2 devices: JSON, table and plot, each point with its steady rate."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    out = tmp_path / "scaling"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--devices", "1", "2", "--weak_envs", "64", "--strong_envs", "128",
         "--iterations", "64", "--no_solve", "--out", str(out)],
        cwd=ROOT, env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    points = {(row["mode"], row["devices"]): row for row in report["rows"]}
    assert set(points) == {("weak", 1), ("weak", 2), ("strong", 1), ("strong", 2)}
    assert points[("weak", 2)]["num_envs"] == 128 and points[("strong", 2)]["num_envs"] == 128
    for row in report["rows"]:
        assert row["sps"] > 0 and row["first_chunk_s"] > 0 and row["chunk_s"] > 0
    assert points[("weak", 1)]["efficiency"] == pytest.approx(1.0)
    assert "| weak | 2 | 1 | grads | 128 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0
