"""Q-learning targets and TD losses, written for one transition and vmapped over a batch.

Follows Mnih et al. (2013/2015): y = r + gamma * (1 - terminated) * max_a Q_target(s', a), with the
Double DQN variant of van Hasselt et al. (2016), "Deep Reinforcement Learning with Double Q-learning":
y = r + gamma * (1 - terminated) * Q_target(s', argmax_a Q_online(s', a)).
Only a true terminal state cuts the bootstrap; a time-limit truncation does not.

The trainer computes targets in the general form y = R + discount * value(s'), where the sampled batch
carries R and discount (`jaxdqn.buffer.Batch`): one step, R = r and discount = gamma * (1 - terminated);
n steps (Sutton 1988; Hessel et al. 2018, "Rainbow"), R = sum_k gamma^k r_k up to the episode's end and
discount = gamma^k * (1 - terminated) for the k steps taken.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax


def bootstrap_target(
    reward: jnp.ndarray,
    discount: jnp.ndarray,
    next_q_target: jnp.ndarray,
    next_q_online: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """y = reward + discount * value(s') for one (one- or n-step) transition.

    Args:
      reward: scalar (discounted, for n steps) return before the bootstrap.
      discount: scalar gamma^k * (1 - terminated): 0 cuts the bootstrap.
      next_q_target: `[num_actions]` target-network Q-values at the bootstrap observation s'.
      next_q_online: `[num_actions]` online-network Q-values at s' (Double DQN), or None.
    """
    chex.assert_rank([reward, discount, next_q_target], [0, 0, 1])
    if next_q_online is None:
        next_value = jnp.max(next_q_target)
    else:
        chex.assert_equal_shape([next_q_target, next_q_online])
        next_value = next_q_target[jnp.argmax(next_q_online)]
    return reward + discount * jax.lax.stop_gradient(next_value)


def q_learning_target(
    reward: jnp.ndarray,
    terminated: jnp.ndarray,
    gamma: jnp.ndarray,
    next_q_target: jnp.ndarray,
    next_q_online: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """The one-step bootstrapped target r + gamma * (1 - terminated) * value(s') of one transition.

    Args:
      reward: scalar reward r.
      terminated: scalar bool, True when s' is a terminal state.
      gamma: scalar discount.
      next_q_target: `[num_actions]` target-network Q-values at s'.
      next_q_online: `[num_actions]` online-network Q-values at s' (Double DQN), or None.
    """
    chex.assert_rank([terminated, gamma], [0, 0])
    return bootstrap_target(reward, one_step_discount(terminated, gamma), next_q_target, next_q_online)


def one_step_discount(terminated: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
    """gamma * (1 - terminated): the discount of a one-step target (elementwise)."""
    return gamma * (1.0 - terminated.astype(jnp.float32))


def td_error(q: jnp.ndarray, action: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """target - Q(s, a) for one transition; `q` is `[num_actions]`."""
    chex.assert_rank([q, action, target], [1, 0, 0])
    return target - q[action]


def td_loss(error: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Elementwise loss of TD errors: `huber` (smooth L1 with delta 1, as the original) or `mse` (error^2)."""
    if kind == "huber":
        return optax.huber_loss(error, delta=1.0)
    if kind == "mse":
        return jnp.square(error)
    raise ValueError(f"unknown loss {kind!r}")


def batch_targets(reward, discount, next_q_target, next_q_online=None):
    """`bootstrap_target` vmapped over a batch (`next_q_*` are `[batch, num_actions]`)."""
    if next_q_online is None:
        return jax.vmap(bootstrap_target)(reward, discount, next_q_target)
    return jax.vmap(bootstrap_target)(reward, discount, next_q_target, next_q_online)


batch_td_error = jax.vmap(td_error)
