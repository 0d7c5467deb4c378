"""Unit tests of the trainer's parts against hand-computed numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn import buffer as replay
from jaxdqn import losses
from tests.conftest import make_trainer


def test_q_learning_target_hand_computed():
    next_q = jnp.array([1.0, 3.0, 2.0])
    # r + gamma * max_a Q'(s', a) = 0.5 + 0.9 * 3
    assert float(losses.q_learning_target(jnp.float32(0.5), jnp.bool_(False), jnp.float32(0.9), next_q)) == pytest.approx(3.2)
    # a terminal s' cuts the bootstrap
    assert float(losses.q_learning_target(jnp.float32(0.5), jnp.bool_(True), jnp.float32(0.9), next_q)) == pytest.approx(0.5)


def test_double_dqn_target_uses_online_argmax():
    next_q_target = jnp.array([1.0, 3.0, 2.0])
    next_q_online = jnp.array([0.0, -1.0, 5.0])  # online picks action 2, evaluated by the target net: 2.0
    target = losses.q_learning_target(jnp.float32(1.0), jnp.bool_(False), jnp.float32(0.5), next_q_target, next_q_online)
    assert float(target) == pytest.approx(1.0 + 0.5 * 2.0)


def test_td_error_and_losses_hand_computed():
    q = jnp.array([[1.0, 2.0], [0.0, 4.0]])
    errors = losses.batch_td_error(q, jnp.array([1, 0]), jnp.array([2.5, -3.0]))
    np.testing.assert_allclose(errors, [0.5, -3.0])
    # Huber with delta 1: 0.5 * e^2 inside [-1, 1], |e| - 0.5 outside
    np.testing.assert_allclose(losses.td_loss(errors, "huber"), [0.125, 2.5])
    np.testing.assert_allclose(losses.td_loss(errors, "mse"), [0.25, 9.0])
    with pytest.raises(ValueError):
        losses.td_loss(errors, "l1")


def _transition(value: float, num_envs: int = 2) -> replay.Transition:
    full = jnp.full((num_envs,), value, jnp.float32)
    return replay.Transition(obs=full[:, None], action=full.astype(jnp.int32), reward=full,
                             next_obs=full[:, None] + 0.5, terminated=jnp.zeros(num_envs, jnp.bool_))


def test_buffer_wraps_around_and_overwrites_oldest():
    buf = replay.init(3, _transition(0.0))
    for value in (1.0, 2.0, 3.0, 4.0):
        buf = replay.add(buf, _transition(value))
    # rows hold 4, 2, 3: the fourth insert overwrote the first row
    np.testing.assert_array_equal(buf.transitions.reward[:, 0], [4.0, 2.0, 3.0])
    np.testing.assert_array_equal(buf.transitions.next_obs[:, 0, 0], [4.5, 2.5, 3.5])
    assert int(buf.next_row) == 1
    assert int(buf.filled_rows) == 3


def test_buffer_samples_only_filled_slots():
    buf = replay.init(8, _transition(0.0, num_envs=4))
    buf = replay.add(buf, _transition(7.0, num_envs=4))
    buf = replay.add(buf, _transition(9.0, num_envs=4))
    batch = replay.sample(buf, jax.random.key(0), 4096)
    values = np.asarray(batch.reward)
    assert set(np.unique(values)) == {7.0, 9.0}  # never an empty (zero) slot
    assert 0.4 < np.mean(values == 7.0) < 0.6  # uniform over the filled rows
    np.testing.assert_array_equal(np.asarray(batch.next_obs)[:, 0], values + 0.5)  # fields stay aligned


@pytest.mark.parametrize("n_step", [1, 3])
def test_packed_and_field_by_field_buffers_store_and_sample_the_same_transitions(n_step):
    """Float32 observations are packed into one row per slot (one write, one gather); every field comes
    back exactly as the field-by-field layout keeps it, through wrap-around, sampling and n-step windows."""
    num_envs, rows = 4, 5
    lanes = jnp.arange(num_envs)

    def transition(step: int) -> replay.Transition:
        obs = jax.random.normal(jax.random.key(step), (num_envs, 2, 3))
        return replay.Transition(obs=obs, action=(lanes + step) % 3, reward=jnp.float32(step) - lanes / 7,
                                 next_obs=obs * 2, terminated=(lanes + step) % 4 == 0,
                                 truncated=(lanes + step) % 3 == 0 if n_step > 1 else None)

    packed, by_field = (replay.init(rows, transition(0), packed=layout) for layout in (True, False))
    assert packed.layout is not None and by_field.layout is None and replay.init(rows, transition(0)).layout
    assert packed.data.shape == (rows, num_envs, 2 * 6 + 3 + (n_step > 1))
    for step in range(1, 8):  # 7 inserts into 5 rows: wraps around
        packed, by_field = replay.add(packed, transition(step)), replay.add(by_field, transition(step))
    stored = packed.transitions
    for field in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        ours, theirs = getattr(stored, field), getattr(by_field.transitions, field)
        if theirs is None:
            assert ours is None
            continue
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
    starts = replay.sample_uniform(packed, jax.random.key(1), (6, 5), n_step)
    batches = [replay.gather_batch(buffer, *starts, 0.9, n_step) for buffer in (packed, by_field)]
    jax.tree.map(np.testing.assert_array_equal, *batches)
    assert batches[0].action.dtype == jnp.int32
    scalars = [buffer.take(*starts, scalars_only=True) for buffer in (packed, by_field)]
    assert scalars[0].obs is None and scalars[0].next_obs is None
    jax.tree.map(np.testing.assert_array_equal, *scalars)
    np.testing.assert_array_equal(scalars[0].reward, packed.take(*starts).reward)


def test_boolean_observations_keep_one_array_per_field():
    example = replay.Transition(obs=jnp.zeros((2, 10, 10, 4), bool), action=jnp.zeros(2, jnp.int32),
                                reward=jnp.zeros(2), next_obs=jnp.zeros((2, 10, 10, 4), bool),
                                terminated=jnp.zeros(2, bool))
    buffer = replay.init(3, example)
    assert buffer.layout is None and buffer.data.obs.dtype == jnp.bool_
    with pytest.raises(ValueError, match="do not pack"):
        replay.init(3, example, packed=True)


def test_epsilon_schedule_is_linear_in_env_steps(small_config):
    config = small_config(num_envs=16, eps=0.9, min_eps=0.1, eps_decay_steps=320)
    dqn = make_trainer(config)
    hparams = config.hparams
    # 16 envs per iteration: 320 env steps = 20 iterations
    values = [float(dqn.epsilon(jnp.int32(i), hparams)) for i in (0, 10, 20, 40)]
    np.testing.assert_allclose(values, [0.9, 0.5, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize("num_envs", [4, 48])
def test_target_update_fires_every_n_updates_whatever_num_envs(small_config, num_envs):
    config = small_config(num_envs=num_envs, buffer_size=num_envs * 8, target_update_frequency=3, tau=1.0,
                          learning_starts=0)
    dqn = make_trainer(config)
    state = dqn.init(jax.random.key(0), config.hparams)
    state = state.replace(buffer=replay.add(state.buffer, replay.Transition(
        obs=state.obs, action=jnp.zeros(num_envs, jnp.int32), reward=jnp.ones(num_envs),
        next_obs=state.obs, terminated=jnp.zeros(num_envs, jnp.bool_))))
    update = jax.jit(dqn.update)
    fired = []
    for i in range(9):
        before = state.target_params
        batch = replay.one_step(replay.sample(state.buffer, jax.random.key(i), config.batch_size), config.gamma)
        state, _, _ = update(state, batch)
        changed = not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), before, state.target_params)))
        if changed:  # with tau = 1 the target becomes an exact copy of the online network
            assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, state.target_params)))
        fired.append(changed)
    assert fired == [False, False, True] * 3
    assert int(state.updates) == 9


def test_polyak_target_update(small_config):
    config = small_config(target_update_frequency=1, tau=0.25, learning_starts=0)
    dqn = make_trainer(config)
    state = dqn.init(jax.random.key(0), config.hparams)
    state = state.replace(buffer=replay.add(state.buffer, replay.Transition(
        obs=state.obs, action=jnp.zeros(16, jnp.int32), reward=jnp.ones(16),
        next_obs=state.obs, terminated=jnp.zeros(16, jnp.bool_))))
    batch = replay.one_step(replay.sample(state.buffer, jax.random.key(1), config.batch_size), config.gamma)
    new_state, _, _ = jax.jit(dqn.update)(state, batch)
    expected = jax.tree.map(lambda new, old: 0.25 * new + 0.75 * old, new_state.params, state.target_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new_state.target_params, expected)


def test_truncation_bootstraps_and_termination_does_not(small_config):
    """A stored time-limit truncation keeps the bootstrap; a termination cuts it (checked on the loss)."""
    config = small_config(learning_starts=0, double=False, loss="mse")
    dqn = make_trainer(config)
    state = dqn.init(jax.random.key(0), config.hparams)
    obs = state.obs[:1]
    q_next = jnp.max(dqn.network.apply(state.target_params, obs))
    q = dqn.network.apply(state.params, obs)[0, 0]
    gamma = config.hparams.gamma

    def loss(terminated):
        batch = replay.Transition(obs=obs, action=jnp.zeros(1, jnp.int32), reward=jnp.ones(1), next_obs=obs,
                                  terminated=jnp.array([terminated]))
        return float(dqn.loss(state.params, state.target_params, replay.one_step(batch, gamma)))

    assert loss(False) == pytest.approx(float((1.0 + gamma * q_next - q) ** 2), rel=1e-5)
    assert loss(True) == pytest.approx(float((1.0 - q) ** 2), rel=1e-5)


def test_stored_next_obs_is_the_final_observation(small_config):
    """At an episode's end the buffer holds the pre-reset observation, and `terminated` only for terminals."""
    from jaxdqn.agent import Trainer
    from jaxdqn.networks import make_network
    from tests.probe_envs import StepCounter

    config = small_config(num_envs=4, buffer_size=64, learning_starts=10**6)
    env = StepCounter()
    dqn = Trainer(config, env, env.default_params, make_network((1,), 1, config))
    state = dqn.init(jax.random.key(0), config.hparams)
    step = jax.jit(dqn.train_step)
    for _ in range(3):
        state, _ = step(state)
    data = state.buffer.transitions
    # the observation counts steps within the episode; the episode is truncated after 2 steps
    np.testing.assert_array_equal(np.asarray(data.obs[:3, 0, 0]), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(data.next_obs[:3, 0, 0]), [1.0, 2.0, 1.0])
    assert not np.asarray(data.terminated[:3]).any()


def test_chunk_metrics_count_every_finished_episode(small_config):
    """Episode statistics add up per env through the chunk, then over the envs: 4 envs x 7 steps of
    2-step episodes (reward 1 per step) finish 4 x 3 episodes of return 2 and length 2."""
    from jaxdqn.agent import Trainer
    from jaxdqn.networks import make_network
    from tests.probe_envs import StepCounter

    config = small_config(num_envs=4, buffer_size=64, learning_starts=10**6)
    env = StepCounter()
    dqn = Trainer(config, env, env.default_params, make_network((1,), 1, config))
    state = dqn.init(jax.random.key(0), config.hparams)
    _, metrics = jax.jit(dqn.run_chunk, static_argnums=1)(state, 7)
    assert int(metrics.episodes) == 12 and int(metrics.iteration) == 7
    assert float(metrics.train_return) == 2.0 and float(metrics.train_length) == 2.0
    assert np.isnan(float(metrics.loss))  # no update before learning_starts


def test_buffer_samples_batches_for_several_updates_at_once():
    buf = replay.init(4, _transition(0.0, num_envs=2))
    buf = replay.add(buf, _transition(3.0, num_envs=2))
    batches = replay.sample(buf, jax.random.key(1), (5, 7))
    assert batches.obs.shape == (5, 7, 1) and batches.action.shape == (5, 7)
    np.testing.assert_array_equal(np.asarray(batches.reward), 3.0)


@pytest.mark.parametrize("env, double", [("CartPole-v1", True), ("CartPole-v1", False), ("Breakout-MinAtar", True)])
def test_stacked_networks_give_the_same_td_errors_and_gradients(small_config, env, double):
    """The GPU path (`Backend.stacked_networks`: online and target network vmapped over both parameter
    sets) computes what two separate forward passes compute, gradients included."""
    config = small_config(env=env, double=double, hidden_sizes=(32, 32))
    dqn = make_trainer(config)
    state = dqn.init(jax.random.key(0), config.hparams)
    # A target network that differs from the online one, and a batch with terminal transitions.
    target = jax.tree.map(lambda leaf: leaf + 0.1 * jax.random.normal(jax.random.key(1), leaf.shape),
                          state.target_params)
    keys = jax.random.split(jax.random.key(2), 3)
    obs = state.obs
    batch = replay.one_step(replay.Transition(
        obs=obs, action=jax.random.randint(keys[0], (obs.shape[0],), 0, dqn.num_actions),
        reward=jax.random.normal(keys[1], (obs.shape[0],)), next_obs=obs[::-1],
        terminated=jax.random.bernoulli(keys[2], 0.3, (obs.shape[0],))), config.hparams.gamma)
    results = {}
    for stacked in (False, True):
        def loss_and_errors(params):
            return dqn.learner.loss_and_priorities(params, target, batch, stacked=stacked)

        (_, errors), grads = jax.value_and_grad(loss_and_errors, has_aux=True)(state.params)
        results[stacked] = errors, grads
    assert float(jnp.abs(results[False][0]).max()) > 1e-3  # not trivially zero
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[True][1],
                 results[False][1])


def test_a_vector_step_learns_from_the_buffer_as_it_was_before_the_step(small_config):
    """The updates of a vector step sample the transitions stored before it (so that a GPU can act and
    learn at once), and learning starts at the first vector step after `learning_starts` are stored."""
    config = small_config(learning_starts=16, updates_per_step=2)  # one vector step of 16 envs
    dqn = make_trainer(config)
    step = jax.jit(dqn.train_step)
    state, metrics = step(jax.jit(dqn.init)(jax.random.key(0), config.hparams))
    assert int(state.updates) == 0 and int(metrics.num_updates) == 0  # the buffer was empty before it
    keys = dqn.step_keys(jax.random.key(5))
    after, metrics = step(state, keys)
    expected, _ = jax.jit(dqn.learn)(state, keys.learn)  # the same updates on the one stored row
    assert int(after.updates) == int(metrics.num_updates) == 2
    assert int(after.buffer.filled_rows) == 2  # and this step's transitions were stored after
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after.params, expected.params)


def test_chunk_compiler_options_are_valid_xla_options_chosen_by_config(small_config, monkeypatch):
    """The chunk's GPU options are names and values the installed XLA accepts (a typo would fail every
    GPU compile), and apply on GPUs to one device whose updates are one pass of their loop (the backend
    chosen for a GPU through `jaxdqn.kernels.choose`, as a run on one would)."""
    from jaxdqn.kernels.backend import CHUNK_GPU_OPTIONS

    compiled = jax.jit(lambda x: x + 1, compiler_options=CHUNK_GPU_OPTIONS).lower(jnp.ones(2)).compile()
    np.testing.assert_array_equal(compiled(jnp.ones(2)), 2.0)
    with pytest.raises(Exception, match="not a valid"):
        jax.jit(lambda x: x + 1, compiler_options={"xla_gpu_command_buffer_scheduling_mode": "SIDEWAYS"}).lower(
            jnp.ones(2)).compile()
    assert make_trainer(small_config(updates_per_step=1)).chunk_compiler_options() == {}  # this CPU
    one_update = make_trainer(small_config(updates_per_step=1), platform="gpu")
    assert one_update.chunk_compiler_options() == CHUNK_GPU_OPTIONS
    assert make_trainer(small_config(updates_per_step=32), platform="gpu").chunk_compiler_options() == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=")  # the user's own setting wins
    assert one_update.chunk_compiler_options() == {}
