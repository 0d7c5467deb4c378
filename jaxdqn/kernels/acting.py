"""Epsilon-greedy acting with the default MLP Q-network as one fused GPU kernel (Pallas, Triton backend).

Every vector step runs the Q-network on all envs' observations and acts epsilon-greedily on it (the
behaviour policy of Mnih et al. 2013). With XLA's kernels each hidden layer writes its
`[num_envs, width]` activations to GPU memory and reads them back, twice per LayerNorm layer (matrix
product, then normalisation and ReLU, then the next product): about 300 MB a vector step at 65,536
envs and the default widths, by count, so acting is bound by memory traffic; at 4,096 envs it is
bound by kernel launches instead. Here one kernel takes a block of rows through every layer in
registers, draws the exploration and writes one int32 action per row: the observations are the only
large read.

The forward pass is `MLPQNetwork.apply`'s (flax's LayerNorm: fast variance clipped at zero, epsilon
1e-6), with float32 accumulation and LayerNorm. The matrix products take their operands in
`precision`: "float32" (the default: the default matrix-product precision, as XLA's kernels) or
"bfloat16". bfloat16 operands make acting faster, but CartPole learned less reliably with them, and
doing the Q-value head in full float32 did not mend that, so float32 is the default (figures in
docs/performance.md: "Acting as one kernel", and "Figures from the code's docstrings and comments").
The greedy action is the first maximum, like `jnp.argmax`. Learning and evaluation keep float32.

Exploration is drawn inside the kernel too, which saves the small kernels of `jax.random` in every
vector step: row r explores with probability epsilon and then takes a uniform action, from two 32-bit
hashes (Wellons' lowbias32) of a per-call seed drawn from the JAX key and of 2r and 2r + 1. The
choices are as random as the trainer needs (tested for their frequencies), but not the stream that
`jax.random` would draw.

Any other network (dueling heads, convolutions, other classes, weights too large for shared memory)
keeps XLA's path (`supports`). Widths and the observation size are zero-padded to powers of two of
at least 16 (the matrix-product tile of Triton); padded actions get a bias of -1e30 so that they
never win. Inside the trainer's chunks, when the update is fused too, the kernel instead reads the
parameters straight from the update's slab (`jaxdqn.kernels.update.SlabLayout`), already padded, and
masks the padded actions itself: no operand is padded per vector step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton

from jaxdqn.networks import MLPQNetwork

MIN_BLOCKS = 128  # about one kernel instance per streaming multiprocessor of an H100 (132)
# Limits of what was measured on an H100; larger networks keep XLA's kernels. Every layer's weights
# pass through shared memory (227 KiB a block there: a 256 x 256 float matrix asked for 257 KiB and
# failed), and a 256-wide layer fitted but spilled its activations out of registers and ran far slower
# (docs/performance.md).
MAX_WIDTH = 128  # padded observation size, layer widths and actions
MAX_WEIGHTS = 3 * 128 * 128  # floats of all padded weight matrices together
LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's default, which MLPQNetwork uses
NEVER = -1e30  # the bias of padded actions
PRECISIONS = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}  # operand types of the matrix products


def block_shape(batch: int) -> tuple[int, int]:
    """(rows per kernel instance, warps per instance) for a batch of `batch` rows.

    Larger blocks load each layer's weights into shared memory fewer times, but should still leave at
    least `MIN_BLOCKS` instances to fill the GPU. At the default widths, 64 rows and 4 warps was
    fastest at 4,096 envs, 256 rows and 8 warps at 65,536 (figures in docs/performance.md).
    """
    rows = next((rows for rows in (256, 128) if batch // rows >= MIN_BLOCKS), 64)
    return rows, 8 if rows == 256 else 4


def padded_size(size: int) -> int:
    """`size` rounded up to a power of two of at least 16: the kernels' padded widths."""
    return max(16, int(pl.next_power_of_2(size)))


def whole_block(operand) -> pl.BlockSpec:
    """A block that is the whole of `operand`, read by every instance of a one-dimensional grid."""
    return pl.BlockSpec(operand.shape, lambda instance: (0,) * operand.ndim)


def supports(network, obs_size: int) -> bool:
    """Whether `epsilon_greedy_actions` runs this network (else act with `network.apply`).

    `obs_size`: the number of values in one observation.
    """
    if (type(network) is not MLPQNetwork or network.dueling or network.noisy or network.outputs_per_action != 1
            or not network.hidden_sizes):
        return False
    sizes = [padded_size(obs_size), *map(padded_size, network.hidden_sizes), padded_size(network.num_actions)]
    matrices = [rows * columns for rows, columns in zip(sizes, sizes[1:])]
    return max(sizes) <= MAX_WIDTH and sum(matrices) <= MAX_WEIGHTS


def _pad_to(array: jnp.ndarray, shape: tuple[int, ...], value: float = 0.0) -> jnp.ndarray:
    return jnp.pad(array, [(0, target - size) for size, target in zip(array.shape, shape)], constant_values=value)


def _kernel_operands(network: MLPQNetwork, params, obs_size: int) -> list[jnp.ndarray]:
    """The layers' parameters, padded, in the kernel's argument order; biases and norms as `[1, width]` rows."""
    layers = params["params"]
    operands, rows = [], padded_size(obs_size)
    hidden, output_name = network.layers()
    for layer in hidden:
        columns = padded_size(layer.width)
        dense = layers[layer.dense]
        operands += [_pad_to(dense["kernel"], (rows, columns)), _pad_to(dense["bias"][None], (1, columns))]
        if layer.norm is not None:  # zero scale and shift keep the padded columns at zero after normalising
            norm = layers[layer.norm]
            operands += [_pad_to(norm["scale"][None], (1, columns)), _pad_to(norm["bias"][None], (1, columns))]
        rows = columns
    output = layers[output_name]
    actions = padded_size(network.num_actions)
    return operands + [_pad_to(output["kernel"], (rows, actions)),
                       _pad_to(output["bias"][None], (1, actions), value=NEVER)]


def _mix32(x: jnp.ndarray) -> jnp.ndarray:
    """Wellons' lowbias32 integer hash of uint32 values: every input bit flips about half the output bits."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _slab_parameters(layout, slab_ref):
    """The kernel's parameters in `_kernel_operands`' order, read from a `jaxdqn.kernels.update.SlabLayout` slab.

    The output kernel comes transposed (`[actions, width]`) and the padded actions' bias is 0, not `NEVER`.
    """
    hidden, output = layout.network.layers()
    for layer in hidden:
        yield layout.read(slab_ref, layer.dense, "kernel")
        yield layout.read(slab_ref, layer.dense, "bias")
        if layer.norm is not None:
            yield layout.read(slab_ref, layer.norm, "scale")
            yield layout.read(slab_ref, layer.norm, "bias")
    yield layout.read(slab_ref, output, "kernel")
    yield layout.read(slab_ref, output, "bias", layout.action_rows)


def _make_kernel(hidden: tuple, num_actions: int, block_rows: int, operand_type, slab_layout=None):
    """The kernel's body for the hidden layers `hidden` (`MLPQNetwork.layers`)."""

    def dot(x, weights, transposed: bool = False):
        return jax.lax.dot_general(x.astype(operand_type), weights.astype(operand_type),
                                   (((1,), (1 if transposed else 0,)), ((), ())), preferred_element_type=jnp.float32)

    def kernel(obs_ref, seed_ref, epsilon_ref, *refs):
        *parameter_refs, action_ref = refs
        if slab_layout is None:
            parameters = (ref[...] for ref in parameter_refs)
        else:
            parameters = _slab_parameters(slab_layout, parameter_refs[0])
        x = obs_ref[...]
        for layer in hidden:
            x = dot(x, next(parameters)) + next(parameters)
            if layer.norm is not None:  # statistics over the real width: the padded columns are zeros
                mean = jnp.sum(x, axis=1)[:, None] / layer.width
                variance = jnp.maximum(jnp.sum(x * x, axis=1)[:, None] / layer.width - mean * mean, 0.0)
                x = (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPSILON) * next(parameters) + next(parameters)
            x = jnp.maximum(x, 0.0)
        q_values = dot(x, next(parameters), transposed=slab_layout is not None) + next(parameters)
        if slab_layout is not None:  # padded actions never win
            q_values = jnp.where(jnp.arange(q_values.shape[1])[None, :] < num_actions, q_values, NEVER)
        greedy = jnp.argmax(q_values, axis=1).astype(jnp.int32)
        row = (pl.program_id(0) * block_rows + jnp.arange(block_rows, dtype=jnp.int32)).astype(jnp.uint32)
        seed = seed_ref[...]
        explore_bits = _mix32(seed ^ _mix32(row * jnp.uint32(2)))
        action_bits = _mix32(seed ^ _mix32(row * jnp.uint32(2) + jnp.uint32(1)))
        uniform = (explore_bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))  # in [0, 1), 24 bits
        random_action = (action_bits % jnp.uint32(num_actions)).astype(jnp.int32)
        action_ref[...] = jnp.where(uniform < epsilon_ref[...], random_action, greedy)

    return kernel


def epsilon_greedy_actions(network: MLPQNetwork, params, obs: jnp.ndarray, key: jax.Array, epsilon,
                           precision: str = "float32", interpret: bool = False, slab_layout=None) -> jnp.ndarray:
    """Epsilon-greedy actions `[batch]` int32 of `network` on `obs` as one kernel (`interpret`: on any backend).

    With probability `epsilon` a row's action is uniform over the actions, else
    `argmax_a network.apply(params, obs)[:, a]` with `precision` operands (see the module docstring).
    `params` is the network's parameter tree or, with `slab_layout` (a `jaxdqn.kernels.update.SlabLayout`),
    the flat slab of the trainer's fused update, which the kernel reads as it is: no operand to pad.
    """
    batch = obs.shape[0]
    x = obs.astype(jnp.float32).reshape(batch, -1)
    obs_size = x.shape[1]
    block_rows, num_warps = block_shape(batch)
    rows = -(-batch // block_rows) * block_rows
    x = _pad_to(x, (rows, padded_size(obs_size)))
    exploration = [jax.random.bits(key, (1,), jnp.uint32), jnp.reshape(epsilon, (1,)).astype(jnp.float32)]
    if slab_layout is None:
        operands = _kernel_operands(network, params, obs_size)
    else:
        operands = [params.reshape(slab_layout.rows, slab_layout.width)]
    actions = pl.pallas_call(
        _make_kernel(network.layers()[0], network.num_actions, block_rows,
                     PRECISIONS[precision], slab_layout),
        # Under shard_map the actions vary over the devices exactly as the observations do.
        out_shape=jax.ShapeDtypeStruct((rows,), jnp.int32, manual_axis_type=jax.typeof(x).manual_axis_type),
        grid=(rows // block_rows,),
        in_specs=[pl.BlockSpec((block_rows, x.shape[1]), lambda block: (block, 0)),
                  *map(whole_block, exploration), *map(whole_block, operands)],  # every block reads these whole
        out_specs=pl.BlockSpec((block_rows,), lambda block: (block,)),
        interpret=interpret,
        compiler_params=triton.CompilerParams(num_warps=num_warps),
        name="mlp_epsilon_greedy_actions",
    )(x, *exploration, *operands)
    return actions[:batch]
