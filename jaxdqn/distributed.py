"""Several hosts: JAX's own multi-controller runtime (`jax.distributed`), no home-made transport.

Every process runs the same `python -m jaxdqn.train ...` command. With `--coordinator_address`,
`--num_processes` and `--process_id` (all three, or none) the processes join one runtime; without
them, a SLURM job or an Open MPI launch with more than one task is detected and JAX reads the
coordinates from its environment. The trainer's mesh then spans every process's devices, so the one
SPMD program runs over all of them; process 0 alone prints, logs and writes summaries.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxdqn.errors import ConfigError

# JAX is imported inside the functions that use it: the trainer's flags (`add_flags`) parse without it.

FLAGS = ("coordinator_address", "num_processes", "process_id")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several processes (jax.distributed)")
    group.add_argument("--coordinator_address", metavar="HOST:PORT", default=None,
                       help="address of process 0's coordinator service")
    group.add_argument("--num_processes", type=int, default=None, help="processes taking part in the run")
    group.add_argument("--process_id", type=int, default=None, help="this process's index, 0 .. num_processes-1")


def launched_by_cluster() -> bool:
    """True under a SLURM job or Open MPI launch with more than one task (JAX detects these itself)."""
    for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(variable, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def initialize_from_argv(prog: str, argv: list[str]) -> None:
    """`initialize` from a command line, before the program's heavy imports.

    JAX's runtime must start before anything initialises a backend, and importing gymnax does (it
    builds a `jnp` array at import), so the CLIs call this first. Bad flags: one line, exit 2.
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_flags(parser)
    args, _ = parser.parse_known_args(argv)
    try:
        initialize(args)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def initialize(args: argparse.Namespace) -> None:
    """Joins the multi-process runtime when asked or detected; checks the flags first."""
    import jax

    if jax.distributed.is_initialized():
        return
    given = {name: getattr(args, name, None) for name in FLAGS}
    if any(value is not None for value in given.values()):
        missing = [f"--{name}" for name, value in given.items() if value is None]
        if missing:
            raise ConfigError(f"distributed flags given partly: also pass {', '.join(missing)}")
        if given["num_processes"] < 1:
            raise ConfigError(f"--num_processes must be positive, got {given['num_processes']}")
        if not 0 <= given["process_id"] < given["num_processes"]:
            raise ConfigError(f"--process_id must be in [0, {given['num_processes']}), got {given['process_id']}")
        if ":" not in given["coordinator_address"]:
            raise ConfigError(f"--coordinator_address must be HOST:PORT, got {given['coordinator_address']!r}")
        if given["num_processes"] == 1:
            return
        _use_cpu_collectives()
        jax.distributed.initialize(coordinator_address=given["coordinator_address"],
                                   num_processes=given["num_processes"], process_id=given["process_id"])
    elif launched_by_cluster():
        _use_cpu_collectives()
        jax.distributed.initialize()


def _use_cpu_collectives() -> None:
    """Cross-process collectives for the CPU backend (GPUs use NCCL regardless)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_main_process() -> bool:
    import jax

    return jax.process_index() == 0
