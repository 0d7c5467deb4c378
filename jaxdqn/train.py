"""Command line and host loop: `python -m jaxdqn.train --env cartpole --num_envs 4096`.

Trains a Deep Q-Network (Mnih et al. 2013) on thousands of vectorized gymnax environments. The
training itself is one jitted XLA program (`Trainer.run_chunk` under `shard_map`, compiled once); this
host loop only calls it chunk after chunk and, between chunks, evaluates the greedy policy, writes
metrics, shows progress and saves Orbax checkpoints (`--save_model`, `--load_model` to resume; see
`jaxdqn.checkpoint`). The flags of the original PyTorch trainer (`--environment`, `--lr`,
`--batch_size`, `--gamma`, `--eps`, `--min_eps`, `--buffer_size`, `--max_grad_norm`,
`--target_update_frequency`, `--n_workers`) keep working.

The flags are `jaxdqn.cli`'s (`jaxdqn train ...` runs this `main`); `train` hands the greedy evaluations,
the checkpoints, the outputs (metrics.csv and, with --tensorboard / --wandb, `jaxdqn.loggers`) and the
summary to the small objects and functions below it (`Evaluation`, `Saving`, `RunLog`, `summarize`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from jaxdqn.reporting import process_start_time

PROCESS_START = process_start_time()

# The flags need no JAX (so `--help` is fast); both names also stay importable from jaxdqn.train.
from jaxdqn.cli import DEFAULT_COMPILE_CACHE, make_train_parser, read_config_file  # noqa: E402, F401

if __name__ == "__main__":
    # --help and bad flags answer before the slow imports below; then JAX is set up for a run and the device
    # starts while they import (`jaxdqn.cli.before_training`; `main` parses the flags again).
    from jaxdqn.cli import before_training

    before_training(sys.argv[1:])

import jax  # noqa: E402  (the process start is read before the slow imports)
import numpy as np  # noqa: E402

from jaxdqn import distributed, loggers, parallel, population, preflight, program_cache  # noqa: E402
from jaxdqn.agent import Trainer, build_trainer  # noqa: E402
from jaxdqn.config import TrainConfig, build_config  # noqa: E402
from jaxdqn.errors import TrainingDiverged, one_line  # noqa: E402
from jaxdqn.loggers import LoggingOptions  # noqa: E402
from jaxdqn.learners import build_learner  # noqa: E402
from jaxdqn.registry import ConfigError, EnvSpec, get_spec, make_env  # noqa: E402
from jaxdqn.reporting import RunLog, keep_previous_summary, plot_learning_curve, summary_line  # noqa: E402

if TYPE_CHECKING:  # jaxdqn.checkpoint imports Orbax, so it is imported only when a run uses it
    from jaxdqn.checkpoint import Checkpoint, CheckpointOptions


@dataclasses.dataclass
class Program:
    """The built pieces of a run: environment, network, trainer and its jitted functions.

    `init(seed, hparams)`, `run_chunk(state)` and `evaluate(params_block, seed, index)` are jitted
    (compiled on first call); `compile` builds all three at once, or loads them (`jaxdqn.program_cache`).
    """

    config: TrainConfig
    spec: EnvSpec
    dqn: Trainer
    mesh: Any
    init: Any
    run_chunk: Any
    evaluate: Any
    agents: list[population.Agent]

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def init_args(self) -> tuple[np.ndarray, Any]:
        """`init`'s arguments for the run: the seed(s) and traced hyperparameters (one agent or a population)."""
        if len(self.agents) > 1:
            return population.agent_seeds(self.agents), population.stacked_hparams(self.config, self.agents)
        return np.int32(self.config.seed), self.config.hparams

    def initial_state(self):
        """The run's first state: one agent, or the population's, stacked on an agent axis."""
        return self.init(*self.init_args())

    def compile(self, cache_dir: Path | None = None) -> tuple[Any, Any, Any, bool]:
        """`(init, run_chunk, evaluate, loaded)` compiled together; loaded from `cache_dir` if it has them."""
        seed, hparams = self.init_args()

        @functools.cache
        def abstract_state():  # traced only when something must be compiled
            return jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=parallel.sharded(self.mesh)),
                jax.eval_shape(self.init, seed, hparams))

        # Evaluation runs in every process, on its first device of the mesh (`parallel.first_device_block`).
        evaluation_device = parallel.first_local_device(self.mesh)

        def params_block():
            first_device = jax.sharding.SingleDeviceSharding(evaluation_device)
            return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((1, *leaf.shape[1:]), leaf.dtype,
                                                                  sharding=first_device), abstract_state().params)

        lowerers = {  # the chunk first: its compile is the longest, and the others are traced meanwhile
            "run_chunk": lambda: self.run_chunk.lower(abstract_state()),
            "init": lambda: self.init.lower(seed, hparams),
            "evaluate": lambda: self.evaluate.lower(params_block(), np.int32(0), np.int32(0)),
        }
        mesh_devices = list(self.mesh.devices.flat)
        key = None
        if cache_dir is not None and jax.process_count() == 1:
            key = program_cache.program_key(self.config, self.dqn.env, self.dqn.env_params, self.dqn.network,
                                            mesh_devices)
        devices = {"init": mesh_devices, "run_chunk": mesh_devices, "evaluate": [evaluation_device]}
        compiled, loaded = program_cache.load_or_compile(lowerers, devices, cache_dir, key)
        return compiled["init"], compiled["run_chunk"], compiled["evaluate"], loaded


def build_program(config: TrainConfig) -> Program:
    """Builds env, network and the jitted init / chunk / evaluation functions for `config`."""
    mesh = parallel.make_mesh(config.num_devices)
    num_devices = mesh.size
    check_divides(config, num_devices)
    spec, dqn = build_trainer(config, num_devices=num_devices, axis_name=parallel.AXIS)
    agents = population.make_agents(config)
    return Program(config, spec, dqn, mesh, parallel.make_init(dqn, mesh, len(agents)),
                   parallel.make_run_chunk(dqn, mesh, config.chunk_iterations, len(agents)),
                   parallel.make_evaluate(dqn, config.eval_episodes, len(agents)), agents)


def check_divides(config: TrainConfig, num_devices: int) -> None:
    """Raises ConfigError unless the envs and the batch split evenly over the devices."""
    if config.num_envs % num_devices:
        raise ConfigError(f"--num_envs {config.num_envs} does not divide evenly over {num_devices} devices")
    if config.batch_size % num_devices:
        raise ConfigError(f"--batch_size {config.batch_size} does not divide evenly over {num_devices} devices")


def check_devices_and_memory(config: TrainConfig) -> None:
    """Before any work: the devices exist and divide the run, and its arrays fit in memory (`jaxdqn.preflight`).

    Builds the env and the network's shapes (nothing is allocated or compiled); `build_program` builds them again.
    """
    spec, env, env_params = make_env(config.env)
    num_devices = parallel.make_mesh(config.num_devices).size
    check_divides(config, num_devices)
    obs_shape = env.observation_space(env_params).shape
    network = build_learner(config, obs_shape, env.action_space(env_params).n, spec.make_network).network
    num_agents = config.num_seeds * math.prod(len(values) for values in population.parse_sweep(config.sweep).values())
    parts = preflight.estimate_memory(config, env, env_params, network, num_agents)
    preflight.check_memory(parts, num_agents, num_devices)


XLA_CACHE_MAX_BYTES = 1 << 30  # JAX's own entries in the compile cache folder (`programs/` has its own bound)


def enable_compile_cache(path: str | None, max_bytes: int = XLA_CACHE_MAX_BYTES) -> None:
    """Turns on JAX's persistent compilation cache, so that an identical second run does not compile.

    JAX keeps it under `max_bytes`, deleting the least recently used entries first. That needs the
    `filelock` package (a dependency of jaxdqn); without it the cache is unbounded, JAX's default.
    """
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        import filelock  # noqa: F401  (JAX's eviction locks the folder with it)
    except ImportError:
        return
    jax.config.update("jax_compilation_cache_max_size", max_bytes)


def train(config: TrainConfig, log_dir: Path | None = None, show_progress: bool = True,
          stream: TextIO | None = None, checkpoints: CheckpointOptions | None = None,
          resume: Checkpoint | None = None, program_cache_dir: Path | None = None,
          logging_options: LoggingOptions | None = None) -> dict[str, Any]:
    """Trains per `config`, writing outputs to `log_dir` (None: write nothing); returns the summary.

    With `program_cache_dir`, the compiled programs are loaded from (or saved to) that folder
    (`jaxdqn.program_cache`).

    With `checkpoints`, saves Orbax checkpoints every `checkpoints.frequency` chunks and at the end.
    With `resume` (from `jaxdqn.checkpoint.find`), continues that run: `config` must keep its shape
    settings (see `jaxdqn.checkpoint.check_resume_config`). With `logging_options`, the per-chunk metrics
    also go to TensorBoard and W&B (`jaxdqn.loggers`; needs `log_dir`).

    The loop runs the chunks; evaluating (`Evaluation`), checkpointing (`Saving`), writing the metrics and
    progress (`jaxdqn.reporting.RunLog`) and the summary (`summarize`, `write_outputs`) are done by those.
    """
    startup_s = time.time() - PROCESS_START
    stream = stream if stream is not None else sys.stderr  # looked up now: a caller may have replaced sys.stderr
    if resume is not None and resume.iteration >= config.total_iterations:
        raise ConfigError(f"the checkpoint is at {resume.step} env steps, already at --total_steps "
                          f"{config.total_steps}; pass a larger --total_steps to train on")
    program = build_program(config)
    run = start(program, resume, program_cache_dir, stream)
    state, agents = run.state, program.agents
    with contextlib.ExitStack() as outputs:  # closed in reverse order, whatever happens: checkpoints, then the log
        writers = loggers.open_writers(logging_options, log_dir, dataclasses.asdict(config))  # TensorBoard, W&B
        log = RunLog(log_dir, config.num_chunks * config.chunk_iterations * config.num_envs, program.spec.name,
                     show_progress, stream, writers=writers)
        outputs.callback(log.close)
        log.write_json("config.json", dataclasses.asdict(config))
        if resume is not None:
            log.add_previous_rows(resume.meta.get("rows", []))
        saving = Saving(checkpoints, program, log_dir, resume)
        outputs.callback(saving.close)  # waits for the last checkpoint to be written, even after an error or Ctrl-C
        evaluation = Evaluation(program, run.evaluate, resume)
        clock = Clock(run.iteration * config.num_envs, run.updates)
        updates_before = run.updates
        for chunk in range(run.chunk, config.num_chunks):
            state, device_metrics = run.run_chunk(state)
            agent_metrics, metrics = host_metrics(device_metrics)
            env_steps = int(metrics.iteration) * config.num_envs
            # Checked before anything reads the state: a diverged state is never evaluated or saved.
            diverged = divergence(agent_metrics, int(metrics.updates) > updates_before, agents)
            updates_before = int(metrics.updates)
            row = chunk_row(metrics, env_steps, clock)
            if diverged is not None:
                log.add_row(row, chunk_stats(log, config, agents, agent_metrics, row, None, clock))  # shown, then stop
                raise TrainingDiverged(f"training diverged at env step {env_steps:,}: {diverged}{saving.last_good()}")
            evaluated = evaluation.due(chunk)
            if evaluated:
                evaluation.run(state, chunk, env_steps, row)
            log.add_row(row, chunk_stats(log, config, agents, agent_metrics, row, evaluation if evaluated else None,
                                         clock))
            stop = chunk == config.num_chunks - 1 or (config.until_solved and evaluation.solved_at is not None)
            saving.after_chunk(chunk, state, stop, rows=log.rows, solved_at=evaluation.solved_at)
            if stop:
                break
        train_s = clock.seconds()
    summary = summarize(program, run, evaluation, saving, metrics, startup_s=startup_s, train_s=train_s,
                        resume=resume, log_dir=log_dir)
    if log_dir is not None:
        write_outputs(summary, log, log_dir, program)
    return summary


@dataclasses.dataclass
class Start:
    """Where the training loop starts: the compiled programs, the first state (new or restored), the timings."""

    state: Any
    run_chunk: Any
    evaluate: Any
    chunk: int  # the first chunk to run
    iteration: int  # vector steps already taken (a resumed run's)
    updates: int  # gradient updates already taken
    compile_s: float
    restore_s: float
    programs_loaded: bool


def start(program: Program, resume: Checkpoint | None, cache_dir: Path | None, stream: TextIO) -> Start:
    """Compiles (or loads, `jaxdqn.program_cache`) the run's programs and makes its first state, or restores `resume`'s.

    A resumed run is checked against the env and the devices, and its state restored, before compiling, so
    that a mismatch or a damaged checkpoint is a one-line error at once; the line saying it resumes follows.
    """
    communicators = parallel.Communicators(program.mesh)  # while the programs compile
    dqn = program.dqn
    obs_shape = dqn.env.observation_space(dqn.env_params).shape
    if resume is not None:
        from jaxdqn import checkpoint

        checkpoint.check_env(resume, program.spec.name, obs_shape, dqn.num_actions)
        checkpoint.check_devices(resume, program.num_devices)
    compile_start = time.time()
    restore_s, restored = 0.0, None
    if resume is not None:
        restore_start = time.time()
        restored = jax.block_until_ready(checkpoint.restore_state(resume, program.initial_state(),
                                                                  program.num_devices))
        restore_s = time.time() - restore_start
        print(resume_line(resume), file=stream, flush=True)
    init, run_chunk, evaluate, programs_loaded = program.compile(cache_dir)
    state = restored if restored is not None else init(*program.init_args())
    jax.block_until_ready(state)
    communicators.wait()  # before the first collective of the chunk; any wait counts as compile time
    compile_s = time.time() - compile_start - restore_s
    first_chunk = resume.iteration // program.config.chunk_iterations if resume is not None else 0
    iteration, updates = (int(np.max(parallel.first_device(leaf))) for leaf in (state.iteration, state.updates))
    return Start(state, run_chunk, evaluate, first_chunk, iteration, updates, compile_s, restore_s, programs_loaded)


class Clock:
    """The training loop's time, and its env steps and gradient updates per second (this process's alone)."""

    def __init__(self, start_steps: int, start_updates: int):
        self.start_time = time.time()
        self.start_steps, self.start_updates = start_steps, start_updates

    def seconds(self) -> float:
        return time.time() - self.start_time

    def steps_per_s(self, env_steps: int) -> float:
        return (env_steps - self.start_steps) / max(self.seconds(), 1e-9)

    def updates_per_s(self, updates: int, at: float) -> float:
        """Gradient updates per second from the loop's start to the time `at` (updates counted then)."""
        return (updates - self.start_updates) / max(at - self.start_time, 1e-9)


def host_metrics(device_metrics) -> tuple[Any, Any]:
    """A chunk's `ChunkMetrics` on the host: each agent's (leaves `[agents]` with several agents), and their means."""
    agent_metrics = parallel.first_device(device_metrics)
    with warnings.catch_warnings():  # before learning starts every agent's loss is NaN: no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = jax.tree.map(lambda leaf: np.nanmean(leaf) if leaf.ndim else leaf, agent_metrics)
    return agent_metrics, metrics


def chunk_row(metrics, env_steps: int, clock: Clock) -> dict[str, Any]:
    """A chunk's row of metrics.csv (its evaluation, if any, is added by `Evaluation.run`)."""
    return {
        "env_steps": env_steps,
        "updates": int(metrics.updates),
        "wall_s": time.time() - PROCESS_START,
        "sps": clock.steps_per_s(env_steps),
        "train_return": float(metrics.train_return),
        "eval_return": None,
        "loss": float(metrics.loss),
        "epsilon": float(metrics.epsilon),
    }


def chunk_stats(log: RunLog, config: TrainConfig, agents: list[population.Agent], agent_metrics, row: dict[str, Any],
                evaluation: Evaluation | None, clock: Clock) -> loggers.ChunkStats | None:
    """What the run's TensorBoard and W&B writers log beyond the chunk's `row`, per agent (None when the run has
    no writers). `evaluation`: the evaluation of this chunk, or None when it did not evaluate.
    """
    if not log.writers:
        return None

    def per_agent(values) -> list[float]:
        return np.atleast_1d(np.asarray(values, np.float64)).tolist()

    names = ["train_return", "train_length", "loss", "epsilon"]
    if getattr(agent_metrics, "q_mean", None) is not None:  # recorded by chunks that compute it
        names.append("q_mean")
    values = {name: per_agent(getattr(agent_metrics, name)) for name in names}
    updates = per_agent(agent_metrics.updates)
    values["learning_rate"] = learning_rates(config, agents, updates)
    if evaluation is not None and evaluation.last is not None:
        returns, lengths, _ = evaluation.last
        values["eval_return"] = returns.reshape(len(agents), -1).mean(axis=1).tolist()
        values["eval_length"] = lengths.reshape(len(agents), -1).mean(axis=1).tolist()
    updates_per_s = clock.updates_per_s(int(max(updates)), at=PROCESS_START + row["wall_s"])  # as the row's sps
    return loggers.ChunkStats(values, [agent.label for agent in agents], updates_per_s)


def learning_rates(config: TrainConfig, agents: list[population.Agent], updates: list[float]) -> list[float]:
    """Each agent's learning rate for its next gradient update, after `updates` updates: its `--lr` (or its
    swept lr), annealed linearly to 0 over the run's updates with `--lr_anneal` (the optimizer's schedule)."""
    rates = [dict(agent.point).get("lr", config.lr) for agent in agents]
    if not config.lr_anneal:
        return rates
    total_updates = config.total_updates
    return [rate * min(max(1.0 - count / total_updates, 0.0), 1.0) for rate, count in zip(rates, updates)]


class Evaluation:
    """The greedy evaluations: every `eval_every_chunks` chunks and after the last; when the run (and each
    agent of a population) first reached the env's solved threshold."""

    def __init__(self, program: Program, evaluate, resume: Checkpoint | None):
        self.config, self.agents, self.threshold = program.config, program.agents, program.spec.solved_threshold
        self._evaluate = evaluate
        self._seed = np.int32(self.config.seed + 1)  # evaluation `index` uses the key fold_in(key(seed + 1), index)
        # (env steps, seconds from the start of the process that solved it: an earlier one when solved before a resume)
        self.solved_at: tuple[int, float] | None = None
        if resume is not None and resume.meta.get("solved_at"):
            self.solved_at = tuple(resume.meta["solved_at"])
        self.agent_solved: list[int | None] = [None] * len(self.agents)
        self.seconds = 0.0
        self.last: tuple[np.ndarray, np.ndarray, int] | None = None  # returns, lengths [(agents,) episodes], env steps

    def due(self, chunk: int) -> bool:
        return (chunk + 1) % self.config.eval_every_chunks == 0 or chunk == self.config.num_chunks - 1

    def run(self, state, chunk: int, env_steps: int, row: dict[str, Any]) -> None:
        """Evaluates `state`'s greedy policy after `chunk`; adds its mean return (and each agent's) to `row`."""
        eval_start = time.time()
        returns, lengths = self._evaluate(parallel.first_device_block(state.params), self._seed, np.int32(chunk))
        returns, lengths = np.asarray(returns), np.asarray(lengths)  # [(agents,) episodes]
        threshold = self.threshold
        if len(self.agents) > 1:
            row["eval_return_agents"] = returns.mean(axis=1).tolist()
            self.agent_solved = [steps if steps is not None or threshold is None or mean < threshold else env_steps
                                 for steps, mean in zip(self.agent_solved, row["eval_return_agents"])]
        self.seconds += time.time() - eval_start
        self.last = (returns, lengths, env_steps)
        row["eval_return"] = float(returns.mean())
        if self.solved_at is None and threshold is not None and returns.mean() >= threshold:
            self.solved_at = (env_steps, time.time() - PROCESS_START)


class Saving:
    """The run's checkpoints (`jaxdqn.checkpoint.Checkpointer`): every `options.frequency` chunks and when the run
    stops; with `options` None, nothing is saved."""

    def __init__(self, options: CheckpointOptions | None, program: Program, log_dir: Path | None,
                 resume: Checkpoint | None):
        self.options, self.resume, self.saver = options, resume, None
        if options is not None:
            from jaxdqn import checkpoint

            dqn = program.dqn
            self.saver = checkpoint.Checkpointer(
                options, program.config, num_devices=program.num_devices,
                obs_shape=dqn.env.observation_space(dqn.env_params).shape, num_actions=dqn.num_actions,
                log_dir=log_dir, resume=resume)

    def after_chunk(self, chunk: int, state, stop: bool, rows: list[dict[str, Any]],
                    solved_at: tuple[int, float] | None) -> None:
        if self.saver is not None and ((chunk + 1) % self.saver.options.frequency == 0 or stop):
            self.saver.save(state, rows=rows, solved_at=solved_at)

    def close(self) -> None:
        if self.saver is not None:
            self.saver.close()

    def last_good(self) -> str:
        return last_good_checkpoint(self.saver, self.resume)

    def summary(self) -> dict[str, Any]:
        saver = self.saver
        return {
            "checkpoint_dir": str(self.options.directory) if self.options is not None else None,
            "checkpoints_saved": len(saver.saved_steps) if saver is not None else 0,
            "last_checkpoint_step": saver.saved_steps[-1] if saver is not None else None,
            "checkpoint_blocking_s": saver.blocking_s if saver is not None else None,
            "checkpoint_final_wait_s": saver.close_s if saver is not None else None,
        }


def summarize(program: Program, run: Start, evaluation: Evaluation, saving: Saving, metrics, *, startup_s: float,
              train_s: float, resume: Checkpoint | None, log_dir: Path | None) -> dict[str, Any]:
    """The run's summary (summary.json, and the summary line's figures), from its last chunk and evaluation."""
    config, agents = program.config, program.agents
    assert evaluation.last is not None, "the last chunk is always evaluated"
    returns, lengths, env_steps = evaluation.last
    steps_trained = env_steps - run.iteration * config.num_envs
    updates_trained = int(metrics.updates) - run.updates
    summary = {
        "env": program.spec.name,
        "num_envs": config.num_envs,
        "num_devices": program.num_devices,
        "device": jax.devices()[0].device_kind,
        "total_steps": env_steps,
        "updates": int(metrics.updates),
        "startup_s": startup_s,
        "compile_s": run.compile_s,
        "train_s": train_s,
        "eval_s": evaluation.seconds,
        "wall_s": time.time() - PROCESS_START,
        "sps": steps_trained / train_s,
        "updates_per_s": updates_trained / train_s,
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_return_min": float(returns.min()),
        "eval_return_max": float(returns.max()),
        "eval_length_mean": float(lengths.mean()),
        "eval_episodes": config.eval_episodes,
        "solved_threshold": evaluation.threshold,
        "steps_trained": steps_trained,
        "steps_to_solve": evaluation.solved_at[0] if evaluation.solved_at else None,
        # from the start of the process that solved it: an earlier one when solved before a resume
        "seconds_to_solve_from_start": evaluation.solved_at[1] if evaluation.solved_at else None,
        "seed": config.seed,
        "resumed_from_step": resume.step if resume is not None else None,
        "restore_s": run.restore_s,
        **saving.summary(),
        "num_agents": len(agents),
        "programs_loaded": run.programs_loaded,
        "jax_version": jax.__version__,
        "log_dir": str(log_dir) if log_dir is not None else None,
    }
    if len(agents) > 1:
        summary.update(population.summarize(config, agents, returns, evaluation.agent_solved, log_dir))
    return summary


def write_outputs(summary: dict[str, Any], log: RunLog, log_dir: Path, program: Program) -> None:
    """The run's last outputs: the learning curve and summary.json (an earlier summary.json is kept, renamed)."""
    plot_learning_curve(log.rows, log_dir / "learning_curve.png", program.spec.name, program.spec.solved_threshold)
    summary["wall_s"] = time.time() - PROCESS_START
    previous = keep_previous_summary(log_dir)
    summary["previous_summary"] = previous.name if previous is not None else None
    log.write_json("summary.json", summary)


def divergence(metrics, learned: bool, agents: list[population.Agent]) -> str | None:
    """Why a chunk diverged (a non-finite loss or online parameters), or None if it did not.

    `metrics`: the chunk's `ChunkMetrics` on the host, each leaf `[agents]` with several agents;
    `learned`: whether the chunk took gradient updates (its loss is NaN when it took none).
    """
    losses = np.atleast_1d(metrics.loss)
    bad_loss = ~np.isfinite(losses) if learned else np.zeros(losses.shape, bool)
    bad = bad_loss | ~np.atleast_1d(metrics.params_finite)
    if not bad.any():
        return None
    index = int(np.argmax(bad))  # the first diverged agent
    reason = f"the loss is {losses[index]}" if bad_loss[index] else "the online parameters are not finite"
    if len(agents) == 1:
        return reason
    return f"agent {agents[index].label} ({int(bad.sum())} of {len(agents)} agents diverged): {reason}"


def last_good_checkpoint(saver, resume: Checkpoint | None) -> str:
    """The error's note on the latest checkpoint saved before divergence (every saved one was finite)."""
    if saver is None:
        return ""
    if saver.saved_steps:
        return f" (last good checkpoint: step {saver.saved_steps[-1]:,} in {saver.options.directory})"
    if resume is not None:
        return f" (last good checkpoint: step {resume.step:,} in {resume.directory})"
    return " (no checkpoint saved yet)"


def resume_line(resume: Checkpoint) -> str:
    """The line a resumed run prints on stderr once its checkpoint has restored."""
    saved_at = resume.meta.get("saved_at")  # absent from checkpoints written before it was recorded
    when = saved_at.replace("T", " ") if saved_at else f"step {resume.step}"
    return f"jaxdqn.train: resuming {resume.directory} from env step {resume.step:,} (checkpoint of {when})"


def checkpoint_options(args: argparse.Namespace, resume: Checkpoint | None) -> CheckpointOptions | None:
    """The run's checkpoint settings from the flags (a resumed run inherits its own), or None: no saving."""
    flags = vars(args)
    directory = flags.get("save_model") or (resume.directory if resume is not None else None)
    if directory is None:
        for name in ("checkpoint_frequency", "keep_checkpoints", "save_buffer"):
            if name in flags:
                raise ConfigError(f"--{name} needs --save_model (or --load_model)")
        return None
    from jaxdqn.checkpoint import CheckpointOptions

    saved = resume.meta if resume is not None else {}
    return CheckpointOptions(
        directory=Path(directory),
        frequency=flags.get("checkpoint_frequency", saved.get("checkpoint_frequency", 10)),
        keep=flags.get("keep_checkpoints", saved.get("keep_checkpoints", 3)),
        save_buffer=flags.get("save_buffer", saved.get("buffer_saved", False)),
        overwrite=flags.get("overwrite", False),
    ).validate()


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The run's config from the flags, over the env's defaults, or over `base` (a resumed run's config).

    With `--config FILE` (a run's config.json: `jaxdqn.cli.read_config_file`), the file's settings come between:
    the flags given override them, and the env's defaults fill only what the file lacks.
    """
    flags = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(TrainConfig)}
    if getattr(args, "config", None) is not None:
        flags = {**read_config_file(args.config), **{name: value for name, value in flags.items() if value is not None}}
    spec = get_spec(flags.get("env") or (base.env if base is not None else TrainConfig.env))
    return build_config(flags, spec, base)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jaxdqn.train [FLAGS]` (also `jaxdqn train`, `jaxdqn-train`); returns the exit status."""
    args = make_train_parser().parse_args(argv)
    log_dir = None  # named by an error writing the outputs
    try:
        distributed.initialize(args)
        main_process = distributed.is_main_process()
        flags = vars(args)
        preflight.check_no_empty_values(flags)  # --env '', --save_model '' ... would silently mean a default
        logging_options = LoggingOptions(args.tensorboard, args.wandb).check_available()  # a missing extra
        if args.config is not None and "load_model" in flags:
            raise ConfigError("--config and --load_model do not combine: a resumed run keeps its checkpoint's "
                              "config (flags given with --load_model change it)")
        resume = None
        if "load_model" in flags:
            from jaxdqn import checkpoint

            resume = checkpoint.find(args.load_model, flags.get("load_step"))
            preflight.check_checkpoint_env(resume.config.env, args.env, args.trust_checkpoint_code)
        elif "load_step" in vars(args):
            raise ConfigError("--load_step needs --load_model")
        config = config_from_args(args, base=resume.config if resume is not None else None)
        if resume is not None:
            checkpoint.check_resume_config(resume.config, config)
        saving = checkpoint_options(args, resume)
        if (saving is not None or resume is not None) and jax.process_count() > 1:
            raise ConfigError("--save_model and --load_model are not supported with several processes yet")
        if (saving is not None or resume is not None) and (config.num_seeds > 1 or config.sweep):
            raise ConfigError("--save_model and --load_model are not supported with --num_seeds > 1 or --sweep yet")
        if saving is not None:
            from jaxdqn import checkpoint

            checkpoint.check_save_dir(saving.directory, overwrite=saving.overwrite, resume=resume)
            saving_flag = "--save_model" if "save_model" in flags else "--load_model"
            preflight.check_writable(saving.directory, saving_flag,
                                     "" if "save_model" in flags else "; pass --save_model with a writable folder")
        own_log_dir = resume.meta.get("log_dir") if resume is not None else None
        log_dir = config.log_dir or own_log_dir
        log_dir = Path(log_dir) if log_dir else None  # None: a new runs/<env>-<time> folder
        overwrite = flags.get("overwrite", False)
        if main_process:
            preflight.check_log_dir(log_dir or Path("runs"), overwrite=overwrite or log_dir is None, own=own_log_dir)
        compile_cache = None if args.no_compile_cache else args.compile_cache
        enable_compile_cache(compile_cache)  # before anything could compile
        check_devices_and_memory(config)
        with contextlib.ExitStack() as claims:  # each output folder is this run's alone until it ends
            if saving is not None:
                claims.enter_context(preflight.claim_dir(saving.directory, saving_flag))
            if main_process:  # process 0 alone writes the log folder
                log_dir = claims.enter_context(preflight.claim_dir(
                    log_dir or preflight.default_log_dir(config.env), "--log_dir", unique=log_dir is None))
                preflight.check_log_dir(log_dir, overwrite=overwrite, own=own_log_dir)  # again, now that it is ours
            # Every process trains; process 0 alone shows progress, writes the outputs and prints.
            summary = train(config, log_dir=log_dir if main_process else None,
                            show_progress=main_process and not args.quiet, checkpoints=saving, resume=resume,
                            program_cache_dir=Path(compile_cache) / "programs" if compile_cache else None,
                            logging_options=logging_options)
    except ConfigError as error:
        print(f"jaxdqn.train: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output could not be written: a full disk, a folder made read-only or removed
        reason = one_line(error)
        if error.errno is not None:  # the OS's own words: say what was being written
            reason = f"writing the run's outputs (log folder {log_dir}) failed: {reason}"
        print(f"jaxdqn.train: error: {reason}", file=sys.stderr)
        return 1
    except TrainingDiverged as error:
        if main_process:
            print(f"jaxdqn.train: error: {error}", file=sys.stderr)
        return 3
    if main_process:
        print(summary_line(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
