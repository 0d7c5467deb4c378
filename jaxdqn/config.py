"""The run's configuration: a frozen dataclass of static settings and its checks (its flags: `jaxdqn.cli`).

Shapes and counts (num_envs, buffer_size, batch_size, network sizes) are static and fixed at compile
time; the numbers one may sweep or vmap (learning rate, gamma, epsilon, tau) also travel as traced
leaves in `HParams` (`jaxdqn.hparams`), so one compiled program serves many of them.

The defaults are tuned for thousands of CartPole environments (see docs/design-notes.md, "Defaults for
thousands of environments"): with 4096 envs each vector step brings 4096 transitions, so learning does
several larger gradient updates per vector step rather than the single small one of a one-env DQN.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import TYPE_CHECKING, Any

from jaxdqn.errors import ConfigError

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
    total_steps: int = _field(3_000_000, "env steps to train for (all envs together); by default the env's budget (3M; "
                              "MinAtar 5M, MountainCar 10M) and at least 256 vector steps (more than 3M from 11,719 "
                              "envs on), with eps_decay_steps scaled alike")
    seed: int = _field(0, "random seed (int32; evaluation uses seed + 1)")
    # Replay and learning.
    buffer_size: int = _field(262_144, "replay capacity in transitions (global; a multiple of num_envs "
                              "is kept)", original=True)
    batch_size: int = _field(256, "transitions per gradient update (global); by default larger beyond 16,384 "
                             "envs, so that a vector step makes at most 128 updates (1,024 at 65,536 envs)",
                             original=True)
    replay_ratio: float = _field(2.0, "transitions sampled for learning per env step (batch_size x updates / env "
                                 "steps): the same learning per env step at every num_envs; sets the gradient "
                                 "updates per vector step, replay_ratio x num_envs / batch_size rounded (below one: "
                                 "one update every few vector steps), unless --updates_per_step is given")
    updates_per_step: int = _field(0, "gradient updates per vector step (one vector step = num_envs env steps); "
                                   "0: from --replay_ratio")
    learning_starts: int = _field(32_768, "env steps collected before the first gradient update")
    lr: float = _field(5e-4, "Adam learning rate (MinAtar games: 1e-3 by default)", original=True)
    lr_anneal: bool = _field(True, "anneal the learning rate linearly to 0 over total_steps")
    gamma: float = _field(0.99, "discount factor, in (0, 1]", original=True)
    max_grad_norm: float = _field(10.0, "clip gradients to this global norm", original=True)
    target_update_frequency: int = _field(1, "gradient updates between target-network updates",
                                          original=True)
    tau: float = _field(0.05, "target update weight: 1 copies the online network, <1 is Polyak averaging")
    loss: str = _field("huber", "TD loss: huber (the original's smooth L1) or mse (CartPole-v1 and "
                                "Acrobot-v1: mse by default)", choices=("huber", "mse"))
    double: bool = _field(True, "Double DQN targets (van Hasselt et al. 2016)")
    # Rainbow-style variants (Hessel et al. 2018), all off by default and combinable.
    n_step: int = _field(1, "n-step returns (Sutton 1988): sum an env's next n rewards, then bootstrap; "
                         "stops at the episode's end (1: one-step Q-learning); at most buffer_size // num_envs")
    td_lambda: float = _field(1.0, "lambda-returns over the n-step window (Peng's Q(lambda), Peng & Williams "
                              "1996): each step's target weighs its bootstrap by 1 - lambda and the rest of the "
                              "window by lambda, every value from the target network at that update; 1: the "
                              "n-step return, 0: one step; needs --n_step > 1 and --learner dqn")
    prioritized: bool = _field(False, "proportional prioritized replay (Schaul et al. 2016)")
    priority_alpha: float = _field(0.6, "prioritized replay: priority exponent alpha, in [0, 1] "
                                   "(0: uniform sampling)")
    priority_beta: float = _field(0.4, "prioritized replay: initial importance-sampling exponent beta, in "
                                  "[0, 1], annealed linearly to 1 over total_steps")
    # Learners (jaxdqn.learners) and exploration.
    learner: str = _field("dqn", "the learner: dqn (Q-learning), c51 (categorical distribution, Bellemare et al. "
                          "2017) or qrdqn (quantile regression, Dabney et al. 2018); all combine with double, "
                          "dueling, n_step and prioritized; the GPU kernels run dqn only",
                          choices=("dqn", "c51", "qrdqn"))
    num_atoms: int = _field(51, "c51: atoms of the return distribution's fixed support")
    v_min: float = _field(-100.0, "c51: the support's lowest return")
    v_max: float = _field(100.0, "c51: the support's highest return")
    num_quantiles: int = _field(32, "qrdqn: quantiles of the return distribution")
    noisy: bool = _field(False, "noisy nets (Fortunato et al. 2018): the Q-network's last layers get factorised "
                         "Gaussian noise, resampled every vector step for acting and every update for learning; "
                         "eps and min_eps default to 0 with it")
    noisy_sigma: float = _field(0.5, "noisy nets: initial noise scale sigma_0 (weights' sigma = sigma_0 / sqrt(inputs))")
    noise_per_env: bool = _field(False, "noisy nets: when acting, an independent draw of the noise for every env "
                                 "(as many explorers as envs; no per-env weights, but noise drawn for every env); "
                                 "off: one draw shared by the vector step's envs")
    preset: str = _field("none", "a named set of flags applied before the given ones (see config.json for what "
                         "it set): rainbow = c51 + double + dueling + 3-step + prioritized, lr 2e-3 (add --noisy for "
                         "noisy nets)",
                         choices=("none", "rainbow"))
    unroll_updates: int = _field(0, "gradient updates unrolled per loop step of the device program (0: "
                                 "jaxdqn.kernels.update.UNROLL with the fused update kernel, else 1)", cli=False)
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
                                "one fused kernel (jaxdqn.kernels.acting); --no-fused_acting: XLA's kernels")
    fused_update: bool = _field(True, "on GPUs, run each gradient update of the default MLP Q-network as three "
                                "fused kernels: loss and gradient, gradient sum, clipping + Adam + target update "
                                "(jaxdqn.kernels.update); --no-fused_update: XLA's kernels")
    acting_precision: str = _field("float32", "operand type of the fused acting kernel's matrix products: "
                                   "float32 or bfloat16 (faster acting, but CartPole learned less reliably with "
                                   "it; accumulation, learning and evaluation stay float32)",
                                   choices=("float32", "bfloat16"))
    # Host loop, evaluation, output.
    chunk_steps: int = _field(131_072, "env steps per jitted chunk: one metrics row and progress update "
                              "each (rounded to whole vector steps); a chunk's random keys, 8 bytes per env "
                              "step, are drawn before it runs")
    eval_frequency: int = _field(131_072, "env steps between greedy evaluations (rounded up to chunks; MinAtar games: "
                                 "524,288 by default)")
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
        positive = ("num_envs", "total_steps", "buffer_size", "batch_size",
                    "target_update_frequency", "eps_decay_steps", "chunk_steps", "eval_frequency",
                    "eval_episodes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.updates_per_step < 0:
            raise ConfigError(f"--updates_per_step must be >= 0 (0: from --replay_ratio), got {self.updates_per_step}")
        if not self.replay_ratio > 0.0:
            raise ConfigError(f"--replay_ratio must be > 0, got {self.replay_ratio}")
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
        if not 0.0 <= self.td_lambda <= 1.0:
            raise ConfigError(f"--td_lambda must be in [0, 1], got {self.td_lambda}")
        if self.td_lambda < 1.0 and self.n_step < 2:
            raise ConfigError(f"--td_lambda {self.td_lambda} needs --n_step > 1: the lambda-return spans the "
                              f"n-step window")
        if self.td_lambda < 1.0 and self.learner != "dqn":
            raise ConfigError(f"--td_lambda runs with --learner dqn only, not {self.learner}")
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
        for name in ("num_atoms", "num_quantiles"):
            if getattr(self, name) < 2:
                raise ConfigError(f"--{name} must be at least 2, got {getattr(self, name)}")
        if not self.v_min < self.v_max:
            raise ConfigError(f"--v_min ({self.v_min}) must be below --v_max ({self.v_max})")
        if not self.noisy_sigma > 0.0:
            raise ConfigError(f"--noisy_sigma must be > 0, got {self.noisy_sigma}")
        if self.noise_per_env and not self.noisy:
            raise ConfigError("--noise_per_env needs --noisy (it sets how noisy nets draw their noise)")
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
        if self.total_iterations * self.vector_step_updates > INT32_MAX:
            raise ConfigError(f"--total_steps {self.total_steps} makes up to "
                              f"{self.total_iterations * self.vector_step_updates:,} gradient updates "
                              f"({self.total_iterations:,} vector steps x {self.vector_step_updates} updates); the "
                              f"int32 update counter allows at most {INT32_MAX:,}")
        if self.buffer_rows * self.num_envs > INT32_MAX:
            raise ConfigError(f"--buffer_size {self.buffer_size} exceeds the int32 index of the replay buffer: "
                              f"at most {INT32_MAX:,} transitions")

    # Derived counts -------------------------------------------------------------------------
    @property
    def _updates_per_env_step(self) -> float:
        return self.replay_ratio * self.num_envs / self.batch_size

    @property
    def vector_step_updates(self) -> int:
        """Gradient updates of a vector step that learns: `updates_per_step`, else from `replay_ratio`."""
        if self.updates_per_step:
            return self.updates_per_step
        return max(1, round(self._updates_per_env_step))

    @property
    def learn_interval(self) -> int:
        """Vector steps from one learning vector step to the next: 1, or more when `replay_ratio` asks for
        fewer than one update per vector step (few envs, large batches)."""
        if self.updates_per_step or self._updates_per_env_step >= 1.0:
            return 1
        return max(1, round(1.0 / self._updates_per_env_step))

    @property
    def learning_starts_iteration(self) -> int:
        """The first vector step that may learn (`learning_starts` env steps collected)."""
        return -(-self.learning_starts // self.num_envs)

    @property
    def total_updates(self) -> int:
        """Gradient updates of the whole run (the learning rate anneals to 0 over them)."""
        learning_steps = -(-(self.total_iterations - self.learning_starts_iteration) // self.learn_interval)
        return max(1, learning_steps * self.vector_step_updates)

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


# Building a run's config (its flags are jaxdqn.cli's) ---------------------------------------------

# With many envs, the default budget is at least this many vector steps (and epsilon decays over the same
# share of it): 3M env steps are only 46 vector steps of 65,536 envs, too few rounds of acting and
# learning (6 of 10 seeds solved CartPole there; benchmarks/results/scale_cartpole_h200_budget3m.md).
MIN_VECTOR_STEPS = 256

# By default a vector step makes at most this many gradient updates; with more envs the batch grows instead
# (replay_ratio x num_envs / 128, in multiples of 256: 1,024 at 65,536 envs). A vector step's updates all
# sample the buffer as it was before the step, while the envs act with the parameters from before them: 512
# updates of 256 per vector step at 65,536 envs left CartPole-v1 solved on 7 of 10 seeds at the end, 128 of
# 1,024 on 16 of 16 (two calls on one H200; benchmarks/results/minatar_screen_h200/).
MAX_DEFAULT_VECTOR_STEP_UPDATES = 128

# Named sets of flags (`--preset`), applied after the env's defaults and before the given flags.
# Rainbow (Hessel et al. 2018): C51 with double targets, dueling heads, 3-step returns and prioritized
# replay (alpha 0.5, beta 0.4 annealed to 1), exploring epsilon-greedily: with thousands of envs sharing
# one draw of noisy nets' noise per vector step, Rainbow with noisy nets (and epsilon 0) learned far less
# than without them on one H200 (Breakout-MinAtar 7.6 against 38.4, 10 seeds; CartPole-v1 6 of 10 seeds
# solved; benchmarks/results/learners/). `--preset rainbow --noisy` adds them. Its learning rate is 2e-3: at
# DQN's 5e-4 it learned Seaquest-MinAtar poorly (6.6 against 51.4 at 2e-3, 4 seeds, one H200; Breakout-MinAtar
# 34.2 against 39.5), and at 2e-3 it solved CartPole-v1 and Acrobot-v1 on every seed (4 seeds, CPU).
PRESETS: dict[str, dict[str, Any]] = {
    "rainbow": {"learner": "c51", "double": True, "dueling": True, "n_step": 3, "prioritized": True,
                "priority_alpha": 0.5, "priority_beta": 0.4, "lr": 2e-3},
}


def build_config(flags: dict[str, Any], spec: EnvSpec, base: TrainConfig | None = None) -> TrainConfig:
    """Merges, in increasing priority: TrainConfig defaults (or `base`), the env's defaults, the preset's
    flags (`--preset`), given flags. With `--noisy` on, eps and min_eps default to 0."""
    values = dataclasses.asdict(base) if base is not None else {}
    if base is None:
        values.update(spec.defaults)
    given = {key: value for key, value in flags.items() if value is not None}
    preset = given.get("preset", values.get("preset", "none"))
    if base is None and preset in PRESETS:
        values.update(PRESETS[preset])
    if base is None and given.get("noisy", values.get("noisy")):  # noisy nets explore by themselves
        values.update(eps=0.0, min_eps=0.0)
    defaults = TrainConfig()
    num_envs = given.get("num_envs", values.get("num_envs", defaults.num_envs))
    if base is None and "total_steps" not in given:
        budget = values.get("total_steps", defaults.total_steps)  # the env's own budget, else the default
        total_steps = max(budget, MIN_VECTOR_STEPS * num_envs)
        if total_steps > budget:  # the budget follows num_envs, and epsilon's decay with it
            values["total_steps"] = total_steps
            if "eps_decay_steps" not in given and "eps_decay_steps" not in spec.defaults:
                values["eps_decay_steps"] = defaults.eps_decay_steps * total_steps // budget
    if base is None and not {"batch_size", "updates_per_step"} & (given.keys() | spec.defaults.keys()):
        replay_ratio = given.get("replay_ratio", values.get("replay_ratio", defaults.replay_ratio))
        sampled = replay_ratio * num_envs / MAX_DEFAULT_VECTOR_STEP_UPDATES  # per update, at that many updates
        batch_size = defaults.batch_size * max(1, math.ceil(sampled / defaults.batch_size))
        if batch_size > defaults.batch_size:  # the batch follows num_envs beyond 16,384 envs (at replay ratio 2)
            values["batch_size"] = batch_size
    values.update(given)
    if base is None and "td_lambda" not in given and values.get("td_lambda", 1.0) < 1.0 and (
            values.get("learner", "dqn") != "dqn" or values.get("n_step", 1) < 2):
        values["td_lambda"] = 1.0  # an env's lambda default serves n-step DQN only: others take plain returns
    values["env"] = spec.name
    config = TrainConfig.from_dict(values).validate()
    # A run must learn something (`TrainConfig.validate` alone allows it: tests step the acting alone).
    if config.learning_starts >= config.total_steps:
        raise ConfigError(f"--learning_starts ({config.learning_starts}) must be below --total_steps "
                          f"({config.total_steps}): the run would make no gradient update")
    return config
