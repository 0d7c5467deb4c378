"""Throughput of each phase of the trainer against the environment's limit and against the classic loop.

    python -m benchmarks.throughput --env CartPole-v1 --num_envs 256:16384 --out benchmarks/results/throughput_cpu

For every power of two in the `--num_envs` range, after compiling and one warm-up call, it times on the
default device (synchronised with `jax.block_until_ready`):

- `env`: the environment alone, random actions, `lax.scan` over vector steps of `jax.vmap(env.step)`:
  the limit every other phase is measured against. Every phase draws its call's random keys (and
  here its random actions) before its loop, as the trainer draws a chunk's (`Trainer.run_chunk`);
- `act`: env + Q-network forward + epsilon-greedy + replay write, composed from the trainer's own
  functions (`Trainer.epsilon`, `Trainer.select_actions`, `env.step`, `jaxdqn.buffer.add`) in a jitted scan;
- `learn`: the learner alone, `Trainer.learn` (a scan of `updates_per_step` x `Trainer.update`) once per vector
  step on a filled buffer, with the env's default settings; its "env steps/s" is the rate the learner
  would allow if acting were free;
- `train`: the whole trainer (`run_chunk` of `jaxdqn.train.build_program`) at the env's default settings,
  learning from the first step (`learning_starts 0`);
- `train_1x128`: the same with one update of batch 128 per vector step;
- `act_learn` (with `--fusion_check`): `act` then `Trainer.learn` in one plain scan, without the trainer's
  bookkeeping (`learning_starts` selects, episode statistics, metrics): if the trainer is slower than
  the sum of its phases but this is not, the gap lies in that bookkeeping, not in fusing the phases.

It reports env steps/s, gradient updates/s, microseconds per vector step, compile time and memory, the
fused iteration against the sum of its phases measured alone (`train / (act + learn)`, the target is
<= 1.1), and the speed-up over the classic loop (`benchmarks.classic_dqn`: one Gymnasium env in Python,
numpy replay, a jitted update every 10 steps) timed in the same run. A phase that runs out of device
memory is reported as OOM (and not tried at larger sizes). Outputs (`--out`, by default
`benchmarks/results/throughput_<machine>`): `<out>.json`, `<out>.md` (both rewritten after every size,
so an interrupted run keeps what it measured) and `<out>.png`.
`--plot_only` re-renders the markdown and the figure from an existing `<out>.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import checks
from benchmarks.machine import cpu_model, default_out, report_written
from jaxdqn.errors import OneLineParser, one_line

PHASES = ("env", "act", "learn", "train", "train_1x128", "act_learn")  # act_learn only with --fusion_check
PHASE_LABELS = {
    "env": "env only (random actions): the limit",
    "act": "acting: env + Q forward + ε-greedy + replay write",
    "learn": "learner alone (updates of one vector step)",
    "train": "training, defaults",
    "train_1x128": "training, 1 update of 128 / vector step",
    "act_learn": "acting + learner in one plain scan (no trainer bookkeeping)",
}
DEFAULT_RANGE = {"gpu": "256:1048576", "cpu": "256:16384"}


def parse_range(spec: str) -> list[int]:
    """'256:4096' -> [256, 512, 1024, 2048, 4096]; a single power of two is a range of one."""
    low_text, _, high_text = spec.partition(":")
    try:
        low, high = int(low_text), int(high_text or low_text)
    except ValueError:
        raise ValueError(f"--num_envs must be LOW:HIGH powers of two such as 256:16384, got {spec!r}") from None
    for value in (low, high):
        if value < 1 or value & (value - 1):
            raise ValueError(f"--num_envs bounds must be powers of two, got {value} in {spec!r}")
    if low > high:
        raise ValueError(f"--num_envs range {spec!r} is empty (LOW > HIGH)")
    return [2 ** exponent for exponent in range(int(math.log2(low)), int(math.log2(high)) + 1)]


# Measuring ------------------------------------------------------------------------------------


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def memory_bytes(compiled) -> int | None:
    """Device memory the compiled program needs: arguments + outputs (less donated aliases) + temporaries."""
    try:
        stats = compiled.memory_analysis()
        return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                   + stats.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None


def peak_bytes_in_use() -> int | None:
    """The process's running peak of device memory in use (null on backends without memory stats)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def time_phase(step: Callable, carry: Any, iterations: int, min_seconds: float, repeats: int,
               returns_metrics: bool = False) -> tuple[dict, Any]:
    """Compiles `step(carry) -> carry` (a jitted scan of `iterations` vector steps) and times it.

    With `returns_metrics`, `step` returns `(carry, metrics)`, as the trainer's `run_chunk` does.
    After one warm-up call, `repeats` rounds each chain enough calls to last about
    `min_seconds / repeats` (dispatch is asynchronous, so the calls pipeline) and block once; the best
    round gives the time per vector step (best: other processes only ever slow a round down).
    """
    import jax

    started = time.perf_counter()
    compiled = step.lower(carry).compile()
    compile_s = time.perf_counter() - started
    program_bytes = memory_bytes(compiled)
    if returns_metrics:
        run_chunk = compiled
        compiled = lambda carry: run_chunk(carry)[0]  # the metrics are computed, not kept
    started = time.perf_counter()
    carry = jax.block_until_ready(compiled(carry))
    warmup_s = time.perf_counter() - started
    calls = max(1, math.ceil(min_seconds / repeats / max(warmup_s, 1e-6)))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            carry = compiled(carry)
        carry = jax.block_until_ready(carry)
        best = min(best, (time.perf_counter() - started) / calls)
    return {"us_per_iteration": best / iterations * 1e6, "compile_s": compile_s, "calls_per_round": calls,
            "program_bytes": program_bytes}, carry


@dataclasses.dataclass
class Setup:
    """What every phase of one size shares: the trainer's config, env, network and pure functions."""

    config: Any  # jaxdqn.config.TrainConfig
    dqn: Any  # jaxdqn.agent.Trainer on one device, without collectives


def make_config(env_name: str, num_envs: int, iterations: int, min_buffer_rows: int, **overrides):
    """The env's default TrainConfig, learning from the first step, one jitted chunk = `iterations`."""
    from jaxdqn.config import build_config
    from jaxdqn.registry import get_spec

    # The learner and a preset are set through build_config, which applies a preset's flags.
    base = build_config({key: overrides.pop(key) for key in ("learner", "preset") if key in overrides},
                        get_spec(env_name))
    values = {"num_envs": num_envs, "learning_starts": 0, "chunk_steps": iterations * num_envs,
              "total_steps": iterations * num_envs, "eval_frequency": iterations * num_envs, "num_devices": 1,
              "buffer_size": max(base.buffer_size, min_buffer_rows * num_envs)}
    values.update(overrides)
    return dataclasses.replace(base, **values).validate()


def make_setup(config) -> Setup:
    from jaxdqn.agent import build_trainer

    return Setup(config, build_trainer(config)[1])


def env_only(setup: Setup, iterations: int):
    """(jitted step, initial carry) of `iterations` vector steps of the env with random actions."""
    import jax
    import jax.numpy as jnp

    dqn, num_envs = setup.dqn, setup.config.num_envs
    batch_step = jax.vmap(dqn.env.step, in_axes=(0, 0, 0, None))

    def run(carry):
        def body(carry, step):
            env_state, checksum = carry
            action, env_keys = step
            obs, env_state, reward, _, _, _ = batch_step(env_keys, env_state, action, dqn.env_params)
            # Consume the observations, or XLA drops their computation (a trainer feeds them to its network).
            return (env_state, checksum + reward.sum() + jnp.sum(obs.astype(jnp.float32))), None

        # The call's random actions and env keys drawn up front, the keys as `Trainer.run_chunk` draws a chunk's.
        env_state, key, checksum = carry
        key, action_key, call_key = jax.random.split(key, 3)
        actions = jax.random.randint(action_key, (iterations, num_envs), 0, dqn.num_actions, jnp.int32)
        env_keys = jax.vmap(dqn.step_keys)(jax.random.split(call_key, iterations)).env
        env_state, checksum = jax.lax.scan(body, (env_state, checksum), (actions, env_keys))[0]
        return env_state, key, checksum

    reset_key, key = jax.random.split(jax.random.key(setup.config.seed))
    _, env_state = jax.jit(jax.vmap(dqn.env.reset, in_axes=(0, None)))(jax.random.split(reset_key, num_envs),
                                                                       dqn.env_params)
    return jax.jit(run, donate_argnums=0), (env_state, key, jnp.float32(0))


def act_once(dqn, state, keys):
    """One vector step of acting and storing, as `Trainer.train_step` does it (without episode statistics);
    `keys`: the step's `jaxdqn.agent.StepKeys`."""
    import jax
    import jax.numpy as jnp

    from jaxdqn import buffer as replay

    action = dqn.select_actions(state.params, state.obs, keys.act, dqn.epsilon(state.iteration, state.hparams),
                                slab=state.slab)
    next_obs, env_state, reward, terminated, truncated, info = jax.vmap(dqn.env.step, in_axes=(0, 0, 0, None))(
        keys.env, state.env_state, action, dqn.env_params)
    # Store what the trainer's buffer stores (`truncated` only where it keeps it, for n-step returns).
    extra = {"truncated": truncated} if dqn.config.n_step > 1 else {}
    transition = replay.Transition(obs=state.obs, action=action, reward=reward.astype(jnp.float32),
                                   next_obs=info["final_observation"], terminated=terminated, **extra)
    return state.replace(buffer=replay.add(state.buffer, transition), env_state=env_state, obs=next_obs,
                         iteration=state.iteration + 1)


def acting(setup: Setup, iterations: int, learn: bool = False):
    """(jitted step, initial TrainerState) of `iterations` vector steps of acting and storing.

    With `learn`, each vector step is followed by `Trainer.learn` in the same scan: the two phases fused
    plainly, without the trainer's bookkeeping (the `learning_starts` selects, episode statistics and
    metrics), which locates any gap between the trainer and the sum of its phases.
    """
    import jax

    dqn = setup.dqn

    def body(state, keys):
        state = act_once(dqn, state, keys)
        if learn:
            state, _ = dqn.learn(state, keys.learn)
        return state, None

    def run(state):  # the call's keys drawn up front, as `Trainer.run_chunk` draws a chunk's
        key, call_key = jax.random.split(state.key)
        keys = jax.vmap(dqn.step_keys)(jax.random.split(call_key, iterations))
        return jax.lax.scan(body, state.replace(key=key), keys)[0]

    state = jax.jit(dqn.init)(jax.random.key(setup.config.seed), setup.config.hparams)
    if dqn.backend.uses_slab:  # as the trainer's chunks carry it (`Trainer.run_chunk`)
        state = jax.jit(dqn.backend.to_slab)(state)
    return jax.jit(run, donate_argnums=0), state


def learner(setup: Setup, iterations: int, state):
    """(jitted step, TrainerState) of `iterations` x `Trainer.learn` (updates_per_step updates) on a full buffer."""
    import jax

    dqn = setup.dqn

    def run(state):
        def body(state, learn_key):
            state, _ = dqn.learn(state, learn_key)
            return state, None

        key, call_key = jax.random.split(state.key)  # the call's keys drawn up front, as `Trainer.run_chunk` does
        return jax.lax.scan(body, state.replace(key=key), jax.random.split(call_key, iterations))[0]

    # Sample from every row, as a full buffer does (the rows the acting phase did not reach hold zeros).
    state = state.replace(buffer=state.buffer.replace(filled_rows=jax.numpy.int32(state.buffer.rows)))
    return jax.jit(run, donate_argnums=0), state


def trainer(config):
    """(jitted run_chunk, initial state) of the real trainer, built as `jaxdqn.train` builds it."""
    import jax

    from jaxdqn.train import build_program

    program = build_program(config)
    return program.run_chunk, program.init(config.seed, config.hparams)


def trainer_flags(args) -> dict[str, Any]:
    """The TrainConfig fields that the benchmark's own flags set for every trainer it builds."""
    flags = {"fused_acting": False} if args.no_fused_acting else {}
    flags |= {"fused_update": False} if args.no_fused_update else {}
    return flags | ({"preset": "rainbow"} if args.learner == "rainbow" else {"learner": args.learner})


def updates_per_iteration(phase: str, config) -> float:
    """Gradient updates per timed iteration: none while only acting; `Trainer.learn`'s updates where every
    iteration learns; for the real trainer, those over its `learn_interval` (few envs learn every k-th step)."""
    if phase in ("env", "act"):
        return 0
    if phase.startswith("train"):
        return config.vector_step_updates / config.learn_interval
    return config.vector_step_updates


def measure_size(env_name: str, num_envs: int, args, skip: set[str]) -> dict[str, dict]:
    """Times every phase at one size; phases in `skip` (OOM at a smaller size) are not tried."""
    results: dict[str, dict] = {}
    default = make_config(env_name, num_envs, args.iterations, args.min_buffer_rows, **trainer_flags(args))
    one_update = make_config(env_name, num_envs, args.iterations, args.min_buffer_rows, updates_per_step=1,
                             batch_size=128, **trainer_flags(args))
    setup = make_setup(default)
    acting_state = None

    def attempt(phase: str, build: Callable[[], tuple[Callable, Any]], config) -> None:
        nonlocal acting_state
        if phase in skip:
            results[phase] = {"status": "OOM", "note": "not tried: OOM at a smaller size"}
            return
        try:
            step, carry = build()
            timing, carry = time_phase(step, carry, args.iterations, args.min_seconds, args.repeats,
                                       returns_metrics=phase.startswith("train"))
            if phase == "act":
                acting_state = carry  # its buffer feeds the learner
            del carry
        except Exception as error:  # only out-of-memory is reported rather than raised
            if not is_out_of_memory(error):
                raise
            results[phase] = {"status": "OOM", "note": str(error).splitlines()[0][:200]}
            gc.collect()
            return
        seconds = timing["us_per_iteration"] * 1e-6
        updates = updates_per_iteration(phase, config)
        results[phase] = {
            "status": "ok",
            "env_steps_per_s": num_envs / seconds,
            "updates_per_s": updates / seconds,
            **timing,
            "peak_bytes_in_use": peak_bytes_in_use(),
            "updates_per_step": updates,
            "batch_size": config.batch_size if updates else None,
            "buffer_size": config.buffer_rows * num_envs if phase != "env" else None,
        }

    attempt("env", lambda: env_only(setup, args.iterations), default)
    attempt("act", lambda: acting(setup, args.iterations), default)
    if acting_state is not None:
        attempt("learn", lambda: learner(setup, args.iterations, acting_state), default)
    else:
        results["learn"] = {"status": results["act"]["status"], "note": "needs the acting phase's buffer"}
    acting_state = None
    gc.collect()
    attempt("train", lambda: trainer(default), default)
    gc.collect()
    attempt("train_1x128", lambda: trainer(one_update), one_update)
    gc.collect()
    if args.fusion_check:
        attempt("act_learn", lambda: acting(setup, args.iterations, learn=True), default)
        gc.collect()
    return results


def summarise(row: dict, classic_sps: float | None) -> None:
    """Adds the derived figures of one size: % of the env limit, fused / sum, speed-up over the classic loop."""
    phases = row["phases"]
    ok = {name: phase for name, phase in phases.items() if phase.get("status") == "ok"}
    if "env" in ok:
        for phase in ok.values():
            phase["fraction_of_env_limit"] = phase["env_steps_per_s"] / ok["env"]["env_steps_per_s"]
    row["fused_over_sum"] = row["plain_fused_over_sum"] = None
    if {"act", "learn"} <= set(ok):
        alone = ok["act"]["us_per_iteration"] + ok["learn"]["us_per_iteration"]
        if "train" in ok:
            row["fused_over_sum"] = ok["train"]["us_per_iteration"] / alone
        if "act_learn" in ok:
            row["plain_fused_over_sum"] = ok["act_learn"]["us_per_iteration"] / alone
    for phase in ok.values():
        phase["speedup_over_classic"] = phase["env_steps_per_s"] / classic_sps if classic_sps else None


# Reporting ------------------------------------------------------------------------------------


def machine_info(label: str | None) -> dict[str, Any]:
    import jax
    import jaxlib

    device = jax.devices()[0]
    cpu = cpu_model()
    driver = None
    if device.platform == "gpu":
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    check=False, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    if label is None:
        label = f"{os.cpu_count()}-core CPU" if device.platform == "cpu" else device.device_kind
    return {"machine": label, "platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "driver": driver, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _si(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}×" if value >= 10 else f"{value:.2g}×"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2 ** 20:,.0f}"


def markdown(report: dict) -> str:
    info, settings, classic = report["machine"], report["settings"], report.get("classic")
    rows = report["sizes"]
    learner = settings.get("learner", "dqn")
    title = f"# Throughput on {info['machine']}: {settings['env']}" + (f", {learner}" if learner != "dqn" else "")
    lines = [title, "",
             ("" if info["platform"] == "cpu" else
              f"{info['device_kind']} ({info['platform']}, driver {info['driver'] or 'n/a'}); ")
             + f"CPU {info['cpu']}, {info['cpu_count']} cores; JAX {info['jax']}; {info['date']}.",
             (f"Default training: {settings['train']['updates_per_step']:g} updates of "
              f"{settings['train']['batch_size']} per vector step at {settings['num_envs'][0]} envs (they follow "
              f"num_envs through the replay ratio); `learning_starts 0`; buffer = max(default, "
              f"{settings['min_buffer_rows']} x num_envs) transitions; {settings['iterations']} vector steps per "
              f"jitted call, best of {settings['repeats']} rounds after a warm-up call; one device.")]
    if report.get("note"):
        lines.append(report["note"])
    present = [name for name in PHASES if any(name in row["phases"] for row in rows)]
    check = "act_learn" in present
    headers = {"env": "env only (limit)", "act": "acting", "learn": "learner alone", "train": "training (defaults)",
               "train_1x128": "training 1×128", "act_learn": "acting + learner, plain scan"}
    ratios = ["fused / (acting + learner)"] + (["plain scan / (acting + learner)"] if check else [])
    lines += ["", "## Env steps/s by phase", "",
              "| num_envs | " + " | ".join([headers[name] for name in present] + ratios) + " | training vs classic |",
              "|" + "---:|" * (len(present) + len(ratios) + 2)]
    for row in rows:
        phases = row["phases"]
        cells = [_si(phases[name].get("env_steps_per_s")) if phases[name].get("status") == "ok"
                 else phases[name].get("status", "–") for name in present]
        cells += ["–" if row.get(key) is None else f"{row[key]:.2f}"
                  for key in ["fused_over_sum"] + (["plain_fused_over_sum"] if check else [])]
        lines.append(f"| {row['num_envs']:,} | " + " | ".join(cells) + " | "
                     + _times(phases["train"].get("speedup_over_classic")) + " |")
    if classic:
        compare = report["settings"]["compare_steps"]
        lines += ["", (f"Classic loop (`benchmarks.classic_dqn`, one Gymnasium {classic['env']} env in Python, "
                       f"numpy replay, one jitted update of {classic['config']['batch_size']} every "
                       f"{classic['config']['train_frequency']} steps, JAX on the {classic['device']}): "
                       f"{classic['env_steps_per_s']:,.0f} env steps/s over {classic['timed_steps']:,} timed steps "
                       f"({classic['seconds']:.1f} s); {compare:,} steps would take "
                       f"{classic['extrapolated_s'] / 60:,.1f} min (extrapolated).")]
        # The trainer's default num_envs, and the fastest size measured.
        default_envs = settings.get("default_num_envs")
        trained = [row for row in rows if row["phases"]["train"].get("status") == "ok"]
        fastest = max(trained, key=lambda row: row["phases"]["train"]["env_steps_per_s"], default=None)
        chosen = [row for row in trained if row["num_envs"] == default_envs and row is not fastest] + [fastest]
        for row in filter(None, chosen):
            train = row["phases"]["train"]
            lines.append(f"Training with the defaults at {row['num_envs']:,} envs"
                         f"{' (the default)' if row['num_envs'] == default_envs else ''}: {compare:,} steps in "
                         f"{compare / train['env_steps_per_s']:,.2f} s of training, "
                         f"{_times(train['speedup_over_classic'])} the classic loop's rate (compile "
                         f"{train['compile_s']:.1f} s extra).")
    lines += ["", "## Every phase", "",
              ("| num_envs | phase | env steps/s | % of env limit | updates/s | µs / vector step | compile s "
               "| program MiB | peak MiB |"), "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for name in present:
            phase = row["phases"][name]
            if phase.get("status") != "ok":
                lines.append(f"| {row['num_envs']:,} | {name} | {phase.get('status')} | | | | | | |")
                continue
            fraction = phase.get("fraction_of_env_limit")
            lines.append(
                f"| {row['num_envs']:,} | {name} | {_si(phase['env_steps_per_s'])} | "
                f"{'–' if fraction is None else f'{fraction:.1%}'} | "
                f"{_si(phase['updates_per_s']) if phase['updates_per_step'] else '–'} | "
                f"{phase['us_per_iteration']:,.1f} | {phase['compile_s']:.2f} | {_mib(phase['program_bytes'])} | "
                f"{_mib(phase['peak_bytes_in_use'])} |")
    lines += ["", "Phases: " + "; ".join(f"`{name}` = {PHASE_LABELS[name]}" for name in present) + ". "
              "The learner's env steps/s is num_envs over its time per vector step: the rate it would allow "
              "if acting were free. Program MiB: the compiled program's arguments, outputs and temporaries "
              "(XLA's memory analysis); peak MiB: the process's running peak of device memory "
              "(`peak_bytes_in_use`; – where the backend has none). Fused / (acting + learner) is the "
              "trainer's time per vector step over the sum of its phases measured alone (target ≤ 1.1)."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info, classic = report["machine"], report.get("classic")
    fig, (rates, speedups) = plt.subplots(1, 2, figsize=(13, 5.6))
    styles = {"env": {"color": "black", "linewidth": 2.5},
              "act": {"color": "tab:blue", "marker": "o"},
              "learn": {"color": "tab:gray", "marker": ".", "linestyle": "--"},
              "train": {"color": "tab:red", "marker": "s"},
              "train_1x128": {"color": "tab:orange", "marker": "^"},
              "act_learn": {"color": "tab:purple", "marker": "x", "linestyle": ":"}}
    for name in PHASES:
        points = [(row["num_envs"], row["phases"][name]) for row in report["sizes"]
                  if row["phases"].get(name, {}).get("status") == "ok"]
        if not points:
            continue
        sizes = [size for size, _ in points]
        rates.plot(sizes, [phase["env_steps_per_s"] for _, phase in points], label=PHASE_LABELS[name], **styles[name])
        if name in ("env", "act", "train", "train_1x128") and classic:
            speedups.plot(sizes, [phase["speedup_over_classic"] for _, phase in points], label=PHASE_LABELS[name],
                          **styles[name])
    if classic:
        rates.axhline(classic["env_steps_per_s"], color="tab:green", linestyle=":",
                      label=f"classic loop (1 Gymnasium env): {classic['env_steps_per_s']:,.0f}")
        speedups.axhline(1.0, color="tab:green", linestyle=":")
    for axis in (rates, speedups):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("num_envs")
        axis.grid(True, which="both", alpha=0.3)
    rates.set_ylabel("env steps / s")
    rates.set_title(f"{report['settings']['env']} on {info['machine']}")
    speedups.set_ylabel("speed-up over the classic loop (env steps/s)")
    speedups.set_title("speed-up over one Gymnasium env stepped from Python")
    if not classic:
        speedups.text(0.5, 0.5, f"no classic loop for {report['settings']['env']}\n(not a Gymnasium env)",
                      ha="center", va="center", transform=speedups.transAxes)
    # One legend under both panels, so that no curve is hidden.
    handles, labels = rates.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: Path, figure: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    if figure:
        plot(report, out.with_suffix(".png"))


# Command line ---------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1",
                        help="environment name, as jaxdqn.train's --env (default: %(default)s)")
    parser.add_argument("--learner", default="dqn", choices=("dqn", "c51", "qrdqn", "rainbow"),
                        help="the learner, as jaxdqn.train's --learner (rainbow: --preset rainbow); the fused GPU "
                             "kernels are dqn's only, the others run XLA's (default: %(default)s)")
    parser.add_argument("--num_envs", default=None, metavar="LOW:HIGH",
                        help="every power of two from LOW to HIGH (both powers of two) "
                             f"(default: {DEFAULT_RANGE['gpu']} on a GPU, {DEFAULT_RANGE['cpu']} on a CPU)")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json, PREFIX.md and PREFIX.png (default: "
                             "benchmarks/results/throughput_<machine>)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="vector steps per jitted call of every phase (default: 100 on a GPU, 16 on a CPU)")
    parser.add_argument("--min_seconds", type=float, default=None,
                        help="timed seconds per phase and size, split over --repeats rounds "
                             "(default: 0.6 on a GPU, 1.5 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds per phase and size; the best is kept (default: %(default)s)")
    parser.add_argument("--min_buffer_rows", type=int, default=4,
                        help="the replay buffer holds max(the default buffer_size, this x num_envs) transitions "
                             "(default: %(default)s)")
    parser.add_argument("--classic_steps", type=int, default=20_000,
                        help="timed env steps of the classic loop, 0 to skip it (default: %(default)s); it runs "
                             "for envs Gymnasium also has (CartPole-v1, Acrobot-v1, MountainCar-v0)")
    parser.add_argument("--compare_steps", type=int, default=3_000_000,
                        help="env steps the classic loop's time is extrapolated to (default: %(default)s, the "
                             "trainer's total_steps)")
    parser.add_argument("--machine", default=None,
                        help="machine name for the table header (default: 'N-core CPU' or the GPU's name)")
    parser.add_argument("--note", default=None, help="a line added under the table header")
    parser.add_argument("--time_budget", type=float, default=None, metavar="SECONDS",
                        help="start no new size after this many seconds (the rest is marked 'not run')")
    parser.add_argument("--fusion_check", action="store_true",
                        help="also time acting + learner fused in one plain scan, without the trainer's bookkeeping "
                             "(phase act_learn): locates a gap between the trainer and the sum of its phases")
    parser.add_argument("--no_fused_acting", action="store_true",
                        help="measure the trainer with jaxdqn.train's --no-fused_acting (XLA's kernels for acting)")
    parser.add_argument("--no_fused_update", action="store_true",
                        help="measure the trainer with jaxdqn.train's --no-fused_update (XLA's kernels for the "
                        "updates)")
    parser.add_argument("--plot_only", action="store_true", help="re-render PREFIX.md and PREFIX.png from PREFIX.json")
    return parser


def output_prefix(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    import jax

    return default_out("throughput", jax.devices()[0].device_kind)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    # Before importing JAX: a bad flag costs no start-up.
    checks.positive(parser, args, "iterations", "repeats", "min_buffer_rows", "min_seconds", "compare_steps",
                    "time_budget")
    checks.non_negative(parser, args, "classic_steps")
    try:
        sizes = parse_range(args.num_envs) if args.num_envs else None
    except ValueError as error:
        parser.error(str(error))
    if args.plot_only:
        out = output_prefix(args)
        try:
            report = json.loads(out.with_suffix(".json").read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--plot_only re-renders {out.with_suffix('.json')}, which cannot be read "
                         f"({type(error).__name__}: {one_line(error)})")
        if not isinstance(report, dict) or not {"machine", "settings", "sizes"} <= set(report):
            parser.error(f"--plot_only: {out.with_suffix('.json')} is not a report of benchmarks.throughput")
        write_outputs(report, out, figure=True)
        report_written("throughput", out.with_suffix(".md"), out.with_suffix(".png"))
        return 0
    started = time.perf_counter()
    env_name = checks.env_names(parser, [args.env])[0]
    import jax

    from benchmarks import classic_dqn
    from jaxdqn.config import build_config
    from jaxdqn.registry import get_spec

    backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    out = output_prefix(args)
    sizes = sizes or parse_range(DEFAULT_RANGE[backend])
    args.iterations = args.iterations or (100 if backend == "gpu" else 16)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.6 if backend == "gpu" else 1.5)
    default = make_config(env_name, sizes[0], args.iterations, args.min_buffer_rows, **trainer_flags(args))
    default_num_envs = build_config({}, get_spec(env_name)).num_envs  # what `jaxdqn.train` runs by default
    report: dict[str, Any] = {
        "machine": machine_info(args.machine),
        "note": args.note,
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.throughput", *(argv or sys.argv[1:])]),
        "settings": {"env": env_name, "learner": args.learner, "num_envs": sizes, "default_num_envs": default_num_envs,
                     "iterations": args.iterations, "fusion_check": args.fusion_check,
                     "min_seconds": args.min_seconds, "repeats": args.repeats,
                     "min_buffer_rows": args.min_buffer_rows, "compare_steps": args.compare_steps,
                     "train": {"updates_per_step": updates_per_iteration("train", default),
                               "batch_size": default.batch_size},
                     "train_1x128": {"updates_per_step": 1, "batch_size": 128},
                     "trainer_defaults": dataclasses.asdict(default)},
        "classic": None,
        "sizes": [],
    }
    if args.classic_steps > 0 and classic_dqn.has_gymnasium_env(env_name):  # first: an interrupted sweep keeps it
        classic = classic_dqn.run(classic_dqn.ClassicConfig(env_id=env_name), args.classic_steps)
        classic["extrapolated_s"] = args.compare_steps / classic["env_steps_per_s"]
        report["classic"] = classic
        print(f"classic loop: {classic['env_steps_per_s']:,.0f} env steps/s", flush=True)
    classic_sps = report["classic"]["env_steps_per_s"] if report["classic"] else None
    out_of_memory: set[str] = set()
    measured = [name for name in PHASES if name != "act_learn" or args.fusion_check]
    for num_envs in sizes:
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            row = {"num_envs": num_envs, "phases": {name: {"status": "not run"} for name in measured},
                   "fused_over_sum": None, "plain_fused_over_sum": None}
        else:
            row = {"num_envs": num_envs, "phases": measure_size(env_name, num_envs, args, out_of_memory)}
            summarise(row, classic_sps)
            out_of_memory |= {name for name, phase in row["phases"].items() if phase["status"] == "OOM"}
        report["sizes"].append(row)
        report["wall_s"] = time.perf_counter() - started
        write_outputs(report, out, figure=False)
        print(f"num_envs {num_envs:>9,}: " + ", ".join(
            f"{name} {row['phases'][name].get('env_steps_per_s', 0):.3g}" if row["phases"][name]["status"] == "ok"
            else f"{name} {row['phases'][name]['status']}" for name in measured)
            + "".join(f"; {key} {row[key]:.2f}" for key in ("fused_over_sum", "plain_fused_over_sum")
                      if row.get(key) is not None), flush=True)
    report["wall_s"] = time.perf_counter() - started
    write_outputs(report, out, figure=True)
    print(markdown(report))
    report_written("throughput", *(out.with_suffix(suffix) for suffix in (".json", ".md", ".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
