"""The trainer's state and what it reports, as pytrees: what the device loop carries from step to step.

`TrainerState` is one agent's state on one device; `FlatLearner` is the part of it a gradient update
changes, with the parameters raveled into one vector each (`jaxdqn.agent.Trainer.flat_update`);
`StepMetrics` and `ChunkMetrics` are what a vector step and a chunk report; `StepKeys` a vector step's keys.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
from flax import struct

from jaxdqn import buffer as replay
from jaxdqn.hparams import HParams


class TrainerState(struct.PyTreeNode):
    """Everything the training loop carries; one device's share of it.

    Between chunks `params` and `target_params` are the network's parameter trees. Inside a chunk of
    the fused kernels (`jaxdqn.kernels.Backend.uses_slab`), they and Adam's moments are flat slabs of `jaxdqn.kernels.update`,
    which acting and learning read as they are, and `slab` is True (`Trainer.run_chunk` converts both ways).
    """

    params: Any
    target_params: Any
    opt_state: Any  # Adam's state over the parameters raveled into one vector (see `Trainer.flat_update`)
    buffer: replay.ReplayBuffer
    env_state: Any  # [local_envs] gymnax env states
    obs: jnp.ndarray  # [local_envs, *obs_shape]
    episode_return: jnp.ndarray  # [local_envs] return of each env's current episode so far
    episode_length: jnp.ndarray  # [local_envs]
    key: jax.Array
    iteration: jnp.ndarray  # int32 vector steps done; env steps = iteration * num_envs (no overflow)
    updates: jnp.ndarray  # int32 gradient updates done
    hparams: HParams
    slab: bool = struct.field(pytree_node=False, default=False)  # parameters in the fused kernels' slab layout


class FlatLearner(struct.PyTreeNode):
    """What a gradient update changes, with the parameters raveled into one vector each (`Trainer.flat_update`)."""

    params: jnp.ndarray
    target_params: jnp.ndarray
    opt_state: Any  # the optimizer's state for the raveled parameters (TrainerState.opt_state)
    updates: jnp.ndarray


def flat_learner(state: TrainerState) -> tuple[FlatLearner, Any]:
    """The learner's fields of `state`, parameters raveled, and the function rebuilding the parameter tree
    (None for a state in the slab layout, whose parameters are flat already)."""
    if state.slab:
        return FlatLearner(state.params, state.target_params, state.opt_state, state.updates), None
    flat, unravel = jax.flatten_util.ravel_pytree(state.params)
    return FlatLearner(flat, jax.flatten_util.ravel_pytree(state.target_params)[0], state.opt_state,
                       state.updates), unravel


def with_learner(state: TrainerState, learner: FlatLearner, unravel) -> TrainerState:
    """`state` with the learner's fields of `learner` (`flat_learner`'s inverse)."""
    if state.slab:
        return state.replace(params=learner.params, target_params=learner.target_params,
                             opt_state=learner.opt_state, updates=learner.updates)
    return state.replace(params=unravel(learner.params), target_params=unravel(learner.target_params),
                         opt_state=learner.opt_state, updates=learner.updates)


class StepMetrics(struct.PyTreeNode):
    """What one `train_step` reports; `run_chunk` sums these over the chunk and the devices.

    The episode fields are per env (`[local_envs]`): the chunk adds them up env by env, inside the
    kernels that step the envs, and sums over the envs once at its end, not with a reduction per step.
    """

    loss_sum: jnp.ndarray  # sum of the losses of this step's gradient updates
    num_updates: jnp.ndarray
    return_sum: jnp.ndarray  # per env: the return of the episode that ended at this step, else 0
    length_sum: jnp.ndarray  # per env: that episode's length, else 0
    num_episodes: jnp.ndarray  # per env: 1 if an episode ended at this step, else 0


class StepKeys(struct.PyTreeNode):
    """The random keys of one `train_step`: acting, the envs' steps (one per env) and learning."""

    act: jax.Array
    env: jax.Array  # [local_envs]
    learn: jax.Array


class ChunkMetrics(struct.PyTreeNode):
    loss: jnp.ndarray  # mean over the chunk's gradient updates (nan if none)
    train_return: jnp.ndarray  # mean return of the episodes that ended in the chunk (nan if none)
    train_length: jnp.ndarray
    episodes: jnp.ndarray
    epsilon: jnp.ndarray  # at the end of the chunk
    iteration: jnp.ndarray
    updates: jnp.ndarray
    params_finite: jnp.ndarray  # whether every online parameter is finite at the end of the chunk
    q_mean: jnp.ndarray  # mean over the envs of max_a Q(s, a) at their observations at the end of the chunk


def all_finite(tree) -> jnp.ndarray:
    """One boolean: whether every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))
