"""A preallocated, on-device, circular replay buffer (Lin 1992; Mnih et al. 2013, "experience replay").

The buffer is laid out as `[rows, num_envs, ...]`: each vector step of the environments writes one
row with `dynamic_update_slice`, so an insert costs one contiguous copy whatever num_envs is, and the
oldest row is overwritten once the buffer is full. Sampling draws uniformly among filled slots only.
The next observation is stored beside the observation, because at an episode's end it is the
environment's final observation (gymnax's `info["final_observation"]`), not the reset one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Transition:
    """One transition per leading index: shapes `[..., *obs_shape]` for observations, `[...]` otherwise."""

    obs: jnp.ndarray
    action: jnp.ndarray
    reward: jnp.ndarray
    next_obs: jnp.ndarray
    terminated: jnp.ndarray  # bool: a true terminal state (not a time-limit truncation)


@struct.dataclass
class ReplayBuffer:
    data: Transition  # leaves shaped [rows, num_envs, ...]
    next_row: jnp.ndarray  # int32: the row the next insert writes
    filled_rows: jnp.ndarray  # int32: rows holding data, up to rows

    @property
    def rows(self) -> int:
        return self.data.action.shape[0]

    @property
    def num_envs(self) -> int:
        return self.data.action.shape[1]


def init(rows: int, example: Transition) -> ReplayBuffer:
    """Allocates a buffer of `rows` vector steps shaped like `example` (leaves `[num_envs, ...]`)."""
    data = jax.tree.map(lambda leaf: jnp.zeros((rows, *leaf.shape), leaf.dtype), example)
    return ReplayBuffer(data=data, next_row=jnp.int32(0), filled_rows=jnp.int32(0))


def add(buffer: ReplayBuffer, batch: Transition) -> ReplayBuffer:
    """Writes one vector step (leaves `[num_envs, ...]`) into the next row, wrapping around."""
    data = jax.tree.map(
        lambda store, leaf: jax.lax.dynamic_update_index_in_dim(store, leaf.astype(store.dtype), buffer.next_row, 0),
        buffer.data,
        batch,
    )
    return ReplayBuffer(
        data=data,
        next_row=(buffer.next_row + 1) % buffer.rows,
        filled_rows=jnp.minimum(buffer.filled_rows + 1, buffer.rows),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_shape: int | tuple[int, ...]) -> Transition:
    """Draws transitions uniformly (with replacement) from the filled slots; leaves `[*batch_shape, ...]`."""
    batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    num_filled = buffer.filled_rows * buffer.num_envs
    flat_index = jax.random.randint(key, batch_shape, 0, jnp.maximum(num_filled, 1))
    rows, envs = flat_index // buffer.num_envs, flat_index % buffer.num_envs
    return jax.tree.map(lambda store: store[rows, envs], buffer.data)
