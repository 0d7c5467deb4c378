"""Learning tests: probe environments with known Q-values, determinism, seeds, tracing, CartPole solved."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdqn import parallel
from jaxdqn.train import build_program
from tests.conftest import ROOT, subprocess_env
from tests.probe_envs import q_values


def run_program(config, num_chunks=None, program=None, seed=None):
    """Runs `num_chunks` jitted chunks through the layered API (of `program`, else one built for `config`) from
    `seed` (else the config's); returns the program, state and metrics."""
    program = program or build_program(config)
    state = program.init(np.int32(config.seed if seed is None else seed), config.hparams)
    metrics = []
    for _ in range(num_chunks or config.num_chunks):
        state, chunk_metrics = program.run_chunk(state)
        metrics.append(jax.tree.map(np.asarray, parallel.first_device(chunk_metrics)))
    return program, state, metrics


PROBE = dict(num_envs=32, total_steps=32 * 300, buffer_size=32 * 64, batch_size=64, updates_per_step=4,
             learning_starts=256, chunk_steps=32 * 100, eps_decay_steps=32 * 100, lr=1e-2, lr_anneal=False, gamma=0.5,
             hidden_sizes=(32,), eval_episodes=8)


@pytest.mark.parametrize(
    "probe, observations, expected",
    [
        ("ConstantReward", [[0.0]], [[1.0]]),
        ("ActionReward", [[0.0]], [[-1.0, 1.0]]),
        ("TwoStep", [[0.0], [1.0]], [[0.5], [1.0]]),  # Q(0) = gamma * 1
        ("TruncatedForever", [[0.0]], [[2.0]]),  # 1 / (1 - gamma): truncation is not termination
    ],
)
def test_probe_environments_learn_known_q_values(small_config, probe, observations, expected):
    config = small_config(env=f"tests.probe_envs:{probe}", **PROBE)
    program, state, _ = run_program(config)
    np.testing.assert_allclose(q_values(program, state, observations), expected, atol=0.1)


def test_same_seed_same_metrics_and_different_seeds_differ(small_config):
    """Three runs of one compiled program, the seed its argument: seed 0 twice, then seed 1."""
    config = small_config(total_steps=16 * 64, chunk_steps=16 * 16)
    program = build_program(config)

    def chunk_returns(seed):
        _, state, metrics = run_program(config, program=program, seed=seed)
        return [float(m.loss) for m in metrics] + [float(m.train_return) for m in metrics], state

    first, state_a = chunk_returns(0)
    again, state_b = chunk_returns(0)
    other, state_c = chunk_returns(1)
    np.testing.assert_array_equal(first, again)  # NaN (a chunk where no episode ended) equals NaN here
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
    assert not np.array_equal(first, other, equal_nan=True)
    assert not np.array_equal(jax.tree.leaves(state_a.params)[0], jax.tree.leaves(state_c.params)[0])


def test_chunk_is_traced_once_per_run(small_config, monkeypatch):
    from jaxdqn.agent import Trainer

    traces = []
    original = Trainer.train_step

    def counting_train_step(self, state, keys=None):
        traces.append(1)
        return original(self, state, keys)

    monkeypatch.setattr(Trainer, "train_step", counting_train_step)
    from jaxdqn.train import train

    summary = train(small_config(total_steps=16 * 4 * 5, chunk_steps=16 * 4, eval_frequency=16 * 4), log_dir=None,
                    show_progress=False)
    assert summary["total_steps"] == 16 * 4 * 5  # five chunks ran, and evaluated
    assert len(traces) == 1


def test_cartpole_solved_on_cpu_with_defaults(tmp_path):
    """The README's main command, with the defaults at 4096 envs, solves CartPole-v1 on the CPU."""
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", "--env", "cartpole", "--num_envs", "4096", "--until_solved",
         "--log_dir", str(tmp_path), "--no_compile_cache"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps_to_solve"] is not None
    assert summary["eval_return_mean"] >= 475.0
    assert "solved at" in result.stdout.strip().splitlines()[-1]
