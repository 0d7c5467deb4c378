"""Which path acting and learning take (XLA, a Pallas kernel, or that kernel interpreted), and the glue.

`choose` is the one place that decides, from the config's `fused_acting`/`fused_update` flags, the
platform and what the kernels support (the default MLP, a DQN learner, batch sizes), and returns a
`Backend`. Tests pick the interpreted kernels on a CPU through the same function.

The rest is what the fused kernels need from the trainer: the learner's parameters, target and Adam's
moments in the kernels' slab layout (`to_slab`/`from_slab`; inside a chunk they stay in it when both
acting and learning are kernels), the loop of fused updates of a vector step (`fused_updates`) and
the optimizer's scalars for all its updates at once (`optimizer_schedule`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jaxdqn.kernels import acting as acting_kernel
from jaxdqn.kernels import update as update_kernel
from jaxdqn.state import FlatLearner, TrainerState, flat_learner, with_learner

if TYPE_CHECKING:
    from jaxdqn.agent import Trainer

# XLA's GPU runtime replays the kernels of a program's straight-line stretches as CUDA graphs ("command
# buffers"); these options for the chunk put its loops in the graph too (WHILE, CONDITIONAL) and order
# the graph's kernels by their data dependencies (CONCURRENT) instead of one after another, so that
# independent kernels of a vector step, such as acting and the first update, run side by side.
CHUNK_GPU_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL",
    "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT",
}


class Path(enum.Enum):
    """How one part of a vector step is computed."""

    XLA = "xla"  # the learner's own functions, compiled by XLA (the reference)
    KERNEL = "kernel"  # the Pallas kernel, compiled for the GPU (Triton)
    INTERPRET = "interpret"  # the same kernel run by the Pallas interpreter, on any platform (for tests)


@dataclasses.dataclass(frozen=True)
class Backend:
    """The paths of acting and of the update, and what depends on them.

    Args:
      acting, update: the paths (`Path`).
      stacked_networks: online and target network as one vmapped network in XLA's update (GPUs).
      platform: the platform the programs run on ("gpu", "cpu", ...).
      network, obs_size: the Q-network and the size of one observation (for the slab's layout).
    """

    acting: Path
    update: Path
    stacked_networks: bool
    platform: str
    network: Any = None
    obs_size: int = 0

    @property
    def uses_slab(self) -> bool:
        """Whether a chunk keeps the learner in the slab layout: when both acting and learning are kernels."""
        return self.acting is not Path.XLA and self.update is not Path.XLA

    @functools.cached_property
    def slab_layout(self) -> update_kernel.SlabLayout:
        """Where the fused kernels find each parameter (`jaxdqn.kernels.update.SlabLayout`)."""
        obs = jnp.zeros((1, self.obs_size))
        return update_kernel.SlabLayout(self.network, self.obs_size,
                                        jax.eval_shape(self.network.init, jax.random.key(0), obs))

    def update_unroll(self, config) -> int:
        """Updates per step of the device loop over a vector step's updates: `unroll_updates`, else
        `update.UNROLL` with the fused kernels and 1 with XLA's."""
        return config.unroll_updates or (update_kernel.UNROLL if self.update is not Path.XLA else 1)

    def chunk_compiler_options(self, config, collective: bool) -> dict[str, str]:
        """XLA options for the chunk's program (`jax.jit`'s `compiler_options`): `CHUNK_GPU_OPTIONS` on
        GPUs when a vector step's updates are one pass of their loop (`updates_per_step` up to `update_unroll`).

        Then acting is a large share of the vector step and overlaps the first update, which makes
        the vector step markedly faster. With the defaults' 32 updates the update loop itself would run
        in the graph, which made it slightly slower, so they keep XLA's default command buffers
        (figures: docs/performance.md, "Acting and learning side by side"). Empty where XLA_FLAGS sets
        command buffers itself (the user's choice is kept), and over several devices (`collective`),
        where it was not measured.
        """
        if (self.platform != "gpu" or config.vector_step_updates > self.update_unroll(config) or collective
                or "command_buffer" in os.environ.get("XLA_FLAGS", "")):
            return {}
        return dict(CHUNK_GPU_OPTIONS)

    def to_slab(self, state: TrainerState) -> TrainerState:
        """`state` with parameters, target and Adam's moments as flat slabs (`TrainerState.slab`)."""
        learner = jax.tree.map(self.slab_layout.leaf_to_slab, flat_learner(state)[0])
        return with_learner(state.replace(slab=True), learner, None)

    def from_slab(self, state: TrainerState, unravel) -> TrainerState:
        """`to_slab`'s inverse; `unravel` rebuilds the parameter tree from its raveled vector."""
        learner = jax.tree.map(self.slab_layout.leaf_from_slab, flat_learner(state)[0])
        return with_learner(state.replace(slab=False), learner, unravel)


def choose(config, learner, obs_shape: tuple[int, ...], local_batch: int, platform: str | None = None,
           kernel: Path = Path.KERNEL) -> Backend:
    """The backend of a run: the kernels where the flags ask for them, the platform runs them and they
    support the learner (a plain `jaxdqn.learners.DQN`, without lambda-returns for the update) and its network
    (the default MLP); XLA elsewhere.

    Args:
      config: the run's TrainConfig (`fused_acting`, `fused_update`).
      learner: the run's learner (`jaxdqn.learners`).
      obs_shape: the shape of one observation.
      local_batch: one device's transitions per update.
      platform: default `jax.default_backend()`.
      kernel: `Path.KERNEL`, or `Path.INTERPRET` to run the kernels in the Pallas interpreter on any
        platform (tests).
    """
    from jaxdqn.learners import DQN

    platform = platform or jax.default_backend()
    runs_kernels = kernel is Path.INTERPRET or platform == "gpu"
    obs_size = math.prod(obs_shape)
    network = learner.network
    plain_dqn = type(learner) is DQN  # the kernels hold DQN's maths, nothing else
    acting = (kernel if runs_kernels and config.fused_acting and plain_dqn
              and acting_kernel.supports(network, obs_size) else Path.XLA)
    update = (kernel if runs_kernels and config.fused_update and plain_dqn and config.td_lambda == 1.0
              and update_kernel.supports(network, obs_size, local_batch) else Path.XLA)
    return Backend(acting=acting, update=update, stacked_networks=platform == "gpu", platform=platform,
                   network=network, obs_size=obs_size)


def fused_updates(trainer: "Trainer", learner: FlatLearner, batches, hparams, active: jnp.ndarray | bool,
                  in_slab: bool) -> tuple[FlatLearner, jnp.ndarray, jnp.ndarray | None]:
    """`Trainer.learn`'s loop of updates in `jaxdqn.kernels.update`'s kernels: three per update, nothing else.

    Unless the learner is in the slab layout already (`in_slab`: inside a chunk, `Backend.to_slab`),
    parameters, target and Adam's moments move from the raveled vector to the kernels' slab for
    the loop, and back after it: the same numbers, padded with zeros that stay zero.
    The optimizer's scalars of every update are worked out before the loop (`optimizer_schedule`),
    and each update writes its loss and TD errors in place: no small kernels between the updates.
    Returns the learner, the `[updates_per_step]` losses and the TD errors (None unless prioritized).
    """
    config, backend = trainer.config, trainer.backend
    layout = backend.slab_layout
    num_updates, batch_size = config.vector_step_updates, trainer.local_batch
    blocks = batch_size // update_kernel.block_shape(batch_size)[0]
    interpret = backend.update is Path.INTERPRET

    if not in_slab:
        learner = jax.tree.map(layout.leaf_to_slab, learner)
    kernel_batches = update_kernel.kernel_batches(batches, layout.obs_rows)
    scalars, opt_state = optimizer_schedule(trainer, learner, hparams, active)
    adam = opt_state[1].inner_state[0]

    def update(carry, index: jnp.ndarray):
        params, target_params, mu, nu, losses, errors = carry
        partial_grads, losses, errors = update_kernel.loss_and_gradient(
            layout, params, target_params, kernel_batches, index, losses, errors, batch_size,
            trainer.learner.double, trainer.learner.loss, interpret=interpret)
        if trainer.collective_axis is not None and config.sync == "grads":  # one all-reduce of one vector
            partial_grads = jax.lax.pmean(jnp.sum(partial_grads, axis=0, keepdims=True), trainer.collective_axis)
        params, target_params, mu, nu = update_kernel.adam_step(partial_grads, scalars, index, params,
                                                                target_params, mu, nu, interpret=interpret)
        return (params, target_params, mu, nu, losses, errors), None

    carry = (learner.params, learner.target_params, adam.mu, adam.nu,
             jnp.zeros(num_updates * blocks, jnp.float32), jnp.zeros(num_updates * batch_size, jnp.float32))
    indices = jnp.arange(num_updates, dtype=jnp.int32)[:, None]
    (params, target_params, mu, nu, losses, errors), _ = jax.lax.scan(
        update, carry, indices, unroll=backend.update_unroll(config))
    opt_state = (opt_state[0], opt_state[1]._replace(
        inner_state=(adam._replace(mu=mu, nu=nu), *opt_state[1].inner_state[1:])))
    learner = FlatLearner(params, target_params, opt_state,
                          jnp.where(active, learner.updates + num_updates, learner.updates))
    if not in_slab:
        learner = jax.tree.map(layout.leaf_from_slab, learner)
    step_losses = jnp.sum(losses.reshape(num_updates, blocks), axis=1)
    return learner, step_losses, errors.reshape(num_updates, batch_size) if config.prioritized else None


def optimizer_schedule(trainer: "Trainer", learner: FlatLearner, hparams, active: jnp.ndarray | bool):
    """The scalars of the vector step's updates for `update.adam_step`, and the optimizer's state after
    them (its vectors, Adam's moments, left as they were).

    `Trainer.make_optimizer`'s chain counts one step per update in three places (inject_hyperparams, its
    schedule, Adam), and takes the learning rate from the schedule at the count before the step.
    Worked out here for all the updates at once (what optax would do one update at a time):
    run per update on a GPU, this scalar bookkeeping was a dozen kernels of its own.
    """
    config = trainer.config
    num_updates = config.vector_step_updates
    clip_state, inject = learner.opt_state
    adam = inject.inner_state[0]
    values = inject.hyperparams
    steps = jnp.arange(1, num_updates + 1, dtype=jnp.int32)

    def counted(count, steps):  # optax's safe_increment `steps` times: saturates, never overflows
        return count + jnp.minimum(steps, jnp.iinfo(jnp.int32).max - count)

    schedule = trainer.learning_rate(hparams.lr)
    if callable(schedule):
        schedule_count = inject.hyperparams_states["learning_rate"].count
        lr = schedule(counted(schedule_count, steps - 1))
    else:
        lr = jnp.broadcast_to(values["learning_rate"], steps.shape)
    adam_count = counted(adam.count, steps)
    due = (learner.updates + steps) % config.target_update_frequency == 0
    columns = [lr, 1.0 - values["b1"] ** adam_count, 1.0 - values["b2"] ** adam_count, values["b1"], values["b2"],
               values["eps"], values["eps_root"], config.max_grad_norm, hparams.tau, due, active]
    columns += [0.0] * (update_kernel.SCALARS - len(columns))
    scalars = jnp.stack([jnp.broadcast_to(jnp.asarray(column, jnp.float32), steps.shape) for column in columns],
                        axis=1).reshape(-1)

    after = inject._replace(
        count=counted(inject.count, num_updates),
        hyperparams={**values, "learning_rate": lr[-1].astype(values["learning_rate"].dtype)},
        hyperparams_states=jax.tree.map(lambda count: counted(count, num_updates), inject.hyperparams_states),
        inner_state=(adam._replace(count=adam_count[-1]), *inject.inner_state[1:]))
    after = jax.tree.map(lambda new, old: jnp.where(active, new, old), after, inject)
    return scalars, (clip_state, after)
