"""The ported simulators in envs/ match their Gymnasium references and keep the gymnax 1.0 contract."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn.envs import cliffwalking, taxi
from jaxdqn import registry
from jaxdqn.check_port import check_port
from jaxdqn.config import build_config

PORTS = {"Taxi-v4": taxi.Taxi, "CliffWalking-v1": cliffwalking.CliffWalking}


@pytest.mark.parametrize("name, episodes", [("Taxi-v4", 200), ("CliffWalking-v1", 100)])
def test_port_matches_its_reference_over_random_episodes(name, episodes):
    report = check_port(name, f"gymnasium:{name}", episodes=episodes, seed=1)
    assert report.ok, report.format()
    assert report.episodes == episodes and report.steps >= episodes
    assert any(check.startswith("lockstep") for check in report.checks)
    assert any(check.startswith("reset distribution") for check in report.checks)


@pytest.mark.parametrize("name", PORTS)
def test_every_transition_matches_gymnasiums_table(name):
    """All states and actions, reachable or not, against the reference's own transition table `P`."""
    env, params = PORTS[name](), PORTS[name]().default_params
    reference = gymnasium.make(name).unwrapped
    num_states, num_actions = reference.observation_space.n, reference.action_space.n
    states, actions = np.meshgrid(np.arange(num_states), np.arange(num_actions), indexing="ij")
    states, actions = jnp.asarray(states.ravel(), jnp.int32), jnp.asarray(actions.ravel(), jnp.int32)

    def step(s, action):
        state = env.reset_env(jax.random.key(0), params)[1].replace(s=s)
        obs, next_state, reward, terminated, _ = env.step_env(jax.random.key(0), state, action, params)
        return next_state.s, reward, terminated, jnp.argmax(obs)

    next_s, reward, terminated, obs_index = jax.device_get(jax.jit(jax.vmap(step))(states, actions))
    expected = [reference.P[int(s)][int(a)] for s, a in zip(states, actions)]
    assert all(len(outcomes) == 1 and outcomes[0][0] == 1.0 for outcomes in expected)  # deterministic
    np.testing.assert_array_equal(next_s, [outcomes[0][1] for outcomes in expected])
    np.testing.assert_array_equal(obs_index, next_s)
    np.testing.assert_array_equal(reward, [outcomes[0][2] for outcomes in expected])
    np.testing.assert_array_equal(terminated, [outcomes[0][3] for outcomes in expected])


@pytest.mark.parametrize("name", PORTS)
def test_reset_support_matches_gymnasium(name):
    env = PORTS[name]()
    keys = jax.random.split(jax.random.key(0), 4096)
    _, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, env.default_params)
    support = np.flatnonzero(gymnasium.make(name).unwrapped.initial_state_distrib)
    np.testing.assert_array_equal(np.unique(np.asarray(states.s)), support)


@pytest.mark.parametrize("name", PORTS)
def test_jit_and_vmap_over_1024_instances(name):
    spec, env, params = registry.make_env(name)
    size = env.observation_space(params).shape[0]
    keys = jax.random.split(jax.random.key(0), 1024)
    obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    actions = jnp.arange(1024, dtype=jnp.int32) % env.num_actions
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    obs, state, reward, terminated, truncated, info = step(keys, state, actions, params)
    assert obs.shape == (1024, size) and obs.dtype == jnp.float32
    np.testing.assert_array_equal(obs.sum(axis=1), 1.0)  # one-hot
    assert reward.shape == (1024,) and reward.dtype == jnp.float32
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    assert info["final_observation"].shape == obs.shape


@pytest.mark.parametrize("name, limit, wall_action", [("Taxi-v4", 200, taxi.NORTH), ("CliffWalking-v1", 200, 0)])
def test_truncates_at_exactly_the_time_limit_and_auto_resets(name, limit, wall_action):
    """Walking into the north wall never terminates, so only the time limit ends the episode."""
    spec, env, params = registry.make_env(name)
    assert params.max_steps_in_episode == limit
    obs, state = env.reset(jax.random.key(0), params)

    def body(state, key):
        obs, state, reward, terminated, truncated, info = env.step(key, state, wall_action, params)
        return state, (obs, state.time, terminated, truncated, info["final_observation"])

    keys = jax.random.split(jax.random.key(1), limit + 1)
    _, (obs, times, terminated, truncated, final_obs) = jax.lax.scan(body, state, keys)
    assert not terminated.any()
    assert np.flatnonzero(truncated).tolist() == [limit - 1]  # the 200th step, and only it
    last = limit - 1
    np.testing.assert_array_equal(final_obs[last], obs[last - 1])  # pre-reset: against the wall
    assert int(times[last]) == 0 and int(times[last - 1]) == limit - 1  # the returned state is a reset
    np.testing.assert_array_equal(final_obs[:last], obs[:last])


@pytest.mark.parametrize("name", PORTS)
def test_registered_with_a_threshold_and_valid_defaults(name):
    spec = registry.get_spec(name)
    module = {"Taxi-v4": taxi, "CliffWalking-v1": cliffwalking}[name]
    assert isinstance(spec.make_env()[0], PORTS[name])
    assert spec.solved_threshold == module.SOLVED_THRESHOLD
    config = build_config({}, spec)  # the env's defaults pass TrainConfig's validation
    assert config.env == name and config.num_envs == spec.defaults["num_envs"]


def test_cliffwalking_threshold_is_the_optimal_return():
    env = cliffwalking.CliffWalking()
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    total, terminated = 0.0, False
    for action in [0] + [1] * 11 + [2]:  # up, 11 x right, down
        _, state, reward, terminated, _, _ = env.step(jax.random.key(0), state, action, params)
        total += float(reward)
    assert bool(terminated) and total == -13.0 == cliffwalking.SOLVED_THRESHOLD


def test_taxi_threshold_is_below_the_optimal_mean_return():
    """Value iteration on the tables: the optimal policy averages 7.93 over the 300 starts."""
    next_state, reward, terminated, initial = taxi.make_tables()
    values = np.zeros(taxi.NUM_STATES)
    for _ in range(300):
        values = (reward + np.where(terminated, 0.0, values[next_state])).max(axis=1)
    optimal_mean = values[initial].mean()
    assert optimal_mean == pytest.approx(7.93)
    assert taxi.SOLVED_THRESHOLD < optimal_mean < 8.0  # Gymnasium's reward_threshold of 8 is out of reach
