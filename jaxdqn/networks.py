"""Q-networks: an MLP for vector observations and the MinAtar convolutional network for images.

The MLP follows the fully connected Q-networks used for classic control since Mnih et al. (2013),
"Playing Atari with Deep Reinforcement Learning", with optional LayerNorm after each hidden layer
(which stabilises bootstrapped targets with many parallel envs, as in Gallici et al. 2024, "Simplifying
Deep Temporal Difference Learning"). The convolutional network is the one of Young & Tian (2019),
"MinAtar": one 3x3 convolution with 16 filters, a 128-unit hidden layer, one output per action.

Both take a dueling head (Wang et al. 2016, "Dueling Network Architectures for Deep Reinforcement
Learning"): the last hidden layer splits into a value stream and an advantage stream, each as wide as
the layer it replaces, recombined as Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (their equation 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def dueling_q_values(value: jnp.ndarray, advantage: jnp.ndarray) -> jnp.ndarray:
    """Q = V + A - mean(A) (Wang et al. 2016, eq. 9): `value` `[batch, 1]`, `advantage` `[batch, num_actions]`."""
    return value + advantage - jnp.mean(advantage, axis=-1, keepdims=True)


class DuelingHead(nn.Module):
    """Value and advantage streams (one hidden layer each) from shared features, combined into Q-values."""

    num_actions: int
    hidden_size: int
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        def stream(name: str, outputs: int) -> jnp.ndarray:
            x = nn.Dense(self.hidden_size, name=f"{name}_hidden")(features)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"{name}_norm")(x)
            return nn.Dense(outputs, name=name)(nn.relu(x))

        return dueling_q_values(stream("value", 1), stream("advantage", self.num_actions))


class MLPQNetwork(nn.Module):
    """Maps a flat observation to one Q-value per action."""

    num_actions: int
    hidden_sizes: Sequence[int] = (128, 128)
    layer_norm: bool = True
    dueling: bool = False

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = obs.astype(jnp.float32).reshape(obs.shape[0], -1)  # [batch, obs_dim]
        shared = self.hidden_sizes[:-1] if self.dueling else self.hidden_sizes  # dueling: the last splits in two
        for width in shared:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        if self.dueling:
            return DuelingHead(self.num_actions, self.hidden_sizes[-1], self.layer_norm)(x)
        return nn.Dense(self.num_actions)(x)  # [batch, num_actions]


class MinAtarQNetwork(nn.Module):
    """The MinAtar paper's Q-network for [batch, 10, 10, channels] observations."""

    num_actions: int
    hidden_size: int = 128
    layer_norm: bool = False
    dueling: bool = False

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(nn.Conv(16, kernel_size=(3, 3), strides=(1, 1), padding="VALID")(obs.astype(jnp.float32)))
        x = x.reshape(x.shape[0], -1)
        if self.dueling:  # two fully connected streams after the convolution, as in Wang et al.
            return DuelingHead(self.num_actions, self.hidden_size, self.layer_norm)(x)
        x = nn.Dense(self.hidden_size)(x)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = nn.relu(x)
        return nn.Dense(self.num_actions)(x)


def make_network(obs_shape: tuple[int, ...], num_actions: int, config: Any, make_custom=None) -> nn.Module:
    """Picks the Q-network: the env's registered factory, else by the observation's shape.

    Args:
      obs_shape: shape of one observation.
      num_actions: size of the discrete action space.
      config: the run's `TrainConfig` (hidden_sizes, layer_norm, dueling).
      make_custom: an env's registered `(num_actions, config) -> nn.Module`, or None; it receives the
        config, so it is the factory's own choice whether to honour `dueling`.
    """
    if make_custom is not None:
        return make_custom(num_actions, config)
    if len(obs_shape) == 3:  # image [height, width, channels]
        return MinAtarQNetwork(num_actions=num_actions, hidden_size=config.hidden_sizes[-1],
                               layer_norm=config.layer_norm, dueling=config.dueling)
    return MLPQNetwork(num_actions=num_actions, hidden_sizes=tuple(config.hidden_sizes),
                       layer_norm=config.layer_norm, dueling=config.dueling)
