"""Rainbow-style variants against hand-computed numbers, and each variant learning CartPole.

Dueling heads (Wang et al. 2016), n-step returns (Sutton 1988) and proportional prioritized replay
(Schaul et al. 2016), as built in `jaxdqn.networks`, `jaxdqn.buffer` and `jaxdqn.agent`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdqn import buffer as replay
from jaxdqn.config import TrainConfig
from jaxdqn.networks import MinAtarQNetwork, MLPQNetwork, dueling_q_values
from jaxdqn.registry import ConfigError
from tests.conftest import make_trainer
from tests.probe_envs import q_values
from tests.test_learning import PROBE, run_program

GAMMA = 0.5  # powers of 1/2 are exact in float32


# Dueling heads ---------------------------------------------------------------------------------

def test_dueling_combination_hand_computed():
    value = jnp.array([[2.0], [-1.0]])
    advantage = jnp.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])  # means 3 and 1
    np.testing.assert_allclose(dueling_q_values(value, advantage), [[0.0, 1.0, 5.0], [-2.0, -2.0, 1.0]])


@pytest.mark.parametrize("network, obs_shape", [
    (MLPQNetwork(num_actions=3, hidden_sizes=(8, 8), dueling=True), (4,)),
    (MLPQNetwork(num_actions=3, hidden_sizes=(8,), dueling=True, layer_norm=False), (4,)),
    (MinAtarQNetwork(num_actions=3, hidden_size=8, dueling=True), (10, 10, 2)),
])
def test_dueling_networks_add_value_to_centred_advantages(network, obs_shape):
    obs = jax.random.normal(jax.random.key(0), (5, *obs_shape))
    params = network.init(jax.random.key(1), obs)
    q, captured = network.apply(params, obs, capture_intermediates=True)
    head = captured["intermediates"]["DuelingHead_0"]
    value, advantage = head["value"]["__call__"][0], head["advantage"]["__call__"][0]
    assert value.shape == (5, 1) and advantage.shape == (5, 3)
    np.testing.assert_allclose(q, value + advantage - advantage.mean(axis=1, keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q.mean(axis=1), value[:, 0], rtol=1e-5, atol=1e-6)  # mean_a Q(s, a) = V(s)
    # two streams, each with a hidden layer as wide as the one it replaces
    assert params["params"]["DuelingHead_0"]["value_hidden"]["kernel"].shape[1] == 8
    assert params["params"]["DuelingHead_0"]["advantage_hidden"]["kernel"].shape[1] == 8


# n-step returns --------------------------------------------------------------------------------

def _buffer(reward, terminated=None, truncated=None, rows=None, prioritized=False) -> replay.ReplayBuffer:
    """A buffer filled with the vector steps `reward[t]` ([steps, num_envs]), written in order.

    Observations name their slot: obs = 10 * step + env, next_obs = 1000 + 10 * step + env.
    """
    reward = np.asarray(reward, np.float32)
    steps, num_envs = reward.shape
    terminated = np.zeros_like(reward, bool) if terminated is None else np.asarray(terminated, bool)
    truncated = np.zeros_like(reward, bool) if truncated is None else np.asarray(truncated, bool)

    def vector_step(t):
        obs = (10.0 * t + np.arange(num_envs, dtype=np.float32))[:, None]
        return replay.Transition(obs=jnp.asarray(obs), action=jnp.full(num_envs, t, jnp.int32),
                                 reward=jnp.asarray(reward[t]), next_obs=jnp.asarray(obs + 1000.0),
                                 terminated=jnp.asarray(terminated[t]), truncated=jnp.asarray(truncated[t]))

    buffer = replay.init(rows or steps, vector_step(0), prioritized=prioritized)
    for t in range(steps):
        buffer = replay.add(buffer, vector_step(t))
    return buffer


def _n_step(buffer, rows, envs, n_step):
    batch = replay.gather_batch(buffer, jnp.asarray(rows), jnp.asarray(envs), jnp.float32(GAMMA), n_step)
    return jax.tree.map(np.asarray, batch)


def test_n_step_targets_at_episode_ends():
    # Six envs, three vector steps from step 0; n = 3, gamma = 1/2; rewards 1, 2, 4 in every env.
    reward = [[1.0] * 6, [2.0] * 6, [4.0] * 6]
    terminated = [[0, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]]
    truncated = [[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    buffer = _buffer(reward, terminated, truncated)
    batch = _n_step(buffer, [0] * 6, list(range(6)), 3)
    # env 0: truncated at the window's last step: the full return, bootstrapped (truncation is no terminal)
    # env 1: terminated at step 1: r0 + g r1, no bootstrap
    # env 2: truncated at step 1: r0 + g r1, bootstrapped with g^2 from step 1's final observation
    # env 3: terminated at step 0: r0 only; env 4: terminated at the last step; env 5: both ends at step 0
    np.testing.assert_allclose(batch.reward, [3.0, 2.0, 2.0, 1.0, 3.0, 1.0])
    np.testing.assert_allclose(batch.discount, [0.125, 0.0, 0.25, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1020.0, 1011.0, 1012.0, 1003.0, 1024.0, 1005.0])
    np.testing.assert_array_equal(batch.obs[:, 0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # s and a of the first step
    np.testing.assert_array_equal(batch.action, [0] * 6)


def test_n_step_without_an_end_and_an_end_after_the_window():
    reward = [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0], [8.0, 8.0]]
    terminated = [[0, 0], [0, 0], [0, 0], [1, 0]]  # the end at step 3 is outside the window of step 0
    buffer = _buffer(reward, terminated)
    batch = _n_step(buffer, [0, 1, 1], [0, 0, 1], 3)
    np.testing.assert_allclose(batch.reward, [3.0, 2.0 + 2.0 + 2.0, 2.0 + 2.0 + 2.0])
    np.testing.assert_allclose(batch.discount, [0.125, 0.0, 0.125])  # from step 1, env 0 terminates at step 3
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1020.0, 1030.0, 1031.0])


def test_one_step_batch_is_the_one_step_target():
    buffer = _buffer([[1.0, 2.0]], terminated=[[1, 0]], truncated=[[0, 1]])
    batch = _n_step(buffer, [0, 0], [0, 1], 1)
    np.testing.assert_allclose(batch.reward, [1.0, 2.0])
    np.testing.assert_allclose(batch.discount, [0.0, 0.5])  # truncation bootstraps
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1000.0, 1001.0])


def test_n_step_windows_wrap_around_and_never_cross_the_write_head():
    # Four rows, six vector steps: rows hold steps [4, 5, 2, 3]; the next write goes to row 2.
    reward = [[2.0 ** -t, 3.0] for t in range(6)]
    buffer = _buffer(reward, rows=4)
    assert int(buffer.next_row) == 2 and int(buffer.filled_rows) == 4
    # n = 3: steps 4 and 5 (rows 0, 1) lack two written successors; steps 2 and 3 (rows 2, 3) are starts.
    np.testing.assert_array_equal(replay.valid_start_rows(buffer, 3), [False, False, True, True])
    np.testing.assert_array_equal(replay.valid_start_rows(buffer, 1), [True] * 4)
    np.testing.assert_array_equal(replay.valid_start_rows(buffer, 4), [False, False, True, False])
    batch = _n_step(buffer, [3], [0], 3)  # steps 3, 4, 5 in rows 3, 0, 1
    np.testing.assert_allclose(batch.reward, [2.0 ** -3 + GAMMA * 2.0 ** -4 + GAMMA ** 2 * 2.0 ** -5])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1050.0])
    rows, envs = replay.sample_uniform(buffer, jax.random.key(0), 20_000, n_step=3)
    rows, envs = np.asarray(rows), np.asarray(envs)
    assert set(np.unique(rows)) == {2, 3} and set(np.unique(envs)) == {0, 1}
    assert 0.47 < np.mean(rows == 2) < 0.53 and 0.47 < np.mean(envs == 0) < 0.53  # uniform over the starts


def test_n_step_starts_in_a_buffer_still_filling():
    buffer = _buffer([[1.0]] * 3, rows=5)  # rows 0-2 written, next write row 3
    np.testing.assert_array_equal(replay.valid_start_rows(buffer, 2), [True, True, False, False, False])
    rows, _ = replay.sample_uniform(buffer, jax.random.key(1), 10_000, n_step=2)
    assert set(np.unique(np.asarray(rows))) == {0, 1}


# Prioritized replay ----------------------------------------------------------------------------

def test_new_transitions_get_the_largest_priority_so_far():
    buffer = _buffer([[1.0, 1.0, 1.0]], rows=4, prioritized=True)
    np.testing.assert_array_equal(buffer.priority, [[1.0] * 3] + [[0.0] * 3] * 3)  # p_1 = 1; empty slots 0
    buffer = replay.update_priorities(buffer, jnp.array([0, 0]), jnp.array([0, 2]), jnp.array([3.0, -0.5]),
                                      alpha=0.5)
    eps = replay.PRIORITY_EPS
    np.testing.assert_allclose(buffer.priority[0], [(3.0 + eps) ** 0.5, 1.0, (0.5 + eps) ** 0.5], rtol=1e-6)
    assert float(buffer.max_priority) == pytest.approx((3.0 + eps) ** 0.5)
    example = replay.Transition(obs=jnp.zeros((3, 1)), action=jnp.zeros(3, jnp.int32), reward=jnp.zeros(3),
                                next_obs=jnp.zeros((3, 1)), terminated=jnp.zeros(3, bool), truncated=jnp.zeros(3, bool))
    buffer = replay.add(buffer, example)
    np.testing.assert_allclose(buffer.priority[1], [(3.0 + eps) ** 0.5] * 3, rtol=1e-6)


def test_a_slot_drawn_twice_keeps_its_last_td_error():
    buffer = _buffer([[1.0, 1.0]] * 2, prioritized=True)
    # [updates, batch] = [3, 2]: slot (1, 0) is drawn by updates 0, 1 and 2 (twice), slot (0, 1) once
    rows = jnp.array([[1, 0], [1, 1], [1, 1]])
    envs = jnp.array([[0, 1], [0, 0], [0, 0]])
    errors = jnp.array([[9.0, 4.0], [16.0, 25.0], [36.0, 1.0]])
    buffer = replay.update_priorities(buffer, rows, envs, errors, alpha=0.5)
    np.testing.assert_allclose(buffer.priority, [[1.0, 2.0], [1.0, 1.0]], rtol=1e-5)  # the last draw's |error|
    assert float(buffer.max_priority) == pytest.approx(6.0, rel=1e-6)  # the largest of all, sqrt(36)


def _with_priorities(buffer, priority):
    return buffer.replace(priority=jnp.asarray(priority, jnp.float32))


def test_prioritized_sampling_frequencies_match_priorities():
    priority = np.array([[1.0, 2.0, 3.0], [0.5, 8.0, 0.25], [4.0, 1.0, 6.0], [0.125, 2.0, 10.0]], np.float32)
    buffer = _with_priorities(_buffer(np.ones((4, 3)), prioritized=True), priority)
    draws = 400_000
    rows, envs, _ = replay.sample_prioritized(buffer, jax.random.key(0), draws, beta=0.4)
    counts = np.bincount(np.asarray(rows) * 3 + np.asarray(envs), minlength=12)
    expected = draws * priority.reshape(-1) / priority.sum()
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    assert chi_square < stats.chi2.ppf(0.999, df=11), (counts, expected)


def test_prioritized_sampling_at_a_million_slots_in_float32():
    """1M slots: per-row and per-column frequencies follow the priorities; invalid starts never drawn."""
    rows_count, num_envs, n_step = 512, 2048, 3
    priority = jax.random.uniform(jax.random.key(2), (rows_count, num_envs), minval=1e-3, maxval=1.0)
    priority = priority.at[100:102].set(1e3)  # the newest n-1 rows: heavy, and not starts
    slots = (rows_count, num_envs)
    data = replay.Transition(obs=jnp.zeros((*slots, 1)), action=jnp.zeros(slots, jnp.int32), reward=jnp.zeros(slots),
                             next_obs=jnp.zeros((*slots, 1)), terminated=jnp.zeros(slots, bool))
    buffer = replay.ReplayBuffer(data=data, next_row=jnp.int32(102), filled_rows=jnp.int32(rows_count),
                                 priority=priority, max_priority=jnp.float32(1e3))
    draws = 1_000_000
    rows, envs, _ = jax.jit(replay.sample_prioritized, static_argnums=(2, 4))(buffer, jax.random.key(3), draws,
                                                                             jnp.float32(0.4), n_step)
    rows, envs = np.asarray(rows), np.asarray(envs)
    assert not np.isin(rows, [100, 101]).any()
    valid = np.ones(rows_count, bool)
    valid[100:102] = False
    mass = np.asarray(priority, np.float64) * valid[:, None]
    for counts, expected in ((np.bincount(rows, minlength=rows_count)[valid], mass.sum(1)[valid]),
                             (np.bincount(envs, minlength=num_envs), mass.sum(0))):
        expected = draws * expected / expected.sum()
        chi_square = float(np.sum((counts - expected) ** 2 / expected))
        assert chi_square < stats.chi2.ppf(0.999, df=expected.size - 1)


def test_importance_sampling_weights_hand_computed():
    priority = np.array([[1.0, 2.0], [4.0, 8.0]], np.float32)
    buffer = _with_priorities(_buffer(np.ones((2, 2)), prioritized=True), priority)
    rows, envs, weights = replay.sample_prioritized(buffer, jax.random.key(4), 64, beta=0.5)
    picked = priority[np.asarray(rows), np.asarray(envs)]
    # w = (N P(i))^-beta / max_j (N P(j))^-beta with N = 4, P = p / 15: (1 / p)^0.5 here
    np.testing.assert_allclose(weights, (1.0 / picked) ** 0.5, rtol=1e-6)
    definition = (4 * picked / 15.0) ** -0.5 / (4 * 1.0 / 15.0) ** -0.5
    np.testing.assert_allclose(weights, definition, rtol=1e-5)
    assert set(np.unique(picked)) == {1.0, 2.0, 4.0, 8.0}


def test_priority_beta_anneals_linearly_to_one(small_config):

    config = small_config(prioritized=True, priority_beta=0.4, total_steps=16 * 100, chunk_steps=16 * 10)
    dqn = make_trainer(config)  # 100 vector steps
    betas = [float(dqn.priority_beta(jnp.int32(i))) for i in (0, 25, 50, 100, 150)]
    np.testing.assert_allclose(betas, [0.4, 0.55, 0.7, 1.0, 1.0], rtol=1e-6)


def test_learn_writes_the_sampled_slots_td_errors_as_priorities(small_config):

    config = small_config(prioritized=True, priority_alpha=0.5, updates_per_step=1, n_step=2)
    dqn = make_trainer(config)
    state = dqn.init(jax.random.key(0), config.hparams)
    for t in range(4):  # four vector steps of made-up transitions
        state = state.replace(buffer=replay.add(state.buffer, replay.Transition(
            obs=state.obs + t, action=jnp.full(16, t % 2, jnp.int32), reward=jnp.arange(16.0) * t,
            next_obs=state.obs - t, terminated=jnp.arange(16) % 5 == t, truncated=jnp.arange(16) % 3 == t)))
    before, key = state.buffer, jax.random.key(7)

    # The one update's batch, and its Double-DQN TD errors under the current parameters, worked out here
    # with numpy from the network's outputs (not with the learner's own loss).
    batch, (rows, envs) = jax.tree.map(np.asarray, jax.jit(dqn.sample_batches)(before, key, state.iteration,
                                                                               state.hparams.gamma))
    batch = jax.tree.map(lambda leaf: leaf[0], batch)
    q = np.asarray(dqn.network.apply(state.params, batch.obs))
    next_online = np.asarray(dqn.network.apply(state.params, batch.next_obs))
    next_target = np.asarray(dqn.network.apply(state.target_params, batch.next_obs))
    index = np.arange(len(batch.action))
    targets = batch.reward + batch.discount * next_target[index, next_online.argmax(axis=1)]
    errors = targets - q[index, batch.action]
    assert np.abs(errors).max() > 1e-3
    after = jax.jit(dqn.learn)(state, key)[0].buffer
    changed = np.asarray(after.priority != before.priority)
    sampled = np.zeros_like(changed)
    sampled[rows[0], envs[0]] = True
    assert changed.any() and not (changed & ~sampled).any()  # only the sampled slots change
    expected = (np.abs(errors) + replay.PRIORITY_EPS) ** 0.5
    np.testing.assert_allclose(np.asarray(after.priority)[rows[0], envs[0]], expected, rtol=1e-4)


# Configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(n_step=0), "--n_step must be >= 1"),
    (dict(n_step=-2), "--n_step must be >= 1"),
    (dict(n_step=17, buffer_size=16 * 16), "--n_step (17) must not exceed the buffer's 16 vector steps"),
    (dict(priority_alpha=1.5), "--priority_alpha must be in [0, 1]"),
    (dict(priority_beta=-0.1), "--priority_beta must be in [0, 1]"),
])
def test_bad_variant_settings_are_config_errors(small_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        small_config(**overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_rejects_n_step_longer_than_the_buffer_with_exit_2(capsys, tmp_path):
    from jaxdqn.train import main

    code = main(["--num_envs", "16", "--buffer_size", "64", "--batch_size", "32", "--n_step", "5",
                 "--log_dir", str(tmp_path / "run"), "--no_compile_cache"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "--n_step (5) must not exceed the buffer's 4 vector steps" in lines[0]
    assert not (tmp_path / "run").exists()


def test_variants_off_leave_the_default_state_unchanged(small_config):
    """No truncation flags or priorities are stored unless a variant needs them (same tree as before)."""

    def initial_state(config):
        return jax.eval_shape(lambda: make_trainer(config).init(jax.random.key(0), config.hparams))

    def stored(buffer):  # the buffer's transitions, whatever its layout
        return jax.eval_shape(lambda buffer: buffer.transitions, buffer)

    state = initial_state(small_config())
    assert state.buffer.priority is None and state.buffer.max_priority is None
    assert stored(state.buffer).truncated is None
    assert state.buffer.data.shape == (16, 16, 2 * 4 + 3)  # packed: obs, next_obs, action, reward, terminated
    assert "DuelingHead_0" not in state.params["params"]
    state = initial_state(small_config(n_step=2, prioritized=True))
    assert state.buffer.priority.shape == (16, 16) and stored(state.buffer).truncated.shape == (16, 16)


# Learning --------------------------------------------------------------------------------------

ALL_VARIANTS = dict(dueling=True, n_step=3, prioritized=True)


@pytest.mark.parametrize("probe, observations, expected", [
    ("TwoStep", [[0.0], [1.0]], [[0.5], [1.0]]),  # Q(0) = gamma: the 3-step window stops at the terminal
    ("TruncatedForever", [[0.0]], [[2.0]]),  # 1 / (1 - gamma): windows bootstrap through truncations
])
def test_probe_q_values_with_every_variant(small_config, probe, observations, expected):
    config = small_config(env=f"tests.probe_envs:{probe}", **{**PROBE, **ALL_VARIANTS})
    program, state, _ = run_program(config)
    np.testing.assert_allclose(q_values(program, state, observations), expected, atol=0.1)


@pytest.mark.parametrize("variant", [dict(dueling=True), dict(n_step=3), dict(prioritized=True),
                                     dict(ALL_VARIANTS, double=False)],
                         ids=["dueling", "n_step_3", "prioritized", "all_without_double"])
def test_variant_solves_cartpole_on_cpu_with_the_defaults(variant):
    """The defaults at 4096 envs plus the variant reach the threshold (475) within the default 3M env steps."""
    from jaxdqn.train import train

    summary = train(TrainConfig(num_envs=4096, until_solved=True, **variant).validate(), log_dir=None,
                    show_progress=False)
    assert summary["steps_to_solve"] is not None, summary["eval_return_mean"]
    assert summary["eval_return_mean"] >= 475.0
