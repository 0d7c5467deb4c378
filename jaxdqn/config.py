"""The run's configuration: a frozen dataclass of static settings, its command-line form and checks.

Shapes and counts (num_envs, buffer_size, batch_size, network sizes) are static and fixed at compile
time; the numbers one may sweep or vmap (learning rate, gamma, epsilon, tau) also travel as traced
leaves in `HParams` (`jaxdqn.hparams`), so one compiled program serves many of them.

The defaults are tuned for thousands of CartPole environments (see docs/design-notes.md, "Defaults for
thousands of environments"): with 4096 envs each vector step brings 4096 transitions, so learning does
several larger gradient updates per vector step rather than the single small one of a one-env DQN.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
from typing import TYPE_CHECKING, Any

from jaxdqn.errors import ConfigError, OneLineParser

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the device program's counters and seeds are int32

if TYPE_CHECKING:  # this module imports neither JAX nor gymnax, so that `--help` and flag errors answer at once
    from jaxdqn.hparams import HParams
    from jaxdqn.registry import EnvSpec


def __getattr__(name: str):
    if name == "HParams":  # `from jaxdqn.config import HParams` keeps working; it imports flax on first use
        from jaxdqn.hparams import HParams

        return HParams
    raise AttributeError(f"module 'jaxdqn.config' has no attribute {name!r}")


def _field(default: Any, help: str, *, flags: tuple[str, ...] = (), original: bool = False, cli: bool = True,
           choices: tuple[str, ...] | None = None):
    return dataclasses.field(
        default=default,
        metadata={"help": help, "flags": flags, "original": original, "cli": cli, "choices": choices},
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Frequencies name their unit; "env steps" count all envs."""

    env: str = _field("CartPole-v1", "environment name: cartpole, any gymnax id, a registered port, "
                      "or package.module:EnvClass", flags=("--environment",), original=True)
    num_envs: int = _field(4096, "environments stepped in parallel (global, split over devices)")
    total_steps: int = _field(3_000_000, "env steps to train for (all envs together)")
    seed: int = _field(0, "random seed (int32; evaluation uses seed + 1)")
    # Replay and learning.
    buffer_size: int = _field(262_144, "replay capacity in transitions (global; a multiple of num_envs "
                              "is kept)", original=True)
    batch_size: int = _field(256, "transitions per gradient update (global)", original=True)
    updates_per_step: int = _field(32, "gradient updates per vector step (one vector step = num_envs "
                                   "env steps); sets the replay ratio")
    learning_starts: int = _field(32_768, "env steps collected before the first gradient update")
    lr: float = _field(5e-4, "Adam learning rate", original=True)
    lr_anneal: bool = _field(True, "anneal the learning rate linearly to 0 over total_steps")
    gamma: float = _field(0.99, "discount factor, in (0, 1]", original=True)
    max_grad_norm: float = _field(10.0, "clip gradients to this global norm", original=True)
    target_update_frequency: int = _field(1, "gradient updates between target-network updates",
                                          original=True)
    tau: float = _field(0.05, "target update weight: 1 copies the online network, <1 is Polyak averaging")
    loss: str = _field("huber", "TD loss: huber (the original's smooth L1) or mse", choices=("huber", "mse"))
    double: bool = _field(True, "Double DQN targets (van Hasselt et al. 2016)")
    # Rainbow-style variants (Hessel et al. 2018), all off by default and combinable.
    n_step: int = _field(1, "n-step returns (Sutton 1988): sum an env's next n rewards, then bootstrap; "
                         "stops at the episode's end (1: one-step Q-learning); at most buffer_size // num_envs")
    prioritized: bool = _field(False, "proportional prioritized replay (Schaul et al. 2016)")
    priority_alpha: float = _field(0.6, "prioritized replay: priority exponent alpha, in [0, 1] "
                                   "(0: uniform sampling)")
    priority_beta: float = _field(0.4, "prioritized replay: initial importance-sampling exponent beta, in "
                                  "[0, 1], annealed linearly to 1 over total_steps")
    unroll_updates: int = _field(0, "gradient updates unrolled per loop step of the device program (0: "
                                 "jaxdqn.fused_update.UNROLL with the fused update kernel, else 1)", cli=False)
    # Exploration.
    eps: float = _field(1.0, "initial epsilon of epsilon-greedy exploration", original=True)
    min_eps: float = _field(0.05, "final epsilon", original=True)
    eps_decay_steps: int = _field(500_000, "env steps over which epsilon decays linearly to min_eps")
    # Network.
    hidden_sizes: tuple[int, ...] = _field((128, 128), "hidden layer widths of the MLP Q-network, "
                                           "comma-separated")
    layer_norm: bool = _field(True, "LayerNorm after each hidden layer of the Q-network")
    dueling: bool = _field(False, "dueling Q-network: separate value and advantage streams, "
                           "Q = V + A - mean(A) (Wang et al. 2016)")
    fused_acting: bool = _field(True, "on GPUs, run the acting forward pass of the default MLP Q-network as "
                                "one fused kernel (jaxdqn.fused_acting); --no-fused_acting: XLA's kernels")
    fused_update: bool = _field(True, "on GPUs, run each gradient update of the default MLP Q-network as three "
                                "fused kernels: loss and gradient, gradient sum, clipping + Adam + target update "
                                "(jaxdqn.fused_update); --no-fused_update: XLA's kernels")
    acting_precision: str = _field("float32", "operand type of the fused acting kernel's matrix products: "
                                   "float32 or bfloat16 (faster acting, but CartPole learned less reliably with "
                                   "it; accumulation, learning and evaluation stay float32)",
                                   choices=("float32", "bfloat16"))
    # Host loop, evaluation, output.
    chunk_steps: int = _field(131_072, "env steps per jitted chunk: one metrics row and progress update "
                              "each (rounded to whole vector steps); a chunk's random keys, 8 bytes per env "
                              "step, are drawn before it runs")
    eval_frequency: int = _field(131_072, "env steps between greedy evaluations (rounded up to chunks)")
    eval_episodes: int = _field(128, "greedy episodes per evaluation, run in parallel")
    until_solved: bool = _field(False, "stop at the first evaluation that reaches the env's threshold")
    log_dir: str | None = _field(None, "output folder; one holding an earlier run's outputs needs --overwrite "
                                 "(a resumed run may write to its own), and one run at a time writes to it")
    # Many agents in one program (jaxdqn.population).
    num_seeds: int = _field(1, "independent agents trained at once, seeds seed, seed+1, ...")
    sweep: tuple[str, ...] = _field((), "KEY=V1,V2,... one agent per value (per seed); several keys, in one "
                                    "--sweep or in several, form a grid; keys: lr, gamma, eps, min_eps, tau")
    # Devices (multi-device training).
    num_devices: int | None = _field(None, "devices to shard envs and learning over",
                                     flags=("--n_workers",), original=True)
    sync: str = _field("grads", "how several devices share one learner: grads = average the gradients of "
                       "every update (one learner with the global batch); params = each device updates on its "
                       "own samples and parameters, target and Adam moments are averaged after every vector "
                       "step (local SGD: one all-reduce per vector step instead of updates_per_step)",
                       choices=("grads", "params"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        for name in ("hidden_sizes", "sweep"):
            if isinstance(values.get(name), list):  # JSON lists; anything else is left for `validate` to name
                values[name] = tuple(values[name])
        return cls(**values)

    @property
    def hparams(self) -> HParams:
        from jaxdqn.hparams import HParams

        return HParams.from_config(self)

    def validate(self) -> "TrainConfig":
        """Checks the settings; raises ConfigError with a one-line reason."""
        self._check_types()
        positive = ("num_envs", "total_steps", "buffer_size", "batch_size", "updates_per_step",
                    "target_update_frequency", "eps_decay_steps", "chunk_steps", "eval_frequency",
                    "eval_episodes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.unroll_updates < 0:
            raise ConfigError(f"unroll_updates must be >= 0, got {self.unroll_updates}")
        if self.learning_starts < 0:
            raise ConfigError(f"--learning_starts must be >= 0, got {self.learning_starts}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not self.lr > 0.0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not self.max_grad_norm > 0.0:
            raise ConfigError(f"--max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"--tau must be in (0, 1], got {self.tau}")
        for name in ("eps", "min_eps"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_eps > self.eps:
            raise ConfigError(f"--min_eps ({self.min_eps}) must not exceed --eps ({self.eps})")
        if self.batch_size > self.buffer_size:
            raise ConfigError(f"--batch_size ({self.batch_size}) must not exceed --buffer_size "
                              f"({self.buffer_size})")
        if self.buffer_size < self.num_envs:
            raise ConfigError(f"--buffer_size ({self.buffer_size}) must hold at least one vector step "
                              f"(--num_envs {self.num_envs})")
        if self.n_step < 1:
            raise ConfigError(f"--n_step must be >= 1, got {self.n_step}")
        if self.n_step > self.buffer_rows:
            raise ConfigError(f"--n_step ({self.n_step}) must not exceed the buffer's {self.buffer_rows} vector "
                              f"steps (--buffer_size {self.buffer_size} // --num_envs {self.num_envs})")
        for name in ("priority_alpha", "priority_beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices is not None and getattr(self, field.name) not in choices:
                raise ConfigError(f"--{field.name} must be {' or '.join(choices)}, got {getattr(self, field.name)!r}")
        if not self.hidden_sizes or any(width <= 0 for width in self.hidden_sizes):
            raise ConfigError(f"--hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.num_seeds <= 0:
            raise ConfigError(f"--num_seeds must be positive, got {self.num_seeds}")
        if self.num_devices is not None and self.num_devices <= 0:
            raise ConfigError(f"--num_devices must be positive, got {self.num_devices}")
        self._check_int32_counters()
        return self

    def _check_types(self) -> None:
        """Each field has its type (a config read from JSON may not) and every float is finite."""
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            if field.name in ("hidden_sizes", "sweep"):  # tuples of ints, of strings
                kind = numbers.Integral if field.name == "hidden_sizes" else str
                ok = isinstance(value, tuple) and all(isinstance(item, kind) and not isinstance(item, bool)
                                                      for item in value)
                expected = f"a list of {'strings' if kind is str else 'integers'}"
            elif field.name in ("log_dir", "num_devices"):  # optional
                kind = str if field.name == "log_dir" else numbers.Integral
                ok = value is None or (isinstance(value, kind) and not isinstance(value, bool))
                expected = f"{'a string' if kind is str else 'an integer'} or null"
            elif isinstance(default, bool):
                ok, expected = isinstance(value, bool), "true or false"
            elif isinstance(default, float):
                ok, expected = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
                if ok and not math.isfinite(value):
                    raise ConfigError(f"--{field.name} must be a finite number, got {value}")
            elif isinstance(default, int):
                ok, expected = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
            else:
                ok, expected = isinstance(value, str), "a string"
            if not ok:
                raise ConfigError(f"--{field.name} must be {expected}, got {value!r}")

    def _check_int32_counters(self) -> None:
        """The device program counts in int32: seeds, vector steps, gradient updates and buffer slots must fit."""
        # Evaluation uses seed + 1 and agents seed ... seed + num_seeds - 1; keys are made from int32 seeds.
        top = INT32_MAX - max(1, self.num_seeds - 1)
        if not INT32_MIN <= self.seed <= top:
            raise ConfigError(f"--seed must be between {INT32_MIN} and {top}, got {self.seed}: seeds are int32, and "
                              f"evaluation uses seed + 1 (agents seed ... seed + num_seeds - 1)")
        if self.total_iterations > INT32_MAX:
            raise ConfigError(f"--total_steps {self.total_steps} is {self.total_iterations:,} vector steps of "
                              f"--num_envs {self.num_envs}; the int32 step counter allows at most {INT32_MAX:,} "
                              f"(--total_steps up to {INT32_MAX * self.num_envs:,})")
        if self.total_iterations * self.updates_per_step > INT32_MAX:
            raise ConfigError(f"--total_steps {self.total_steps} makes {self.total_iterations * self.updates_per_step:,} "
                              f"gradient updates ({self.total_iterations:,} vector steps x --updates_per_step "
                              f"{self.updates_per_step}); the int32 update counter allows at most {INT32_MAX:,}")
        if self.buffer_rows * self.num_envs > INT32_MAX:
            raise ConfigError(f"--buffer_size {self.buffer_size} exceeds the int32 index of the replay buffer: "
                              f"at most {INT32_MAX:,} transitions")

    # Derived counts -------------------------------------------------------------------------
    @property
    def buffer_rows(self) -> int:
        """Vector steps the buffer holds (the buffer is [rows, num_envs])."""
        return max(1, self.buffer_size // self.num_envs)

    @property
    def chunk_iterations(self) -> int:
        """Vector steps per jitted chunk."""
        return max(1, self.chunk_steps // self.num_envs)

    @property
    def total_iterations(self) -> int:
        """Vector steps of the whole run (total_steps rounded up to whole chunks)."""
        return self.num_chunks * self.chunk_iterations

    @property
    def num_chunks(self) -> int:
        steps_per_chunk = self.chunk_iterations * self.num_envs
        return max(1, -(-self.total_steps // steps_per_chunk))

    @property
    def eval_every_chunks(self) -> int:
        return max(1, -(-self.eval_frequency // (self.chunk_iterations * self.num_envs)))


# Command line --------------------------------------------------------------------------------

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
        default = field.default
        if isinstance(default, bool):
            parser.add_argument(*names, dest=field.name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{help_text} (default: {default})")
            continue
        if field.name == "sweep":  # repeated flags add up: --sweep lr=1e-4,1e-3 --sweep tau=0.05,1 is one grid
            parser.add_argument(*names, dest=field.name, nargs="+", action="extend", default=None,
                                metavar="KEY=V1,V2", help=f"{help_text} (default: none)")
            continue
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


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return OneLineParser(prog=prog, description=description)


def build_config(flags: dict[str, Any], spec: EnvSpec, base: TrainConfig | None = None) -> TrainConfig:
    """Merges, in increasing priority: TrainConfig defaults (or `base`), the env's defaults, given flags."""
    values = dataclasses.asdict(base) if base is not None else {}
    if base is None:
        values.update(spec.defaults)
    values.update({key: value for key, value in flags.items() if value is not None})
    values["env"] = spec.name
    config = TrainConfig.from_dict(values).validate()
    # A run must learn something (`TrainConfig.validate` alone allows it: tests step the acting alone).
    if config.learning_starts >= config.total_steps:
        raise ConfigError(f"--learning_starts ({config.learning_starts}) must be below --total_steps "
                          f"({config.total_steps}): the run would make no gradient update")
    return config
