"""Shared test fixtures: small trainer configurations that compile and run quickly on a 2-core CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _xla_has_cpu_fusion_emitters_flag() -> bool:
    """XLA aborts the process on an XLA_FLAGS entry it does not know; jaxlib 0.11 no longer knows
    `--xla_cpu_use_fusion_emitters` (seen on a GPU machine with jaxlib 0.11.2)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("jaxlib").split(".")[:2])
    return (major, minor) < (0, 11)


# XLA's CPU backend at optimization level 1 and without its MLIR fusion emitters: about a third less CPU time
# for the tests' short runs, nearly all compiling (checked: 33 s against 22 s for a CartPole solve and a kernel
# comparison). The tests check what runs compute and learn, not how fast. Every test in this process runs so
# (XLA reads the flags when JAX's CPU backend starts, after this); a subprocess gets the user's own XLA_FLAGS
# unless it asks for these (`subprocess_env(XLA_FLAGS=CHEAP_COMPILE)`), so the README's command and the
# CartPole solve through the CLI still run with XLA's defaults. The fusion emitters' flag only where XLA knows it.
NO_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false" if _xla_has_cpu_fusion_emitters_flag() else ""
CHEAP_COMPILE = f"--xla_backend_optimization_level=1 {NO_FUSION_EMITTERS}".strip()
# Cheaper still, for runs that only need to compile and take a few steps (tests/test_suites.py, test_gymnax_envs.py):
# the same settings at optimization level 0, as XLA_FLAGS and as `compile(compiler_options=...)`.
FAST_COMPILE = f"--xla_backend_optimization_level=0 {NO_FUSION_EMITTERS}".strip()
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        **({"xla_cpu_use_fusion_emitters": False} if NO_FUSION_EMITTERS else {})}
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
os.environ["XLA_FLAGS"] = f"{USER_XLA_FLAGS or ''} {CHEAP_COMPILE}".strip()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running jaxdqn's CLIs in a subprocess from the project root (with the user's XLA_FLAGS)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS")
    if USER_XLA_FLAGS is not None:
        env["XLA_FLAGS"] = USER_XLA_FLAGS
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cheap_compile_env(devices: int | None = None, **extra: str) -> dict[str, str]:
    """`subprocess_env` whose XLA compiles with CHEAP_COMPILE, on `devices` CPU devices if given."""
    flags = CHEAP_COMPILE if devices is None else f"--xla_force_host_platform_device_count={devices} {CHEAP_COMPILE}"
    return subprocess_env(XLA_FLAGS=flags, **extra)


def make_trainer(config, kernels: str | None = None, platform: str | None = None):
    """A one-device `jaxdqn.agent.Trainer` for `config`, with the env and the learner `jaxdqn.train` would pick.

    `kernels="interpret"`: the GPU kernels the config's `fused_acting`/`fused_update` ask for, run by the
    Pallas interpreter (`jaxdqn.kernels.choose`); `platform`: the platform the backend is chosen for.
    """
    from jaxdqn import kernels as backends
    from jaxdqn.agent import Trainer
    from jaxdqn.learners import build_learner
    from jaxdqn.registry import make_env

    spec, env, env_params = make_env(config.env)
    obs_shape = env.observation_space(env_params).shape
    learner = build_learner(config, obs_shape, env.action_space(env_params).n, spec.make_network)
    kernel = backends.Path.INTERPRET if kernels == "interpret" else backends.Path.KERNEL
    backend = backends.choose(config, learner, obs_shape, max(1, config.batch_size), platform=platform, kernel=kernel)
    return Trainer(config, env, env_params, learner.network, learner=learner, backend=backend)


@pytest.fixture
def small_config():
    """A TrainConfig small enough to compile in seconds (override fields with `.replace`-style kwargs)."""
    from jaxdqn.config import TrainConfig

    def make(**overrides):
        values = dict(env="CartPole-v1", num_envs=16, total_steps=512, buffer_size=256, batch_size=32,
                      updates_per_step=2, learning_starts=64, chunk_steps=64, eval_frequency=512,
                      eval_episodes=8, hidden_sizes=(16,), eps_decay_steps=256, target_update_frequency=4)
        values.update(overrides)
        return TrainConfig(**values).validate()

    return make
