"""A preallocated, on-device, circular replay buffer (Lin 1992; Mnih et al. 2013, "experience replay").

The buffer is laid out as `[rows, num_envs, ...]`: each vector step of the environments writes one
row with `dynamic_update_slice`, so an insert costs one contiguous copy whatever num_envs is, and the
oldest row is overwritten once the buffer is full. Sampling draws uniformly among filled slots only.
The next observation is stored beside the observation, because at an episode's end it is the
environment's final observation (gymnax's `info["final_observation"]`), not the reset one.

With float32 observations (CartPole, Acrobot, most ported simulators) a transition is packed into one
float32 row `[obs, next_obs, action, reward, terminated(, truncated)]` (`PackedLayout`): a vector step
is then one write and a batch one gather, instead of one of each per field. Actions and flags are
exact in float32. Other observations (MinAtar's booleans) keep one array per field, at their own
dtype. `ReplayBuffer.transitions` and `ReplayBuffer.take` give the fields in either layout.

Two Rainbow components (Hessel et al. 2018) live here too:

- n-step returns (Sutton 1988, "Learning to Predict by the Methods of Temporal Differences"): a
  sampled start (row t, env e) follows env e through rows t, t+1, ..., t+n-1 (consecutive vector steps
  of one env are consecutive rows), sums gamma^k r_k up to the first transition that ends the episode
  (terminated or truncated, hence `Transition.truncated`), and bootstraps from that transition's stored
  next observation with gamma^(k+1), unless it was `terminated`. Starts are drawn only among rows
  whose n-1 successors are written: never the newest n-1 rows, whose window would cross the write head.
  For lambda-returns (`--td_lambda` below 1) a start's window also brings every step's next observation
  (`gather_window`); the update forms Peng's Q(lambda) return from them (`jaxdqn.losses.lambda_return`).
- proportional prioritized replay (Schaul et al. 2016, "Prioritized Experience Replay"): slot i is drawn
  with probability P(i) = p_i / sum_j p_j, p_i = (|delta_i| + eps)^alpha, new transitions getting the
  largest priority given so far. Draws use a two-level cumulative sum recomputed from the priorities at
  every vector step (per-row sums `[rows]`, then within the chosen row `[num_envs]`), searched by
  unrolled binary search: O(rows * num_envs) once per vector step, O(log rows + log num_envs) per draw,
  no sum-tree. A float32 sum-tree that is updated incrementally accumulates rounding error in its inner
  nodes (a known pitfall, e.g. flashbax's); sums recomputed every time, split in two levels, do not drift.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxdqn import losses

PRIORITY_EPS = 1e-6  # eps of p_i = (|delta_i| + eps)^alpha: no transition's priority is ever 0


@struct.dataclass
class Transition:
    """One transition per leading index: shapes `[..., *obs_shape]` for observations, `[...]` otherwise."""

    obs: jnp.ndarray
    action: jnp.ndarray
    reward: jnp.ndarray
    next_obs: jnp.ndarray
    terminated: jnp.ndarray  # bool: a true terminal state (not a time-limit truncation)
    truncated: jnp.ndarray | None = None  # bool: a time-limit end; stored only for n-step returns


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """The columns of a transition packed into one float32 row: obs, next_obs, action, reward, terminated
    and, for n-step returns, truncated. Observations are flattened; their shape is restored on unpacking."""

    obs_shape: tuple[int, ...]
    action_dtype: str
    truncated: bool

    @staticmethod
    def fits(example: Transition) -> bool:
        """Whether `example`'s transitions pack without loss: float32 observations (actions and flags always do)."""
        return example.obs.dtype == jnp.float32 and example.next_obs.dtype == jnp.float32

    @classmethod
    def of(cls, example: Transition) -> PackedLayout:
        """The layout of `example` (leaves `[num_envs, ...]`)."""
        return cls(tuple(example.obs.shape[1:]), jnp.dtype(example.action.dtype).name, example.truncated is not None)

    @property
    def obs_size(self) -> int:
        return math.prod(self.obs_shape)

    @property
    def width(self) -> int:
        return 2 * self.obs_size + 3 + self.truncated

    def pack(self, transition: Transition) -> jnp.ndarray:
        """`[..., width]` float32 rows of `transition` (leaves `[..., *obs_shape]` and `[...]`)."""
        lead = transition.action.shape
        columns = [transition.obs.reshape(*lead, self.obs_size), transition.next_obs.reshape(*lead, self.obs_size),
                   transition.action[..., None], transition.reward[..., None], transition.terminated[..., None]]
        if self.truncated:
            columns.append(transition.truncated[..., None])
        return jnp.concatenate([column.astype(jnp.float32) for column in columns], axis=-1)

    @property
    def scalars_start(self) -> int:
        """The first column after the observations: action, reward, terminated(, truncated) follow."""
        return 2 * self.obs_size

    def unpack(self, rows: jnp.ndarray) -> Transition:
        """The transition whose packed rows are `rows` (`[..., width]`); without observations (None) when
        `rows` holds only the columns from `scalars_start` on (`ReplayBuffer.take`'s `scalars_only`)."""
        lead = rows.shape[:-1]
        observations = rows.shape[-1] == self.width
        start = self.scalars_start if observations else 0
        flag = lambda column: rows[..., start + column] != 0.0  # noqa: E731  (stored as exactly 0.0 or 1.0)
        size = self.obs_size
        return Transition(
            obs=rows[..., :size].reshape(*lead, *self.obs_shape) if observations else None,
            next_obs=rows[..., size:2 * size].reshape(*lead, *self.obs_shape) if observations else None,
            action=rows[..., start].astype(self.action_dtype),
            reward=rows[..., start + 1],
            terminated=flag(2),
            truncated=flag(3) if self.truncated else None,
        )


@struct.dataclass
class ReplayBuffer:
    # What is stored, leaves `[rows, num_envs, ...]`: a Transition (`layout` None), or one float32
    # `[rows, num_envs, layout.width]` array of packed transitions.
    data: Any
    next_row: jnp.ndarray  # int32: the row the next insert writes
    filled_rows: jnp.ndarray  # int32: rows holding data, up to rows
    # Prioritized replay only (None otherwise):
    priority: jnp.ndarray | None = None  # [rows, num_envs] float32 p_i = (|delta_i| + eps)^alpha; 0 if empty
    max_priority: jnp.ndarray | None = None  # float32: the largest priority given so far (new slots get it)
    layout: PackedLayout | None = struct.field(pytree_node=False, default=None)

    @property
    def rows(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]

    @property
    def num_envs(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[1]

    @property
    def transitions(self) -> Transition:
        """Every slot's transition, leaves `[rows, num_envs, ...]`, whatever the layout."""
        return self.data if self.layout is None else self.layout.unpack(self.data)

    def take(self, rows: jnp.ndarray, envs: jnp.ndarray, scalars_only: bool = False) -> Transition:
        """The transitions at slots `(rows, envs)` (index arrays of one shape): one gather when packed.

        `scalars_only`: action, reward and the flags only (observations None), not gathering the
        observations' columns at all.
        """
        if self.layout is None:
            data = self.data.replace(obs=None, next_obs=None) if scalars_only else self.data
            return jax.tree.map(lambda store: store[rows, envs], data)
        columns = slice(self.layout.scalars_start if scalars_only else 0, None)
        return self.layout.unpack(self.data[rows, envs, columns])


@struct.dataclass
class Batch:
    """What a gradient update learns from: the target is `reward + discount * value(next_obs)`.

    One step: `reward` = r, `next_obs` = s', `discount` = gamma * (1 - terminated). n steps: `reward` =
    sum_k gamma^k r_k up to the episode's end, `next_obs` the observation bootstrapped from, `discount` =
    gamma^k * (1 - terminated) for the k steps taken.
    """

    obs: jnp.ndarray
    action: jnp.ndarray
    reward: jnp.ndarray
    next_obs: jnp.ndarray
    discount: jnp.ndarray
    weight: jnp.ndarray | None = None  # importance-sampling weights (prioritized replay), else None


def init(rows: int, example: Transition, prioritized: bool = False, packed: bool | None = None) -> ReplayBuffer:
    """Allocates a buffer of `rows` vector steps shaped like `example` (leaves `[num_envs, ...]`).

    `packed`: store packed rows (`PackedLayout`); None: packed whenever the transitions fit.
    """
    if packed is None:
        packed = PackedLayout.fits(example)
    elif packed and not PackedLayout.fits(example):
        raise ValueError(f"transitions with {example.obs.dtype} observations do not pack into float32 rows")
    if packed:
        layout = PackedLayout.of(example)
        data = jnp.zeros((rows, example.action.shape[0], layout.width), jnp.float32)
    else:
        layout, data = None, jax.tree.map(lambda leaf: jnp.zeros((rows, *leaf.shape), leaf.dtype), example)
    buffer = ReplayBuffer(data=data, next_row=jnp.int32(0), filled_rows=jnp.int32(0), layout=layout)
    if prioritized:  # p_1 = 1 (Schaul et al., Algorithm 1); empty slots have priority 0
        buffer = buffer.replace(priority=jnp.zeros((rows, example.action.shape[0]), jnp.float32),
                                max_priority=jnp.float32(1.0))
    return buffer


def add(buffer: ReplayBuffer, batch: Transition) -> ReplayBuffer:
    """Writes one vector step (leaves `[num_envs, ...]`) into the next row, wrapping around."""
    write = lambda store, leaf: jax.lax.dynamic_update_index_in_dim(  # noqa: E731
        store, leaf.astype(store.dtype), buffer.next_row, 0)
    if buffer.layout is None:
        data = jax.tree.map(write, buffer.data, batch)
    else:
        data = write(buffer.data, buffer.layout.pack(batch))
    priority = buffer.priority
    if priority is not None:  # new transitions get the largest priority so far
        new = jnp.broadcast_to(buffer.max_priority, priority.shape[1:])
        priority = jax.lax.dynamic_update_index_in_dim(priority, new, buffer.next_row, 0)
    return buffer.replace(
        data=data,
        next_row=(buffer.next_row + 1) % buffer.rows,
        filled_rows=jnp.minimum(buffer.filled_rows + 1, buffer.rows),
        priority=priority,
    )


# Sampling ------------------------------------------------------------------------------------

def sample(buffer: ReplayBuffer, key: jax.Array, batch_shape: int | tuple[int, ...]) -> Transition:
    """Draws transitions uniformly (with replacement) from the filled slots; leaves `[*batch_shape, ...]`."""
    rows, envs = sample_uniform(buffer, key, batch_shape)
    return buffer.take(rows, envs)


def sample_uniform(buffer: ReplayBuffer, key: jax.Array, batch_shape: int | tuple[int, ...],
                   n_step: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Uniform `(rows, envs)` indices `[*batch_shape]` of start slots whose n-1 successors are written."""
    batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    start_rows = buffer.filled_rows - (n_step - 1)
    flat_index = jax.random.randint(key, batch_shape, 0, jnp.maximum(start_rows * buffer.num_envs, 1))
    offset, envs = flat_index // buffer.num_envs, flat_index % buffer.num_envs
    if n_step == 1:  # every filled row is a start: index the rows directly
        return offset, envs
    oldest = buffer.next_row - buffer.filled_rows  # counting from the oldest row skips the newest n-1
    return (oldest + offset) % buffer.rows, envs


def valid_start_rows(buffer: ReplayBuffer, n_step: int = 1) -> jnp.ndarray:
    """`[rows]` bool: the row is written and so are its n-1 successors (it is not among the newest n-1)."""
    age = (buffer.next_row - 1 - jnp.arange(buffer.rows)) % buffer.rows  # 0: the newest row
    return (age >= n_step - 1) & (age < buffer.filled_rows)


def sample_prioritized(buffer: ReplayBuffer, key: jax.Array, batch_shape: int | tuple[int, ...], beta,
                       n_step: int = 1) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Draws `(rows, envs, weights)` `[*batch_shape]` with P(i) = p_i / sum_j p_j (Schaul et al. 2016).

    Weights are w_i = (N * P(i))^-beta / max_j w_j with N the number of valid start slots; the largest
    weight is that of the smallest priority, so w_i = (p_min / p_i)^beta exactly. With replacement.
    """
    batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    valid = valid_start_rows(buffer, n_step)
    priority = buffer.priority
    within_row = jnp.cumsum(priority, axis=1)  # [rows, num_envs]
    row_mass = jnp.where(valid, within_row[:, -1], 0.0)
    row_cumulative = jnp.cumsum(row_mass)  # [rows]
    row_key, env_key = jax.random.split(key)
    # Level 1: a row with probability row_mass / total.
    rows = _first_above(row_cumulative[None], jnp.zeros(batch_shape, jnp.int32),
                        _scaled_uniform(row_key, batch_shape, row_cumulative[-1]))
    rows = jnp.where(row_mass[rows] > 0.0, rows, jnp.argmax(row_mass))  # rounding never picks an invalid row
    # Level 2: a slot of that row with probability p / row_mass (a fresh uniform, so no precision is lost).
    envs = _first_above(within_row, rows, _scaled_uniform(env_key, batch_shape, within_row[rows, -1]))
    smallest = jnp.min(jnp.where(valid[:, None], priority, jnp.inf))
    weights = (smallest / priority[rows, envs]) ** beta
    return rows, envs, weights


def _scaled_uniform(key: jax.Array, shape: tuple[int, ...], total: jnp.ndarray) -> jnp.ndarray:
    """Uniform in [0, total), kept strictly below total after rounding."""
    return jnp.minimum(jax.random.uniform(key, shape) * total, jnp.nextafter(total, jnp.float32(0.0)))


def _first_above(cumulative: jnp.ndarray, row: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per draw, the first column j with `cumulative[row, j] > target` (the last column if none).

    `cumulative` is `[rows, width]`, non-decreasing along each row. A binary search unrolled into
    ceil(log2(width)) gathers of one element per draw: no device loop, no `[draws, width]` array.
    """
    width = cumulative.shape[1]
    low = jnp.zeros(target.shape, jnp.int32)
    high = jnp.full(target.shape, width - 1, jnp.int32)
    for _ in range((width - 1).bit_length()):
        middle = (low + high) // 2
        go_right = cumulative[row, middle] <= target
        low = jnp.where(go_right, middle + 1, low)
        high = jnp.where(go_right, high, middle)
    return low


# Batches and priorities ----------------------------------------------------------------------

def one_step(transition: Transition, gamma) -> Batch:
    """The one-step batch of sampled transitions: discount = gamma * (1 - terminated)."""
    return Batch(obs=transition.obs, action=transition.action, reward=transition.reward,
                 next_obs=transition.next_obs, discount=losses.one_step_discount(transition.terminated, gamma))


def gather_batch(buffer: ReplayBuffer, rows: jnp.ndarray, envs: jnp.ndarray, gamma, n_step: int = 1) -> Batch:
    """The (n-step) batch that starts at slots `(rows, envs)`, any shape; see the module docstring."""
    if n_step == 1:
        return one_step(buffer.take(rows, envs), gamma)
    steps, window = _window(buffer, rows, envs, n_step)  # [..., n]: the window's rows
    reward, terminated = window.reward, window.terminated
    counted = _counted(window)  # no earlier step of the window ended the episode
    taken = jnp.sum(counted, axis=-1)  # k: steps up to and including the first end, at most n
    last = taken - 1  # the window index of the transition bootstrapped from
    powers = gamma ** jnp.arange(n_step, dtype=jnp.float32)
    bootstrap_terminated = jnp.take_along_axis(terminated, last[..., None], axis=-1)[..., 0]
    start = buffer.take(rows, envs)
    bootstrap_row = jnp.take_along_axis(steps, last[..., None], axis=-1)[..., 0]
    return Batch(
        obs=start.obs,
        action=start.action,
        reward=jnp.sum(jnp.where(counted, powers * reward, 0.0), axis=-1),
        next_obs=buffer.take(bootstrap_row, envs).next_obs,
        discount=gamma ** taken.astype(jnp.float32) * (1.0 - bootstrap_terminated.astype(jnp.float32)),
    )


@struct.dataclass
class Window:
    """A sampled start and its n-step window, for lambda-returns (`jaxdqn.losses.lambda_return`).

    `obs`, `action`: the start's; `reward`, `discount` (gamma * (1 - terminated)), `counted` (in the start's
    episode) and `next_obs` per window step: `[..., n]` and `[..., n, *obs_shape]`.
    """

    obs: jnp.ndarray
    action: jnp.ndarray
    reward: jnp.ndarray
    discount: jnp.ndarray
    counted: jnp.ndarray
    next_obs: jnp.ndarray
    weight: jnp.ndarray | None = None


def gather_window(buffer: ReplayBuffer, rows: jnp.ndarray, envs: jnp.ndarray, gamma, n_step: int) -> Window:
    """The n-step windows that start at slots `(rows, envs)`, with every step's next observation."""
    _, window = _window(buffer, rows, envs, n_step, scalars_only=False)  # its scalars and next observations
    start = buffer.take(rows, envs)
    return Window(obs=start.obs, action=start.action, reward=window.reward,
                  discount=losses.one_step_discount(window.terminated, gamma), counted=_counted(window),
                  next_obs=window.next_obs)


def _window(buffer: ReplayBuffer, rows: jnp.ndarray, envs: jnp.ndarray, n_step: int,
            scalars_only: bool = True) -> tuple[jnp.ndarray, Transition]:
    """The window's rows `[..., n]` and its steps' transitions (`scalars_only`: no observations)."""
    steps = (rows[..., None] + jnp.arange(n_step)) % buffer.rows
    return steps, buffer.take(steps, jnp.broadcast_to(envs[..., None], steps.shape), scalars_only=scalars_only)


def _counted(window: Transition) -> jnp.ndarray:
    """`[..., n]` bool: no earlier step of the window ended the episode (terminated or truncated)."""
    ended = window.terminated | window.truncated
    return (jnp.cumsum(ended, axis=-1) - ended) == 0


def update_priorities(buffer: ReplayBuffer, rows: jnp.ndarray, envs: jnp.ndarray, td_error: jnp.ndarray,
                      alpha: float) -> ReplayBuffer:
    """Sets p = (|td_error| + eps)^alpha at `(rows, envs)` (same shapes, in update order).

    A slot drawn several times keeps its last draw's error (the latest network's), whatever the device:
    a stable sort puts each slot's draws in order, and only the last of each is written.
    """
    priority = (jnp.abs(td_error) + PRIORITY_EPS) ** alpha
    slots = (rows * buffer.num_envs + envs).reshape(-1)
    values = priority.reshape(-1).astype(jnp.float32)
    order = jnp.argsort(slots, stable=True)
    sorted_slots = slots[order]
    last_draw = jnp.append(sorted_slots[1:] != sorted_slots[:-1], True)
    targets = jnp.where(last_draw, sorted_slots, buffer.priority.size)  # out of range: dropped
    flat = buffer.priority.reshape(-1).at[targets].set(values[order], mode="drop")
    return buffer.replace(priority=flat.reshape(buffer.priority.shape),
                          max_priority=jnp.maximum(buffer.max_priority, jnp.max(values)))
