"""Lambda-returns over the n-step window (Peng's Q(lambda), Peng & Williams 1996; `--td_lambda`).

The return is checked by hand, then against the n-step return it must equal at lambda = 1 and the one-step
target at lambda = 0, on windows read from a buffer with episode ends inside them, and with a learner's
networks; a run with it learns a probe env's known Q-values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn import buffer as replay
from jaxdqn import kernels, losses
from jaxdqn.config import TrainConfig, build_config
from jaxdqn.learners import DQN
from jaxdqn.learners.base import lambda_batch
from jaxdqn.networks import MLPQNetwork
from jaxdqn.registry import ConfigError, get_spec
from tests.probe_envs import q_values
from tests.test_variants import _buffer

GAMMA = 0.5


def _return(reward, discount, value, counted, lam):
    return float(losses.lambda_return(*(jnp.asarray(x) for x in (reward, discount, value, counted)), lam))


def test_lambda_return_by_hand():
    """r = 1, 2, 3; V(s_1..s_3) = 10, 20, 30; gamma 0.9, no end: G_2 = 3 + 0.9 x 30 = 30 at every lambda."""
    reward, value, counted = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [True, True, True]
    discount = [0.9, 0.9, 0.9]
    assert _return(reward, discount, value, counted, 0.0) == pytest.approx(10.0)  # 1 + 0.9 x 10: one step
    # lambda 1: 1 + 0.9 (2 + 0.9 x 30) = 27.1, the 3-step return
    assert _return(reward, discount, value, counted, 1.0) == pytest.approx(27.1)
    # lambda 1/2: G_1 = 2 + 0.9 (10 + 15) = 24.5; G_0 = 1 + 0.9 (5 + 12.25) = 16.525
    assert _return(reward, discount, value, counted, 0.5) == pytest.approx(16.525)
    # terminated at step 1 (its discount 0, step 2 not counted): G_1 = 2, G_0 = 1 + 0.9 (5 + 1) = 6.4
    assert _return(reward, [0.9, 0.0, 0.9], value, [True, True, False], 0.5) == pytest.approx(6.4)
    # truncated at step 0 (steps 1 and 2 not counted, the bootstrap kept): 1 + 0.9 x 10 whatever lambda
    assert _return(reward, discount, value, [True, False, False], 0.5) == pytest.approx(10.0)


def test_windows_give_the_n_step_return_at_lambda_1_and_one_step_at_0():
    """The n-step test's buffer (ends in the window: truncated, terminated, both), with V(s) = s: at lambda = 1
    the return is the n-step batch's reward + discount x V(its bootstrap observation), at 0 the one-step one."""
    reward = [[1.0] * 6, [2.0] * 6, [4.0] * 6]
    terminated = [[0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]]
    truncated = [[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    buffer = _buffer(reward, terminated, truncated)
    rows, envs = jnp.zeros(6, jnp.int32), jnp.arange(6)
    window = replay.gather_window(buffer, rows, envs, jnp.float32(GAMMA), 3)
    assert window.next_obs.shape == (6, 3, 1) and window.reward.shape == (6, 3)
    np.testing.assert_array_equal(window.next_obs[1, :, 0], [1001.0, 1011.0, 1021.0])  # 1000 + 10 step + env
    # step 1 is counted unless step 0 ended the episode (envs 3 and 5); step 2 also not after an end at step 1
    np.testing.assert_array_equal(window.counted[:, 1], [True, True, True, False, True, False])
    np.testing.assert_array_equal(window.counted[:, 2], [True, False, False, False, True, False])
    value = window.next_obs[..., 0]
    returns = {lam: np.array([_return(window.reward[i], window.discount[i], value[i], window.counted[i], lam)
                              for i in range(6)]) for lam in (0.0, 1.0)}
    n_step = replay.gather_batch(buffer, rows, envs, jnp.float32(GAMMA), 3)
    np.testing.assert_allclose(returns[1.0], n_step.reward + n_step.discount * n_step.next_obs[:, 0], rtol=1e-6)
    one_step = replay.gather_batch(buffer, rows, envs, jnp.float32(GAMMA), 1)
    np.testing.assert_allclose(returns[0.0], one_step.reward + one_step.discount * one_step.next_obs[:, 0], rtol=1e-6)


@pytest.mark.parametrize("double", [True, False])
def test_a_learners_lambda_batch_at_lambda_1_has_the_n_step_target(double):
    """With networks: the lambda-return at 1 is the n-step target r + discount x value(s'), value from the
    target network (at the online network's greedy action for Double DQN); the batch's discount is 0."""
    reward = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    terminated = np.zeros((6, 4), bool)
    terminated[2, 1] = terminated[4, 3] = True
    buffer = _buffer(reward, terminated)
    learner = DQN(network=MLPQNetwork(num_actions=3, hidden_sizes=(8,)), double=double)
    params = learner.network.init(jax.random.key(0), jnp.zeros((1, 1)))
    target_params = learner.network.init(jax.random.key(1), jnp.zeros((1, 1)))
    rows, envs = jnp.array([0, 1, 2, 3, 0, 2]), jnp.array([0, 1, 1, 3, 3, 2])
    window = replay.gather_window(buffer, rows, envs, jnp.float32(0.9), 3)
    batch = lambda_batch(learner, params, target_params, window, 1.0)
    np.testing.assert_array_equal(batch.discount, np.zeros(6))
    n_step = replay.gather_batch(buffer, rows, envs, jnp.float32(0.9), 3)
    next_target = learner.q_values(target_params, n_step.next_obs)
    next_online = learner.q_values(params, n_step.next_obs) if double else None
    expected = jax.vmap(losses.bootstrap_target, in_axes=(0, 0, 0, 0 if double else None))(
        n_step.reward, n_step.discount, next_target, next_online)
    np.testing.assert_allclose(batch.reward, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch.obs, n_step.obs)
    np.testing.assert_array_equal(batch.action, n_step.action)
    # Its loss skips the networks at s' (the discount is 0): the same loss and gradients as with them.
    for stacked in (False, True):
        with_next, without_next = (jax.value_and_grad(
            lambda p, bootstrap=bootstrap: learner.loss_and_priorities(p, target_params, batch, stacked=stacked,
                                                                       bootstrap=bootstrap)[0])(params)
            for bootstrap in (True, False))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), with_next, without_next)


@pytest.mark.parametrize("flags, message", [
    (dict(td_lambda=1.5, n_step=3), "--td_lambda must be in [0, 1], got 1.5"),
    (dict(td_lambda=0.5), "--td_lambda 0.5 needs --n_step > 1"),
    (dict(td_lambda=0.5, n_step=3, learner="c51"), "--td_lambda runs with --learner dqn only, not c51"),
])
def test_impossible_lambda_settings_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**flags).validate()


def test_minatars_lambda_default_gives_way_where_it_cannot_apply():
    """MinAtar's defaults are 4-step returns at lambda 0.65 for DQN. A learner without lambda-returns (c51 given,
    or the rainbow preset's) and one-step returns get plain returns instead of an error; a lambda the user
    gives is still checked."""
    breakout = get_spec("Breakout-MinAtar")
    default = build_config({}, breakout)
    assert (default.learner, default.n_step, default.td_lambda) == ("dqn", 4, 0.65)
    for flags, n_step in ((dict(learner="c51"), 4), (dict(preset="rainbow"), 3), (dict(n_step=1), 1)):
        config = build_config(flags, breakout)
        assert (config.n_step, config.td_lambda) == (n_step, 1.0), flags
    assert build_config(dict(td_lambda=0.9), breakout).td_lambda == 0.9
    with pytest.raises(ConfigError, match="--td_lambda runs with --learner dqn only, not qrdqn"):
        build_config(dict(learner="qrdqn", td_lambda=0.65), breakout)
    assert build_config({}, get_spec("CartPole-v1")).td_lambda == 1.0


def test_the_update_kernel_does_not_run_lambda_returns():
    config = TrainConfig(n_step=3, td_lambda=0.5, hidden_sizes=(128, 128)).validate()
    learner = DQN(network=MLPQNetwork(num_actions=2, hidden_sizes=(128, 128)))
    assert kernels.choose(config, learner, (4,), 256, kernel=kernels.Path.INTERPRET).update is kernels.Path.XLA
    plain = TrainConfig(n_step=3, hidden_sizes=(128, 128)).validate()
    assert kernels.choose(plain, learner, (4,), 256, kernel=kernels.Path.INTERPRET).update is kernels.Path.INTERPRET


def test_a_run_with_lambda_returns_learns_the_probe_env():
    """TwoStep (Q(0) = gamma x 1 = 0.5, Q(1) = 1) with 2-step windows at lambda 1/2."""
    from jaxdqn.train import build_program

    config = build_config(dict(num_envs=64, total_steps=65_536, chunk_steps=16_384, learning_starts=16_384,
                               buffer_size=65_536, batch_size=64, lr=1e-2, lr_anneal=False, gamma=0.5, n_step=2,
                               td_lambda=0.5, hidden_sizes=(32,), eps_decay_steps=65_536, eval_episodes=8,
                               num_devices=1), get_spec("tests.probe_envs:TwoStep"))
    program = build_program(config)
    state = program.initial_state()
    for _ in range(config.num_chunks):
        state, _ = program.run_chunk(state)
    np.testing.assert_allclose(q_values(program, state, [[0.0], [1.0]]), [[0.5], [1.0]], atol=0.1)
