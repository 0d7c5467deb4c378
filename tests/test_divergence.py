"""A diverging run stops with one line and exit code 3, keeps its last good checkpoint, and a checkpoint
with non-finite parameters is refused by `jaxdqn.evaluate` and `load_policy`.

`--lr 1e30` on the tiny CartPole run below gives a NaN loss in the first chunk that learns (env step
128), after one finite chunk (env step 64) has been checkpointed. The runs are in process, through
`jaxdqn.train.main`; the second one loads the first one's compiled programs (`--compile_cache`).
"""

from __future__ import annotations

import contextlib
import io
import types

import jax
import numpy as np
import pytest

import jaxdqn
import jaxdqn.train
from jaxdqn import checkpoint
from jaxdqn.errors import ConfigError
from jaxdqn.population import Agent

TINY = ["--env", "cartpole", "--num_envs", "16", "--hidden_sizes", "16", "--chunk_steps", "64",
        "--total_steps", "256", "--buffer_size", "256", "--batch_size", "32", "--updates_per_step", "2",
        "--learning_starts", "64", "--eps_decay_steps", "256", "--eval_frequency", "256", "--eval_episodes", "8",
        "--quiet"]
DIVERGES = [*TINY, "--lr", "1e30"]


def run_main(main, argv) -> tuple[int, list[str]]:
    """`main(argv)`'s exit code and stderr lines."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    return code, err.getvalue().splitlines()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The diverging run, and the same run with the check turned off, which saves NaN parameters."""
    root = tmp_path_factory.mktemp("divergence")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)  # JAX's own cache stays off
        flags = [*DIVERGES, "--compile_cache", root / "cache", "--checkpoint_frequency", "1"]
        diverged = run_main(jaxdqn.train.main, [*flags, "--save_model", root / "ckpt", "--log_dir", root / "log"])
        patch.setattr(jaxdqn.train, "divergence", lambda *args: None)
        unchecked = run_main(jaxdqn.train.main, [*flags, "--save_model", root / "nan", "--log_dir", root / "nan_log"])
    assert unchecked[0] == 0, unchecked[1]
    return types.SimpleNamespace(root=root, code=diverged[0], lines=diverged[1])


def test_a_diverging_run_stops_with_one_line_and_exit_3_keeping_the_last_good_checkpoint(runs):
    ckpt = runs.root / "ckpt"
    assert runs.code == 3
    assert runs.lines == [f"jaxdqn.train: error: training diverged at env step 128: the loss is nan "
                          f"(last good checkpoint: step 64 in {ckpt})"]
    assert checkpoint.complete_steps(ckpt) == [64]  # nothing saved at or after the diverged chunk
    params = checkpoint.load_agent(ckpt).params
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
    rows = (runs.root / "log" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["64", "128"]  # the diverged chunk's row, then nothing
    assert not (runs.root / "log" / "summary.json").exists()


def test_evaluate_and_load_policy_refuse_a_checkpoint_with_non_finite_parameters(runs, capsys):
    from jaxdqn.evaluate import main

    nan = runs.root / "nan"
    latest = checkpoint.complete_steps(nan)[-1]
    assert main(["--load_model", str(nan), "--no_compile_cache"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"jaxdqn.evaluate: error: checkpoint {nan / str(latest)}: its parameters are not finite"), lines
    assert not (nan / "eval.json").exists()
    with pytest.raises(ConfigError, match="parameters are not finite"):
        jaxdqn.load_policy(nan)


def test_a_diverging_agent_of_a_sweep_is_named_and_stops_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
    code = jaxdqn.train.main([*TINY, "--sweep", "lr=1e-3,1e30", "--no_compile_cache", "--log_dir", str(tmp_path)])
    assert code == 3
    assert capsys.readouterr().err.splitlines() == [
        "jaxdqn.train: error: training diverged at env step 128: agent lr=1e+30 seed=0 (1 of 2 agents diverged): "
        "the loss is nan"]


def chunk_metrics(loss, params_finite):
    return types.SimpleNamespace(loss=np.asarray(loss, np.float32), params_finite=np.asarray(params_finite))


@pytest.mark.parametrize("metrics, learned, agents, expected", [
    (chunk_metrics(np.nan, True), False, [Agent(0)], None),  # no update in the chunk: its loss is NaN
    (chunk_metrics(0.5, True), True, [Agent(0)], None),
    (chunk_metrics(np.inf, True), True, [Agent(0)], "the loss is inf"),
    (chunk_metrics(0.5, False), True, [Agent(0)], "the online parameters are not finite"),
    (chunk_metrics([0.5, 0.4, np.nan], [True, False, False]), True, [Agent(0), Agent(1), Agent(2)],
     "agent seed=1 (2 of 3 agents diverged): the online parameters are not finite"),
])
def test_divergence_names_the_cause_and_the_agent(metrics, learned, agents, expected):
    assert jaxdqn.train.divergence(metrics, learned, agents) == expected


def test_all_finite_is_one_boolean_over_the_tree():
    import jax.numpy as jnp

    from jaxdqn.agent import all_finite

    assert bool(all_finite({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}))
    assert not bool(all_finite({"w": jnp.ones((2, 3)), "b": jnp.array([0.0, jnp.inf, 0.0])}))
