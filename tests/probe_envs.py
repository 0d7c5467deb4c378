"""Probe environments whose optimal Q-values are known in closed form (after Andy Jones' "debugging RL").

Each is a gymnax 1.0 environment with a one-dimensional observation:
- `ConstantReward`: one observation, one action, reward 1, terminates after one step: Q = 1.
- `ActionReward`: one observation, two actions, reward -1 / +1 by action, terminates: Q = [-1, 1].
- `TwoStep`: observation 0 then 1, reward 1 only at the end, terminates: Q(0) = gamma, Q(1) = 1.
- `TruncatedForever`: one observation, reward 1, never terminates but is truncated after 3 steps:
  a correct learner bootstraps through the truncation, Q = 1 / (1 - gamma).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class ProbeState(environment.EnvState):
    position: jnp.ndarray


@struct.dataclass
class ProbeParams(environment.EnvParams):
    max_steps_in_episode: int = 100


class _Probe(environment.Environment):
    actions = 1
    length = 1  # steps until termination
    max_steps = 100

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams(max_steps_in_episode=self.max_steps)

    def reward(self, state, action):
        return jnp.float32(1.0)

    def step_env(self, key, state, action, params):
        reward = self.reward(state, action)
        state = ProbeState(time=state.time + 1, position=state.position + 1)
        terminated = self.is_terminated(state, params)
        return self.get_obs(state), state, reward, terminated, {}

    def reset_env(self, key, params):
        state = ProbeState(time=jnp.int32(0), position=jnp.int32(0))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.minimum(state.position, 1).astype(jnp.float32)[None]

    def is_terminated(self, state, params):
        return state.position >= self.length

    @property
    def num_actions(self) -> int:
        return self.actions

    def action_space(self, params=None):
        return spaces.Discrete(self.actions)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (1,), jnp.float32)


class ConstantReward(_Probe):
    pass


class ActionReward(_Probe):
    actions = 2

    def reward(self, state, action):
        return jnp.where(action == 1, 1.0, -1.0).astype(jnp.float32)


class TwoStep(_Probe):
    length = 2

    def reward(self, state, action):
        return jnp.where(state.position == 1, 1.0, 0.0).astype(jnp.float32)


class TruncatedForever(_Probe):
    length = 10**9
    max_steps = 3

    def get_obs(self, state, params=None, key=None):
        return jnp.zeros((1,), jnp.float32)


class UniformReward(_Probe):
    """One step, reward ~ U(0, 1): the return's quantile at tau is tau, its mean 1/2."""

    def step_env(self, key, state, action, params):
        obs, state, _, terminated, info = super().step_env(key, state, action, params)
        return obs, state, jax.random.uniform(key, (), jnp.float32), terminated, info


class StepCounter(_Probe):
    """Observation = steps taken in the episode; never terminates, truncated after 2 steps."""

    length = 10**9
    max_steps = 2

    def get_obs(self, state, params=None, key=None):
        return state.position.astype(jnp.float32)[None]


def q_values(program, state, observations):
    """Q-values of device 0's online network at `observations` `[n, 1]` (the learner's, for any learner)."""
    from jaxdqn import parallel

    params = parallel.first_device(state.params)
    return jax.device_get(program.dqn.learner.q_values(params, jnp.asarray(observations, jnp.float32)))
