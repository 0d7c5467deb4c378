"""A DQN gradient update of the default MLP Q-network as three fused GPU kernels (Pallas, Triton).

One gradient update of DQN (Mnih et al. 2013; Double DQN targets after van Hasselt et al. 2016) runs
the online network on s (and on s' for Double DQN) and the target network on s', then back-propagates
the TD loss through the online network. With XLA's kernels that is a chain of dozens of small
kernels per update (matrix products, LayerNorm statistics, their transposes), each a few
microseconds on a GPU whatever its size: at a batch of 256 and two 128-wide layers an update's time
is almost all kernel launches and round trips through GPU memory (measurements: docs/performance.md,
"The update as three kernels").

Here one kernel (`loss_and_gradient`) does all of it: each kernel instance takes a block of 16
transitions through the three forward passes in registers, computes the targets, the TD errors, the
loss and its gradient, and writes its block's share of the gradient. Then `adam_step` runs two more:
one sums the shares (and the squares of each chunk of the sum), one clips by the global norm, applies
Adam and updates the target network, in place. The optimizer's scalars (learning rate, bias
corrections, whether the target update is due) come in as a table with a row per update, worked out
once per vector step (`jaxdqn.kernels.backend.optimizer_schedule`): between two updates nothing else runs.

The parameters travel in a "slab" (`SlabLayout`): one `[rows, width]` float32 array holding every
layer's matrix, bias and LayerNorm scale and shift as row blocks, zero-padded to powers of two (the
tile sizes of Triton), the output layer transposed. The kernel reads each block straight from it,
and writes the gradient in the same layout. Padded entries have zero gradients, so Adam and the
target update keep them at zero.

The arithmetic is that of `jaxdqn.learners.DQN` with `MLPQNetwork` (flax's LayerNorm: fast variance
clipped at zero, epsilon 1e-6; Huber loss with delta 1, or squared error; optional importance weights),
with the backward passes written out: for LayerNorm, with x_hat = (z - mean) * r, dz = r * (dx_hat -
mean(dx_hat) - x_hat * mean(dx_hat * x_hat)). Matrix products use the default float32 precision
(TF32 on recent NVIDIA GPUs, as XLA's kernels do). Tested against `jax.grad` of the trainer's loss
and against optax, in the Pallas interpreter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton

from jaxdqn.kernels.acting import LAYER_NORM_EPSILON, MAX_WIDTH, padded_size, whole_block
from jaxdqn.networks import MLPQNetwork

MIN_ROWS = 16  # the smallest block of the batch one kernel instance takes (Triton's smallest matrix tile)
CHUNK = 1024  # slab entries per instance of the optimizer's kernels
SCALARS = 16  # per-update scalars of `adam_step`, padded to a power of two
# Updates per step of the device loop: each step of an XLA loop costs a counter kernel and a copy,
# 2 of the 5 launches of a fused update. Of 1, 2 and 4, four was the fastest at the defaults, with no
# longer a compile (docs/performance.md).
UNROLL = 4


def supports(network, obs_size: int, batch_size: int) -> bool:
    """Whether `loss_and_gradient` runs this network on batches of `batch_size` (else XLA's kernels)."""
    if (type(network) is not MLPQNetwork or network.dueling or network.noisy or network.outputs_per_action != 1
            or not network.hidden_sizes):
        return False
    widths = {padded_size(width) for width in network.hidden_sizes}
    return (len(widths) == 1 and max(widths) <= MAX_WIDTH and padded_size(obs_size) <= MAX_WIDTH
            and padded_size(network.num_actions) <= MAX_WIDTH and batch_size >= MIN_ROWS
            and batch_size & (batch_size - 1) == 0)  # kernel instances: a power of two of them


def block_shape(batch_size: int) -> tuple[int, int]:
    """(batch rows per kernel instance, warps per instance).

    The kernel is bound by the latency of its chain of matrix products, not by arithmetic: the most
    instances of the fewest rows, each with 8 warps, was fastest (against 32 rows, or 16 warps, at
    CartPole's defaults; figures in docs/performance.md).
    """
    del batch_size  # any supported batch is a multiple of 16 rows
    return MIN_ROWS, 8


@dataclasses.dataclass(frozen=True)
class Block:
    """One parameter array's place in the slab: rows `start:start + rows`, all `width` columns."""

    path: tuple[str, str]  # (layer, parameter) in the flax tree, e.g. ("Dense_0", "kernel")
    start: int
    rows: int
    transposed: bool = False  # the output layer's kernel is stored [actions, width]


class SlabLayout:
    """Where each parameter of an `MLPQNetwork` lives in the kernel's `[rows, width]` slab, and the
    conversions between the slab and `jax.flatten_util.ravel_pytree`'s vector of the same parameters.

    Row blocks, in order: per hidden layer l, its kernel (`[obs rows | width, width]`), bias, and
    LayerNorm scale and shift (one row each); then the output kernel transposed (`[actions, width]`) and
    its bias (one row).
    """

    def __init__(self, network: MLPQNetwork, obs_size: int, params):
        self.network = network
        self.width = padded_size(network.hidden_sizes[0])
        self.obs_rows = padded_size(obs_size)
        self.action_rows = padded_size(network.num_actions)
        blocks, start = [], 0

        def add(layer: str, name: str, rows: int, transposed: bool = False):
            nonlocal start
            blocks.append(Block((layer, name), start, rows, transposed))
            start += rows

        hidden, output = network.layers()
        for index, layer in enumerate(hidden):
            add(layer.dense, "kernel", self.obs_rows if index == 0 else self.width)
            add(layer.dense, "bias", 1)
            if layer.norm is not None:
                add(layer.norm, "scale", 1)
                add(layer.norm, "bias", 1)
        add(output, "kernel", self.action_rows, transposed=True)
        add(output, "bias", 1)
        self.blocks = {block.path: block for block in blocks}
        self.parameter_rows = start
        chunk_rows = max(1, CHUNK // self.width)  # whole chunks of the optimizer kernel; the rest is zeros
        self.rows = -(-start // chunk_rows) * chunk_rows

        # Index maps between the slab (flat, row-major) and the raveled parameter vector.
        index_tree = _index_tree(params)
        self.size = sum(leaf.size for leaf in jax.tree.leaves(index_tree))
        slab_of_ravel = np.zeros(self.size, np.int32)
        for block in blocks:
            indices = np.asarray(index_tree["params"][block.path[0]][block.path[1]])
            indices = indices.reshape(-1, indices.shape[-1]) if indices.ndim > 1 else indices[None]
            if block.transposed:
                indices = indices.T
            rows, columns = np.meshgrid(np.arange(indices.shape[0]), np.arange(indices.shape[1]), indexing="ij")
            slab_of_ravel[indices] = (block.start + rows) * self.width + columns
        ravel_of_slab = np.full(self.rows * self.width, self.size, np.int32)  # `size`: a padded entry
        ravel_of_slab[slab_of_ravel] = np.arange(self.size)
        self.slab_of_ravel, self.ravel_of_slab = slab_of_ravel, ravel_of_slab

    def to_slab(self, vector: jnp.ndarray) -> jnp.ndarray:
        """A raveled parameter vector `[size]` (parameters, or Adam's moments) as the flat slab `[rows * width]`."""
        return jnp.append(vector, jnp.zeros((1,), vector.dtype))[self.ravel_of_slab]

    def from_slab(self, slab: jnp.ndarray) -> jnp.ndarray:
        """`to_slab`'s inverse (padded entries dropped)."""
        return slab[self.slab_of_ravel]

    def read(self, slab_ref, layer: str, name: str, columns: int | None = None) -> jnp.ndarray:
        """Inside a kernel: the block of parameter `name` of `layer` from `slab_ref` (`[rows, width]`), its
        first `columns` columns (default all)."""
        block = self.blocks[(layer, name)]
        return slab_ref[pl.ds(block.start, block.rows), pl.ds(0, columns or self.width)]

    def leaf_to_slab(self, leaf: jnp.ndarray) -> jnp.ndarray:
        """`to_slab` for a leaf of the learner (parameters, target, Adam's moments); other leaves (counts) kept."""
        return self.to_slab(leaf) if leaf.shape == (self.size,) else leaf

    def leaf_from_slab(self, leaf: jnp.ndarray) -> jnp.ndarray:
        """`from_slab` for a leaf of the learner; other leaves kept."""
        return self.from_slab(leaf) if leaf.shape == (self.rows * self.width,) else leaf


def _index_tree(params):
    """`params`' tree with each leaf replaced by its elements' positions in `ravel_pytree`'s vector."""
    leaves, treedef = jax.tree.flatten(params)
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    return jax.tree.unflatten(treedef, [np.arange(offset, offset + leaf.size).reshape(leaf.shape)
                                        for offset, leaf in zip(offsets, leaves)])


def _make_kernel(layout: SlabLayout, batch_size: int, block_rows: int, double: bool, loss: str, weighted: bool):
    """The body of `loss_and_gradient`: one instance per block of `block_rows` transitions of the batch."""
    network = layout.network
    hidden, output = network.layers()
    width, num_actions, action_rows = layout.width, network.num_actions, layout.action_rows

    loaded = {}  # each parameter block is read once per kernel instance, however often it is used

    def rows_of(ref, layer: str, name: str, columns: int | None = None):
        key = (id(ref), layer, name, columns)
        if key not in loaded:
            loaded[key] = layout.read(ref, layer, name, columns)
        return loaded[key]

    def dot(a, b, contract=(1, 0)):
        return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                                   preferred_element_type=jnp.float32)

    def forward(ref, x, keep: bool):
        """Q-values `[block_rows, action_rows]`; with `keep`, each hidden layer's (input, x_hat, r, output)."""
        saved = []
        for layer in hidden:
            layer_input = x
            z = dot(x, rows_of(ref, layer.dense, "kernel")) + rows_of(ref, layer.dense, "bias")
            x_hat = r = None
            if layer.norm is not None:  # statistics over the real width: padded columns are zeros
                mean = jnp.sum(z, axis=1)[:, None] / layer.width
                variance = jnp.maximum(jnp.sum(z * z, axis=1)[:, None] / layer.width - mean * mean, 0.0)
                r = jax.lax.rsqrt(variance + LAYER_NORM_EPSILON)
                x_hat = (z - mean) * r
                z = x_hat * rows_of(ref, layer.norm, "scale") + rows_of(ref, layer.norm, "bias")
            x = jnp.maximum(z, 0.0)
            if keep:
                saved.append((layer_input, x_hat, r, x))
        q = dot(x, rows_of(ref, output, "kernel"), contract=(1, 1)) + rows_of(ref, output, "bias", action_rows)
        return q, saved

    def kernel(params_ref, target_ref, obs_ref, next_obs_ref, action_ref, reward_ref, discount_ref, weight_ref,
               index_ref, _losses, _errors, grad_ref, loss_ref, error_ref):
        loaded.clear()  # values of an earlier trace of this kernel are not this one's
        columns = jnp.arange(width)[None, :]
        update = index_ref[0]
        start = update * batch_size + pl.program_id(0) * block_rows
        rows = pl.ds(start, block_rows)
        obs, next_obs = obs_ref[rows, :], next_obs_ref[rows, :]
        action = action_ref[rows]
        action_columns = jnp.arange(action_rows)[None, :]
        real = action_columns < num_actions

        # Targets y = reward + discount * value(s'), value from the target network (Double DQN: at
        # the online network's greedy action).
        next_q_target, _ = forward(target_ref, next_obs, keep=False)
        if double:
            next_q_online, _ = forward(params_ref, next_obs, keep=False)
            best = jnp.argmax(jnp.where(real, next_q_online, -jnp.inf), axis=1)
            next_value = jnp.sum(jnp.where(action_columns == best[:, None], next_q_target, 0.0), axis=1)
        else:
            next_value = jnp.max(jnp.where(real, next_q_target, -jnp.inf), axis=1)
        target = reward_ref[rows] + discount_ref[rows] * next_value

        q, saved = forward(params_ref, obs, keep=True)
        chosen = action_columns == action[:, None]
        error = target - jnp.sum(jnp.where(chosen, q, 0.0), axis=1)
        if loss == "huber":  # optax.huber_loss with delta 1 and its derivative
            magnitude = jnp.abs(error)
            quadratic = jnp.minimum(magnitude, 1.0)
            elementwise, slope = 0.5 * quadratic * quadratic + (magnitude - quadratic), jnp.clip(error, -1.0, 1.0)
        else:
            elementwise, slope = error * error, 2.0 * error
        weight = weight_ref[rows] if weighted else 1.0
        loss_ref[pl.ds(update * (batch_size // block_rows) + pl.program_id(0), 1)] = \
            jnp.sum(weight * elementwise)[None] / batch_size
        error_ref[rows] = error
        # d(mean loss)/dQ(s, a) = -weight * loss'(error) / batch, on the chosen action only.
        d_chosen = -weight * slope / batch_size
        d_q = jnp.where(chosen, d_chosen[:, None], 0.0)  # [block_rows, action_rows]

        def write(layer: str, name: str, value):
            block = layout.blocks[(layer, name)]
            grad_ref[pl.ds(block.start, block.rows), :] = value

        x = saved[-1][3]
        write(output, "kernel", dot(d_q, x, contract=(0, 0)))  # [action_rows, width]
        write(output, "bias", jnp.sum(jnp.where(columns == action[:, None], d_chosen[:, None], 0.0), axis=0)[None])
        d_x = dot(d_q, rows_of(params_ref, output, "kernel"))  # [block_rows, width]
        for index in reversed(range(len(hidden))):
            layer = hidden[index]
            layer_input, x_hat, r, layer_output = saved[index]
            d_z = jnp.where(layer_output > 0.0, d_x, 0.0)  # through the ReLU
            if layer.norm is not None:
                write(layer.norm, "scale", jnp.sum(d_z * x_hat, axis=0)[None])
                write(layer.norm, "bias", jnp.sum(d_z, axis=0)[None])
                d_hat = d_z * rows_of(params_ref, layer.norm, "scale")
                mean_d = jnp.sum(d_hat, axis=1)[:, None] / layer.width
                mean_dx = jnp.sum(d_hat * x_hat, axis=1)[:, None] / layer.width
                d_z = jnp.where(columns < layer.width, r * (d_hat - mean_d - x_hat * mean_dx), 0.0)
            write(layer.dense, "kernel", dot(layer_input, d_z, contract=(0, 0)))
            write(layer.dense, "bias", jnp.sum(d_z, axis=0)[None])
            if index:
                d_x = dot(d_z, rows_of(params_ref, layer.dense, "kernel"), contract=(1, 1))
        row, padding = layout.parameter_rows, layout.rows - layout.parameter_rows
        for bit in reversed(range(padding.bit_length())):  # the padding rows, in power-of-two pieces
            if padding >> bit & 1:
                grad_ref[pl.ds(row, 1 << bit), :] = jnp.zeros((1 << bit, width), jnp.float32)
                row += 1 << bit

    return kernel


def loss_and_gradient(layout: SlabLayout, params: jnp.ndarray, target_params: jnp.ndarray, batches, index,
                      losses: jnp.ndarray, errors: jnp.ndarray, batch_size: int, double: bool, loss: str,
                      interpret: bool = False):
    """The TD loss of one batch, its gradient and its TD errors, in one kernel.

    Args:
      layout: the network's `SlabLayout`.
      params, target_params: flat slabs `[rows * width]` of the online and target networks.
      batches: a `jaxdqn.buffer.Batch` of all the updates' batches one after another (leaves
        `[num_updates * batch_size, ...]`), observations already `[.., obs_rows]` float32 (`kernel_batches`).
      index: int32 `[1]`, the update: its batch is rows `index * batch_size` onwards.
      losses: `[num_updates * blocks]`; the update's blocks' shares of the mean loss are written in place.
      errors: `[num_updates * batch_size]`; the update's TD errors are written in place.
      batch_size: rows of one batch; the loss is their mean.
      interpret: run the kernel in the Pallas interpreter (any backend; for tests).

    Returns:
      `(partial_gradients, losses, errors)`: `[blocks, rows * width]`, the gradients of the kernel
      instances' blocks of the batch (their sum is the gradient; `adam_step` sums them), then `losses`
      and `errors` with this update's entries written.
    """
    block_rows, num_warps = block_shape(batch_size)
    blocks = batch_size // block_rows
    slab_shape = (layout.rows, layout.width)
    weighted = batches.weight is not None
    weight = batches.weight if weighted else batches.reward  # not read when unweighted
    inputs = [params.reshape(slab_shape), target_params.reshape(slab_shape), batches.obs, batches.next_obs,
              batches.action, batches.reward, batches.discount, weight, index, losses, errors]
    # Under shard_map the outputs vary over the devices exactly as the batches do.
    output = lambda operand: jax.ShapeDtypeStruct(operand.shape, jnp.float32,  # noqa: E731
                                                  manual_axis_type=jax.typeof(batches.obs).manual_axis_type)
    gradients, losses, errors = pl.pallas_call(
        _make_kernel(layout, batch_size, block_rows, double, loss, weighted),
        out_shape=[output(jax.ShapeDtypeStruct((blocks, *slab_shape), jnp.float32)), output(losses), output(errors)],
        grid=(blocks,),
        in_specs=list(map(whole_block, inputs)),
        out_specs=[pl.BlockSpec((None, *slab_shape), lambda block: (block, 0, 0)), whole_block(losses),
                   whole_block(errors)],
        input_output_aliases={9: 1, 10: 2},
        interpret=interpret,
        compiler_params=triton.CompilerParams(num_warps=num_warps),
        name="dqn_loss_and_gradient",
    )(*inputs)
    return gradients.reshape(blocks, -1), losses, errors


def kernel_batches(batches, obs_rows: int):
    """Several updates' batches (leaves `[num_batches, batch_size, ...]`) as the kernel reads them:
    leaves `[num_batches * batch_size, ...]`, observations float32 padded to `obs_rows` columns."""
    def observations(obs):
        obs = obs.astype(jnp.float32).reshape(obs.shape[0] * obs.shape[1], -1)
        return jnp.pad(obs, ((0, 0), (0, obs_rows - obs.shape[1])))

    flat = lambda leaf: None if leaf is None else leaf.reshape(-1)  # noqa: E731
    return batches.replace(obs=observations(batches.obs), next_obs=observations(batches.next_obs),
                           action=flat(batches.action), reward=flat(batches.reward),
                           discount=flat(batches.discount), weight=flat(batches.weight))


def _make_sum_kernel(chunks: int):
    """The first kernel of `adam_step`: one instance per chunk of the slab."""
    def kernel(partial_ref, gradient_ref, square_ref):
        gradient = jnp.sum(partial_ref[...], axis=0)
        gradient_ref[...] = gradient
        # Instances past the last chunk (the grid is a power of two) redo it and count nothing.
        square_ref[...] = jnp.where(pl.program_id(0) < chunks, jnp.sum(gradient * gradient), 0.0)[None]

    return kernel


def _adam_kernel(gradient_ref, square_ref, scalar_ref, index_ref, params_ref, target_ref, mu_ref, nu_ref,
                 params_out, target_out, mu_out, nu_out):
    """The second kernel of `adam_step`: one instance per chunk of the slab, the norm from all chunks' squares."""
    row = index_ref[0] * SCALARS
    lr, correction1, correction2, b1, b2, eps, eps_root, max_norm, tau, due, active = (
        scalar_ref[row + column] for column in range(11))
    norm = jnp.sqrt(jnp.sum(square_ref[...]))
    grad = gradient_ref[...]
    grad = jnp.where(norm < max_norm, grad, grad / norm * max_norm)  # optax.clip_by_global_norm
    mu = (1.0 - b1) * grad + b1 * mu_ref[...]  # optax.scale_by_adam
    nu = (1.0 - b2) * jnp.square(grad) + b2 * nu_ref[...]
    step = (mu / correction1) / (jnp.sqrt(nu / correction2 + eps_root) + eps)
    params = params_ref[...] + -lr * step
    target = jnp.where(due > 0.0, params * tau + target_ref[...] * (1.0 - tau), target_ref[...])
    keep = active > 0.0  # before learning starts the learner stays as it is
    params_out[...] = jnp.where(keep, params, params_ref[...])
    target_out[...] = jnp.where(keep, target, target_ref[...])
    mu_out[...] = jnp.where(keep, mu, mu_ref[...])
    nu_out[...] = jnp.where(keep, nu, nu_ref[...])


def adam_step(partial_gradients: jnp.ndarray, scalars: jnp.ndarray, index: jnp.ndarray, params: jnp.ndarray,
              target_params: jnp.ndarray, mu: jnp.ndarray, nu: jnp.ndarray, interpret: bool = False):
    """Global-norm clipping, Adam and the target update of one update, on flat slabs, in two kernels.

    The arithmetic of `optax.chain(optax.clip_by_global_norm, optax.adam)` followed by
    `optax.incremental_update`, as `DQN.apply_gradients` does it with XLA's kernels. The first kernel
    sums the shares of the gradient and each chunk's sum of squares; the second, once every chunk's is
    known, clips and updates.

    Args:
      partial_gradients: `[parts, size]`, summed into the gradient (`loss_and_gradient`'s shares).
      scalars: float32 `[num_updates * SCALARS]`; for update `index`, at `index * SCALARS`: learning
        rate, Adam's bias corrections 1 - b1^t and 1 - b2^t, b1, b2, eps, eps_root, the clipping norm,
        tau, whether the target update is due (1 or 0) and whether the update counts at all (1 or 0:
        else everything comes back unchanged).
      index: int32 `[1]`.
      params, target_params, mu, nu: flat slabs `[size]`, updated in place.

    Returns:
      `(params, target_params, mu, nu)`.
    """
    parts, size = partial_gradients.shape
    chunks = size // CHUNK
    instances = int(pl.next_power_of_2(chunks))  # Triton's arrays have power-of-two sizes: the squares too
    vector = pl.BlockSpec((CHUNK,), lambda chunk: (chunk,))
    varying = jax.typeof(params).manual_axis_type  # under shard_map: as the parameters
    last = lambda chunk: jnp.minimum(chunk, chunks - 1)  # noqa: E731
    gradient, squares = pl.pallas_call(
        _make_sum_kernel(chunks),
        out_shape=[jax.ShapeDtypeStruct((size,), jnp.float32, manual_axis_type=varying),
                   jax.ShapeDtypeStruct((instances,), jnp.float32, manual_axis_type=varying)],
        grid=(instances,),
        in_specs=[pl.BlockSpec((parts, CHUNK), lambda chunk: (0, last(chunk)))],
        out_specs=[pl.BlockSpec((CHUNK,), lambda chunk: (last(chunk),)), pl.BlockSpec((1,), lambda chunk: (chunk,))],
        interpret=interpret,
        compiler_params=triton.CompilerParams(num_warps=4),
        name="dqn_gradient_sum",
    )(partial_gradients)
    return pl.pallas_call(
        _adam_kernel,
        out_shape=[jax.ShapeDtypeStruct((size,), jnp.float32, manual_axis_type=varying)] * 4,
        grid=(chunks,),
        in_specs=[vector, whole_block(squares), whole_block(scalars), whole_block(index)] + [vector] * 4,
        out_specs=[vector] * 4,
        input_output_aliases={4: 0, 5: 1, 6: 2, 7: 3},
        interpret=interpret,
        compiler_params=triton.CompilerParams(num_warps=4),
        name="dqn_adam_step",
    )(gradient, squares, scalars, index, params, target_params, mu, nu)
