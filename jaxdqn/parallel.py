"""Runs the trainer's pure functions SPMD over a mesh of devices (layer 4 of the design).

Each device steps its own `num_envs / num_devices` environments and keeps its own replay-buffer shard;
gradients are averaged with `lax.pmean` inside `Trainer.apply_gradients`, so parameters stay identical everywhere.
We use `jax.shard_map` over a one-axis `Mesh` rather than `jax.pmap`: `pmap` is in maintenance mode and
has been implemented on top of `shard_map` since JAX 0.8, and a `Mesh` spans the devices of several
processes (`jax.distributed`) with no change to this code. One device is the same program with a mesh
of size one, so the single-device path is never forked.

Outside `shard_map` every leaf of the state (and of the metrics) carries a leading device axis,
sharded over the mesh; inside, each device sees its own slice without that axis.

The programs that run environment code are traced with `check_vma=False` (see `CHECK_VMA`).
"""

from __future__ import annotations

import functools
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdqn.agent import Trainer
from jaxdqn.registry import ConfigError

AXIS = "devices"

# `check_vma` for the `shard_map`s that run environment code (`init`, `run_chunk`). With JAX's default,
# True, each value's type records the mesh axes it varies over, and a loop's carry must keep its type.
# Environments are third-party code that knows nothing of this: gymnax's Asterix-MinAtar starts a
# `lax.while_loop` from a constant carry that its body makes vary over the devices, which the check
# rejects, and we cannot reach into that loop to `pcast` its carry. False turns the type tracking off;
# the programs compute the same numbers (checked bit for bit on CPU and GPU). It also drops what we do
# not use (JAX's shard_map docs): the check that outputs left out of `out_specs` are replicated (ours are
# all split over AXIS) and efficient reverse-mode autodiff through collectives (we differentiate none:
# gradients are averaged after `jax.grad`).
CHECK_VMA = False


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A one-axis mesh over the first `num_devices` devices of all processes (default: all)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if num_devices > len(devices):
        raise ConfigError(f"--num_devices {num_devices} asked for, but only {len(devices)} "
                          f"{devices[0].platform.upper()} device(s) exist")
    return Mesh(np.array(devices[:num_devices]), (AXIS,))


def _per_device(fn):
    """Lifts `fn(state, ...) -> outputs` to blocks that carry a leading device axis of size one."""

    @functools.wraps(fn)
    def wrapped(*args):
        outputs = fn(*jax.tree.map(lambda leaf: leaf[0], args))
        return jax.tree.map(lambda leaf: leaf[None], outputs)

    return wrapped


def make_init(dqn: Trainer, mesh: Mesh, num_agents: int = 1):
    """`init(seed, hparams) -> state`, jitted; the int32 seed and hparams are the same for every device.

    With `num_agents > 1` the seed and hparams carry a leading agent axis and so does every leaf of the
    state, after the device axis (`jaxdqn.population`). The key is made inside the program, so that
    starting a run runs no separately compiled operation.
    """
    per_agent = jax.vmap(dqn.init) if num_agents > 1 else dqn.init

    def init(seed, hparams):
        key = jax.vmap(jax.random.key)(seed) if num_agents > 1 else jax.random.key(seed)
        return jax.tree.map(lambda leaf: leaf[None], per_agent(key, hparams))

    return jax.jit(jax.shard_map(init, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec()),
                                 out_specs=PartitionSpec(AXIS), check_vma=CHECK_VMA))


def make_run_chunk(dqn: Trainer, mesh: Mesh, num_iterations: int, num_agents: int = 1):
    """`run_chunk(state) -> (state, metrics)`, jitted with the state donated (updated in place)."""
    chunk = functools.partial(dqn.run_chunk, num_iterations=num_iterations)
    chunk = _per_device(jax.vmap(chunk) if num_agents > 1 else chunk)
    sharded = jax.shard_map(chunk, mesh=mesh, in_specs=PartitionSpec(AXIS), out_specs=PartitionSpec(AXIS),
                            check_vma=CHECK_VMA)
    return jax.jit(sharded, donate_argnums=0, compiler_options=dqn.chunk_compiler_options())


def make_evaluate(dqn: Trainer, num_episodes: int, num_agents: int = 1):
    """`evaluate(params_block, seed, index) -> (returns, lengths)`, jitted: `num_episodes` greedy episodes.

    `params_block` is the first device's block of the state's parameters (`first_device_block`), so the
    evaluation runs on that device alone; the episodes' key is `fold_in(key(seed), index)`. With
    `num_agents > 1` every agent is evaluated on its own split of that key: results are `[agents, episodes]`.
    """

    def evaluate(params_block, seed, index):
        params = jax.tree.map(lambda leaf: leaf[0], params_block)
        key = jax.random.fold_in(jax.random.key(seed), index)
        if num_agents > 1:
            return jax.vmap(lambda agent_params, agent_key: dqn.evaluate(agent_params, agent_key, num_episodes))(
                params, jax.random.split(key, num_agents))
        return dqn.evaluate(params, key, num_episodes)

    return jax.jit(evaluate)


class Communicators:
    """The mesh's communicators (NCCL on GPUs), created by a first all-reduce on a background thread.

    A multi-device program creates them at its first collective, which made its first chunk much
    slower than the others (docs/performance.md, "Several GPUs"); one all-reduce of a single number
    over the same mesh, run while the trainer's programs compile or load, creates them instead, and
    the chunk finds them ready. `wait` before the first program with collectives runs: in several
    processes, two collectives launched concurrently could be issued in different orders and deadlock.
    A failure here is ignored: the trainer's own programs meet it again and report it.
    """

    def __init__(self, mesh: Mesh):
        self.ready = mesh.size == 1  # nothing to create on one device
        self._thread = None
        if not self.ready:
            self._thread = threading.Thread(target=self._all_reduce_once, args=(mesh,), daemon=True)
            self._thread.start()

    def _all_reduce_once(self, mesh: Mesh) -> None:
        try:
            total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, AXIS), mesh=mesh, in_specs=PartitionSpec(AXIS),
                                          out_specs=PartitionSpec()))
            ones = jax.make_array_from_callback((mesh.size,), sharded(mesh), lambda index: np.ones(1, np.float32))
            self.ready = float(np.asarray(total(ones).addressable_data(0))[0]) == mesh.size
        except Exception:  # noqa: BLE001  (see the class docstring)
            pass

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharded(mesh: Mesh) -> NamedSharding:
    """How every leaf of the state (and of the metrics) lies: split over the mesh on its leading axis."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def first_local_device(mesh: Mesh):
    """This process's first device of `mesh`: where `first_device_block` puts its blocks."""
    return next(device for device in mesh.devices.flat if device.process_index == jax.process_index())


def first_device_block(tree):
    """This process's first device's blocks of a tree with a leading device axis (that axis of one), on that device."""
    return jax.tree.map(lambda leaf: min(leaf.addressable_shards, key=lambda shard: shard.index[0].start or 0).data,
                        tree)


def first_device(tree):
    """Device 0's copy of a tree with a leading device axis, as host numpy arrays."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_shards[0].data if isinstance(leaf, jax.Array)
                                                else leaf)[0], tree)
