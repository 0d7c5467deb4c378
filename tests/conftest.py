"""Shared test fixtures: small trainer configurations that compile and run quickly on a 2-core CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running jaxdqn's CLIs in a subprocess from the project root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def make_dqn(config):
    """A one-device `jaxdqn.agent.DQN` for `config`, with the env and the network `jaxdqn.train` would pick."""
    from jaxdqn.agent import DQN
    from jaxdqn.networks import make_network
    from jaxdqn.registry import make_env

    _, env, env_params = make_env(config.env)
    network = make_network(env.observation_space(env_params).shape, env.action_space(env_params).n, config)
    return DQN(config, env, env_params, network)


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
