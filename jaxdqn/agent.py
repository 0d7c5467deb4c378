"""The DQN trainer as pure JAX functions: act on all envs, store, learn — one device, one agent.

Deep Q-learning with experience replay and a target network, after Mnih et al. (2013), "Playing Atari
with Deep Reinforcement Learning" (and the target network of Mnih et al. 2015), vectorized: every
`train_step` steps `num_envs` gymnax environments at once with epsilon-greedy actions, writes their
transitions into an on-device replay buffer, and takes `updates_per_step` gradient updates on batches
from the buffer as it was before the step (acting and learning need nothing of each other).

Layers: `init` and `train_step` are plain functions without `jax.jit` (layer 1);
`run_chunk` scans `train_step` (layer 2, the jit boundary, applied by the caller); `jaxdqn.parallel`
runs the same functions under `shard_map` over devices, passing `axis_name` so that gradients and
metrics are averaged over devices (brax's pattern: one code path for one device and many). With
`sync="params"` each device instead updates on its own samples and the learner is averaged once per
vector step (local SGD). Gradient clipping, Adam and the target update run over the parameters raveled
into one vector (`flat_update`), and on GPUs the online and target networks run as one network
vmapped over both parameter sets (`td_errors`): a few kernels per update whatever the number of
layers, which matters because an update of a small Q-network costs the GPU kernel launches, not
arithmetic. For the default MLP on GPUs each update is three fused kernels instead
(`jaxdqn.fused_update`, `_fused_updates`).

Rainbow-style variants (Hessel et al. 2018), each a static `TrainConfig` flag, off by default and
combinable: Double DQN (`double`, on by default), dueling heads (`dueling`, in `jaxdqn.networks`),
n-step returns (`n_step`) and proportional prioritized replay (`prioritized`, both in `jaxdqn.buffer`).
They are Python branches on the static config: a variant that is off adds nothing to the program.
Prioritized replay samples every batch of a vector step up front with the priorities as they were at
its start, and writes the new priorities (each sampled slot's latest |TD error|) once, after the step's
`updates_per_step` updates; its importance-sampling exponent beta is annealed linearly from
`priority_beta` to 1 over the run's env steps.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax import struct

from jaxdqn import buffer as replay
from jaxdqn import fused_acting
from jaxdqn import fused_update
from jaxdqn import losses
from jaxdqn.config import HParams, TrainConfig


# XLA's GPU runtime replays the kernels of a program's straight-line stretches as CUDA graphs ("command
# buffers"); these options for the chunk put its loops in the graph too (WHILE, CONDITIONAL) and order
# the graph's kernels by their data dependencies (CONCURRENT) instead of one after another, so that
# independent kernels of a vector step, such as acting and the first update, run side by side.
CHUNK_GPU_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL",
    "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT",
}


class TrainerState(struct.PyTreeNode):
    """Everything the training loop carries; one device's share of it.

    Between chunks `params` and `target_params` are the network's parameter trees. Inside a chunk of
    the fused kernels (`DQN.uses_slab`), they and Adam's moments are flat slabs of `jaxdqn.fused_update`,
    which acting and learning read as they are, and `slab` is True (`DQN.run_chunk` converts both ways).
    """

    params: Any
    target_params: Any
    opt_state: Any  # Adam's state over the parameters raveled into one vector (see `DQN.flat_update`)
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
    """What a gradient update changes, with the parameters raveled into one vector each (`DQN.flat_update`)."""

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


def all_finite(tree) -> jnp.ndarray:
    """One boolean: whether every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


class DQN:
    """The static parts of a run (config, env, network, optimizer) and the pure functions over them.

    Args:
      config: the run's settings; `num_envs` and `batch_size` are global and split over `num_devices`.
      env, env_params: a gymnax environment and its parameters.
      network: a flax module mapping `[batch, *obs_shape]` to `[batch, num_actions]`.
      num_devices: devices the run is sharded over (1: no collectives).
      axis_name: the mesh axis to average gradients and metrics over, or None on one device.
    """

    def __init__(self, config: TrainConfig, env, env_params, network: nn.Module, num_devices: int = 1,
                 axis_name: str | None = None):
        self.config = config
        self.env = env
        self.env_params = env_params
        self.network = network
        self.num_devices = num_devices
        self.axis_name = axis_name
        # Collectives only where there is something to average: on a mesh of one device an all-reduce
        # is no arithmetic, but it still splits the update's kernels on a GPU.
        self.collective_axis = axis_name if num_devices > 1 else None
        self.local_envs = config.num_envs // num_devices
        self.local_batch = max(1, config.batch_size // num_devices)
        self.num_actions = env.action_space(env_params).n
        # How acting computes its actions: "kernel" (jaxdqn.fused_acting), "interpret" (that kernel
        # run by the Pallas interpreter on any backend; for tests) or None (the network's own apply).
        obs_size = self.obs_size = math.prod(env.observation_space(env_params).shape)
        self.acting_kernel = ("kernel" if config.fused_acting and fused_acting.supports(network, obs_size)
                              and jax.default_backend() == "gpu" else None)
        # How an update computes its loss and gradient: "kernel" (jaxdqn.fused_update), "interpret" (that
        # kernel in the Pallas interpreter; for tests) or None (jax.grad of `loss_and_errors`).
        self.update_kernel = ("kernel" if config.fused_update and jax.default_backend() == "gpu"
                              and fused_update.supports(network, obs_size, self.local_batch) else None)
        # Online and target network as one vmapped network in XLA's update (`_stacked_q_values`): on GPUs.
        self.stacked_networks = jax.default_backend() == "gpu"
        self.learning_starts_iteration = -(-config.learning_starts // config.num_envs)
        # Learning waits for the buffer to hold `learning_starts` transitions (or to be full), which
        # also pauses it while a run resumed without its buffer refills it.
        # n-step returns need n rows before the first start is complete.
        self.learning_starts_rows = min(max(config.n_step, self.learning_starts_iteration), config.buffer_rows)

    # Construction ----------------------------------------------------------------------------
    def learning_rate(self, lr):
        """`lr`, or with `lr_anneal` the schedule `count -> lr` annealed linearly to 0 over the run's updates."""
        if not self.config.lr_anneal:  # an array, so that optax keeps it in the state whether traced or not
            return jnp.asarray(lr)
        total_updates = max(1, (self.config.total_iterations - self.learning_starts_iteration)
                            * self.config.updates_per_step)
        return lambda count: lr * jnp.clip(1.0 - count / total_updates, 0.0, 1.0)

    def make_optimizer(self, lr) -> optax.GradientTransformation:
        """Adam with global-norm clipping; `lr` may be traced, and is annealed to 0 if `lr_anneal`."""
        return optax.chain(
            optax.clip_by_global_norm(self.config.max_grad_norm),
            optax.inject_hyperparams(optax.adam)(learning_rate=self.learning_rate(lr)),
        )

    @functools.cached_property
    def slab_layout(self) -> fused_update.SlabLayout:
        """Where the fused kernels find each parameter (`jaxdqn.fused_update.SlabLayout`)."""
        obs = jnp.zeros((1, *self.env.observation_space(self.env_params).shape))
        return fused_update.SlabLayout(self.network, self.obs_size,
                                       jax.eval_shape(self.network.init, jax.random.key(0), obs))

    @property
    def update_unroll(self) -> int:
        """Updates per step of the device loop over a vector step's updates: `unroll_updates`, else
        `fused_update.UNROLL` with the fused kernels and 1 with XLA's."""
        return self.config.unroll_updates or (fused_update.UNROLL if self.update_kernel is not None else 1)

    def chunk_compiler_options(self) -> dict[str, str]:
        """XLA options for the chunk's program (`jax.jit`'s `compiler_options`): `CHUNK_GPU_OPTIONS` on
        GPUs when a vector step's updates are one pass of their loop (`updates_per_step` up to `update_unroll`).

        Then acting is a large share of the vector step and overlaps the first update, which makes
        the vector step markedly faster. With the defaults' 32 updates the update loop itself would run
        in the graph, which made it slightly slower, so they keep XLA's default command buffers
        (figures: docs/performance.md, "Acting and learning side by side"). Empty where XLA_FLAGS sets
        command buffers itself (the user's choice is kept), and over several devices, where it was not
        measured.
        """
        if (jax.default_backend() != "gpu" or self.config.updates_per_step > self.update_unroll
                or self.collective_axis is not None or "command_buffer" in os.environ.get("XLA_FLAGS", "")):
            return {}
        return dict(CHUNK_GPU_OPTIONS)

    @property
    def uses_slab(self) -> bool:
        """Whether a chunk keeps the learner in the slab layout: when both acting and learning are kernels."""
        return self.acting_kernel is not None and self.update_kernel is not None

    def to_slab(self, state: TrainerState) -> TrainerState:
        """`state` with parameters, target and Adam's moments as flat slabs (`TrainerState.slab`)."""
        learner = jax.tree.map(self.slab_layout.leaf_to_slab, flat_learner(state)[0])
        return with_learner(state.replace(slab=True), learner, None)

    def from_slab(self, state: TrainerState, unravel) -> TrainerState:
        """`to_slab`'s inverse; `unravel` rebuilds the parameter tree from its raveled vector."""
        learner = jax.tree.map(self.slab_layout.leaf_from_slab, flat_learner(state)[0])
        return with_learner(state.replace(slab=False), learner, unravel)

    def init(self, key: jax.Array, hparams: HParams) -> TrainerState:
        """Builds the initial state. Parameters depend on `key` only, so they match on every device."""
        param_key, key = jax.random.split(key)
        if self.axis_name is not None:  # envs, exploration and sampling differ per device
            key = jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))
        reset_key, key = jax.random.split(key)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(reset_key, self.local_envs), self.env_params
        )
        params = self.network.init(param_key, obs[:1])
        example = replay.Transition(
            obs=obs,
            action=jnp.zeros(self.local_envs, jnp.int32),
            reward=jnp.zeros(self.local_envs, jnp.float32),
            next_obs=obs,
            terminated=jnp.zeros(self.local_envs, jnp.bool_),
            truncated=jnp.zeros(self.local_envs, jnp.bool_) if self.config.n_step > 1 else None,
        )
        return TrainerState(
            params=params,
            target_params=params,
            opt_state=self.make_optimizer(hparams.lr).init(jax.flatten_util.ravel_pytree(params)[0]),
            buffer=replay.init(self.config.buffer_rows, example, prioritized=self.config.prioritized),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros(self.local_envs, jnp.float32),
            episode_length=jnp.zeros(self.local_envs, jnp.int32),
            key=key,
            iteration=jnp.int32(0),
            updates=jnp.int32(0),
            hparams=hparams,
        )

    # Acting ----------------------------------------------------------------------------------
    def epsilon(self, iteration: jnp.ndarray, hparams: HParams) -> jnp.ndarray:
        """Linear decay from eps to min_eps over `eps_decay_steps` env steps, then constant."""
        env_steps = iteration.astype(jnp.float32) * self.config.num_envs
        fraction = jnp.clip(env_steps / self.config.eps_decay_steps, 0.0, 1.0)
        return hparams.eps + fraction * (hparams.min_eps - hparams.eps)

    def select_actions(self, params, obs: jnp.ndarray, key: jax.Array, epsilon: jnp.ndarray,
                       slab: bool = False) -> jnp.ndarray:
        """Epsilon-greedy actions `[batch]` for observations `[batch, *obs_shape]` (`params` a slab if `slab`)."""
        if self.acting_kernel is not None:  # forward pass and exploration in one kernel
            return fused_acting.epsilon_greedy_actions(self.network, params, obs, key, epsilon,
                                                       precision=self.config.acting_precision,
                                                       interpret=self.acting_kernel == "interpret",
                                                       slab_layout=self.slab_layout if slab else None)
        explore_key, action_key = jax.random.split(key)
        greedy = greedy_actions(self.network, params, obs)
        random_actions = jax.random.randint(action_key, greedy.shape, 0, self.num_actions, jnp.int32)
        explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
        return jnp.where(explore, random_actions, greedy)

    # Learning --------------------------------------------------------------------------------
    def priority_beta(self, iteration: jnp.ndarray) -> jnp.ndarray:
        """Prioritized replay's importance-sampling exponent: linear from `priority_beta` to 1 over the run."""
        fraction = jnp.clip(iteration.astype(jnp.float32) / self.config.total_iterations, 0.0, 1.0)
        return self.config.priority_beta + fraction * (1.0 - self.config.priority_beta)

    def td_errors(self, params, target_params, batch: replay.Batch) -> jnp.ndarray:
        """`[batch]` TD errors y - Q(s, a), with y = reward + discount * value(next_obs) (Double DQN if set)."""
        batch_size = batch.action.shape[0]
        if self.stacked_networks:
            q, next_q_online, next_q_target = self._stacked_q_values(params, target_params, batch)
        else:
            if self.config.double:  # one forward pass of the online network over s and s'
                q_both = self.network.apply(params, jnp.concatenate([batch.obs, batch.next_obs]))
                q, next_q_online = q_both[:batch_size], jax.lax.stop_gradient(q_both[batch_size:])
            else:
                q, next_q_online = self.network.apply(params, batch.obs), None
            next_q_target = self.network.apply(target_params, batch.next_obs)
        targets = losses.batch_targets(batch.reward, batch.discount, next_q_target, next_q_online)
        return losses.batch_td_error(q, batch.action, targets)

    def _stacked_q_values(self, params, target_params, batch: replay.Batch):
        """`td_errors`' Q-values with the online and target networks as one network vmapped over both
        parameter sets (online on s, and on s' for Double DQN; target on s'): each layer is one batched
        matrix product and one normalisation kernel for both. On a GPU, where the update is a chain of
        small kernels whose number sets its time, that is faster; on a CPU the target's share of
        the backward pass (zeros, but computed) makes it slower, so it is used on GPUs only."""
        batch_size = batch.action.shape[0]
        both = jax.tree.map(lambda online, target: jnp.stack([online, jax.lax.stop_gradient(target)]),
                            params, target_params)
        if self.config.double:  # the target's input doubled to match the online network's s and s'
            inputs = jnp.stack([jnp.concatenate([batch.obs, batch.next_obs]),
                                jnp.concatenate([batch.next_obs, batch.next_obs])])
        else:
            inputs = jnp.stack([batch.obs, batch.next_obs])
        outputs = jax.vmap(self.network.apply)(both, inputs)
        next_q_online = jax.lax.stop_gradient(outputs[0, batch_size:]) if self.config.double else None
        return outputs[0, :batch_size], next_q_online, jax.lax.stop_gradient(outputs[1, :batch_size])

    def loss_and_errors(self, params, target_params, batch: replay.Batch) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Mean TD loss of a batch, importance-weighted if `batch.weight` is set, and its TD errors."""
        errors = self.td_errors(params, target_params, batch)
        elementwise = losses.td_loss(errors, self.config.loss)
        if batch.weight is not None:  # prioritized replay's importance-sampling correction
            elementwise = batch.weight * elementwise
        return jnp.mean(elementwise), errors

    def loss(self, params, target_params, batch: replay.Batch) -> jnp.ndarray:
        """Mean TD loss of a batch (Double DQN targets when `config.double`; weighted if `batch.weight`)."""
        return self.loss_and_errors(params, target_params, batch)[0]

    def update(self, state: TrainerState, batch: replay.Batch) -> tuple[TrainerState, jnp.ndarray, jnp.ndarray]:
        """One gradient update on `batch` (leaves `[local_batch, ...]`), then the target-network update.

        Returns the new state, the loss and, with prioritized replay, the batch's TD errors before the
        update (else None).
        """
        learner, unravel = flat_learner(state)
        learner, loss, errors = self.flat_update(learner, batch, unravel, state.hparams)
        return with_learner(state, learner, unravel), loss, errors

    def flat_update(self, learner: "FlatLearner", batch: replay.Batch, unravel, hparams: HParams,
                    active: jnp.ndarray | bool = True) -> tuple["FlatLearner", jnp.ndarray, jnp.ndarray]:
        """`update` on parameters raveled into one vector (`unravel` rebuilds the network's tree).

        Returns the updated learner, the loss and, with prioritized replay, the TD errors (else None).
        """
        def flat_loss(flat_params):
            return self.loss_and_errors(unravel(flat_params), unravel(learner.target_params), batch)

        (loss, errors), grads = jax.value_and_grad(flat_loss, has_aux=True)(learner.params)
        return self.apply_gradients(learner, grads, hparams, active), loss, errors if self.config.prioritized else None

    def apply_gradients(self, learner: "FlatLearner", grads: jnp.ndarray, hparams: HParams,
                        active: jnp.ndarray | bool = True) -> "FlatLearner":
        """Clipping, Adam and the target update, over parameters and gradients as one vector each.

        One vector takes a few kernels whatever the network's number of layers, instead of a few
        kernels per parameter array. Where `active` is False the learner comes back unchanged (a select
        inside the same kernels, not a branch).
        """
        if self.collective_axis is not None and self.config.sync == "grads":  # one all-reduce of one vector
            grads = jax.lax.pmean(grads, self.collective_axis)
        param_updates, opt_state = self.make_optimizer(hparams.lr).update(grads, learner.opt_state, learner.params)
        params = learner.params + param_updates
        updates = learner.updates + 1
        # A select rather than a branch: a `lax.cond` costs a device-to-host sync per update on GPUs.
        due = updates % self.config.target_update_frequency == 0
        target_params = jnp.where(due, optax.incremental_update(params, learner.target_params, hparams.tau),
                                  learner.target_params)
        updated = FlatLearner(params, target_params, opt_state, updates)
        if active is not True:
            updated = jax.tree.map(lambda new, old: jnp.where(active, new, old), updated, learner)
        return updated

    def sample_batches(self, buffer: replay.ReplayBuffer, key: jax.Array, iteration: jnp.ndarray,
                       gamma: jnp.ndarray) -> tuple[replay.Batch, tuple[jnp.ndarray, jnp.ndarray]]:
        """The batches of all of a vector step's updates (leaves `[updates_per_step, local_batch, ...]`).

        Returns the batches and the `(rows, envs)` slots they start at.
        """
        shape, n_step = (self.config.updates_per_step, self.local_batch), self.config.n_step
        if self.config.prioritized:
            rows, envs, weights = replay.sample_prioritized(buffer, key, shape, self.priority_beta(iteration), n_step)
        else:
            (rows, envs), weights = replay.sample_uniform(buffer, key, shape, n_step), None
        return replay.gather_batch(buffer, rows, envs, gamma, n_step).replace(weight=weights), (rows, envs)

    def learn(self, state: TrainerState, key: jax.Array,
              active: jnp.ndarray | bool = True) -> tuple[TrainerState, jnp.ndarray]:
        """`updates_per_step` gradient updates; returns the summed loss.

        The batches of all the updates are sampled up front, in one gather per field: the loop of
        updates, which runs one after another on the device, then holds only the learning itself.
        With prioritized replay the sampled slots' priorities are rewritten after the loop.
        """
        replay_buffer = state.buffer  # read-only here: kept out of the loop's carry
        batches, (rows, envs) = self.sample_batches(replay_buffer, key, state.iteration, state.hparams.gamma)

        # Only what the updates change travels through the loop, and the parameters as one vector each
        # (`flat_update`): carrying the whole state would copy its unchanged fields on every update.
        learner, unravel = flat_learner(state)
        if self.update_kernel is not None:
            learner, step_losses, errors = self._fused_updates(learner, batches, state.hparams, active, state.slab)
        else:
            def update(learner: FlatLearner, batch: replay.Batch):
                learner, loss, errors = self.flat_update(learner, batch, unravel, state.hparams, active)
                return learner, (loss, errors)

            learner, (step_losses, errors) = jax.lax.scan(update, learner, batches,
                                                          unroll=self.update_unroll)
        if self.collective_axis is not None and self.config.sync == "params":  # local SGD: average once per step
            def counters_kept(leaf):  # the counters agree already; the average is cast back to per-device
                if not jnp.issubdtype(leaf.dtype, jnp.floating):
                    return leaf
                return jax.lax.pcast(jax.lax.pmean(leaf, self.collective_axis), self.collective_axis, to="varying")

            learner = learner.replace(params=counters_kept(learner.params),
                                      target_params=counters_kept(learner.target_params),
                                      opt_state=jax.tree.map(counters_kept, learner.opt_state))
        if self.config.prioritized:
            replay_buffer = replay.update_priorities(replay_buffer, rows, envs, errors, self.config.priority_alpha)
        return with_learner(state.replace(buffer=replay_buffer), learner, unravel), jnp.sum(step_losses)

    def _fused_updates(self, learner: FlatLearner, batches: replay.Batch, hparams: HParams,
                       active: jnp.ndarray | bool, in_slab: bool) -> tuple[FlatLearner, jnp.ndarray, jnp.ndarray]:
        """`learn`'s loop of updates in `jaxdqn.fused_update`'s kernels: three per update, nothing else.

        Unless the learner is in the slab layout already (`in_slab`: inside a chunk, `to_slab`),
        parameters, target and Adam's moments move from the raveled vector to the kernels' slab for
        the loop, and back after it: the same numbers, padded with zeros that stay zero.
        The optimizer's scalars of every update are worked out before the loop (`_optimizer_schedule`),
        and each update writes its loss and TD errors in place: no small kernels between the updates.
        Returns the learner, the `[updates_per_step]` losses and the TD errors (None unless prioritized).
        """
        layout = self.slab_layout
        num_updates, batch_size = self.config.updates_per_step, self.local_batch
        blocks = batch_size // fused_update.block_shape(batch_size)[0]
        interpret = self.update_kernel == "interpret"

        if not in_slab:
            learner = jax.tree.map(layout.leaf_to_slab, learner)
        kernel_batches = fused_update.kernel_batches(batches, layout.obs_rows)
        scalars, opt_state = self._optimizer_schedule(learner, hparams, active)
        adam = opt_state[1].inner_state[0]

        def update(carry, index: jnp.ndarray):
            params, target_params, mu, nu, losses, errors = carry
            partial_grads, losses, errors = fused_update.loss_and_gradient(
                layout, params, target_params, kernel_batches, index, losses, errors, batch_size,
                self.config.double, self.config.loss, interpret=interpret)
            if self.collective_axis is not None and self.config.sync == "grads":  # one all-reduce of one vector
                partial_grads = jax.lax.pmean(jnp.sum(partial_grads, axis=0, keepdims=True), self.collective_axis)
            params, target_params, mu, nu = fused_update.adam_step(partial_grads, scalars, index, params,
                                                                   target_params, mu, nu, interpret=interpret)
            return (params, target_params, mu, nu, losses, errors), None

        carry = (learner.params, learner.target_params, adam.mu, adam.nu,
                 jnp.zeros(num_updates * blocks, jnp.float32), jnp.zeros(num_updates * batch_size, jnp.float32))
        indices = jnp.arange(num_updates, dtype=jnp.int32)[:, None]
        (params, target_params, mu, nu, losses, errors), _ = jax.lax.scan(
            update, carry, indices, unroll=self.update_unroll)
        opt_state = (opt_state[0], opt_state[1]._replace(
            inner_state=(adam._replace(mu=mu, nu=nu), *opt_state[1].inner_state[1:])))
        learner = FlatLearner(params, target_params, opt_state,
                              jnp.where(active, learner.updates + num_updates, learner.updates))
        if not in_slab:
            learner = jax.tree.map(layout.leaf_from_slab, learner)
        step_losses = jnp.sum(losses.reshape(num_updates, blocks), axis=1)
        return learner, step_losses, errors.reshape(num_updates, batch_size) if self.config.prioritized else None

    def _optimizer_schedule(self, learner: FlatLearner, hparams: HParams, active: jnp.ndarray | bool):
        """The scalars of the vector step's updates for `fused_update.adam_step`, and the optimizer's
        state after them (its vectors, Adam's moments, left as they were).

        `make_optimizer`'s chain counts one step per update in three places (inject_hyperparams, its
        schedule, Adam), and takes the learning rate from the schedule at the count before the step.
        Worked out here for all the updates at once (what optax would do one update at a time):
        run per update on a GPU, this scalar bookkeeping was a dozen kernels of its own.
        """
        num_updates = self.config.updates_per_step
        clip_state, inject = learner.opt_state
        adam = inject.inner_state[0]
        values = inject.hyperparams
        steps = jnp.arange(1, num_updates + 1, dtype=jnp.int32)

        def counted(count, steps):  # optax's safe_increment `steps` times: saturates, never overflows
            return count + jnp.minimum(steps, jnp.iinfo(jnp.int32).max - count)

        schedule = self.learning_rate(hparams.lr)
        if callable(schedule):
            schedule_count = inject.hyperparams_states["learning_rate"].count
            lr = schedule(counted(schedule_count, steps - 1))
        else:
            lr = jnp.broadcast_to(values["learning_rate"], steps.shape)
        adam_count = counted(adam.count, steps)
        due = (learner.updates + steps) % self.config.target_update_frequency == 0
        columns = [lr, 1.0 - values["b1"] ** adam_count, 1.0 - values["b2"] ** adam_count, values["b1"], values["b2"],
                   values["eps"], values["eps_root"], self.config.max_grad_norm, hparams.tau, due, active]
        columns += [0.0] * (fused_update.SCALARS - len(columns))
        scalars = jnp.stack([jnp.broadcast_to(jnp.asarray(column, jnp.float32), steps.shape) for column in columns],
                            axis=1).reshape(-1)

        after = inject._replace(
            count=counted(inject.count, num_updates),
            hyperparams={**values, "learning_rate": lr[-1].astype(values["learning_rate"].dtype)},
            hyperparams_states=jax.tree.map(lambda count: counted(count, num_updates), inject.hyperparams_states),
            inner_state=(adam._replace(count=adam_count[-1]), *inject.inner_state[1:]))
        after = jax.tree.map(lambda new, old: jnp.where(active, new, old), after, inject)
        return scalars, (clip_state, after)

    # One iteration ---------------------------------------------------------------------------
    def step_keys(self, key: jax.Array) -> StepKeys:
        """One `train_step`'s keys, all drawn from `key`."""
        act_key, env_key, learn_key = jax.random.split(key, 3)
        return StepKeys(act=act_key, env=jax.random.split(env_key, self.local_envs), learn=learn_key)

    def train_step(self, state: TrainerState, keys: StepKeys | None = None) -> tuple[TrainerState, StepMetrics]:
        """Learns from the buffer once enough is collected, acts on every env and stores the transitions.

        `keys`: the step's random keys (`run_chunk` draws a whole chunk's at once); None: drawn here
        from the state's key.
        """
        if keys is None:
            key, step_key = jax.random.split(state.key)
            state, keys = state.replace(key=key), self.step_keys(step_key)
        # Learning reads the buffer as it was before this vector step, and acting the parameters from
        # before its updates: neither needs the other, so a GPU runs the acting kernel and the first
        # update's side by side (see `DQN.chunk_compiler_options`). An update never samples the
        # transitions of its own vector step, and learning starts at the first vector step that finds
        # `learning_starts_rows` rows stored.
        # Before that the updates are computed and discarded: selects inside the updates' own kernels
        # (`flat_update`'s `active`), not a branch and not a second copy of the learner.
        learned = state.buffer.filled_rows >= self.learning_starts_rows
        trained, loss_sum = self.learn(state, keys.learn, active=learned)
        replay_buffer = state.buffer
        if self.config.prioritized:  # the priorities written by `learn`, if it counted
            keep = lambda new, old: jnp.where(learned, new, old)  # noqa: E731
            replay_buffer = replay_buffer.replace(priority=keep(trained.buffer.priority, replay_buffer.priority),
                                                  max_priority=keep(trained.buffer.max_priority,
                                                                    replay_buffer.max_priority))
        epsilon = self.epsilon(state.iteration, state.hparams)
        action = self.select_actions(state.params, state.obs, keys.act, epsilon, slab=state.slab)
        next_obs, env_state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None)
        )(keys.env, state.env_state, action, self.env_params)
        reward = reward.astype(jnp.float32)
        # The stored next observation is the pre-reset one; only `terminated` cuts the bootstrap.
        transition = replay.Transition(
            obs=state.obs, action=action, reward=reward, next_obs=info["final_observation"], terminated=terminated,
            truncated=truncated if self.config.n_step > 1 else None,  # n-step windows stop at any episode end
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        state = trained.replace(
            buffer=replay.add(replay_buffer, transition),
            env_state=env_state,
            obs=next_obs,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
            iteration=state.iteration + 1,
        )
        loss_sum = jnp.where(learned, loss_sum, 0.0)
        metrics = StepMetrics(
            loss_sum=loss_sum,
            num_updates=jnp.where(learned, self.config.updates_per_step, 0),
            return_sum=jnp.where(done, episode_return, 0.0),
            length_sum=jnp.where(done, episode_length, 0),
            num_episodes=done.astype(jnp.int32),
        )
        return state, metrics

    def run_chunk(self, state: TrainerState, num_iterations: int) -> tuple[TrainerState, ChunkMetrics]:
        """`num_iterations` train steps in one `lax.scan` (the jit boundary); returns summed metrics.

        With the fused kernels (`uses_slab`) the learner is in their slab layout for the whole chunk:
        no conversion in each vector step, no operand padding for acting.

        The chunk's random keys are drawn before its loop, all at once (`step_keys` vmapped over its
        vector steps: `chunk_steps` keys for the envs, 8 bytes each): splitting keys in every vector
        step cost a few small kernels of its own.
        """
        unravel = None
        if self.uses_slab:
            unravel = flat_learner(state)[1]
            state = self.to_slab(state)
        key, chunk_key = jax.random.split(state.key)
        keys = jax.vmap(self.step_keys)(jax.random.split(chunk_key, num_iterations))
        state = state.replace(key=key)

        def step(carry, keys: StepKeys):
            state, totals = carry  # the sums travel in the loop: no per-step metrics written out and summed after
            state, metrics = self.train_step(state, keys)
            return (state, jax.tree.map(jnp.add, totals, metrics)), None

        # Zeros made from the state's own leaves, so that under shard_map they vary over devices as it does.
        zero_float, zero_int = jnp.zeros_like(state.episode_return[0]), jnp.zeros_like(state.iteration)
        env_float, env_int = jnp.zeros_like(state.episode_return), jnp.zeros_like(state.episode_length)
        zero = StepMetrics(loss_sum=zero_float, num_updates=zero_int, return_sum=env_float, length_sum=env_int,
                           num_episodes=env_int)
        (state, totals), _ = jax.lax.scan(step, (state, zero), keys)
        totals = totals.replace(return_sum=jnp.sum(totals.return_sum), length_sum=jnp.sum(totals.length_sum),
                                num_episodes=jnp.sum(totals.num_episodes))
        if unravel is not None:
            state = self.from_slab(state, unravel)
        if self.collective_axis is not None:  # episodes finish on every device, and each has its own losses
            episodes = jax.lax.psum((totals.return_sum, totals.length_sum, totals.num_episodes),
                                    self.collective_axis)
            totals = totals.replace(return_sum=episodes[0], length_sum=episodes[1], num_episodes=episodes[2],
                                    loss_sum=jax.lax.pmean(totals.loss_sum, self.collective_axis))
        num_episodes = totals.num_episodes.astype(jnp.float32)
        metrics = ChunkMetrics(
            loss=totals.loss_sum / jnp.where(totals.num_updates > 0, totals.num_updates, jnp.nan),
            train_return=totals.return_sum / jnp.where(num_episodes > 0, num_episodes, jnp.nan),
            train_length=totals.length_sum / jnp.where(num_episodes > 0, num_episodes, jnp.nan),
            episodes=totals.num_episodes,
            epsilon=self.epsilon(state.iteration, state.hparams),
            iteration=state.iteration,
            updates=state.updates,
            # Parameters are the same on every device (averaged gradients or parameters): device 0's check suffices.
            params_finite=all_finite(state.params),
        )
        return state, metrics

    # Evaluation ------------------------------------------------------------------------------
    def evaluate(self, params, key: jax.Array, num_episodes: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Runs `num_episodes` fresh greedy episodes in parallel; returns their returns and lengths."""
        return evaluate_greedy(self.env, self.env_params, self.network, params, key, num_episodes)


def greedy_actions(network: nn.Module, params, obs: jnp.ndarray) -> jnp.ndarray:
    """The greedy actions `[batch]` (int32) for observations `[batch, *obs_shape]`."""
    return jnp.argmax(network.apply(params, obs), axis=-1).astype(jnp.int32)


def evaluate_greedy(env, env_params, network: nn.Module, params, key: jax.Array,
                    num_episodes: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Greedy episodes, one per env, until each has ended once.

    Returns:
      `(returns, lengths)`, each `[num_episodes]`.
    """
    reset_key, key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)

    def not_finished(carry):
        return ~jnp.all(carry[4])

    def step(carry):
        obs, env_state, returns, lengths, finished, key = carry
        key, step_key = jax.random.split(key)
        action = greedy_actions(network, params, obs)
        obs, env_state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, num_episodes), env_state, action, env_params
        )
        live = ~finished
        returns = returns + jnp.where(live, reward.astype(jnp.float32), 0.0)
        lengths = lengths + live.astype(jnp.int32)
        finished = finished | terminated | truncated
        return obs, env_state, returns, lengths, finished, key

    carry = (obs, env_state, jnp.zeros(num_episodes, jnp.float32), jnp.zeros(num_episodes, jnp.int32),
             jnp.zeros(num_episodes, jnp.bool_), key)
    _, _, returns, lengths, _, _ = jax.lax.while_loop(not_finished, step, carry)
    return returns, lengths
