"""Checks a ported JAX environment against its reference simulator.

    python -m jaxdqn.check_port --env Taxi-v4 --reference gymnasium:Taxi-v4 [--episodes N] [--seed S]

A port passes when

1. it keeps the gymnax 1.0 API contract: `reset`/`step` trace under `jit` (no Python control flow
   on traced values), run under `vmap` over 1024 instances, keep their shapes and dtypes from step
   to step, stay inside `observation_space`; the action space is `Discrete`; `step` returns six
   values with scalar float reward and scalar bool `terminated`/`truncated`;
2. it matches the reference step for step: both are driven with the same uniformly random actions
   (a numpy `default_rng(seed)`), from the same states, over `episodes` episodes; rewards,
   `terminated`, `truncated` and observations are compared at every step, and so are the gymnax
   contract's auto-reset rules (after `terminated or truncated` the returned state is a reset state,
   `info["final_observation"]` is the observation before the reset and equals the returned
   observation otherwise) and the time limit (truncation at exactly `max_steps_in_episode`);
3. its reset distribution matches the reference's: the exact initial-state distribution when the
   reference exposes `initial_state_distrib` (Gymnasium's toy text does), else sampled resets of
   both sides (the same support when observations are discrete; resets that vary when the
   reference's vary, which catches randomness drawn on the host at trace time).

The first mismatch is reported with its episode, its step in that episode (0 is the reset, k the
observation after the k-th action), the field, and the port's and reference's values, with the
episode's actions so that it can be replayed.

How the two are aligned. A JAX port and a numpy reference cannot share random numbers, so the
checker does not compare random draws: it resets the reference with a seed, then *puts the reference
into the port's reset state*. A port opts in with two optional methods (the "reference protocol"):

- `reference_observation(obs, params)`: the reference's observation for one of the port's
  observations (a one-hot port returns `int(np.argmax(obs))`). Without it, observations are compared
  as they are (`np.allclose` with `atol` for floats, exact for integers).
- `set_reference_state(reference_env, state, params)`: called after every reference reset with the
  port's reset state; sets the reference's state (for Gymnasium's toy text:
  `reference_env.unwrapped.s = int(state.s)`) and returns the reference's observation of it (or None
  to keep the one `reset` returned). Without it, resets are not aligned, which is right only for
  references whose reset is deterministic.

Transitions are compared for equality, so randomness *inside* `step` (slippery or rainy variants)
cannot be checked this way; check such a port's deterministic variant, or its transition table.

A reference that has no time limit of its own (Gymnasium's `CliffWalking-v1`) is truncated at the
port's `max_steps_in_episode`, and the report says so; one whose limit differs from the port's is a
divergence (field `time_limit`).

Exit status: 0 when the port matches, 1 on a divergence (the report is printed), 2 with one line on
stderr when the input is unusable: a numeric flag out of range (checked before any work), an unknown
env or reference, or a port that breaks the contract of step 1 (wrong shapes or dtypes, Python control
flow on traced values, ...). An observation that leaves `observation_space` only later, in the lockstep
run, is a divergence (field `observation_space`). `check_port()` returns the `Report`, or raises
`ConfigError` (its subclass `PortError` for contract failures) where the command line exits with status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import linecache
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

if __name__ == "__main__":  # --help and bad flags answer before the slow imports below
    from jaxdqn.cli import make_check_port_parser

    make_check_port_parser().parse_args(sys.argv[1:])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from gymnax.environments import spaces  # noqa: E402
from gymnax.environments.environment import Environment  # noqa: E402

from jaxdqn import registry  # noqa: E402
from jaxdqn.registry import ConfigError  # noqa: E402

DEFAULT_EPISODES = 100
CONTRACT_ENVS = 1024  # instances stepped under vmap by the contract check
CONTRACT_STEPS = 64  # vector steps of the contract check
ROLLOUT_CHUNK = 1024  # port steps per jitted scan of the lockstep run


class PortError(ConfigError):
    """The port breaks the API contract, so it cannot be compared (exit status 2).

    Attributes:
      check: which part of the contract failed, e.g. "observation dtype" or "python control flow".
    """

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first place where the port and the reference disagree.

    Attributes:
      episode: 0-based episode of the lockstep run; None for whole-run checks (time limit, reset
        distribution).
      step: step within the episode: 0 is the reset, k the outcome of the episode's k-th action.
      field: "observation", "final_observation", "reward", "terminated", "truncated", "auto_reset",
        "observation_space", "reset", "reset_distribution" or "time_limit".
      port: the port's value (in the reference's terms where the port maps it).
      reference: the reference's value.
      actions: the episode's actions up to and including this step (replay them from `start`).
      start: the reference's observation at the episode's reset.
    """

    episode: int | None
    step: int | None
    field: str
    port: Any
    reference: Any
    actions: tuple[int, ...] = ()
    start: Any = None

    def format(self) -> str:
        where = "" if self.episode is None else f"episode {self.episode}, step {self.step}, "
        lines = [f"DIVERGENCE at {where}field {self.field!r}: port {self.port!r}, reference {self.reference!r}"]
        if self.start is not None:
            lines.append(f"  episode start (reference observation): {self.start!r}")
        if self.actions:
            lines.append(f"  actions since the reset: {list(self.actions)}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Report:
    """What `check_port` found.

    Attributes:
      env: the port's name.
      reference: the reference's description, e.g. "gymnasium:Taxi-v4".
      seed: the seed of actions, port keys and reference resets.
      episodes: episodes compared (complete or up to the divergence).
      steps: transitions compared.
      divergence: the first divergence, or None when the port matches.
      checks: the checks that passed.
      notes: choices the checker made that the reader should know about.
      seconds: wall time of the check.
    """

    env: str
    reference: str
    seed: int
    episodes: int
    steps: int
    divergence: Divergence | None
    checks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def format(self) -> str:
        lines = [f"check_port: {self.env} vs {self.reference} (seed {self.seed})"]
        lines += [f"  ok: {check}" for check in self.checks]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  compared {self.episodes} episodes, {self.steps} steps in {self.seconds:.1f}s")
        lines.append("MATCH" if self.divergence is None else self.divergence.format())
        return "\n".join(lines)


# Resolving the two sides ---------------------------------------------------------------------

def resolve_port(env: str | Environment, params: Any = None) -> tuple[str, Environment, Any]:
    """`(name, env, params)` for a registered name (see `jaxdqn.registry`) or an env instance."""
    if isinstance(env, Environment):
        name = env.name if type(env).__name__ in env.name else f"{env.name} ({type(env).__name__})"
        return name, env, env.default_params if params is None else params
    if not isinstance(env, str):
        raise ConfigError(f"--env must be a name or an Environment, got {type(env).__name__}")
    spec, port, default_params = registry.make_env(env)
    return spec.name, port, default_params if params is None else params


def make_reference(reference: str) -> Any:
    """Builds the reference simulator.

    `gymnasium:ID` is `gymnasium.make(ID)`; `package.module:attr` calls `attr()`, which must return an
    object with Gymnasium's `reset(seed=) -> (obs, info)` and `step(action) -> (obs, reward,
    terminated, truncated, info)` (a plain-Python simulator wrapped in that shape will do).
    """
    if not isinstance(reference, str) or ":" not in reference:
        raise ConfigError(f"unknown reference {reference!r}: expected gymnasium:ID or package.module:factory")
    source, _, name = reference.partition(":")
    if source == "gymnasium":
        try:
            import gymnasium
        except ImportError:
            raise ConfigError("the gymnasium reference needs `pip install gymnasium`") from None
        try:
            return gymnasium.make(name)
        except gymnasium.error.Error as error:
            raise ConfigError(f"unknown reference {reference!r}: {error}") from None
    try:
        module = importlib.import_module(source)
    except ImportError as error:
        raise ConfigError(f"unknown reference {reference!r}: {error}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"unknown reference {reference!r}: {source} has no callable {name!r}")
    made = factory()
    if not (callable(getattr(made, "reset", None)) and callable(getattr(made, "step", None))):
        raise ConfigError(f"reference {reference!r} has no reset()/step()")
    return made


# 1. The API contract --------------------------------------------------------------------------

def check_contract(env: Environment, params: Any, num_envs: int = CONTRACT_ENVS,
                   num_steps: int = CONTRACT_STEPS, seed: int = 0) -> list[str]:
    """Checks the gymnax 1.0 contract; returns the checks passed, raises PortError on the first failure."""
    passed = []
    action_space = _call(env.action_space, "action_space", params)
    if not isinstance(action_space, spaces.Discrete):
        raise PortError("action space", f"action_space is {type(action_space).__name__}, not Discrete")
    num_actions = _num_actions(env, action_space)
    obs_space = _call(env.observation_space, "observation_space", params)
    passed.append(f"Discrete({num_actions}) action space")

    key = jax.random.key(seed)
    action = jax.ShapeDtypeStruct((), action_space.dtype)
    obs, state = _trace("reset_env", env.reset_env, key, params)
    stepped = _trace("step_env", env.step_env, key, state, action, params)
    if not isinstance(stepped, tuple) or len(stepped) != 5:
        raise PortError("step_env", f"step_env returned {_count(stepped)}; gymnax 1.0 wants 5: "
                        "obs, state, reward, terminated, info")
    step_obs, step_state = stepped[0], stepped[1]
    _same_structure("state", state, step_state, "reset_env", "step_env")
    _same_structure("observation", obs, step_obs, "reset_env", "step_env")
    full = _trace("step", env.step, key, state, action, params)
    if not isinstance(full, tuple) or len(full) != 6:
        raise PortError("step", f"step returned {_count(full)}; gymnax 1.0 returns 6: "
                        "obs, state, reward, terminated, truncated, info")
    obs_out, state_out, reward, terminated, truncated, info = full
    _same_structure("observation", obs, obs_out, "reset", "step")
    _same_structure("state", state, state_out, "reset", "step")
    _expect_scalar("reward", reward, "float")
    _expect_scalar("terminated", terminated, "bool")
    _expect_scalar("truncated", truncated, "bool")
    if not isinstance(info, dict) or "final_observation" not in info:
        raise PortError("final_observation", 'step must return info["final_observation"] (gymnax 1.0)')
    _same_structure("observation", obs, info["final_observation"], "reset", 'info["final_observation"]')
    passed.append("reset_env/step_env/step trace under jit; step returns 6 values")
    passed.append("fixed shapes and dtypes: state and observation equal after reset and step; "
                  "scalar float reward, scalar bool terminated/truncated")
    _check_space_shape(obs, obs_space)
    passed.append(f"observation {_describe(obs)} matches observation_space")

    # Run it: vmap over num_envs instances, random actions, observations inside the space.
    in_space = _in_space_fn(obs_space)
    reset_keys = jax.random.split(jax.random.fold_in(key, 1), num_envs)
    step_keys = jax.random.split(jax.random.fold_in(key, 2), num_steps * num_envs).reshape(num_steps, num_envs)
    batch_reset = jax.vmap(env.reset, in_axes=(0, None))
    batch_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def run(reset_keys, step_keys, actions):
        obs, state = batch_reset(reset_keys, params)

        def body(state, inputs):
            keys, actions = inputs
            obs, state, reward, terminated, truncated, info = batch_step(keys, state, actions, params)
            return state, all_in_space(obs)

        _, ok = jax.lax.scan(body, state, (step_keys, actions))
        return all_in_space(obs), ok  # [], [num_steps]

    def all_in_space(obs):
        return jnp.ones((), bool) if in_space is None else jnp.all(jax.vmap(in_space)(obs))

    actions = np.random.default_rng(seed).integers(0, num_actions, (num_steps, num_envs), np.int32)
    try:
        first_ok, ok = jax.jit(run)(reset_keys, step_keys, jnp.asarray(actions, action_space.dtype))
    except Exception as error:  # noqa: BLE001 - any failure here is the port's
        raise PortError("vmap", f"reset/step fail under jit(vmap) over {num_envs} instances: "
                        f"{_first_line(error)}") from None
    if in_space is not None:
        if not bool(first_ok):
            raise PortError("observation space", f"a reset observation of {num_envs} lies outside {obs_space!r}")
        bad = np.flatnonzero(~np.asarray(ok))
        if bad.size:
            raise PortError("observation space",
                            f"after vector step {int(bad[0]) + 1} an observation lies outside {obs_space!r}")
    passed.append(f"jit(vmap) over {num_envs} instances for {num_steps} steps, observations inside "
                  "observation_space" + ("" if in_space is not None else " (not checked for this space)"))
    return passed


def _call(method: Callable, name: str, *args: Any) -> Any:
    try:
        return method(*args)
    except Exception as error:  # noqa: BLE001
        raise PortError(name, f"{name}() raised {type(error).__name__}: {_first_line(error)}") from None


def _num_actions(env: Environment, action_space: spaces.Discrete) -> int:
    try:
        num_actions = env.num_actions
    except NotImplementedError:
        raise PortError("num_actions", "num_actions is not implemented") from None
    if num_actions != action_space.n:
        raise PortError("num_actions", f"num_actions is {num_actions} but the action space has {action_space.n}")
    return int(num_actions)


# JAX errors that mean "this code runs Python on traced values": (error, check, what to tell the user).
_TRACING_ERRORS = (
    (jax.errors.ConcretizationTypeError, "python control flow", "uses Python control flow on a traced value"),
    (jax.errors.TracerIntegerConversionError, "python int", "converts a traced value to a Python int "
     "(Python indexing, range or int() on a traced value)"),
    (jax.errors.TracerArrayConversionError, "host numpy", "passes a traced value to numpy (use jax.numpy)"),
    (jax.errors.NonConcreteBooleanIndexError, "dynamic shape", "indexes with a boolean mask, a data-dependent "
     "shape"),
)


def _trace(name: str, fn: Callable, *args: Any) -> Any:
    """Traces `fn` abstractly (`jax.eval_shape`: no compilation); turns failures into PortErrors."""
    try:
        return jax.eval_shape(fn, *args)
    except PortError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure to trace is the port's
        where = _user_frame(error)
        for kind, check, what in _TRACING_ERRORS:
            if isinstance(error, kind):
                raise PortError(check, f"{what} in {name}: {_first_line(error)}{where}") from None
        raise PortError(name, f"{name} fails to trace: {type(error).__name__}: {_first_line(error)}{where}") from None


def _user_frame(error: BaseException) -> str:
    """` (at file:line: source)` for the innermost frame outside JAX, numpy and this module."""
    skip = tuple(os.path.dirname(module.__file__) for module in (jax, np)) + (__file__,)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(skip) and "site-packages/flax" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    source = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f" (at {os.path.relpath(frame.filename)}:{frame.lineno}: {source})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _count(value: Any) -> str:
    return f"{len(value)} values" if isinstance(value, tuple) else f"a {type(value).__name__}"


def _describe(tree: Any) -> str:
    leaves = jax.tree.leaves(tree)
    if len(leaves) == 1:
        return f"{jnp.dtype(leaves[0].dtype).name}{list(leaves[0].shape)}"
    return f"{len(leaves)} arrays"


def _same_structure(what: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise PortError(f"{what} structure", f"{what} from {b_name} has structure {jax.tree.structure(b)}, "
                        f"from {a_name} {jax.tree.structure(a)}")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        if x.shape != y.shape or jnp.dtype(x.dtype) != jnp.dtype(y.dtype):
            label = what + jax.tree_util.keystr(path)
            raise PortError(f"{what} dtype", f"{label} is {jnp.dtype(y.dtype).name}{list(y.shape)} after {b_name} "
                            f"but {jnp.dtype(x.dtype).name}{list(x.shape)} after {a_name}")


def _expect_scalar(what: str, value: Any, kind: str) -> None:
    dtype = jnp.dtype(value.dtype)
    good = dtype == jnp.bool_ if kind == "bool" else jnp.issubdtype(dtype, jnp.floating)
    if value.shape != () or not good:
        raise PortError(f"{what} dtype", f"step's {what} is {dtype.name}{list(value.shape)}; "
                        f"expected a scalar {kind}")


def _check_space_shape(obs: Any, space: Any) -> None:
    if not isinstance(space, (spaces.Box, spaces.Discrete)):
        return
    shape, dtype = tuple(obs.shape), jnp.dtype(obs.dtype)
    if tuple(space.shape) != shape:
        raise PortError("observation shape", f"observation shape {list(shape)} != observation_space shape "
                        f"{list(space.shape)}")
    if jnp.dtype(space.dtype) != dtype:
        raise PortError("observation dtype", f"observation dtype {dtype.name} != observation_space dtype "
                        f"{jnp.dtype(space.dtype).name}")


def _in_space_fn(space: Any) -> Callable[[jax.Array], jax.Array] | None:
    """A jittable `obs -> bool` for Box and Discrete spaces (NaN counts as outside)."""
    if isinstance(space, spaces.Box):
        low, high = jnp.asarray(space.low), jnp.asarray(space.high)
        return lambda obs: jnp.all((obs >= low) & (obs <= high))
    if isinstance(space, spaces.Discrete):
        return lambda obs: jnp.all((obs >= 0) & (obs < space.n))
    return None


# 2. Lockstep against the reference ---------------------------------------------------------------

@dataclasses.dataclass
class PortStep:
    """One transition of the port, as numpy values."""

    action: int
    obs: Any
    reward: float
    terminated: bool
    truncated: bool
    final_obs: Any
    state: Any  # the returned state: after a reset when terminated or truncated
    in_space: bool


def port_steps(env: Environment, params: Any, seed: int,
               chunk: int = ROLLOUT_CHUNK) -> tuple[Any, Any, Iterator[PortStep]]:
    """Steps one port instance with seeded random actions, in jitted chunks of `chunk` steps.

    Returns `(reset_obs, reset_state, steps)`, `steps` an endless iterator of `PortStep`. The actions
    come from `np.random.default_rng(seed)`, the port's keys from `jax.random.key(seed)`, so the same
    seed gives the same run, and a port that differs from another only in a bug follows the same
    trajectory up to the bug (tests use this to know where a seeded bug must be found).
    """
    num_actions = int(env.action_space(params).n)
    in_space = _in_space_fn(env.observation_space(params)) or (lambda obs: jnp.ones((), bool))
    key_reset, key_steps = jax.random.split(jax.random.key(seed))
    obs, state = jax.jit(env.reset)(key_reset, params)

    @jax.jit
    def rollout(state, keys, actions):
        def body(state, inputs):
            key, action = inputs
            obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
            return state, (obs, reward, terminated, truncated, info["final_observation"], state, in_space(obs))

        return jax.lax.scan(body, state, (keys, actions))

    def steps() -> Iterator[PortStep]:
        rng = np.random.default_rng(seed)
        carry = state
        for index in range(sys.maxsize):
            actions = rng.integers(0, num_actions, chunk).astype(np.int32)
            keys = jax.random.split(jax.random.fold_in(key_steps, index), chunk)
            carry, out = rollout(carry, keys, jnp.asarray(actions))
            obs, rewards, terminated, truncated, final_obs, states, ok = jax.device_get(out)
            state_leaves, state_def = jax.tree.flatten(states)
            rewards, terminated, truncated, ok = (x.tolist() for x in (rewards, terminated, truncated, ok))
            for t in range(chunk):
                state_t = state_def.unflatten([leaf[t] for leaf in state_leaves])
                yield PortStep(int(actions[t]), obs[t], rewards[t], terminated[t], truncated[t], final_obs[t],
                               state_t, ok[t])

    return jax.device_get(obs), jax.device_get(state), steps()


class _Mismatch(Exception):
    """Internal: stops the lockstep loop at the first divergence."""

    def __init__(self, step: int, field: str, port: Any, reference: Any):
        super().__init__(field)
        self.step, self.field, self.port, self.reference = step, field, port, reference


def _plain(value: Any) -> Any:
    """numpy scalars and small arrays as plain Python values, for readable reports."""
    value = np.asarray(value)
    if value.ndim == 0:
        return value.item()
    return value.tolist() if value.size <= 16 else f"{value.dtype.name}{list(value.shape)} array"


def _same(a: Any, b: Any, atol: float) -> bool:
    """Equal for integers and booleans; within `atol` (plus 1e-5 relative) for floats; NaN never matches."""
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
            return abs(float(a) - float(b)) <= atol + 1e-5 * abs(float(b))
        return int(a) == int(b)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        return bool(np.array_equal(a, b))
    b = b.astype(np.float64)
    return bool(np.all(np.abs(a.astype(np.float64) - b) <= atol + 1e-5 * np.abs(b)))


def lockstep(env: Environment, params: Any, reference: Any, episodes: int, seed: int, atol: float,
             time_limit: int | None, reset_support: np.ndarray | None) -> tuple[Divergence | None, int, int]:
    """Steps the port and the reference together; returns `(first divergence or None, episodes, steps)`.

    Args:
      time_limit: truncate the reference after this many steps (when it has no limit of its own).
      reset_support: boolean mask over the reference's discrete observations that may start an
        episode, or None.
    """
    to_reference = getattr(env, "reference_observation", None)
    align = getattr(env, "set_reference_state", None)

    def ref_view(obs: Any) -> Any:
        return to_reference(obs, params) if to_reference is not None else obs

    def start_episode(episode: int, port_obs: Any, port_state: Any) -> Any:
        ref_obs, _ = reference.reset(seed=seed + episode)
        if align is not None:
            aligned = align(reference, port_state, params)
            ref_obs = ref_obs if aligned is None else aligned
        if not _same(ref_view(port_obs), ref_obs, atol):
            raise _Mismatch(0, "observation", _plain(ref_view(port_obs)), _plain(ref_obs))
        if reset_support is not None and not _in_support(reset_support, ref_obs):
            raise _Mismatch(0, "reset", _plain(ref_obs), "not a possible initial state of the reference")
        return ref_obs

    port_obs, port_state, stream = port_steps(env, params, seed)
    episode, step, total, actions = 0, 0, 0, []
    start = None
    try:
        start = _plain(start_episode(0, port_obs, port_state))
        while episode < episodes:
            port = next(stream)
            actions.append(port.action)
            step += 1
            total += 1
            ref_obs, ref_reward, ref_terminated, ref_truncated, _ = reference.step(port.action)
            if time_limit is not None and step >= time_limit:
                ref_truncated = True
            if not _same(port.reward, ref_reward, atol):
                raise _Mismatch(step, "reward", port.reward, _plain(ref_reward))
            if port.terminated != bool(ref_terminated):
                raise _Mismatch(step, "terminated", port.terminated, bool(ref_terminated))
            if port.truncated != bool(ref_truncated):
                raise _Mismatch(step, "truncated", port.truncated, bool(ref_truncated))
            if not port.in_space:
                raise _Mismatch(step, "observation_space", _plain(port.obs), "inside observation_space")
            done = port.terminated or port.truncated
            if not done:
                if not np.array_equal(port.final_obs, port.obs):
                    raise _Mismatch(step, "final_observation", _plain(ref_view(port.final_obs)),
                                    "equal to the returned observation on a step that is not done")
                if not _same(ref_view(port.obs), ref_obs, atol):
                    raise _Mismatch(step, "observation", _plain(ref_view(port.obs)), _plain(ref_obs))
                continue
            # Done: the episode's last observation is in info["final_observation"], and the returned
            # observation and state are the next episode's reset.
            if not _same(ref_view(port.final_obs), ref_obs, atol):
                raise _Mismatch(step, "final_observation", _plain(ref_view(port.final_obs)), _plain(ref_obs))
            reset_time = getattr(port.state, "time", 0)
            if int(reset_time) != 0:
                raise _Mismatch(step, "auto_reset", f"state.time={int(reset_time)} after the step",
                                "0 (a reset state)")
            episode += 1
            if episode == episodes:
                break
            step, actions, start = 0, [], None
            start = _plain(start_episode(episode, port.obs, port.state))
    except _Mismatch as mismatch:
        divergence = Divergence(episode, mismatch.step, mismatch.field, mismatch.port, mismatch.reference,
                                tuple(actions), start)
        return divergence, episode + 1, total
    except Exception as error:  # noqa: BLE001 - the reference or the port's protocol methods failed
        raise ConfigError(f"stepping the reference failed at episode {episode}, step {step}: "
                          f"{type(error).__name__}: {_first_line(error)}{_user_frame(error)}") from None
    return None, episode, total


def _in_support(support: np.ndarray, obs: Any) -> bool:
    value = np.asarray(obs)
    return value.ndim == 0 and value.dtype.kind in "iu" and 0 <= int(value) < support.size and bool(support[int(value)])


# 3. Reset distribution ----------------------------------------------------------------------------

def initial_distribution(reference: Any) -> np.ndarray | None:
    """The reference's exact initial-state distribution when it exposes one (Gymnasium's toy text)."""
    distribution = getattr(getattr(reference, "unwrapped", reference), "initial_state_distrib", None)
    if distribution is None:
        return None
    distribution = np.asarray(distribution, np.float64)
    return distribution if distribution.ndim == 1 else None


def check_reset_distribution(env: Environment, params: Any, reference: Any, seed: int,
                             notes: list[str]) -> tuple[Divergence | None, str | None]:
    """Compares the port's reset distribution with the reference's; returns `(divergence, check passed)`.

    With the reference's exact distribution p over integer observations: every port reset must have
    p > 0, every state expected 20 times or more must occur, and each count must lie within 5 binomial
    standard deviations of its expectation. Otherwise resets of both are sampled: when the reference's
    resets take few distinct values, a value one side produced 20 times or more and the other never is
    a divergence; when they take many (continuous observations), a port whose resets never vary while
    the reference's do is (it probably drew its randomness on the host, once, at trace time).
    """
    to_reference = getattr(env, "reference_observation", None)
    distribution = initial_distribution(reference)
    support_size = int((distribution > 0).sum()) if distribution is not None else 0
    samples = int(min(100_000, max(10_000, 64 * support_size)))
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3), samples)
    port_obs = jax.device_get(jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)[0])
    port_values = [_hashable(to_reference(obs, params) if to_reference else obs) for obs in port_obs]

    if distribution is not None and all(isinstance(value, int) for value in port_values):
        outside = [value for value in port_values if not 0 <= value < distribution.size]
        if outside:
            return Divergence(None, 0, "reset_distribution", outside[0],
                              f"observations 0..{distribution.size - 1}"), None
        counts = np.bincount(np.asarray(port_values), minlength=distribution.size)
        expected = samples * distribution
        for state in np.flatnonzero((counts > 0) & (distribution == 0)):
            return Divergence(None, 0, "reset_distribution", f"{counts[state]} of {samples} resets to {state}",
                              "probability 0"), None
        tolerance = 5 * np.sqrt(expected * (1 - distribution)) + 1
        for state in np.flatnonzero(np.abs(counts - expected) > tolerance):
            return Divergence(None, 0, "reset_distribution", f"{counts[state]} of {samples} resets to {state}",
                              f"expected {expected[state]:.1f} (p={distribution[state]:.4g})"), None
        return None, (f"reset distribution: {samples} port resets agree with the reference's exact "
                      f"distribution over {support_size} states")

    port_counts = _counts(port_values)
    reference_counts = _counts([_hashable(reference.reset(seed=seed + 1_000_000 + index)[0])
                                for index in range(samples)])
    if len(reference_counts) > 1024:  # continuous: only "does the reset vary at all"
        if len(port_counts) == 1:
            return Divergence(None, 0, "reset_distribution", f"the same observation in {samples} resets",
                              f"{len(reference_counts)} distinct observations in {samples} resets"), None
        notes.append("reset distribution compared only for variety: the reference's resets are continuous")
        return None, f"reset distribution: port resets vary like the reference's ({samples} each)"
    for value, count in port_counts.items():
        if count >= 20 and value not in reference_counts:
            return Divergence(None, 0, "reset_distribution", f"{count} of {samples} resets to {value!r}",
                              f"0 of {samples} reference resets"), None
    for value, count in reference_counts.items():
        if count >= 20 and value not in port_counts:
            return Divergence(None, 0, "reset_distribution", f"0 of {samples} resets to {value!r}",
                              f"{count} of {samples} reference resets"), None
    return None, (f"reset distribution: the supports of {samples} port and reference resets agree "
                  f"({len(reference_counts)} distinct observations)")


def _hashable(value: Any) -> Any:
    """A reference observation as an int, a float or a tuple, so that resets can be counted."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else tuple(value.ravel().tolist())


def _counts(values: list[Any]) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# The check ---------------------------------------------------------------------------------------

def check_port(env_name: str | Environment, reference: str | None = None, episodes: int = DEFAULT_EPISODES,
               seed: int = 0, *, params: Any = None, num_envs: int = CONTRACT_ENVS,
               atol: float = 1e-5) -> Report:
    """Checks a port against its reference (see the module docstring).

    Args:
      env_name: a name `jaxdqn.registry` resolves (`Taxi-v4`, `package.module:EnvClass`) or an
        `Environment` instance.
      reference: `gymnasium:ID` or `package.module:factory`; None takes the port's `reference`
        attribute.
      episodes: episodes stepped in lockstep.
      seed: seeds the actions, the port's keys and the reference's resets.
      params: the port's params (default: the registered or default params).
      num_envs: instances of the vmapped contract check.
      atol: absolute tolerance for float rewards and observations.

    Returns:
      The report; `report.divergence` is None when the port matches.

    Raises:
      ConfigError: unknown env or reference, bad arguments.
      PortError: the port breaks the API contract (a ConfigError).
    """
    started = time.perf_counter()
    check_arguments(episodes, seed, num_envs, atol)
    name, env, params = resolve_port(env_name, params)
    reference = reference or getattr(env, "reference", None)
    if not reference:
        raise ConfigError(f"no reference for {name!r}: pass --reference gymnasium:ID")
    ref_env = make_reference(reference)
    checks = check_contract(env, params, num_envs=num_envs, seed=seed)
    notes: list[str] = []

    def report(divergence: Divergence | None, episodes_done: int = 0, steps: int = 0) -> Report:
        return Report(name, reference, seed, episodes_done, steps, divergence, tuple(checks), tuple(notes),
                      time.perf_counter() - started)

    # The time limit: the reference's own (TimeLimit wrapper) or, when it has none, the port's.
    port_limit = getattr(params, "max_steps_in_episode", None)
    ref_limit = getattr(getattr(ref_env, "spec", None), "max_episode_steps", None)
    applied_limit = None
    if ref_limit is not None and port_limit != ref_limit:
        return report(Divergence(None, None, "time_limit", port_limit, ref_limit))
    if ref_limit is None and port_limit is not None:
        applied_limit = int(port_limit)
        notes.append(f"the reference declares no time limit (spec.max_episode_steps); it is truncated at the "
                     f"port's max_steps_in_episode={applied_limit}")
    if not hasattr(env, "set_reference_state"):
        notes.append("the port has no set_reference_state: resets are not aligned with the reference")
    else:
        notes.append("each reference reset is aligned to the port's reset state (set_reference_state)")

    distribution = initial_distribution(ref_env)
    support = None if distribution is None else distribution > 0
    divergence, episodes_done, steps = lockstep(env, params, ref_env, episodes, seed, atol, applied_limit, support)
    if divergence is not None:
        return report(divergence, episodes_done, steps)
    checks.append(f"lockstep: {episodes_done} episodes, {steps} steps: rewards, terminated, truncated, "
                  "observations, auto-reset and time limit agree")
    divergence, passed = check_reset_distribution(env, params, ref_env, seed, notes)
    if passed:
        checks.append(passed)
    return report(divergence, episodes_done, steps)


def check_arguments(episodes: int, seed: int, num_envs: int, atol: float) -> None:
    """Raises ConfigError, before any work, for a numeric argument outside its range."""
    if episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    if num_envs <= 0:
        raise ConfigError(f"--num_envs must be positive, got {num_envs}")
    if not 0 <= seed < 2**32:  # numpy's and Gymnasium's seeds are non-negative
        raise ConfigError(f"--seed must be in [0, 2**32), got {seed}")
    if not (math.isfinite(atol) and atol >= 0):  # a NaN tolerance would fail every float comparison
        raise ConfigError(f"--atol must be a finite number >= 0, got {atol}")


# Command line ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from jaxdqn.cli import make_check_port_parser  # every command's flags are jaxdqn.cli's

    parser = make_check_port_parser()
    args = parser.parse_args(argv)
    try:
        report = check_port(args.env, args.reference, episodes=args.episodes, seed=args.seed,
                            num_envs=args.num_envs, atol=args.atol)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
