"""QR-DQN: the return's distribution as quantiles, Dabney, Rowland, Bellemare & Munos (2018),
"Distributional Reinforcement Learning with Quantile Regression".

The network emits, per action, `num_quantiles` values: the return distribution's quantiles at the
midpoints tau_i = (2i + 1) / 2N; Q(s, a) is their mean. The target quantiles are `reward + discount *`
the target network's quantiles at s' for the greedy next action (chosen by the online network with
Double DQN); the loss is the quantile Huber loss (their equation 10, kappa = 1): for every pair of a
predicted quantile i and a target sample j, |tau_i - 1{u_ij < 0}| * Huber(u_ij), summed over i and
averaged over j, with u_ij = target_j - theta_i. It is also the priority of prioritized replay.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import optax

from jaxdqn.learners.base import Learner

KAPPA = 1.0  # the quantile Huber loss's threshold


def quantile_huber_loss(quantiles: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """The quantile regression loss of predicted `quantiles` `[N]` (at the midpoints) against target samples `[M]`."""
    chex.assert_rank([quantiles, targets], 1)
    num_quantiles = quantiles.shape[0]
    tau = (jnp.arange(num_quantiles, dtype=jnp.float32) + 0.5) / num_quantiles
    errors = jax.lax.stop_gradient(targets)[None, :] - quantiles[:, None]  # u_ij: [N, M]
    weight = jnp.abs(tau[:, None] - (errors < 0.0).astype(jnp.float32))
    return jnp.sum(jnp.mean(weight * optax.huber_loss(errors, delta=KAPPA) / KAPPA, axis=1))


@dataclasses.dataclass(frozen=True)
class QRDQN(Learner):
    """Quantile-regression DQN: `outputs` are `[num_actions, num_quantiles]` quantiles."""

    num_quantiles: int = 32

    name: ClassVar[str] = "qrdqn"
    config_fields: ClassVar[tuple[str, ...]] = ("double", "num_quantiles")

    @classmethod
    def outputs_per_action(cls, config) -> int:
        return config.num_quantiles

    def action_values(self, outputs: jnp.ndarray) -> jnp.ndarray:
        return jnp.mean(outputs, axis=-1)

    def transition_loss(self, outputs, action, reward, discount, next_target, next_online):
        chex.assert_rank([outputs, action, reward, discount, next_target], [2, 0, 0, 0, 2])
        chooser = next_target if next_online is None else next_online
        next_action = jnp.argmax(self.action_values(chooser))
        targets = reward + discount * next_target[next_action]
        loss = quantile_huber_loss(outputs[action], targets)
        return loss, loss
