"""Environments of other JAX suites (Navix, XLand-MiniGrid, Craftax, Jumanji) as gymnax environments.

`--env navix:Navix-Empty-8x8-v0`, `--env xminigrid:MiniGrid-Empty-8x8`, `--env craftax:Craftax-Classic-Symbolic-v1`,
`--env jumanji:Snake-v1`: the prefix names the suite, the rest is the suite's own id. Each suite is an optional
extra of the package (`pip install -e ".[navix]"`) and is imported only when one of its names is used.

One small adapter per suite turns the suite's API into gymnax 1.0's, the one jaxdqn trains on. Each adapter
implements gymnax's `reset_env` / `step_env` / `is_truncated` hooks, so that gymnax's own `Environment.step`
does the rest as for any gymnax environment: six return values, the auto-reset, and the observation before
the reset in `info["final_observation"]` (the one a transition bootstraps from). What each adapter maps:

- termination (a terminal state: the target does not bootstrap) and truncation (the episode was cut, by a
  time limit: it does) as the suite tells them apart, never both at once;
- the suite's reset, on the key gymnax's `step` gives it, wherever the suite resets lazily or not at all;
- observations: arrays as they are; Jumanji's structured ones flattened into one float32 vector;
- actions: a discrete set of `n`; Jumanji's multi-discrete ones as the joint index over all their combinations
  when there are at most `MAX_JOINT_ACTIONS`;
- `observation_space` / `action_space` as gymnax `spaces.Box` / `spaces.Discrete`.

What DQN cannot train (continuous actions, too many joint actions, one reward per agent) and a suite that is
not installed are one-line `ConfigError`s. docs/suites.md describes each suite's mapping and its limits.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdqn.errors import ConfigError, one_line
from jaxdqn.registry import EnvSpec, Environment, register, spaces

# A multi-discrete action space becomes one discrete action per combination up to this many combinations
# (Jumanji's Sudoku has 729, BinPack 800); beyond it DQN's one output per action is not a sensible head.
MAX_JOINT_ACTIONS = 1024


@struct.dataclass
class SuiteState:
    """The adapter's state: the suite's own state, and whether the step that made it truncated the episode.

    Attributes:
      inner: the suite's state (a Navix or XLand-MiniGrid `Timestep`, a Craftax or Jumanji `State`).
      truncated: the step that produced `inner` ended the episode without a terminal state (`is_truncated`
        reads it; after an auto-reset it is False again).
    """

    inner: Any
    truncated: jax.Array


@struct.dataclass
class SuiteParams:
    """The adapter's parameters: the suite's own, and what identifies the environment.

    Their repr is part of the key of jaxdqn's compiled-program cache (`jaxdqn.program_cache`), so it names
    everything the suite's step depends on: an adapter built by a user's factory with other settings (Navix's
    `max_steps`, say) under the same name gets programs of its own.

    Attributes:
      name: the environment's jaxdqn name, `suite:id`.
      version: the suite package's version.
      settings: the suite environment's own settings, as text that is the same in every process (Navix: its
        fields; Craftax: its static parameters; Jumanji: its repr, which most of its environments fill in).
      inner: the suite's parameters (XLand-MiniGrid's and Craftax's `EnvParams`), None for suites without any.
    """

    name: str = struct.field(pytree_node=False)
    version: str = struct.field(pytree_node=False)
    settings: str = struct.field(pytree_node=False)
    inner: Any = None


def describe(value: Any) -> str:
    """A setting as text without object addresses: functions by qualified name, sequences item by item."""
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe(item) for item in value) + ")"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return one_line(repr(value))


class SuiteEnv(Environment):
    """A suite's environment behind gymnax's API; a subclass implements `suite_reset` and `suite_step`.

    Args:
      name: the jaxdqn name, `suite:id`.
      num_actions: the size of the discrete action set.
      observation_space: a gymnax space of one (adapted) observation.
      params: the suite's own parameters, or None.
      version: the suite package's version.
      settings: the suite environment's settings that `params` does not hold (see `SuiteParams`).
    """

    def __init__(self, name: str, num_actions: int, observation_space: spaces.Box, params: Any, version: str,
                 settings: str):
        super().__init__()
        self._name = name
        self._num_actions = num_actions
        self._observation_space = observation_space
        self._params = SuiteParams(name=name, version=version, settings=settings, inner=params)

    # What a subclass implements: the suite's own reset and step, in the suite's terms.
    def suite_reset(self, key: jax.Array, params: Any) -> tuple[Any, Any]:
        """`(observation, suite_state)` of a new episode."""
        raise NotImplementedError

    def suite_step(self, key: jax.Array, inner: Any, action: jax.Array, params: Any):
        """`(observation, suite_state, reward, terminated, ended, info)` of one step, without any reset.

        `ended`: the episode ended, terminated or not (`step_env` counts as truncated only what is not terminated).
        """
        raise NotImplementedError

    # gymnax's hooks: `Environment.step` calls these, then resets and fills `info["final_observation"]`.
    @property
    def default_params(self) -> SuiteParams:
        return self._params

    def reset_env(self, key: jax.Array, params: SuiteParams) -> tuple[Any, SuiteState]:
        obs, inner = self.suite_reset(key, params.inner)
        return obs, SuiteState(inner=inner, truncated=jnp.zeros((), jnp.bool_))

    def step_env(self, key: jax.Array, state: SuiteState, action: jax.Array, params: SuiteParams):
        obs, inner, reward, terminated, truncated, info = self.suite_step(key, state.inner, action, params.inner)
        terminated = jnp.asarray(terminated, jnp.bool_)
        truncated = jnp.logical_and(jnp.asarray(truncated, jnp.bool_), jnp.logical_not(terminated))
        state = SuiteState(inner=inner, truncated=truncated)
        return obs, state, jnp.asarray(reward, jnp.float32), terminated, dict(info)

    def is_truncated(self, state: SuiteState, params: SuiteParams) -> jax.Array:
        return state.truncated

    def is_terminated(self, state: SuiteState, params: SuiteParams) -> jax.Array:
        raise NotImplementedError("a suite's termination is known only from its step; read step's `terminated`")

    @property
    def name(self) -> str:
        return self._name

    @property
    def num_actions(self) -> int:
        return self._num_actions

    def action_space(self, params: SuiteParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(self._num_actions)

    def observation_space(self, params: SuiteParams | None = None) -> spaces.Box:
        return self._observation_space


class NavixEnv(SuiteEnv):
    """A Navix environment (`navix.make(id)`): its `Timestep` is the state, `step_type` tells the episode's end.

    Navix resets lazily, on the call after an episode's last step; here gymnax's `step` resets at once, so the
    adapter never steps a finished `Timestep` and calls Navix's `_step` (its `step` without the lazy reset).
    """

    def __init__(self, env: Any, name: str, version: str):
        from navix.spaces import Discrete  # the adapter is only built with Navix installed

        action_space = env.action_space
        if not isinstance(action_space, Discrete) or tuple(action_space.shape) != ():
            raise ConfigError(f"environment {name!r} has a {type(action_space).__name__} action space of shape "
                              f"{tuple(action_space.shape)}; DQN needs discrete actions")
        space = env.observation_space
        observation_space = spaces.Box(np.asarray(space.minimum), np.asarray(space.maximum), tuple(space.shape),
                                       space.dtype)
        settings = ", ".join(f"{field.name}={describe(getattr(env, field.name))}" for field in dataclasses.fields(env))
        super().__init__(name, int(action_space.n), observation_space, None, version,
                         f"{type(env).__qualname__}({settings})")
        self.navix_env = env

    def suite_reset(self, key, params):
        timestep = self.navix_env.reset(key)
        return timestep.observation, timestep

    def suite_step(self, key, timestep, action, params):
        timestep = self.navix_env._step(timestep, action)  # noqa: SLF001  (see the class docstring)
        return (timestep.observation, timestep, timestep.reward, timestep.is_termination(),
                timestep.is_truncation(), {})


class XMiniGridEnv(SuiteEnv):
    """An XLand-MiniGrid environment (`xminigrid.make(id)`), which does not reset by itself.

    Its last `TimeStep` of an episode has `step_type` LAST, with discount 0 when the goal was reached
    (terminated) and 1 when the step limit was (truncated).
    """

    def __init__(self, env: Any, env_params: Any, name: str, version: str):
        shape = env.observation_shape(env_params)
        if not isinstance(shape, tuple):
            raise ConfigError(f"environment {name!r} has structured observations; jaxdqn takes an array")
        observation_space = spaces.Box(0, 255, tuple(shape), jnp.uint8)
        super().__init__(name, int(env.num_actions(env_params)), observation_space, env_params, version,
                         type(env).__qualname__)
        self.xminigrid_env = env

    def suite_reset(self, key, params):
        timestep = self.xminigrid_env.reset(params, key)
        return timestep.observation, timestep

    def suite_step(self, key, timestep, action, params):
        timestep = self.xminigrid_env.step(params, timestep, action)
        last = timestep.last()
        terminated = jnp.logical_and(last, timestep.discount == 0)
        return timestep.observation, timestep, timestep.reward, terminated, last, {}


class CraftaxEnv(SuiteEnv):
    """A Craftax environment, its variant without auto-reset; gymnax-style already, but with one `done`.

    Craftax's `done` joins the time limit (`EnvParams.max_timesteps`) with the terminal states (death, lava,
    the final boss): terminated is Craftax's own `is_terminal` with the time limit lifted, truncated the rest.
    Its info (the achievements) is passed on, without its `discount`, which is 0 at the time limit too.
    """

    def __init__(self, env: Any, name: str, version: str):
        action_space = env.action_space(env.default_params)
        space = env.observation_space(env.default_params)
        observation_space = spaces.Box(space.low, space.high, tuple(space.shape), space.dtype)
        super().__init__(name, int(action_space.n), observation_space, env.default_params, version,
                         f"{type(env).__qualname__}({describe(env.static_env_params)})")
        self.craftax_env = env

    def suite_reset(self, key, params):
        return self.craftax_env.reset_env(key, params)

    def suite_step(self, key, state, action, params):
        obs, state, reward, done, info = self.craftax_env.step_env(key, state, action, params)
        without_time_limit = params.replace(max_timesteps=np.iinfo(np.int32).max)
        terminated = self.craftax_env.is_terminal(state, without_time_limit)
        info = {field: value for field, value in info.items() if field != "discount"}
        return obs, state, reward, terminated, done, info


class JumanjiEnv(SuiteEnv):
    """A Jumanji environment (`jumanji.make(id)`), which does not reset by itself.

    The observation (a NamedTuple of arrays) is flattened: every leaf, in the tree's order, raveled, as
    float32, concatenated. A `TimeStep` with `step_type` LAST ends the episode, terminated when its discount
    is 0 and truncated otherwise. A multi-discrete action is the joint index over its combinations.
    """

    def __init__(self, env: Any, name: str, version: str):
        from jumanji import specs  # the adapter is only built with Jumanji installed

        reward_shape = tuple(env.reward_spec.shape)
        if reward_shape != ():
            raise ConfigError(f"environment {name!r} gives one reward per agent (shape {reward_shape}); "
                              "DQN needs one scalar reward")
        action_spec = env.action_spec
        if isinstance(action_spec, specs.DiscreteArray):
            self.action_sizes: tuple[int, ...] = ()
            num_actions = int(action_spec.num_values)
        elif isinstance(action_spec, specs.MultiDiscreteArray):
            self.action_sizes = tuple(int(size) for size in np.asarray(action_spec.num_values).ravel())
            self.action_shape = tuple(np.shape(action_spec.num_values))
            num_actions = math.prod(self.action_sizes)
            if num_actions > MAX_JOINT_ACTIONS:
                raise ConfigError(f"environment {name!r} has a MultiDiscreteArray action space of "
                                  f"{' x '.join(map(str, self.action_sizes))} = {num_actions:,} joint actions; DQN "
                                  f"takes at most {MAX_JOINT_ACTIONS:,}")
        else:
            raise ConfigError(f"environment {name!r} has a {type(action_spec).__name__} action space; "
                              "DQN needs discrete actions")
        self.action_dtype = action_spec.dtype
        example = env.observation_spec.generate_value()
        size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(example))
        observation_space = spaces.Box(-np.inf, np.inf, (size,), jnp.float32)
        super().__init__(name, num_actions, observation_space, None, version,
                         f"{type(env).__qualname__}: {describe(env)}")
        self.jumanji_env = env

    @staticmethod
    def flatten_observation(observation: Any) -> jax.Array:
        """Every leaf of a Jumanji observation, raveled as float32 and concatenated: `[obs_size]`."""
        return jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in jax.tree.leaves(observation)])

    def suite_action(self, action: jax.Array) -> jax.Array:
        """The Jumanji action for jaxdqn's action index (a joint index unravelled for a multi-discrete space)."""
        if not self.action_sizes:
            return action.astype(self.action_dtype)
        parts = jnp.unravel_index(action, self.action_sizes)
        return jnp.stack(parts).reshape(self.action_shape).astype(self.action_dtype)

    def suite_reset(self, key, params):
        state, timestep = self.jumanji_env.reset(key)
        return self.flatten_observation(timestep.observation), state

    def suite_step(self, key, state, action, params):
        from jumanji.types import StepType

        state, timestep = self.jumanji_env.step(state, self.suite_action(action))
        last = timestep.step_type == StepType.LAST
        terminated = jnp.logical_and(last, timestep.discount == 0)
        return (self.flatten_observation(timestep.observation), state, timestep.reward, terminated, last,
                dict(timestep.extras or {}))


# Suites ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Suite:
    """A suite jaxdqn adapts: its prefix (also the extra's name), import and distribution names, ids, factory.

    Attributes:
      prefix: the name's prefix and the package extra that installs the suite (`pip install -e ".[prefix]"`).
      title: the suite's name in messages.
      package: the import name.
      distribution: the name pip knows it by (for its version).
      list_ids: `(module) -> ids` the suite accepts.
      make: `(module, suite id, jaxdqn name, version) -> SuiteEnv`.
    """

    prefix: str
    title: str
    package: str
    distribution: str
    list_ids: Callable[[Any], Sequence[str]]
    make: Callable[[Any, str, str, str], SuiteEnv]


def _make_navix(navix: Any, env_id: str, name: str, version: str) -> SuiteEnv:
    return NavixEnv(navix.make(env_id), name, version)


def _make_xminigrid(xminigrid: Any, env_id: str, name: str, version: str) -> SuiteEnv:
    if env_id.startswith("XLand-"):  # its default rule set is empty: no goal, so no reward and no termination
        raise ConfigError(f"environment {name!r} needs a rule set from an XLand-MiniGrid benchmark, which jaxdqn "
                          "does not load; train a MiniGrid-* id")
    env, env_params = xminigrid.make(env_id)
    return XMiniGridEnv(env, env_params, name, version)


# Craftax's ids of its environments without auto-reset (the adapter resets), each with its module and class.
CRAFTAX_IDS = {
    "Craftax-Classic-Symbolic-v1": ("craftax.craftax_classic.envs.craftax_symbolic_env",
                                    "CraftaxClassicSymbolicEnvNoAutoReset"),
    "Craftax-Classic-Pixels-v1": ("craftax.craftax_classic.envs.craftax_pixels_env",
                                  "CraftaxClassicPixelsEnvNoAutoReset"),
    "Craftax-Symbolic-v1": ("craftax.craftax.envs.craftax_symbolic_env", "CraftaxSymbolicEnvNoAutoReset"),
    "Craftax-Pixels-v1": ("craftax.craftax.envs.craftax_pixels_env", "CraftaxPixelsEnvNoAutoReset"),
}


def _make_craftax(craftax: Any, env_id: str, name: str, version: str) -> SuiteEnv:
    module_name, class_name = CRAFTAX_IDS[env_id]
    return CraftaxEnv(getattr(importlib.import_module(module_name), class_name)(), name, version)


def _make_jumanji(jumanji: Any, env_id: str, name: str, version: str) -> SuiteEnv:
    return JumanjiEnv(jumanji.make(env_id), name, version)


SUITES = {
    suite.prefix: suite
    for suite in (
        Suite("navix", "Navix", "navix", "navix", lambda navix: sorted(navix.registry()), _make_navix),
        Suite("xminigrid", "XLand-MiniGrid", "xminigrid", "xminigrid",
              lambda xminigrid: list(xminigrid.registered_environments()), _make_xminigrid),
        Suite("craftax", "Craftax", "craftax", "craftax", lambda craftax: list(CRAFTAX_IDS), _make_craftax),
        Suite("jumanji", "Jumanji", "jumanji", "jumanji", lambda jumanji: sorted(jumanji.registered_environments()),
              _make_jumanji),
    )
}


def is_suite_name(name: Any) -> bool:
    """Whether `name` is `suite:id` for one of `SUITES` (`navix:Navix-Empty-8x8-v0`, ...)."""
    return isinstance(name, str) and ":" in name and name.partition(":")[0] in SUITES


def import_suite(suite: Suite, name: str) -> Any:
    """The suite's package; a one-line ConfigError naming the extra to install when it is missing."""
    try:
        return importlib.import_module(suite.package)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.partition(".")[0] == suite.package:
            raise ConfigError(f"environment {name!r} needs {suite.title}, which is not installed: "
                              f"pip install -e \".[{suite.prefix}]\"") from None
        raise ConfigError(f"cannot import {suite.package} for environment {name!r}: "
                          f"{type(error).__name__}: {one_line(error)}") from None
    except Exception as error:  # noqa: BLE001  (an installed suite may fail to import with anything)
        raise ConfigError(f"cannot import {suite.package} for environment {name!r}: "
                          f"{type(error).__name__}: {one_line(error)}"[:400]) from None


def suite_spec(name: str) -> EnvSpec:
    """Registers `suite:id` (see `is_suite_name`) and returns its spec; `jaxdqn.registry.get_spec` calls it.

    Raises:
      ConfigError: the suite is not installed, fails to import, or has no such id.
    """
    prefix, _, env_id = name.partition(":")
    suite = SUITES[prefix]
    module = import_suite(suite, name)
    ids = list(suite.list_ids(module))
    if env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.5) or ids[:3]
        raise ConfigError(f"unknown {suite.title} environment {env_id!r}; try one of: "
                          + ", ".join(f"{prefix}:{candidate}" for candidate in close))
    try:
        version = importlib.metadata.version(suite.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(module, "__version__", "unknown"))
    return register(name, functools.partial(_build, suite, module, env_id, name, version))


def _build(suite: Suite, module: Any, env_id: str, name: str, version: str) -> SuiteEnv:
    """`suite.make(...)`; anything it raises but a ConfigError becomes a one-line ConfigError."""
    try:
        return suite.make(module, env_id, name, version)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001  (a suite's constructor may download data, or raise anything)
        raise ConfigError(f"environment {name!r} could not be built by {suite.title}: "
                          f"{type(error).__name__}: {one_line(error)}"[:400]) from None
