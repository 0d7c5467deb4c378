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
    chex.assert_rank([reward, discount], [0, 0])
    return reward + discount * jax.lax.stop_gradient(bootstrap_value(next_q_target, next_q_online))


def bootstrap_value(next_q_target: jnp.ndarray, next_q_online: jnp.ndarray | None = None) -> jnp.ndarray:
    """value(s') of one observation: max_a Q_target(s', a), or Double DQN's Q_target(s', argmax_a Q_online(s', a))."""
    chex.assert_rank(next_q_target, 1)
    if next_q_online is None:
        return jnp.max(next_q_target)
    chex.assert_equal_shape([next_q_target, next_q_online])
    return next_q_target[jnp.argmax(next_q_online)]


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


def lambda_return(reward: jnp.ndarray, discount: jnp.ndarray, value: jnp.ndarray, counted: jnp.ndarray,
                  lam) -> jnp.ndarray:
    """Peng's Q(lambda) return of one transition over its n-step window (Peng & Williams 1996), stop-gradient.

    Backwards over the window, G_k = r_k + discount_k * ((1 - lam) * V_k + lam * G_{k+1}) where step k+1 is
    still in the window and the episode, and G_k = r_k + discount_k * V_k at the window's last counted step,
    V_k being the value of s_{k+1}; returns G_0. lam = 1 gives the n-step return, lam = 0 the one-step target.

    Args:
      reward: `[n]` rewards r_k of the window's steps.
      discount: `[n]` gamma * (1 - terminated_k).
      value: `[n]` value(s_{k+1}) of each step's next observation (target network, Double DQN's or max).
      counted: `[n]` bool, step k is in step 0's episode (no earlier step of the window ended it).
      lam: scalar lambda in [0, 1].
    """
    chex.assert_rank([reward, discount, value, counted], 1)
    chex.assert_equal_shape([reward, discount, value, counted])
    continues = jnp.append(counted[1:], False)  # step k + 1 is in the window and in the episode
    lam = jnp.asarray(lam, jnp.float32)
    g = jnp.float32(0.0)
    for k in reversed(range(reward.shape[0])):  # n is small and static: unrolled
        g = reward[k] + discount[k] * jnp.where(continues[k], (1.0 - lam) * value[k] + lam * g, value[k])
    return jax.lax.stop_gradient(g)


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
