"""The trainer's command line, in a module that imports neither JAX nor gymnax.

`python -m jaxdqn.train` parses its flags with this parser before its slow imports, so `--help` and
malformed flags answer at once; `jaxdqn.train` re-exports `make_train_parser`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from jaxdqn import distributed
from jaxdqn.config import add_config_flags, make_parser

DEFAULT_COMPILE_CACHE = os.environ.get("JAXDQN_COMPILE_CACHE", str(Path.home() / ".cache" / "jaxdqn" / "xla"))


def make_train_parser() -> argparse.ArgumentParser:
    parser = make_parser("jaxdqn.train", "Train a Deep Q-Network on vectorized gymnax environments. "
                         "Flags marked [original flag] are those of the original PyTorch trainer.")
    add_config_flags(parser)
    parser.add_argument("--compile_cache", default=DEFAULT_COMPILE_CACHE, metavar="DIR",
                        help="JAX persistent compilation cache folder, with the compiled programs in its "
                             "programs/ folder; each kept under 1 GiB, least recently used deleted first "
                             "(default: $JAXDQN_COMPILE_CACHE, else ~/.cache/jaxdqn/xla)")
    parser.add_argument("--no_compile_cache", action="store_true", help="do not use the compilation cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-chunk log lines")
    add_checkpoint_flags(parser)
    distributed.add_flags(parser)
    parser.epilog = ("exit status: 0 done; 1 an output could not be written while training (a full disk; one line; "
                     "the earlier checkpoints stay); 2 bad input (one line on stderr, nothing written); 3 training diverged "
                     "(a non-finite loss or parameters; one line naming the env step; no diverged state is saved)")
    return parser


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
