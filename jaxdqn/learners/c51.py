"""C51: the return's distribution on a fixed support of atoms, Bellemare, Dabney & Munos (2017),
"A Distributional Perspective on Reinforcement Learning".

The network emits, per action, the logits of a categorical distribution over `num_atoms` returns evenly
spaced on [v_min, v_max]; Q(s, a) is that distribution's mean. The target distribution is the target
network's at s' for the greedy next action (chosen by the online network with Double DQN, as in
Rainbow), shifted and shrunk by `reward + discount * z` and projected back onto the support (their
Algorithm 1); the loss is the cross-entropy of the projected target against the online distribution of
the action taken, which is also the priority of prioritized replay (Hessel et al. 2018).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from jaxdqn.learners.base import Learner


def categorical_projection(target_support: jnp.ndarray, probabilities: jnp.ndarray,
                           support: jnp.ndarray) -> jnp.ndarray:
    """Projects the distribution with `probabilities` on atoms `target_support` onto the evenly spaced `support`.

    Each target atom's mass goes to the two support atoms around it (after clipping it into the support's
    range), split in proportion to its distance to each: the mass is conserved. All `[num_atoms]`.
    """
    chex.assert_rank([target_support, probabilities, support], 1)
    chex.assert_equal_shape([target_support, probabilities, support])
    spacing = support[1] - support[0]
    clipped = jnp.clip(target_support, support[0], support[-1])
    # weight[i, j]: the share of target atom j's mass that support atom i receives.
    weight = jnp.clip(1.0 - jnp.abs(clipped[None, :] - support[:, None]) / spacing, 0.0, 1.0)
    return weight @ probabilities


@dataclasses.dataclass(frozen=True)
class C51(Learner):
    """Categorical DQN: `outputs` are `[num_actions, num_atoms]` logits."""

    num_atoms: int = 51
    v_min: float = -100.0
    v_max: float = 100.0

    name: ClassVar[str] = "c51"
    config_fields: ClassVar[tuple[str, ...]] = ("double", "num_atoms", "v_min", "v_max")

    @classmethod
    def outputs_per_action(cls, config) -> int:
        return config.num_atoms

    @property
    def support(self) -> jnp.ndarray:
        return jnp.linspace(self.v_min, self.v_max, self.num_atoms, dtype=jnp.float32)

    def action_values(self, outputs: jnp.ndarray) -> jnp.ndarray:
        return jnp.sum(jax.nn.softmax(outputs, axis=-1) * self.support, axis=-1)

    def transition_loss(self, outputs, action, reward, discount, next_target, next_online):
        chex.assert_rank([outputs, action, reward, discount, next_target], [2, 0, 0, 0, 2])
        chooser = next_target if next_online is None else next_online
        next_action = jnp.argmax(self.action_values(chooser))
        next_probabilities = jax.nn.softmax(next_target[next_action])
        target = categorical_projection(reward + discount * self.support, next_probabilities, self.support)
        cross_entropy = -jnp.sum(jax.lax.stop_gradient(target) * jax.nn.log_softmax(outputs[action]))
        return cross_entropy, cross_entropy
