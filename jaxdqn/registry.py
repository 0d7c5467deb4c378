"""Environments registered by name, each with its Q-network and default hyperparameters.

This is the JAX form of the original project's `environments.py` registry, where a `BaseSimulator`
was paired with a `BaseModel`: here a name maps to a factory of a gymnax-style environment
(a pure-JAX `gymnax.environments.environment.Environment`), an optional Q-network factory and the
hyperparameters that work for it.

Names resolve in this order:

1. names registered with :func:`register` (jaxdqn's own, `jaxdqn.envs`, and the user's);
2. short aliases (`cartpole` -> `CartPole-v1`);
3. every gymnax id (`Acrobot-v1`, `Breakout-MinAtar`, ...), registered on first use;
3b. `suite:id` of another JAX suite (`navix:`, `xminigrid:`, `craftax:`, `jumanji:`), adapted by `jaxdqn.suites`;
4. `package.module:Attribute`, importing a user's module without editing jaxdqn. The attribute is an
   `Environment` subclass or a factory returning one (or `(env, env_params)`); importing the module
   may also call :func:`register` for richer defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

from jaxdqn.errors import ConfigError, one_line  # noqa: F401  (re-exported: jaxdqn.registry.ConfigError)


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is used, then imports the real one."""

    def __getattr__(self, attribute: str):
        module = sys.modules.get(self.__name__)
        if module is None or module is self:
            sys.modules.pop(self.__name__, None)
            module = importlib.import_module(self.__name__)
        return getattr(module, attribute)


def _import_gymnax():
    """Imports gymnax without paying for its rendering-only imports at start-up.

    gymnax imports matplotlib.pyplot and seaborn (hence scipy) at module level, only to render
    frames, a large share of every run's start on a small CPU (docs/performance.md). Those two names
    are deferred while gymnax imports, and are imported for real the first time gymnax renders with
    them.
    """
    deferred = [name for name in ("seaborn", "matplotlib.pyplot") if name not in sys.modules]
    for name in deferred:
        sys.modules[name] = _DeferredModule(name)
    try:
        import gymnax as module
    finally:
        for name in deferred:
            if isinstance(sys.modules.get(name), _DeferredModule):
                del sys.modules[name]
    return module


gymnax = _import_gymnax()
from gymnax.environments import spaces  # noqa: E402
from gymnax.environments.environment import Environment  # noqa: E402


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What jaxdqn knows about an environment name.

    Attributes:
      name: the registered name.
      make_env: `() -> (env, env_params)`.
      make_network: optional `(num_actions, config) -> flax.linen.Module`; None picks the network
        from the observation's shape (see `jaxdqn.networks.make_network`).
      defaults: hyperparameter defaults for this env (field names of `jaxdqn.config.TrainConfig`).
      solved_threshold: mean greedy return at which the env counts as solved, or None.
    """

    name: str
    make_env: Callable[[], tuple[Environment, Any]]
    make_network: Callable[..., Any] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    solved_threshold: float | None = None


_REGISTRY: dict[str, EnvSpec] = {}

ALIASES = {
    "cartpole": "CartPole-v1",
    "acrobot": "Acrobot-v1",
    "mountaincar": "MountainCar-v0",
    "breakout": "Breakout-MinAtar",
    "asterix": "Asterix-MinAtar",
    "freeway": "Freeway-MinAtar",
    "seaquest": "Seaquest-MinAtar",
    "spaceinvaders": "SpaceInvaders-MinAtar",
    "taxi": "Taxi-v4",
    "cliffwalking": "CliffWalking-v1",
}

# Thresholds at which the classic-control tasks are considered solved (Gymnasium's conventions).
SOLVED_THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "MountainCar-v0": -110.0}

# Per-environment hyperparameters that differ from `TrainConfig`'s (CartPole-tuned) defaults.
# Acrobot-v1 learns with them as they are (seed 0: final greedy return -77 after the default 3M env
# steps); MountainCar-v0 needs a longer run (seed 0: -119 after 3M, -103 after 10M). The five MinAtar games
# share one set: 5M env steps, the budget of the MinAtar paper's DQN (Young & Tian 2019); lr 1e-3, which
# learned Breakout and Seaquest better than 5e-4 (benchmarks/results/minatar_vs_pqn_h200/); and a greedy
# evaluation every 524,288 env steps (4 chunks), 10 in 5M and 20 in 10M as PQN's MinAtar runner makes: their
# long episodes made the default 131,072 cost Seaquest-MinAtar 25 s of an 82 s run on one H200. And Peng's
# Q(lambda) over 4-step windows at lambda 0.65 (PQN's lambda): on one H200, 10 seeds, 10M env steps, it lifted
# Seaquest from 59.5 to 75.7 (PQN 68.2 in the same call) and Breakout from 72.6 to 82.7 (PQN 82.9; 82.9
# against 74.7 in another call), for 25-32% more wall time (benchmarks/results/minatar_lambda_vs_pqn_h200/).
# Learners without lambda-returns, and --n_step 1, take plain returns instead (`config.build_config`).
MINATAR_DEFAULTS: dict[str, Any] = {"total_steps": 5_000_000, "lr": 1e-3, "eval_frequency": 524_288,
                                    "n_step": 4, "td_lambda": 0.65}
# Classic control learns with a squared TD error. With the smooth L1 (huber) loss, 58 to 60 of 64 CartPole-v1 seeds at
# 4,096 envs held 475 at the end; with mse, 62 to 63 of 64 in four runs, reaching it as soon (median 786,432 env steps
# against 917,504), and at least 9 of 10 seeds at every num_envs from 16 to 65,536; Acrobot-v1 held -100 on 10 of 10
# at every num_envs (one H200; benchmarks/results/classic_control_mse_h200/). A final epsilon of 0.01 held 63 to 64
# of 64 at 4,096 envs but 7 of 10 at 16,384, so min_eps stays 0.05.
GYMNAX_DEFAULTS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {"loss": "mse"},
    "Acrobot-v1": {"loss": "mse"},
    "MountainCar-v0": {"total_steps": 10_000_000},
    **{f"{game}-MinAtar": dict(MINATAR_DEFAULTS) for game in ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")},
}


def register(
    name: str,
    make_env: Callable[[], Any],
    *,
    make_network: Callable[..., Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    solved_threshold: float | None = None,
) -> EnvSpec:
    """Registers an environment (and optionally its Q-network and defaults) under `name`.

    Args:
      name: the name used on the command line (`--env name`).
      make_env: a factory returning a gymnax `Environment`, or `(env, env_params)`.
      make_network: optional `(num_actions, config) -> flax.linen.Module`.
      defaults: hyperparameter defaults for this env, e.g. `{"total_steps": 2_000_000}`.
      solved_threshold: mean greedy return that counts as solved.

    Returns:
      The registered spec.

    Raises:
      ConfigError: the name is taken or the factory is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("environment name must be a non-empty string")
    if name in _REGISTRY or name.lower() in ALIASES:
        raise ConfigError(f"environment {name!r} is already registered")
    if not callable(make_env):
        raise ConfigError(f"make_env for {name!r} is not callable")
    if make_network is not None and not callable(make_network):
        raise ConfigError(f"make_network for {name!r} is not callable")
    spec = EnvSpec(
        name=name,
        make_env=_checked_factory(name, make_env),
        make_network=make_network,
        defaults=dict(defaults or {}),
        solved_threshold=solved_threshold,
    )
    _validate_default_keys(spec)
    _REGISTRY[name] = spec
    return spec


def unregister(name: str) -> None:
    """Removes a registered name (for tests and interactive use)."""
    _REGISTRY.pop(name, None)


def registered_names() -> list[str]:
    """Every name `get_spec` accepts without an import path."""
    _load_builtin_envs()
    return sorted(set(_REGISTRY) | set(gymnax.registered_envs) | set(ALIASES))


def get_spec(name: str) -> EnvSpec:
    """Resolves an environment name (see the module docstring) to its spec.

    Raises:
      ConfigError: unknown name, unimportable module, or not a discrete-action gymnax environment.
    """
    _load_builtin_envs()
    name = ALIASES.get(name.lower(), name) if isinstance(name, str) else name
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in gymnax.registered_envs:
        return _REGISTRY.setdefault(
            name,
            EnvSpec(
                name=name,
                make_env=_checked_factory(name, lambda: _make_gymnax(name)),
                defaults=GYMNAX_DEFAULTS.get(name, {}),
                solved_threshold=SOLVED_THRESHOLDS.get(name),
            ),
        )
    if ":" in name:
        from jaxdqn import suites  # local import: jaxdqn.suites imports this module

        if suites.is_suite_name(name):  # navix:ID, xminigrid:ID, craftax:ID, jumanji:ID
            return suites.suite_spec(name)
        return _spec_from_import_path(name)
    close = difflib.get_close_matches(name, registered_names(), n=3, cutoff=0.5)
    hint = ", ".join(close) if close else "cartpole, Acrobot-v1, MountainCar-v0, Breakout-MinAtar"
    raise ConfigError(f"unknown environment {name!r}; try one of: {hint} (or package.module:EnvClass)")


def make_env(name: str) -> tuple[EnvSpec, Environment, Any]:
    """Builds the environment registered as `name`: returns `(spec, env, env_params)`."""
    spec = get_spec(name)
    env, env_params = spec.make_env()
    return spec, env, env_params


# Where a gymnax env's data comes from, for the error when it cannot be loaded.
DATA_HINTS = {"MNISTBandit-bsuite": "gymnax downloads MNIST into /tmp/mnist on first use; "
                                    "to run offline, put its four .gz files there"}


def _make_gymnax(name: str) -> Any:
    """`gymnax.make(name)`; an env whose data cannot be fetched (MNISTBandit-bsuite downloads MNIST) is a ConfigError."""
    try:
        return gymnax.make(name)
    except (OSError, EOFError) as error:  # URLError is an OSError; a truncated download ends in EOFError
        reason = one_line(error)
        message = f"environment {name!r} could not load its data ({type(error).__name__}: {reason})"
        raise ConfigError(message + (f"; {DATA_HINTS[name]}" if name in DATA_HINTS else "")) from None


def _checked_factory(name: str, factory: Callable[[], Any]) -> Callable[[], tuple[Environment, Any]]:
    """Wraps a factory so that it returns `(env, params)` and rejects what DQN cannot train."""

    def make() -> tuple[Environment, Any]:
        made = factory()
        env, env_params = made if isinstance(made, tuple) else (made, getattr(made, "default_params", None))
        if not isinstance(env, Environment):
            raise ConfigError(
                f"environment {name!r}: factory returned {type(env).__name__}, "
                "not a gymnax.environments.environment.Environment"
            )
        if env_params is None:
            env_params = env.default_params
        action_space = env.action_space(env_params)
        if not isinstance(action_space, spaces.Discrete):
            raise ConfigError(
                f"environment {name!r} has a {type(action_space).__name__} action space; "
                "DQN needs discrete actions"
            )
        return env, env_params

    return make


def is_import_path(name: str) -> bool:
    """Whether `get_spec(name)` would import a module named by `name` (`package.module:Attribute`): not a
    registered name, alias or gymnax id. Importing a module runs its code."""
    _load_builtin_envs()
    name = ALIASES.get(name.lower(), name)
    from jaxdqn.suites import is_suite_name  # local import: jaxdqn.suites imports this module

    return ":" in name and name not in _REGISTRY and name not in gymnax.registered_envs and not is_suite_name(name)


def _one_line(error: BaseException) -> str:
    message = one_line(error)
    return f"{type(error).__name__}: {message}"[:300] if message else type(error).__name__


def _spec_from_import_path(path: str) -> EnvSpec:
    module_name, _, attr = path.partition(":")
    if not module_name.strip() or not attr.strip():
        raise ConfigError(f"environment {path!r}: expected package.module:Attribute (an importable module, then "
                          f"an Environment class or factory in it)")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001  (a user's module may fail to parse, or raise anything)
        hint = ("; give the module's import name (package.module, found on sys.path), not a file path"
                if module_name.endswith(".py") or "/" in module_name or "\\" in module_name else "")
        raise ConfigError(f"cannot import module {module_name!r} for environment {path!r}: "
                          f"{_one_line(error)}{hint}") from None
    if path in _REGISTRY:  # the module registered itself under its import path
        return _REGISTRY[path]
    if not hasattr(module, attr):
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    target = getattr(module, attr)
    if isinstance(target, EnvSpec):
        return target
    if not callable(target):
        raise ConfigError(f"{path!r} is neither an Environment class nor a factory")
    spec = register(path, target)
    # The user's class or factory may raise anything when built (abstract, needs arguments, a bug): one line.
    _REGISTRY[path] = spec = dataclasses.replace(spec, make_env=_reporting_errors(path, module_name, spec.make_env))
    return spec


def _reporting_errors(path: str, module_name: str, make: Callable[[], Any]) -> Callable[[], Any]:
    """`make`, raising any error but a ConfigError as a one-line ConfigError naming the module."""

    def made() -> Any:
        try:
            return make()
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"environment {path!r} (module {module_name!r}) could not be built: "
                              f"{_one_line(error)}") from None

    return made


def _validate_default_keys(spec: EnvSpec) -> None:
    from jaxdqn.config import TrainConfig  # local import: config imports this module

    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(spec.defaults) - known)
    if unknown:
        raise ConfigError(f"environment {spec.name!r}: unknown hyperparameter defaults {unknown}")


_builtin_loaded = False


def _load_builtin_envs() -> None:
    """Imports `jaxdqn.envs` (the ported simulators of the repository's envs/ folder), which registers them.

    Never a top-level `envs` package: a user's own `envs/` in the working directory is not imported.
    """
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    importlib.import_module("jaxdqn.envs")
