"""Taxi ports with one seeded bug each, for testing that `jaxdqn.check_port` finds and locates bugs.

Each differs from `envs.taxi.Taxi` in exactly one place and draws the same random numbers, so it
follows the correct port's trajectory until the bug first matters. The CLI reaches them as
`--env tests.bugged_ports:WrongRewardTaxi`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdqn.envs.taxi import EAST, PICKUP, Taxi, decode, encode


class WrongRewardTaxi(Taxi):
    """Delivering the passenger pays +10 instead of +20 (a rare event under random actions)."""

    def __init__(self):
        super().__init__()
        self._reward = jnp.where(self._reward == 20.0, 10.0, self._reward)


class WrongTransitionTaxi(Taxi):
    """The wall between (0, 1) and (0, 2) is missing: east from (0, 1) reaches (0, 2)."""

    def __init__(self):
        super().__init__()
        next_state = self._next_state
        for state in range(next_state.shape[0]):
            row, col, passenger, destination = decode(state)
            if (row, col) == (0, 1):
                next_state = next_state.at[state, EAST].set(encode(0, 2, passenger, destination))
        self._next_state = next_state


class NoAutoResetTaxi(Taxi):
    """`step` written for the old five-value API: it never resets, and "final_observation" is just obs."""

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        obs, state, reward, terminated, info = self.step_env(key, state, action, params)
        truncated = self.is_truncated(state, params)
        return obs, state, reward, terminated, truncated, {**info, "final_observation": obs}


class LateTruncationTaxi(Taxi):
    """Off by one: truncates when `time > max_steps_in_episode`, one step late."""

    def is_truncated(self, state, params):
        return state.time > params.max_steps_in_episode


class IntObservationTaxi(Taxi):
    """Observations are int32 one-hot vectors while observation_space promises float32."""

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(state.s, 500, dtype=jnp.int32)


class PythonIfTaxi(Taxi):
    """A Python `if` on the traced action in step_env (fine in Python, impossible under jit)."""

    def step_env(self, key, state, action, params):
        obs, next_state, reward, terminated, info = super().step_env(key, state, action, params)
        if action == PICKUP:  # the bug: `action` is a tracer
            reward = reward - 0.0
        return obs, next_state, reward, terminated, info
