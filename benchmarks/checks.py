"""Checks of the benchmarks' flags, made before any work: a bad value is one line on stderr and exit code 2
(`parser.error`, as for a malformed flag)."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

SEED_LIMIT = 2**32  # numpy's and Gymnasium's seeds are non-negative


def _values(args: argparse.Namespace, name: str) -> list:
    value = getattr(args, name)
    return [] if value is None else value if isinstance(value, list) else [value]


def positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Each flag of `names` (a number or a list of numbers; None: unset) must be finite and > 0."""
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value > 0):
                parser.error(f"--{name} must be positive, got {value}")


def non_negative(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Each flag of `names` must be finite and >= 0."""
    for name in names:
        for value in _values(args, name):
            if not (math.isfinite(value) and value >= 0):
                parser.error(f"--{name} must be >= 0, got {value}")


def seed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.seed < SEED_LIMIT:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")


def env_names(parser: argparse.ArgumentParser, names: list[str]) -> list[str]:
    """The environments' canonical names (`jaxdqn.registry.get_spec`, which builds nothing); exit 2 on an
    unknown one."""
    from jaxdqn.registry import ConfigError, get_spec

    try:
        return [get_spec(name).name for name in names]
    except ConfigError as error:
        parser.error(str(error))


def device_count() -> int | None:
    """How many devices JAX finds here, or None if it cannot start. Asked in a process of its own, so that
    this one never holds a GPU that the runs it starts need."""
    result = subprocess.run([sys.executable, "-c", "import jax; print(jax.device_count())"], capture_output=True,
                            text=True, env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    words = result.stdout.split()
    return int(words[-1]) if result.returncode == 0 and words and words[-1].isdigit() else None
