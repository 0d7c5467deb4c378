"""The training loop as pure JAX functions: act on all envs, store, learn — one device, one agent.

Deep Q-learning with experience replay and a target network, after Mnih et al. (2013), "Playing Atari
with Deep Reinforcement Learning" (and the target network of Mnih et al. 2015), vectorized: every
`train_step` steps `num_envs` gymnax environments at once with epsilon-greedy actions, writes their
transitions into an on-device replay buffer, and takes `updates_per_step` gradient updates on batches
from the buffer as it was before the step (acting and learning need nothing of each other).

The algorithm's maths is the learner's (`jaxdqn.learners`: DQN and its variants, behind one small
interface); the paths acting and learning take (XLA, or the GPU kernels of `jaxdqn.kernels`) are the
backend's (`jaxdqn.kernels.choose`). What is here is the loop: act, step the envs, write, learn.

Layers: `init` and `train_step` are plain functions without `jax.jit` (layer 1);
`run_chunk` scans `train_step` (layer 2, the jit boundary, applied by the caller); `jaxdqn.parallel`
runs the same functions under `shard_map` over devices, passing `axis_name` so that gradients and
metrics are averaged over devices (brax's pattern: one code path for one device and many). With
`sync="params"` each device instead updates on its own samples and the learner is averaged once per
vector step (local SGD). Gradient clipping, Adam and the target update run over the parameters raveled
into one vector (`flat_update`): a few kernels per update whatever the number of layers, which matters
because an update of a small Q-network costs the GPU kernel launches, not arithmetic.

Rainbow-style variants (Hessel et al. 2018), each a static `TrainConfig` flag: Double DQN (`double`, on
by default), dueling heads (`dueling`, in `jaxdqn.networks`), n-step returns (`n_step`) and proportional
prioritized replay (`prioritized`, both in `jaxdqn.buffer`). A variant that is off adds nothing to the
program. Prioritized replay samples every batch of a vector step up front with the priorities as they
were at its start, and writes the new priorities (each sampled slot's latest priority source, the
|TD error| for DQN) once, after the step's `updates_per_step` updates; its importance-sampling exponent
beta is annealed linearly from `priority_beta` to 1 over the run's env steps.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from jaxdqn import buffer as replay
from jaxdqn import kernels
from jaxdqn.config import TrainConfig
from jaxdqn.hparams import HParams
from jaxdqn.kernels import backend as kernel_glue
from jaxdqn.kernels import acting as acting_kernel
from jaxdqn.learners import Learner, make_learner
from jaxdqn.learners.base import lambda_batch
from jaxdqn.state import (ChunkMetrics, FlatLearner, StepKeys, StepMetrics, TrainerState, all_finite,
                          flat_learner, with_learner)


class Trainer:
    """The static parts of a run (config, env, learner, backend, optimizer) and the pure functions over them.

    Args:
      config: the run's settings; `num_envs` and `batch_size` are global and split over `num_devices`.
      env, env_params: a gymnax environment and its parameters.
      network: a flax module mapping `[batch, *obs_shape]` to the learner's outputs (`jaxdqn.networks`).
      num_devices: devices the run is sharded over (1: no collectives).
      axis_name: the mesh axis to average gradients and metrics over, or None on one device.
      learner: the learner (`jaxdqn.learners`); default the one `config.learner` names, on `network`.
      backend: the paths of acting and learning (`jaxdqn.kernels.choose`); default chosen for this platform.
    """

    def __init__(self, config: TrainConfig, env, env_params, network: nn.Module, num_devices: int = 1,
                 axis_name: str | None = None, learner: Learner | None = None,
                 backend: kernels.Backend | None = None):
        self.config = config
        self.env = env
        self.env_params = env_params
        self.network = network
        self.learner = learner if learner is not None else make_learner(config, network)
        self.num_devices = num_devices
        self.axis_name = axis_name
        # Collectives only where there is something to average: on a mesh of one device an all-reduce
        # is no arithmetic, but it still splits the update's kernels on a GPU.
        self.collective_axis = axis_name if num_devices > 1 else None
        self.local_envs = config.num_envs // num_devices
        self.local_batch = max(1, config.batch_size // num_devices)
        self.num_actions = env.action_space(env_params).n
        obs_shape = env.observation_space(env_params).shape
        self.obs_size = math.prod(obs_shape)
        self.backend = backend if backend is not None else kernels.choose(config, self.learner, obs_shape,
                                                                          self.local_batch)
        self.learning_starts_iteration = config.learning_starts_iteration
        # Learning waits for the buffer to hold `learning_starts` transitions (or to be full), which
        # also pauses it while a run resumed without its buffer refills it.
        # n-step returns need n rows before the first start is complete.
        self.learning_starts_rows = min(max(config.n_step, self.learning_starts_iteration), config.buffer_rows)

    # Construction ----------------------------------------------------------------------------
    def learning_rate(self, lr):
        """`lr`, or with `lr_anneal` the schedule `count -> lr` annealed linearly to 0 over the run's updates."""
        if not self.config.lr_anneal:  # an array, so that optax keeps it in the state whether traced or not
            return jnp.asarray(lr)
        total_updates = self.config.total_updates
        return lambda count: lr * jnp.clip(1.0 - count / total_updates, 0.0, 1.0)

    def make_optimizer(self, lr) -> optax.GradientTransformation:
        """Adam with global-norm clipping; `lr` may be traced, and is annealed to 0 if `lr_anneal`."""
        return optax.chain(
            optax.clip_by_global_norm(self.config.max_grad_norm),
            optax.inject_hyperparams(optax.adam)(learning_rate=self.learning_rate(lr)),
        )

    def chunk_compiler_options(self) -> dict[str, str]:
        """XLA options for the chunk's program (`jaxdqn.kernels.Backend.chunk_compiler_options`)."""
        return self.backend.chunk_compiler_options(self.config, self.collective_axis is not None)

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
        if self.backend.acting is not kernels.Path.XLA:  # forward pass and exploration in one kernel
            return acting_kernel.epsilon_greedy_actions(
                self.network, params, obs, key, epsilon, precision=self.config.acting_precision,
                interpret=self.backend.acting is kernels.Path.INTERPRET,
                slab_layout=self.backend.slab_layout if slab else None)
        noise_key = None
        if self.learner.noisy:  # noisy nets: the vector step's draw of the noise (one per env with noise_per_env)
            key, noise_key = jax.random.split(key)
        explore_key, action_key = jax.random.split(key)
        greedy = self.learner.greedy(params, obs, noise_key, per_example=self.config.noise_per_env)
        random_actions = jax.random.randint(action_key, greedy.shape, 0, self.num_actions, jnp.int32)
        explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
        return jnp.where(explore, random_actions, greedy)

    # Learning --------------------------------------------------------------------------------
    def priority_beta(self, iteration: jnp.ndarray) -> jnp.ndarray:
        """Prioritized replay's importance-sampling exponent: linear from `priority_beta` to 1 over the run."""
        fraction = jnp.clip(iteration.astype(jnp.float32) / self.config.total_iterations, 0.0, 1.0)
        return self.config.priority_beta + fraction * (1.0 - self.config.priority_beta)

    def loss_and_priorities(self, params, target_params, batch: replay.Batch) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The learner's mean loss of a batch (importance-weighted if `batch.weight` is set) and its
        `[batch]` priority sources (TD errors for DQN), on this backend's XLA path."""
        return self.learner.loss_and_priorities(params, target_params, batch, stacked=self.backend.stacked_networks)

    def loss(self, params, target_params, batch: replay.Batch) -> jnp.ndarray:
        """The learner's mean loss of a batch."""
        return self.loss_and_priorities(params, target_params, batch)[0]

    def update(self, state: TrainerState, batch: replay.Batch) -> tuple[TrainerState, jnp.ndarray, jnp.ndarray]:
        """One gradient update on `batch` (leaves `[local_batch, ...]`), then the target-network update.

        Returns the new state, the loss and, with prioritized replay, the batch's TD errors before the
        update (else None).
        """
        learner, unravel = flat_learner(state)
        learner, loss, errors = self.flat_update(learner, batch, unravel, state.hparams)
        return with_learner(state, learner, unravel), loss, errors

    def flat_update(self, learner: FlatLearner, batch: replay.Batch, unravel, hparams: HParams,
                    active: jnp.ndarray | bool = True, key: jax.Array | None = None
                    ) -> tuple[FlatLearner, jnp.ndarray, jnp.ndarray]:
        """`update` on parameters raveled into one vector (`unravel` rebuilds the network's tree).

        `key`: noisy nets' noise for this update. Returns the updated learner, the loss and, with
        prioritized replay, the priority sources (else None).
        """
        lambda_returns = isinstance(batch, replay.Window)
        if lambda_returns:  # the targets from this update's networks, so the loss needs no s'
            batch = lambda_batch(self.learner, unravel(learner.params), unravel(learner.target_params), batch,
                                 self.config.td_lambda)

        def flat_loss(flat_params):
            return self.learner.loss_and_priorities(unravel(flat_params), unravel(learner.target_params), batch,
                                                    stacked=self.backend.stacked_networks, key=key,
                                                    bootstrap=not lambda_returns)

        (loss, errors), grads = jax.value_and_grad(flat_loss, has_aux=True)(learner.params)
        return self.apply_gradients(learner, grads, hparams, active), loss, errors if self.config.prioritized else None

    def apply_gradients(self, learner: FlatLearner, grads: jnp.ndarray, hparams: HParams,
                        active: jnp.ndarray | bool = True) -> FlatLearner:
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
        shape, n_step = (self.config.vector_step_updates, self.local_batch), self.config.n_step
        if self.config.prioritized:
            rows, envs, weights = replay.sample_prioritized(buffer, key, shape, self.priority_beta(iteration), n_step)
        else:
            (rows, envs), weights = replay.sample_uniform(buffer, key, shape, n_step), None
        if self.config.td_lambda < 1.0:  # the windows; `flat_update` makes their lambda-returns
            return replay.gather_window(buffer, rows, envs, gamma, n_step).replace(weight=weights), (rows, envs)
        return replay.gather_batch(buffer, rows, envs, gamma, n_step).replace(weight=weights), (rows, envs)

    def learn(self, state: TrainerState, key: jax.Array,
              active: jnp.ndarray | bool = True) -> tuple[TrainerState, jnp.ndarray]:
        """`updates_per_step` gradient updates; returns the summed loss.

        The batches of all the updates are sampled up front, in one gather per field: the loop of
        updates, which runs one after another on the device, then holds only the learning itself.
        With prioritized replay the sampled slots' priorities are rewritten after the loop.
        """
        replay_buffer = state.buffer  # read-only here: kept out of the loop's carry
        noise_keys = None
        if self.learner.noisy:  # noisy nets: a draw of the noise per update
            key, noise_key = jax.random.split(key)
            noise_keys = jax.random.split(noise_key, self.config.vector_step_updates)
        batches, (rows, envs) = self.sample_batches(replay_buffer, key, state.iteration, state.hparams.gamma)

        # Only what the updates change travels through the loop, and the parameters as one vector each
        # (`flat_update`): carrying the whole state would copy its unchanged fields on every update.
        learner, unravel = flat_learner(state)
        if self.backend.update is not kernels.Path.XLA:
            learner, step_losses, errors = kernel_glue.fused_updates(self, learner, batches, state.hparams, active,
                                                                    state.slab)
        else:
            def update(learner: FlatLearner, batch_and_key):
                batch, noise_key = batch_and_key
                learner, loss, errors = self.flat_update(learner, batch, unravel, state.hparams, active, noise_key)
                return learner, (loss, errors)

            learner, (step_losses, errors) = jax.lax.scan(update, learner, (batches, noise_keys),
                                                          unroll=self.backend.update_unroll(self.config))
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
        # update's side by side (see `jaxdqn.kernels.Backend.chunk_compiler_options`). An update never samples the
        # transitions of its own vector step, and learning starts at the first vector step that finds
        # `learning_starts_rows` rows stored.
        # Before that the updates are computed and discarded: selects inside the updates' own kernels
        # (`flat_update`'s `active`), not a branch and not a second copy of the learner.
        learned = state.buffer.filled_rows >= self.learning_starts_rows
        if self.config.learn_interval > 1:  # fewer updates than vector steps: learn on every learn_interval-th
            learned = learned & (state.iteration % self.config.learn_interval == 0)
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
            num_updates=jnp.where(learned, self.config.vector_step_updates, 0),
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
        if self.backend.uses_slab:
            unravel = flat_learner(state)[1]
            state = self.backend.to_slab(state)
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
            state = self.backend.from_slab(state, unravel)
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
            q_mean=jnp.mean(jnp.max(self.learner.q_values(state.params, state.obs), axis=-1)),
        )
        return state, metrics

    # Evaluation ------------------------------------------------------------------------------
    def evaluate(self, params, key: jax.Array, num_episodes: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Runs `num_episodes` fresh greedy episodes in parallel; returns their returns and lengths."""
        return evaluate_greedy(self.env, self.env_params, self.learner, params, key, num_episodes)


def evaluate_greedy(env, env_params, learner: Learner, params, key: jax.Array,
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
        action = learner.greedy(params, obs)
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


def build_trainer(config: TrainConfig, num_devices: int = 1, axis_name: str | None = None,
                  backend: kernels.Backend | None = None):
    """`(spec, trainer)` for `config`: its env (`jaxdqn.registry`), and a trainer with the learner and
    network that env and `config` call for (`jaxdqn.learners.build_learner`)."""
    from jaxdqn.learners import build_learner
    from jaxdqn.registry import make_env

    spec, env, env_params = make_env(config.env)
    learner = build_learner(config, env.observation_space(env_params).shape, env.action_space(env_params).n,
                            spec.make_network)
    return spec, Trainer(config, env, env_params, learner.network, num_devices=num_devices, axis_name=axis_name,
                         learner=learner, backend=backend)
