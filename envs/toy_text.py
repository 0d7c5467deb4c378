"""What the ports of Gymnasium's toy-text simulators share: a discrete state seen as a one-hot vector.

The state is Gymnasium's integer observation, kept as `EnvState.s`; the Q-network sees it one-hot.
The two methods of `jaxdqn.check_port`'s protocol map the port's observation back to Gymnasium's
integer and put a freshly reset Gymnasium environment into the port's state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class EnvState(environment.EnvState):
    s: jax.Array  # int32 scalar: the Gymnasium observation
    time: int


@struct.dataclass
class EnvParams(environment.EnvParams):
    max_steps_in_episode: int = 200


class ToyTextPort(environment.Environment[EnvState, EnvParams]):
    """A port of a Gymnasium toy-text env; subclasses set the class attributes and the dynamics."""

    env_id: str  # the Gymnasium id the port reproduces
    num_states: int
    num_discrete_actions: int
    reference: str  # the reference `jaxdqn.check_port` uses when `--reference` is not given

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    def get_obs(self, state: EnvState, params: EnvParams | None = None, key: jax.Array | None = None) -> jax.Array:
        return jax.nn.one_hot(state.s, self.num_states, dtype=jnp.float32)  # [num_states]

    # The protocol of `jaxdqn.check_port` ----------------------------------------------------------
    def reference_observation(self, obs: np.ndarray, params: EnvParams) -> int:
        """Gymnasium's observation (the integer state) for one of this port's one-hot observations."""
        return int(np.argmax(obs))

    def set_reference_state(self, reference_env: Any, state: EnvState, params: EnvParams) -> int:
        """Puts a freshly reset Gymnasium env into this port's state; returns its observation."""
        reference_env.unwrapped.s = int(state.s)
        return int(state.s)

    # Spaces -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.env_id

    @property
    def num_actions(self) -> int:
        return self.num_discrete_actions

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(self.num_discrete_actions)

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)

    def state_space(self, params: EnvParams) -> spaces.Dict:
        return spaces.Dict(
            {"s": spaces.Discrete(self.num_states), "time": spaces.Discrete(params.max_steps_in_episode + 1)}
        )
