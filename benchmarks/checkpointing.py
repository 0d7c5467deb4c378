"""What Orbax checkpointing costs: training throughput with and without `--save_model`, save and restore times.

    python -m benchmarks.checkpointing --out results/checkpointing_h100 --machine "1x H100" [train flags]

Throughput: the same configuration (the trainer's defaults, or any `jaxdqn.train` flags given) is
trained without checkpoints, with `--save_model` at the default frequency (every 10 chunks and at
the end), and with `--save_model --save_buffer`, in turn, `--repeats` times; env steps per second
are the trainer's own (`summary.json`'s `sps`: training time without compilation), the best of the
repeats. Times: once the replay buffer is full, the state is saved `--timing_repeats` times with and
without the buffer: the time `save` blocks the training loop (the copy to host memory), the time
until the checkpoint is fully written, its size, the time to restore the whole training state and
to restore only the parameters (what `jaxdqn.evaluate` reads); medians are reported. Results go to
`<out>.json` and a markdown table to `<out>.md`. Runs on JAX's default devices, which the results record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import checks
from benchmarks.machine import cpu_model, default_out, report_written
from jaxdqn import checkpoint
from jaxdqn.cli import add_config_flags
from jaxdqn.config import TrainConfig
from jaxdqn.errors import OneLineParser
from jaxdqn.registry import ConfigError
from jaxdqn.train import (
    DEFAULT_COMPILE_CACHE,
    build_program,
    config_from_args,
    enable_compile_cache,
    train,
)

MODES = {  # name: (save checkpoints, save the buffer)
    "no checkpoints": (False, False),
    "--save_model": (True, False),
    "--save_model --save_buffer": (True, True),
}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def throughput(config: TrainConfig, repeats: int, scratch: Path) -> list[dict[str, Any]]:
    """Trains `config` in each mode, `repeats` times, alternating modes; one row per run."""
    rows = []
    for repeat in range(repeats):
        for mode, (save, save_buffer) in MODES.items():
            directory = scratch / f"run{repeat}-{len(rows)}"
            options = checkpoint.CheckpointOptions(directory, save_buffer=save_buffer) if save else None
            with open(os.devnull, "w") as quiet:
                summary = train(config, log_dir=None, show_progress=False, stream=quiet, checkpoints=options)
            rows.append({
                "mode": mode, "repeat": repeat, "sps": summary["sps"], "train_s": summary["train_s"],
                "compile_s": summary["compile_s"], "checkpoints_saved": summary["checkpoints_saved"],
                "checkpoint_blocking_s": summary["checkpoint_blocking_s"],
                "checkpoint_final_wait_s": summary["checkpoint_final_wait_s"],
                "checkpoint_mb": folder_bytes(directory / str(summary["last_checkpoint_step"])) / 1e6 if save else None,
                "eval_return_mean": summary["eval_return_mean"],
            })
            print(f"{mode}: {summary['sps']:,.0f} env steps/s, {summary['checkpoints_saved']} checkpoints, "
                  f"blocked {summary['checkpoint_blocking_s'] or 0:.3f}s of {summary['train_s']:.1f}s", flush=True)
            shutil.rmtree(directory, ignore_errors=True)
    return rows


def save_restore_times(config: TrainConfig, repeats: int, scratch: Path) -> list[dict[str, Any]]:
    """Save (blocking and until written), restore (state, params only) times of a trained state.

    The state is trained until its replay buffer is full, so that the buffer's size on disk is its real one.
    """
    program = build_program(config)
    state = program.init(config.seed, config.hparams)
    for _ in range(max(1, -(-config.buffer_rows // config.chunk_iterations))):
        state, _ = program.run_chunk(state)
    template = program.init(config.seed + 1, config.hparams)
    dqn = program.dqn
    obs_shape = dqn.env.observation_space(dqn.env_params).shape
    abstract_params = jax.eval_shape(dqn.network.init, jax.random.key(0), jnp.zeros((1, *obs_shape), jnp.float32))
    jax.block_until_ready((state, template))
    rows = []
    for save_buffer in (False, True):
        times: dict[str, list[float]] = {"save_blocking_s": [], "save_written_s": [], "restore_state_s": [],
                                         "restore_params_s": []}
        size = 0
        for repeat in range(repeats):
            directory = scratch / f"timing-{save_buffer}-{repeat}"
            saver = checkpoint.Checkpointer(checkpoint.CheckpointOptions(directory, save_buffer=save_buffer), config,
                                            num_devices=program.num_devices, obs_shape=obs_shape,
                                            num_actions=dqn.num_actions)
            start = time.perf_counter()
            step = saver.save(state, rows=[], solved_at=None)
            times["save_blocking_s"].append(time.perf_counter() - start)
            saver.close()
            times["save_written_s"].append(time.perf_counter() - start)
            size = folder_bytes(directory / str(step))
            found = checkpoint.find(directory)
            start = time.perf_counter()
            jax.block_until_ready(checkpoint.restore_state(found, template, program.num_devices))
            times["restore_state_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(checkpoint.restore_params(found, abstract_params))
            times["restore_params_s"].append(time.perf_counter() - start)
            shutil.rmtree(directory, ignore_errors=True)
        row = {"buffer": save_buffer, "checkpoint_mb": size / 1e6, "repeats": repeats,
               **{name: statistics.median(values) for name, values in times.items()}, "all": times}
        rows.append(row)
        print(f"{'with' if save_buffer else 'without'} buffer: {row['checkpoint_mb']:.2f} MB, save blocks "
              f"{row['save_blocking_s'] * 1e3:.1f} ms, written in {row['save_written_s'] * 1e3:.1f} ms, restore "
              f"{row['restore_state_s'] * 1e3:.1f} ms (params only {row['restore_params_s'] * 1e3:.1f} ms)", flush=True)
    return rows


def machine(label: str | None) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    device = jax.devices()[0]
    cpu = cpu_model()
    return {"label": label or f"{jax.device_count()}x {device.device_kind}", "jax_backend": device.platform,
            "device": device.device_kind, "device_count": jax.device_count(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "orbax_checkpoint": ocp.__version__,
            "python": platform.python_version()}


def markdown(config: TrainConfig, throughput_rows: list[dict], timing_rows: list[dict], info: dict) -> str:
    chunk = config.chunk_iterations * config.num_envs
    lines = [f"Checkpointing cost on {info['label']} ({info['device_count']} {info['device']}; JAX {info['jax']}, "
             f"orbax-checkpoint {info['orbax_checkpoint']}): {config.env}, {config.num_envs:,} envs, "
             f"{config.num_chunks * chunk:,} env steps, a checkpoint every 10 chunks of {chunk:,} env steps "
             f"and at the end", "",
             "| run | env steps/s (best) | vs no checkpoints | checkpoints | loop blocked in saves (s) | "
             "training time (s) | final write wait (s) | checkpoint size (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    best = {mode: max((row for row in throughput_rows if row["mode"] == mode), key=lambda row: row["sps"])
            for mode in MODES}
    baseline = best["no checkpoints"]["sps"]
    for mode, row in best.items():
        shown = {key: f"{row[key]:.3f}" if row[key] is not None else "-"
                 for key in ("checkpoint_blocking_s", "checkpoint_final_wait_s")}
        size = f"{row['checkpoint_mb']:.2f}" if row["checkpoint_mb"] is not None else "-"
        lines.append(f"| {mode} | {row['sps']:,.0f} | {row['sps'] / baseline:.3f}x | {row['checkpoints_saved']} | "
                     f"{shown['checkpoint_blocking_s']} | {row['train_s']:.2f} | {shown['checkpoint_final_wait_s']} | "
                     f"{size} |")
    lines += ["", f"Save and restore of one state (median of {timing_rows[0]['repeats']}):", "",
              "| checkpoint | size (MB) | save: loop blocked (ms) | save: fully written (ms) | "
              "restore training state (ms) | restore parameters only (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for row in timing_rows:
        lines.append(f"| {'with' if row['buffer'] else 'without'} replay buffer | {row['checkpoint_mb']:.2f} | "
                     f"{row['save_blocking_s'] * 1e3:.1f} | {row['save_written_s'] * 1e3:.1f} | "
                     f"{row['restore_state_s'] * 1e3:.1f} | {row['restore_params_s'] * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.checkpointing", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="writes PREFIX.json and PREFIX.md (default: benchmarks/results/checkpointing_<machine>)")
    parser.add_argument("--machine", default=None, help='how to name the machine in the table, e.g. "2-core CPU"')
    parser.add_argument("--repeats", type=int, default=2, help="training runs of each mode")
    parser.add_argument("--timing_repeats", type=int, default=5, help="saves and restores timed per checkpoint kind")
    parser.add_argument("--scratch", default=None, help="folder for the checkpoints (default: a temporary folder)")
    parser.add_argument("--no_compile_cache", action="store_true", help="do not use the compilation cache")
    add_config_flags(parser, skip=("log_dir",))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "repeats", "timing_repeats")
    if args.scratch is not None and not Path(args.scratch).is_dir():
        parser.error(f"--scratch {args.scratch}: no such folder")
    try:
        config = config_from_args(args)
        build_program(config)  # what only building finds (devices, the env itself), before any run
    except ConfigError as error:
        parser.error(str(error))
    enable_compile_cache(None if args.no_compile_cache else DEFAULT_COMPILE_CACHE)
    scratch = Path(tempfile.mkdtemp(prefix="jaxdqn-ckpt-bench-", dir=args.scratch))
    try:
        throughput_rows = throughput(config, args.repeats, scratch)
        timing_rows = save_restore_times(config, args.timing_repeats, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info = machine(args.machine)
    out = Path(args.out) if args.out else default_out("checkpointing", jax.devices()[0].device_kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "config": json.loads(config.to_json()), "throughput": throughput_rows,
               "save_restore": timing_rows, "args": {key: value for key, value in vars(args).items()
                                                      if key in ("out", "machine", "repeats", "timing_repeats")}}
    out.with_name(out.name + ".json").write_text(json.dumps(payload, indent=2))
    table = markdown(config, throughput_rows, timing_rows, info)
    out.with_name(out.name + ".md").write_text(table)
    print(table)
    report_written("checkpointing", out.with_name(out.name + ".json"), out.with_name(out.name + ".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
