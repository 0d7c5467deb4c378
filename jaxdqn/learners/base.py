"""What every value-based learner shares: how its network's outputs become Q-values and a batch a loss.

A learner is the algorithm's maths and nothing else: the trainer's chunk loop (`jaxdqn.agent`) acts with
`greedy`/`q_values`, and learns with `loss_and_priorities`, whatever the learner. A learner is a frozen
dataclass holding its network and static settings, so it is hashable and can be a static argument of
`jax.jit`. A new learner subclasses `Learner`, writes `transition_loss` for one transition (and
`action_values` if its network emits more than one output per action), and registers itself in
`jaxdqn.learners.LEARNERS`.

The three forward passes of an update (online network on s, and on s' for Double DQN; target network on
s') are shared (`network_outputs`): on GPUs they run as one network vmapped over both parameter sets.
With noisy nets (`jaxdqn.networks.NoisyDense`) every call that is given a key samples the noise: acting
once per vector step, learning once per update (online and target network each their own); greedy
evaluation, given none, uses the noise's means.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdqn import losses
from jaxdqn.buffer import Batch
from jaxdqn.networks import NOISE, NOISE_PER_EXAMPLE


@dataclasses.dataclass(frozen=True)
class Learner:
    """A learner: its network and the settings its maths depends on.

    Args:
      network: maps `[batch, *obs_shape]` to `[batch, num_actions]`, or to `[batch, num_actions,
        outputs_per_action]` for a learner whose `outputs_per_action(config)` is above 1.
      double: Double DQN (van Hasselt et al. 2016): the online network picks the next action.
    """

    network: nn.Module
    double: bool = True

    name: ClassVar[str] = ""
    # Fields of TrainConfig this learner reads: a checkpoint of it must agree on them (jaxdqn.checkpoint).
    config_fields: ClassVar[tuple[str, ...]] = ("double",)

    @classmethod
    def outputs_per_action(cls, config: Any) -> int:
        """How many numbers the network emits per action (1: a Q-value; C51: the atoms' logits)."""
        return 1

    @classmethod
    def from_config(cls, config: Any, network: nn.Module) -> "Learner":
        return cls(network=network, **{name: getattr(config, name) for name in cls.config_fields})

    @property
    def noisy(self) -> bool:
        """Whether the network has noisy layers (their noise is sampled from the keys given to its calls)."""
        return bool(getattr(self.network, "noisy", False))

    # Acting ----------------------------------------------------------------------------------
    def action_values(self, outputs: jnp.ndarray) -> jnp.ndarray:
        """Q-values `[batch, num_actions]` from the network's outputs (identity for a Q-network)."""
        return outputs

    def q_values(self, params, obs: jnp.ndarray, key: jax.Array | None = None,
                 per_example: bool = False) -> jnp.ndarray:
        """Q-values `[batch, num_actions]` for observations `[batch, *obs_shape]` (`key`: noisy nets' noise,
        one draw for the batch or, `per_example`, one for each observation)."""
        return self.action_values(apply_network(self.network, params, obs, key, per_example))

    def greedy(self, params, obs: jnp.ndarray, key: jax.Array | None = None, per_example: bool = False) -> jnp.ndarray:
        """The greedy actions `[batch]` (int32)."""
        return jnp.argmax(self.q_values(params, obs, key, per_example), axis=-1).astype(jnp.int32)

    # Learning --------------------------------------------------------------------------------
    def transition_loss(self, outputs: jnp.ndarray, action: jnp.ndarray, reward: jnp.ndarray,
                        discount: jnp.ndarray, next_target: jnp.ndarray,
                        next_online: jnp.ndarray | None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The loss of one transition and its priority source (prioritized replay uses its magnitude).

        `outputs` are the online network's outputs at s, `next_target` the target network's at the
        bootstrap observation s', `next_online` the online network's there (None unless `double`);
        the target is `reward + discount * value(s')` (`discount` 0 cuts the bootstrap).
        """
        raise NotImplementedError

    def loss_and_priorities(self, params, target_params, batch, stacked: bool = False,
                            key: jax.Array | None = None, bootstrap: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Mean loss of a batch (importance-weighted if `batch.weight` is set) and its `[batch]` priority sources.

        `key`: the noise of noisy nets (one draw for the online network, one for the target's).
        `bootstrap`: False when every discount is 0 (`lambda_batch`): no network then runs at s'.
        """
        keys = tuple(jax.random.split(key)) if self.noisy and key is not None else (None, None)
        outputs, next_online, next_target = network_outputs(self.network, params, target_params, batch,
                                                            self.double, stacked and keys[0] is None, keys,
                                                            bootstrap)
        per_transition = jax.vmap(self.transition_loss, in_axes=(0, 0, 0, 0, 0, 0 if self.double else None))
        elementwise, priorities = per_transition(outputs, batch.action, batch.reward, batch.discount, next_target,
                                                 next_online)
        if batch.weight is not None:  # prioritized replay's importance-sampling correction
            elementwise = batch.weight * elementwise
        return jnp.mean(elementwise), priorities


def lambda_batch(learner: Learner, params, target_params, window, lam) -> Batch:
    """The batch whose target is each window's lambda-return (`jaxdqn.losses.lambda_return`), from this
    update's networks: the target network's value (Double DQN: at the online network's greedy action) of
    every step's next observation (noisy nets: at the noise's means). The returned batch's discount is 0, so
    its target is that return."""
    batch_size, n_step = window.reward.shape
    next_obs = window.next_obs.reshape(batch_size * n_step, *window.next_obs.shape[2:])
    next_target = learner.q_values(target_params, next_obs)
    next_online = learner.q_values(params, next_obs) if learner.double else None
    value = jax.vmap(losses.bootstrap_value, in_axes=(0, 0 if learner.double else None))(next_target, next_online)
    returns = jax.vmap(losses.lambda_return, in_axes=(0, 0, 0, 0, None))(
        window.reward, window.discount, value.reshape(batch_size, n_step), window.counted, lam)
    return Batch(obs=window.obs, action=window.action, reward=returns, next_obs=window.next_obs[:, 0],
                 discount=jnp.zeros_like(returns), weight=window.weight)


def apply_network(network: nn.Module, params, obs: jnp.ndarray, key: jax.Array | None = None,
                  per_example: bool = False) -> jnp.ndarray:
    """`network.apply`, sampling noisy layers' noise from `key` if one is given (for each observation of the
    batch apart, with `per_example`)."""
    if key is None:
        return network.apply(params, obs)
    return network.apply(params, obs, rngs={NOISE_PER_EXAMPLE if per_example else NOISE: key})


def network_outputs(network: nn.Module, params, target_params, batch, double: bool, stacked: bool,
                    keys: tuple = (None, None), bootstrap: bool = True):
    """The network's outputs at s (online), at s' (online, for Double DQN; else None) and at s' (target).

    `stacked`: online and target network as one network vmapped over both parameter sets (online on s,
    and on s' for Double DQN; target on s'), so each layer is one batched matrix product and one
    normalisation kernel for both. On a GPU, where an update is a chain of small kernels whose number
    sets its time, that is faster; on a CPU the target's share of the backward pass (zeros, but
    computed) makes it slower (`jaxdqn.kernels.backend.choose`). `keys`: the online and the target
    network's noise (noisy nets; not with `stacked`). Without `bootstrap` the outputs at s' are zeros.
    """
    batch_size = batch.action.shape[0]
    if not bootstrap:  # the targets are in the batch already (discount 0): s' is not needed
        outputs = apply_network(network, params, batch.obs, keys[0])
        unused = jnp.zeros_like(outputs)  # a constant: no gradient flows through it
        return outputs, unused if double else None, unused
    if stacked:
        both = jax.tree.map(lambda online, target: jnp.stack([online, jax.lax.stop_gradient(target)]),
                            params, target_params)
        if double:  # the target's input doubled to match the online network's s and s'
            inputs = jnp.stack([jnp.concatenate([batch.obs, batch.next_obs]),
                                jnp.concatenate([batch.next_obs, batch.next_obs])])
        else:
            inputs = jnp.stack([batch.obs, batch.next_obs])
        outputs = jax.vmap(network.apply)(both, inputs)
        next_online = jax.lax.stop_gradient(outputs[0, batch_size:]) if double else None
        return outputs[0, :batch_size], next_online, jax.lax.stop_gradient(outputs[1, :batch_size])
    online_key, target_key = keys
    if double:  # one forward pass of the online network over s and s'
        both = apply_network(network, params, jnp.concatenate([batch.obs, batch.next_obs]), online_key)
        outputs, next_online = both[:batch_size], jax.lax.stop_gradient(both[batch_size:])
    else:
        outputs, next_online = apply_network(network, params, batch.obs, online_key), None
    return outputs, next_online, apply_network(network, target_params, batch.next_obs, target_key)
