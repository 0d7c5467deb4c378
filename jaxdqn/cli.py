"""Every command's flags, and the `jaxdqn` command that runs them, in a module that imports no JAX.

`jaxdqn train|evaluate|check-port ...` (also `python -m jaxdqn ...`) runs the same `main` as
`python -m jaxdqn.train`, `python -m jaxdqn.evaluate` and `python -m jaxdqn.check_port`, with the same
flags and output; each command keeps its module's name in its messages (`jaxdqn.train: error: ...`).
The parsers are built here, from the stdlib, `jaxdqn.config` and `jaxdqn.errors` alone, so that
`--help` and malformed flags answer before JAX, gymnax or flax is imported (a fraction of a second
instead of several seconds), whichever way a command is started.

Bad flags are one line on stderr and exit code 2 (`jaxdqn.errors.OneLineParser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxdqn import distributed
from jaxdqn.config import TrainConfig
from jaxdqn.errors import ConfigError, OneLineParser

DEFAULT_COMPILE_CACHE = os.environ.get("JAXDQN_COMPILE_CACHE", str(Path.home() / ".cache" / "jaxdqn" / "xla"))

# `python -m jaxdqn.check_port`'s defaults; they are also `jaxdqn.check_port.check_port`'s (a test keeps the two
# equal), written here so that its --help needs no JAX.
CHECK_PORT_EPISODES = 100
CHECK_PORT_CONTRACT_ENVS = 1024


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return OneLineParser(prog=prog, description=description)


# TrainConfig's flags --------------------------------------------------------------------------

def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Adds one flag per TrainConfig field (default None, so that env defaults can fill the gaps)."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip or not field.metadata.get("cli", True):
            continue
        names = (f"--{field.name}", *field.metadata["flags"])
        help_text = field.metadata["help"]
        if field.metadata["original"]:
            help_text += " [original flag]"
        default: Any = field.default
        if isinstance(default, bool):
            parser.add_argument(*names, dest=field.name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{help_text} (default: {default})")
            continue
        if field.name == "sweep":  # repeated flags add up: --sweep lr=1e-4,1e-3 --sweep tau=0.05,1 is one grid
            parser.add_argument(*names, dest=field.name, nargs="+", action="extend", default=None,
                                metavar="KEY=V1,V2", help=f"{help_text} (default: none)")
            continue
        kind: Callable[[str], Any]
        shown: Any
        if field.name == "hidden_sizes":
            kind = _parse_sizes
            shown = ",".join(map(str, default))
        elif field.name == "env":
            kind, shown = str, default
        elif field.name == "log_dir":
            kind, shown = str, "runs/<env>-<time>"
        elif field.name == "num_devices":
            kind, shown = int, "all"
        else:
            kind, shown = type(default), default
        choices = field.metadata["choices"]
        parser.add_argument(*names, dest=field.name, type=kind, default=None, choices=choices,
                            metavar=None if choices else field.name.upper(), help=f"{help_text} (default: {shown})")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings saved in a run's config.json (`--config`): TrainConfig's fields, as JSON values.

    `path` may also be a run's log folder (its config.json is read). The file's `log_dir` is left out: a
    rerun writes to its own folder. Raises ConfigError, with one line naming the file, for a file that is
    missing or unreadable, or that is not such a config (not a JSON object, or a key no TrainConfig has).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--config {path}: a folder without a config.json; pass the config.json a run "
                              f"wrote in its log folder")
        path = path / "config.json"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a run's config.json (not text)") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"--config {path}: not a run's config.json (not JSON: {error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: not a run's config.json (a JSON object of settings), but a JSON "
                          f"{type(values).__name__}")
    unknown = sorted(set(values) - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise ConfigError(f"--config {path}: not a run's config.json: unknown keys {shown} (a config.json holds "
                          f"the settings of `jaxdqn train`, by their flag names)")
    values.pop("log_dir", None)
    return values


# jaxdqn train ------------------------------------------------------------------------------------

def make_train_parser() -> argparse.ArgumentParser:
    parser = make_parser("jaxdqn.train", "Train a Deep Q-Network on vectorized gymnax environments. "
                         "Flags marked [original flag] are those of the original PyTorch trainer.")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="rerun a saved run: every setting from FILE, the config.json a run writes in its log "
                             "folder (or that folder); flags given with it override its values. The rerun writes "
                             "to --log_dir, or a new runs/<env>-<time> folder")
    add_config_flags(parser)
    parser.add_argument("--compile_cache", default=DEFAULT_COMPILE_CACHE, metavar="DIR",
                        help="JAX persistent compilation cache folder, with the compiled programs in its "
                             "programs/ folder; each kept under 1 GiB, least recently used deleted first "
                             "(default: $JAXDQN_COMPILE_CACHE, else ~/.cache/jaxdqn/xla)")
    parser.add_argument("--no_compile_cache", action="store_true", help="do not use the compilation cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-chunk log lines")
    add_logging_flags(parser)
    add_checkpoint_flags(parser)
    distributed.add_flags(parser)
    parser.epilog = ("exit status: 0 done; 1 an output could not be written while training (a full disk; one line; "
                     "the earlier checkpoints stay); 2 bad input (one line on stderr, nothing written); 3 training diverged "
                     "(a non-finite loss or parameters; one line naming the env step; no diverged state is saved)")
    return parser


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """Where the per-chunk metrics go besides metrics.csv (`jaxdqn.loggers`); each needs an optional extra."""
    group = parser.add_argument_group("logging (each needs an optional extra; see jaxdqn.loggers)")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write the per-chunk metrics to a TensorBoard events file in the log folder "
                            "(tensorboard --logdir runs); needs the tensorboard extra: "
                            "pip install 'jaxdqn[tensorboard]'")
    group.add_argument("--wandb", metavar="PROJECT", default=None,
                       help="also log the per-chunk metrics and the config to the Weights & Biases project PROJECT, "
                            "its files in the log folder's wandb/ (WANDB_MODE=offline: no network, sync later with "
                            "`wandb sync`); needs the wandb extra: pip install 'jaxdqn[wandb]'")


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of saving and resuming; unset ones are absent from the namespace (resolved in `jaxdqn.train.checkpoint_options`)."""
    group = parser.add_argument_group("checkpoints (Orbax; see jaxdqn.checkpoint)")
    unset = argparse.SUPPRESS
    group.add_argument("--save_model", metavar="DIR", default=unset,
                       help="save checkpoints to DIR (weights, optimizer, counters, RNG, env states and the "
                            "config): every --checkpoint_frequency chunks and at the end. DIR must be new or "
                            "empty unless it is the --load_model folder or --overwrite is given, and writable "
                            "(checked before training); one run at a time writes to it")
    group.add_argument("--checkpoint_frequency", type=int, metavar="CHUNKS", default=unset,
                       help="chunks between checkpoints; one chunk is --chunk_steps env steps, so a checkpoint "
                            "every CHUNKS x chunk_steps env steps (default: 10, or the resumed run's)")
    group.add_argument("--keep_checkpoints", type=int, metavar="N", default=unset,
                       help="keep only the latest N checkpoints (default: 3, or the resumed run's)")
    group.add_argument("--save_buffer", action=argparse.BooleanOptionalAction, default=unset,
                       help="also save the replay buffer (buffer_size transitions: large). Without it a resumed "
                            "run refills an empty buffer: it acts without learning until the buffer holds "
                            "learning_starts transitions (or is full), then learns again "
                            "(default: off, or the resumed run's)")
    group.add_argument("--load_model", metavar="DIR", default=unset,
                       help="resume the run saved in DIR from its latest complete checkpoint, with its config; "
                            "flags may change settings that do not fix array shapes (e.g. --total_steps). "
                            "Checkpoints keep going to DIR (then checked writable before training) unless "
                            "--save_model names another folder. Training N env steps and resuming to 2N ends "
                            "bit-identical to 2N steps straight only with --no-lr_anneal --save_buffer: the "
                            "learning rate anneals over --total_steps, and the buffer restarts empty unless saved")
    group.add_argument("--load_step", type=int, metavar="STEP", default=unset,
                       help="resume from the checkpoint at STEP env steps instead of the latest")
    group.add_argument("--overwrite", action="store_true", default=unset,
                       help="let --save_model replace the checkpoints of another run, or, resuming from an "
                            "earlier step into the same folder, the later checkpoints (they are deleted once "
                            "this run's first checkpoint is complete; until then they wait in DIR/.replaced); "
                            "also let --log_dir reuse an earlier run's folder (its summary.json is kept as "
                            "summary.<steps>.json)")
    group.add_argument("--trust_checkpoint_code", action="store_true",
                       help="with --load_model, import the module a checkpoint's config names as its environment "
                            "(package.module:Attribute), which runs its code; without it, only if --env names "
                            "the same environment")


def before_training(argv: Sequence[str]) -> None:
    """What a training process does before its slow imports: answer --help and bad flags, set up JAX.

    Parses `argv` (exits for --help, or with one line and code 2 for a bad flag; `jaxdqn.train.main` parses
    them again), lets a run allocate only the device memory it uses (preallocating most of a GPU's memory
    slows every start, docs/performance.md "Cached start"; XLA_PYTHON_CLIENT_PREALLOCATE=true restores JAX's
    default), joins a multi-process run (`jax.distributed` must start before gymnax's import initialises a
    backend), and starts the device in the background while the trainer's modules import.
    """
    make_train_parser().parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    distributed.initialize_from_argv("jaxdqn.train", list(argv))
    import threading

    import jax

    def start_backend() -> None:
        try:
            jax.devices()
        except Exception:  # noqa: BLE001  (the main thread meets the same error, and reports it)
            pass

    threading.Thread(target=start_backend, daemon=True).start()


# jaxdqn evaluate ---------------------------------------------------------------------------------

def make_evaluate_parser() -> argparse.ArgumentParser:
    parser = make_parser("jaxdqn.evaluate", "Evaluate the greedy policy of an agent saved by "
                         "`python -m jaxdqn.train --save_model DIR`.")
    parser.formatter_class = argparse.HelpFormatter  # the defaults are in the help texts
    parser.add_argument("--load_model", required=True, metavar="DIR", help="the checkpoint folder")
    parser.add_argument("--load_step", type=int, default=None, metavar="STEP",
                        help="the checkpoint at STEP env steps (default: the latest)")
    parser.add_argument("--env", "--environment", dest="env", default=None, metavar="NAME",
                        help="environment to evaluate on (default: the checkpoint's); its observations and "
                             "actions must fit the saved network")
    parser.add_argument("--episodes", type=int, default=None, metavar="N",
                        help="greedy episodes, run in parallel (default: the run's eval_episodes)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the episodes' resets and dynamics, an int32 (default: 0)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to write the results as JSON (a folder gets eval.json; default: DIR/eval.json); "
                             "checked writable before evaluating")
    parser.add_argument("--trust_checkpoint_code", action="store_true",
                        help="import the module the checkpoint's config names as its environment "
                             "(package.module:Attribute), which runs its code; without it, only if --env names it")
    parser.add_argument("--compile_cache", default=None, metavar="DIR",
                        help="JAX persistent compilation cache folder (default: the trainer's)")
    parser.add_argument("--no_compile_cache", action="store_true", help="do not use the compilation cache")
    # Watching the agent (jaxdqn.video): with --video, greedy episodes are drawn into a file instead of evaluated.
    parser.add_argument("--video", default=None, metavar="FILE",
                        help="instead of evaluating, play greedy episodes and draw them into FILE (.gif; .mp4 with "
                             "the video extra, pip install -e \".[video]\"); writes nothing else")
    parser.add_argument("--video_episodes", type=int, default=1, metavar="N",
                        help="episodes in the video, one after another (default: 1)")
    parser.add_argument("--video_fps", type=float, default=None, metavar="FPS",
                        help="frames per second, at most 100 (default: 25, or 10 for grid games such as MinAtar)")
    parser.add_argument("--video_max_frames", type=int, default=2000, metavar="N",
                        help="frames per episode at most, the reset state included; a longer episode is cut "
                             "(default: 2000)")
    return parser


# jaxdqn check-port -------------------------------------------------------------------------------

def make_check_port_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m jaxdqn.check_port",
                           description="Check a ported JAX environment step by step against its reference simulator.")
    parser.add_argument("--env", required=True, help="the port: a registered name or package.module:EnvClass")
    parser.add_argument("--reference", default=None,
                        help="gymnasium:ID or package.module:factory (default: the port's `reference` attribute)")
    parser.add_argument("--episodes", type=int, default=CHECK_PORT_EPISODES,
                        help=f"episodes stepped in lockstep (default: {CHECK_PORT_EPISODES})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of actions, port keys and reference resets (default: 0)")
    parser.add_argument("--num_envs", type=int, default=CHECK_PORT_CONTRACT_ENVS,
                        help=f"instances of the vmapped contract check (default: {CHECK_PORT_CONTRACT_ENVS})")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance for float values (default: 1e-05)")
    return parser


# The commands --------------------------------------------------------------------------------------

def train_main(argv: Sequence[str] | None = None) -> int:
    """`jaxdqn train` and the `jaxdqn-train` command: `python -m jaxdqn.train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    before_training(argv)
    from jaxdqn import train

    return train.main(argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """`jaxdqn evaluate` and the `jaxdqn-evaluate` command: `python -m jaxdqn.evaluate`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    make_evaluate_parser().parse_args(argv)
    from jaxdqn import evaluate

    return evaluate.main(argv)


def check_port_main(argv: Sequence[str] | None = None) -> int:
    """`jaxdqn check-port`: `python -m jaxdqn.check_port`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    make_check_port_parser().parse_args(argv)
    from jaxdqn import check_port

    return check_port.main(argv)


# name: (entry point, one-line help)
COMMANDS: dict[str, tuple[Callable[[Sequence[str] | None], int], str]] = {
    "train": (train_main, "train a Deep Q-Network (as python -m jaxdqn.train)"),
    "evaluate": (evaluate_main, "evaluate a saved agent (as python -m jaxdqn.evaluate)"),
    "check-port": (check_port_main, "check a ported environment (as python -m jaxdqn.check_port)"),
}


def make_command_parser() -> argparse.ArgumentParser:
    """`jaxdqn`'s own parser: it lists the commands; each command parses its own flags."""
    from jaxdqn import __version__

    parser = OneLineParser(prog="jaxdqn", description="Deep Q-Networks in pure JAX. `jaxdqn COMMAND --help` "
                                                      "lists a command's flags.")
    parser.add_argument("--version", action="version", version=f"jaxdqn {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxdqn COMMAND [FLAGS]` and `python -m jaxdqn COMMAND [FLAGS]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    parser = make_command_parser()
    parser.parse_args(argv)  # --help and --version exit 0; no command named: one line and exit 2
    parser.error("name the command first: jaxdqn COMMAND [FLAGS]")  # e.g. `jaxdqn -- train`
    return 2
