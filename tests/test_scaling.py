"""`benchmarks.scaling`: the steady rate, the first chunk and the efficiency, against hand-computed numbers; the
benchmark end to end on two CPU devices."""

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


def test_efficiency_compares_each_point_with_the_one_device_point_of_its_mode_and_size():
    """Weak points against the one-device point with as many envs per device, strong ones against the one with as
    many envs in all, each scaled by the device ratio."""
    from benchmarks.scaling import efficiency_table

    def point(mode, devices, num_envs, sps, sync="grads"):
        return {"mode": mode, "devices": devices, "num_envs": num_envs, "sync": sync, "processes": 1, "sps": sps,
                "updates_per_s": 10.0, "first_chunk_s": 0.5, "chunk_s": 0.1}

    rows = [point("weak", 1, 64, 1000.0), point("weak", 1, 256, 3000.0), point("weak", 2, 128, 1600.0),
            point("weak", 2, 128, 1200.0, sync="params"), point("weak", 2, 512, 5400.0),
            point("strong", 1, 128, 1200.0), point("strong", 2, 128, 1800.0)]
    table = efficiency_table(rows, [1, 2])
    # 1600 / (2 x 1000); 1200 / (2 x 1000); 5400 / (2 x 3000); 1800 / (2 x 1200)
    assert [row["efficiency"] for row in rows] == pytest.approx([1.0, 1.0, 0.8, 0.6, 0.9, 1.0, 0.75])
    assert table[2:] == ["| weak | 1 | 1 | - | 64 | 1e+03 | 10 | 100% | 0.50 | 0.100 |",
                         "| weak | 1 | 1 | - | 256 | 3e+03 | 10 | 100% | 0.50 | 0.100 |",
                         "| weak | 2 | 1 | grads | 128 | 1.6e+03 | 10 | 80% | 0.50 | 0.100 |",
                         "| weak | 2 | 1 | params | 128 | 1.2e+03 | 10 | 60% | 0.50 | 0.100 |",
                         "| weak | 2 | 1 | grads | 512 | 5.4e+03 | 10 | 90% | 0.50 | 0.100 |",
                         "| strong | 1 | 1 | - | 128 | 1.2e+03 | 10 | 100% | 0.50 | 0.100 |",
                         "| strong | 2 | 1 | grads | 128 | 1.8e+03 | 10 | 75% | 0.50 | 0.100 |"]


def test_benchmark_runs_end_to_end_on_two_cpu_devices(tmp_path):
    """Weak and strong points on 1 and 2 devices: JSON, table and plot, each point with its steady rate.

    The strong points split as many envs as a weak point has per device, so the one-device strong point is the
    one-device weak point's program again, loaded from the benchmark's compile cache (two chunks: the fewest).
    XLA optimizes less (a third less compile time; speed is what the benchmark measures, not what this tests).
    """
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT, cheap_compile_env

    out = tmp_path / "scaling"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--devices", "1", "2", "--weak_envs", "64", "--strong_envs", "64",
         "--iterations", "64", "--no_solve", "--out", str(out)],
        cwd=ROOT, env=cheap_compile_env(2),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    points = {(row["mode"], row["devices"]): row for row in report["rows"]}
    assert set(points) == {("weak", 1), ("weak", 2), ("strong", 1), ("strong", 2)}
    assert points[("weak", 2)]["num_envs"] == 128 and points[("strong", 2)]["num_envs"] == 64
    for row in report["rows"]:
        assert row["sps"] > 0 and row["first_chunk_s"] > 0 and row["chunk_s"] > 0
    assert points[("weak", 2)]["efficiency"] > 0 and points[("strong", 2)]["efficiency"] > 0  # each found its base
    table = out.with_suffix(".md").read_text()
    assert "| weak | 2 | 1 | grads | 128 |" in table and "| strong | 2 | 1 | grads | 64 |" in table
    assert out.with_suffix(".png").stat().st_size > 0
