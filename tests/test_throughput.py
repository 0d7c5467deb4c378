"""`benchmarks.throughput` end to end on CPU: a tiny sweep writes every output, bad input exits 2.

How fast each phase is, is what the benchmark measures, not what a test asserts (a loaded machine would
reorder them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cheap_compile_env


PHASE_FIELDS = {"status", "env_steps_per_s", "updates_per_s", "us_per_iteration", "compile_s", "calls_per_round",
                "program_bytes", "peak_bytes_in_use", "updates_per_step", "batch_size", "buffer_size",
                "fraction_of_env_limit", "speedup_over_classic"}


def run_benchmark(*flags: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.throughput", *flags], cwd=ROOT,
                          env=cheap_compile_env(), check=False, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """One run at 64 envs with few steps (and the fusion check); returns the output prefix and the report."""
    out = tmp_path_factory.mktemp("throughput") / "tiny"
    result = run_benchmark("--num_envs", "64:64", "--iterations", "2", "--min_seconds", "0.1", "--repeats", "2",
                           "--classic_steps", "300", "--fusion_check", "--out", str(out), "--note", "test run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"benchmarks.throughput: wrote {out}.json, {out}.md, {out}.png"
    return out, json.loads(out.with_suffix(".json").read_text())


def test_tiny_sweep_writes_every_field(tiny_sweep):
    out, report = tiny_sweep
    machine = report["machine"]
    assert {"machine", "device_kind", "platform", "driver", "jax", "date", "cpu", "cpu_count"} <= set(machine)
    assert machine["platform"] == "cpu" and machine["driver"] is None and machine["machine"].endswith("-core CPU")
    assert report["settings"]["env"] == "CartPole-v1" and report["settings"]["num_envs"] == [64]
    # 64 envs x replay ratio 2 = 128 samples per vector step: one update of 256 every second vector step.
    assert report["settings"]["train"] == {"updates_per_step": 0.5, "batch_size": 256}
    assert report["settings"]["train_1x128"] == {"updates_per_step": 1, "batch_size": 128}
    classic = report["classic"]
    assert classic["num_envs"] == 1 and classic["timed_steps"] == 300 and classic["env_steps_per_s"] > 0
    assert classic["extrapolated_s"] == pytest.approx(3_000_000 / classic["env_steps_per_s"])
    assert [row["num_envs"] for row in report["sizes"]] == [64]
    for row in report["sizes"]:
        assert set(row["phases"]) == {"env", "act", "learn", "train", "train_1x128", "act_learn"}
        for name, phase in row["phases"].items():
            assert set(phase) == PHASE_FIELDS, name
            assert phase["status"] == "ok" and phase["env_steps_per_s"] > 0 and phase["compile_s"] > 0
            assert phase["peak_bytes_in_use"] is None  # the CPU backend keeps no memory statistics
            assert phase["program_bytes"] > 0
        phases = row["phases"]
        assert phases["env"]["updates_per_s"] == 0 and phases["act"]["updates_per_s"] == 0
        # Learning is on from the first timed step: updates/s = updates per vector step / seconds per vector step.
        for name, updates in (("learn", 1), ("train", 0.5), ("train_1x128", 1), ("act_learn", 1)):
            assert phases[name]["updates_per_step"] == updates
            assert phases[name]["updates_per_s"] == pytest.approx(updates * 1e6 / phases[name]["us_per_iteration"])
        alone = phases["act"]["us_per_iteration"] + phases["learn"]["us_per_iteration"]
        assert row["fused_over_sum"] == pytest.approx(phases["train"]["us_per_iteration"] / alone)
        assert row["plain_fused_over_sum"] == pytest.approx(phases["act_learn"]["us_per_iteration"] / alone)
    table = out.with_suffix(".md").read_text()
    assert "2-core CPU" in table or machine["machine"] in table
    assert "test run" in table and "| 64 |" in table and "extrapolated" in table
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_another_learner_is_measured_through_the_same_phases(tmp_path):
    """QR-DQN's trainer in every phase (XLA's kernels: the fused ones are DQN's), named in the report."""
    out = tmp_path / "qrdqn"
    result = run_benchmark("--learner", "qrdqn", "--num_envs", "64:64", "--iterations", "2", "--min_seconds", "0.1",
                           "--repeats", "1", "--classic_steps", "0", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["learner"] == "qrdqn" and report["settings"]["trainer_defaults"]["learner"] == "qrdqn"
    phases = report["sizes"][0]["phases"]
    assert all(phases[name]["status"] == "ok" for name in ("env", "act", "learn", "train", "train_1x128"))
    assert out.with_suffix(".md").read_text().startswith("# Throughput on ") and ": CartPole-v1, qrdqn" in \
        out.with_suffix(".md").read_text().splitlines()[0]


@pytest.mark.parametrize("flags, message", [
    (["--num_envs", "100:4096"], "powers of two"),
    (["--num_envs", "256-4096"], "LOW:HIGH"),
    (["--num_envs", "256:16384", "--env", "NoSuchEnv-v0"], "unknown environment"),
])
def test_bad_input_exits_2_with_one_line(flags, message, tmp_path):
    result = run_benchmark(*flags, "--out", str(tmp_path / "never"), timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written
