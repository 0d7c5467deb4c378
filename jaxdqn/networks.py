"""Q-networks: an MLP for vector observations and the MinAtar convolutional network for images.

The MLP follows the fully connected Q-networks used for classic control since Mnih et al. (2013),
"Playing Atari with Deep Reinforcement Learning", with optional LayerNorm after each hidden layer
(which stabilises bootstrapped targets with many parallel envs, as in Gallici et al. 2024, "Simplifying
Deep Temporal Difference Learning"). The convolutional network is the one of Young & Tian (2019),
"MinAtar": one 3x3 convolution with 16 filters, a 128-unit hidden layer, one output per action.

Both take noisy layers (Fortunato et al. 2018, "Noisy Networks for Exploration": factorised Gaussian
noise on every fully connected layer's weights, `NoisyDense`) and a dueling head (Wang et al. 2016, "Dueling Network Architectures for Deep Reinforcement
Learning"): the last hidden layer splits into a value stream and an advantage stream, each as wide as
the layer it replaces, recombined as Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (their equation 9).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NOISE = "noise"  # the flax RNG stream of noisy layers: `apply(..., rngs={NOISE: key})` samples their noise
NOISE_PER_EXAMPLE = "noise_per_example"  # the same, with an independent draw for every example of the batch


class NoisyDense(nn.Module):
    """A dense layer with factorised Gaussian noise (Fortunato et al. 2018, section 3.2).

    w = mu_w + sigma_w * f(e_in) f(e_out)^T and b = mu_b + sigma_b * f(e_out), with f(x) = sign(x) sqrt(|x|)
    and e ~ N(0, 1), drawn from the `NOISE` RNG stream on every call that supplies it; without it (greedy
    evaluation) the layer uses the means. mu is initialised U(-1/sqrt(p), 1/sqrt(p)) and sigma to
    sigma_0 / sqrt(p), for p inputs.

    From the `NOISE_PER_EXAMPLE` stream instead, every example of the batch gets its own e_in and e_out:
    x w = x mu_w + ((x * f(e_in)) sigma_w) * f(e_out), two matrix products and no per-example weight matrix,
    but batch x (inputs + features) normal draws instead of inputs + features.
    """

    features: int
    sigma_0: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        inputs = x.shape[-1]
        bound = 1.0 / jnp.sqrt(inputs)

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        def constant(value):
            return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)

        mu_kernel = self.param("mu_kernel", uniform, (inputs, self.features))
        mu_bias = self.param("mu_bias", uniform, (self.features,))
        sigma_kernel = self.param("sigma_kernel", constant(self.sigma_0 / jnp.sqrt(inputs)), (inputs, self.features))
        sigma_bias = self.param("sigma_bias", constant(self.sigma_0 / jnp.sqrt(inputs)), (self.features,))

        def scaled(key, shape):
            noise = jax.random.normal(key, shape)
            return jnp.sign(noise) * jnp.sqrt(jnp.abs(noise))

        if self.has_rng(NOISE_PER_EXAMPLE):
            in_key, out_key = jax.random.split(self.make_rng(NOISE_PER_EXAMPLE))
            noise_in, noise_out = scaled(in_key, x.shape), scaled(out_key, (*x.shape[:-1], self.features))
            return x @ mu_kernel + ((x * noise_in) @ sigma_kernel) * noise_out + mu_bias + sigma_bias * noise_out
        if not self.has_rng(NOISE):
            return x @ mu_kernel + mu_bias
        in_key, out_key = jax.random.split(self.make_rng(NOISE))
        noise_in, noise_out = scaled(in_key, (inputs,)), scaled(out_key, (self.features,))
        kernel = mu_kernel + sigma_kernel * jnp.outer(noise_in, noise_out)
        return x @ kernel + mu_bias + sigma_bias * noise_out


def dense(features: int, noisy: bool, sigma_0: float, name: str | None = None) -> nn.Module:
    """A fully connected layer: `NoisyDense` for noisy nets, else flax's Dense."""
    return NoisyDense(features, sigma_0, name=name) if noisy else nn.Dense(features, name=name)


def dueling_q_values(value: jnp.ndarray, advantage: jnp.ndarray) -> jnp.ndarray:
    """Q = V + A - mean(A) (Wang et al. 2016, eq. 9): `value` `[batch, 1]`, `advantage` `[batch, num_actions]`
    (with several outputs per action, `[batch, 1, k]` and `[batch, num_actions, k]`: per output)."""
    return value + advantage - jnp.mean(advantage, axis=1, keepdims=True)


def action_outputs(x: jnp.ndarray, num_actions: int, outputs_per_action: int) -> jnp.ndarray:
    """A head's `[batch, num_actions * k]` as `[batch, num_actions]` (k = 1) or `[batch, num_actions, k]`."""
    if outputs_per_action == 1:
        return x
    return x.reshape(x.shape[0], num_actions, outputs_per_action)


class DuelingHead(nn.Module):
    """Value and advantage streams (one hidden layer each) from shared features, combined into Q-values."""

    num_actions: int
    hidden_size: int
    layer_norm: bool = True
    outputs_per_action: int = 1
    noisy: bool = False
    noisy_sigma: float = 0.5

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        def stream(name: str, outputs: int) -> jnp.ndarray:
            x = dense(self.hidden_size, self.noisy, self.noisy_sigma, name=f"{name}_hidden")(features)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"{name}_norm")(x)
            x = dense(outputs * self.outputs_per_action, self.noisy, self.noisy_sigma, name=name)(nn.relu(x))
            return action_outputs(x, outputs, self.outputs_per_action)

        return dueling_q_values(stream("value", 1), stream("advantage", self.num_actions))


@dataclasses.dataclass(frozen=True)
class HiddenLayer:
    """One hidden layer of the MLP: its Dense layer's name in the parameter tree, its LayerNorm's (or None), its width."""

    dense: str
    norm: str | None
    width: int


class MLPQNetwork(nn.Module):
    """Maps a flat observation to one Q-value per action.

    `layers()` is the one description of its parameters: the flax module builds them from it, and the
    GPU kernels (`jaxdqn.kernels`) lay them out from it.
    """

    num_actions: int
    hidden_sizes: Sequence[int] = (128, 128)
    layer_norm: bool = True
    dueling: bool = False
    outputs_per_action: int = 1  # more than 1: `[batch, num_actions, outputs_per_action]` (distributional learners)
    noisy: bool = False
    noisy_sigma: float = 0.5

    def layers(self) -> tuple[tuple[HiddenLayer, ...], str]:
        """The hidden layers before the head (all of them, or all but the last with a dueling head, whose
        streams replace it), and the name of the output layer (without a dueling head)."""
        shared = self.hidden_sizes[:-1] if self.dueling else self.hidden_sizes  # dueling: the last splits in two
        hidden = tuple(HiddenLayer(f"Dense_{index}", f"LayerNorm_{index}" if self.layer_norm else None, width)
                       for index, width in enumerate(shared))
        return hidden, f"Dense_{len(shared)}"

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = obs.astype(jnp.float32).reshape(obs.shape[0], -1)  # [batch, obs_dim]
        hidden, output = self.layers()
        for layer in hidden:
            x = dense(layer.width, self.noisy, self.noisy_sigma, name=layer.dense)(x)
            if layer.norm is not None:
                x = nn.LayerNorm(name=layer.norm)(x)
            x = nn.relu(x)
        if self.dueling:
            return DuelingHead(self.num_actions, self.hidden_sizes[-1], self.layer_norm, self.outputs_per_action,
                               self.noisy, self.noisy_sigma)(x)
        x = dense(self.num_actions * self.outputs_per_action, self.noisy, self.noisy_sigma, name=output)(x)
        return action_outputs(x, self.num_actions, self.outputs_per_action)


class MinAtarQNetwork(nn.Module):
    """The MinAtar paper's Q-network for [batch, 10, 10, channels] observations."""

    num_actions: int
    hidden_size: int = 128
    layer_norm: bool = False
    dueling: bool = False
    outputs_per_action: int = 1
    noisy: bool = False
    noisy_sigma: float = 0.5

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(nn.Conv(16, kernel_size=(3, 3), strides=(1, 1), padding="VALID")(obs.astype(jnp.float32)))
        x = x.reshape(x.shape[0], -1)
        if self.dueling:  # two fully connected streams after the convolution, as in Wang et al.
            return DuelingHead(self.num_actions, self.hidden_size, self.layer_norm, self.outputs_per_action,
                               self.noisy, self.noisy_sigma)(x)
        x = dense(self.hidden_size, self.noisy, self.noisy_sigma, name="Dense_0")(x)
        if self.layer_norm:
            x = nn.LayerNorm()(x)
        x = nn.relu(x)
        x = dense(self.num_actions * self.outputs_per_action, self.noisy, self.noisy_sigma, name="Dense_1")(x)
        return action_outputs(x, self.num_actions, self.outputs_per_action)


def make_network(obs_shape: tuple[int, ...], num_actions: int, config: Any, make_custom=None,
                 outputs_per_action: int = 1) -> nn.Module:
    """Picks the Q-network: the env's registered factory, else by the observation's shape.

    Args:
      obs_shape: shape of one observation.
      num_actions: size of the discrete action space.
      config: the run's `TrainConfig` (hidden_sizes, layer_norm, dueling).
      make_custom: an env's registered `(num_actions, config) -> nn.Module`, or None; it receives the
        config, so it is the factory's own choice whether to honour `dueling`.
      outputs_per_action: numbers per action the learner reads (1: Q-values).
    """
    if make_custom is not None:
        return make_custom(num_actions, config)
    if len(obs_shape) == 3:  # image [height, width, channels]
        return MinAtarQNetwork(num_actions=num_actions, hidden_size=config.hidden_sizes[-1],
                               layer_norm=config.layer_norm, dueling=config.dueling,
                               outputs_per_action=outputs_per_action, noisy=config.noisy,
                               noisy_sigma=config.noisy_sigma)
    return MLPQNetwork(num_actions=num_actions, hidden_sizes=tuple(config.hidden_sizes),
                       layer_norm=config.layer_norm, dueling=config.dueling, outputs_per_action=outputs_per_action,
                       noisy=config.noisy, noisy_sigma=config.noisy_sigma)
