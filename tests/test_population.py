"""Many agents in one program: seeds differ, a sweep matches separate runs, bad sweep specs are rejected."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdqn import parallel, population
from jaxdqn.errors import ConfigError
from jaxdqn.train import build_program, main
from tests.conftest import ROOT, cheap_compile_env
from tests.test_cli import TINY



def final_params(config):
    """Trains `config` through the layered API; returns device 0's parameters (leading agent axis if any)."""
    program = build_program(config)
    state = program.initial_state()
    for _ in range(config.num_chunks):
        state, _ = program.run_chunk(state)
    return jax.tree.map(np.asarray, parallel.first_device(state.params))


def test_a_four_point_sweep_matches_separate_runs(small_config):
    """Points 1 and 2 of the 2 x 2 grid each change one key from point 0, so matching their separate runs pins the
    grid's order (first key slowest) and that both values of both keys reach their agents."""
    base = dict(total_steps=16 * 24, chunk_steps=16 * 8)
    swept = final_params(small_config(sweep=("lr=1e-3,3e-3", "gamma=0.9,0.99"), **base))
    for index, (lr, gamma) in ((1, (1e-3, 0.99)), (2, (3e-3, 0.9))):
        alone = final_params(small_config(lr=lr, gamma=gamma, **base))
        jax.tree.map(lambda many, one: np.testing.assert_allclose(many[index], one, rtol=1e-4, atol=1e-5), swept, alone)
    # four distinct agents
    assert len({agent.tobytes() for agent in jax.tree.leaves(swept)[0]}) == 4


def test_seeds_differ_and_are_the_separate_runs(small_config):
    base = dict(total_steps=16 * 16, chunk_steps=16 * 8, seed=5)
    seeds = final_params(small_config(num_seeds=3, **base))
    leaves = jax.tree.leaves(seeds)[0]
    assert not np.array_equal(leaves[0], leaves[1]) and not np.array_equal(leaves[1], leaves[2])
    alone = final_params(small_config(**{**base, "seed": 6}))  # the second agent is seed + 1
    np.testing.assert_allclose(leaves[1], jax.tree.leaves(alone)[0], rtol=1e-4, atol=1e-5)


def test_cli_writes_per_seed_results_and_the_ranked_sweep_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxdqn.train", *TINY, "--num_seeds", "2", "--sweep", "tau=0.05,1", "--quiet",
         "--log_dir", str(tmp_path)], cwd=ROOT, env=cheap_compile_env(), capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_agents"] == 4
    assert [(agent["tau"], agent["seed"]) for agent in summary["agents"]] == [(0.05, 0), (0.05, 1), (1.0, 0), (1.0, 1)]
    assert sorted(row["tau"] for row in summary["sweep"]) == [0.05, 1.0]  # one row per point (figures: next test)
    assert (tmp_path / "sweep.csv").read_text().startswith("tau,seeds,eval_return_mean")
    assert "| rank | tau |" in (tmp_path / "sweep.md").read_text()
    assert "4 agents x 8 episodes" in result.stdout.strip().splitlines()[-1]


def test_summary_and_ranked_sweep_hand_computed(tmp_path):
    """Four agents, tau 0.05 and 1 times seeds 0 and 1, with hand-picked final returns and solve steps."""
    from jaxdqn.config import TrainConfig

    config = TrainConfig(num_seeds=2, sweep=("tau=0.05,1",))
    agents = population.make_agents(config)
    returns = np.array([[10.0, 20.0], [30.0, 30.0], [40.0, 60.0], [0.0, 20.0]])  # agent means 15, 30, 50, 10
    summary = population.summarize(config, agents, returns, [1000, None, 2000, 4000], tmp_path)
    assert [(agent["tau"], agent["seed"], agent["eval_return_mean"]) for agent in summary["agents"]] == [
        (0.05, 0, 15.0), (0.05, 1, 30.0), (1.0, 0, 50.0), (1.0, 1, 10.0)]
    assert summary["agents_eval_return_mean"] == pytest.approx(26.25) and summary["agents_eval_return_min"] == 10.0
    assert summary["agents_eval_return_iqm"] == pytest.approx(22.5)  # the middle two of 10, 15, 30, 50
    # tau 1 first: mean 30 over its seeds against 22.5
    assert [(row["tau"], row["eval_return_mean"], row["eval_return_min"], row["solved_seeds"],
             row["median_steps_to_solve"]) for row in summary["sweep"]] == [(1.0, 30.0, 10.0, 2, 3000.0),
                                                                          (0.05, 22.5, 15.0, 1, 1000.0)]
    assert (tmp_path / "sweep.md").read_text().splitlines()[2] == "| 1 | 1 | 2 | 30.0 | 10.0 | 2 | 3,000 |"


def test_interquartile_mean_hand_computed():
    assert population.interquartile_mean(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])) == pytest.approx(3.5)


@pytest.mark.parametrize("flags, message", [
    (["--sweep", "batch_size=32,64"], "--sweep batch_size: is fixed when the program is compiled"),
    (["--sweep", "hidden_sizes=8"], "--sweep hidden_sizes: is fixed when the program is compiled"),
    (["--sweep", "colour=1,2"], "--sweep colour: is not a hyperparameter"),
    (["--sweep", "lr="], "--sweep lr: empty value"),
    (["--sweep", "lr=1e-3,,2e-3"], "--sweep lr: empty value"),
    (["--sweep", "lr=fast"], "--sweep lr: not a number"),
    (["--sweep", "lr"], "--sweep expects KEY=V1,V2"),
    (["--sweep", "lr=1e-3", "lr=2e-3"], "--sweep lr given twice"),
    (["--sweep", "gamma=0.5,2"], "--gamma must be in (0, 1]"),
    (["--num_seeds", "0"], "--num_seeds must be positive"),
])
def test_bad_population_flags_are_one_line_exit_2(capsys, tmp_path, flags, message):
    code = main([*TINY, *flags, "--log_dir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
    assert not (tmp_path / "run").exists()


def test_parse_sweep_builds_the_grid():
    assert population.parse_sweep(("lr=1e-4,3e-4", "tau=1")) == {"lr": [1e-4, 3e-4], "tau": [1.0]}
    with pytest.raises(ConfigError):
        population.parse_sweep(("num_envs=1,2",))
