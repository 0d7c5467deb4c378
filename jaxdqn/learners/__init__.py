"""The learners a run can train, by name (`--learner`): each is one file and one line here."""

from __future__ import annotations

from jaxdqn.learners.base import Learner
from jaxdqn.learners.c51 import C51
from jaxdqn.learners.dqn import DQN
from jaxdqn.learners.qrdqn import QRDQN

LEARNERS: dict[str, type[Learner]] = {DQN.name: DQN, C51.name: C51, QRDQN.name: QRDQN}

__all__ = ["C51", "DQN", "LEARNERS", "QRDQN", "Learner", "build_learner", "learner_class", "make_learner"]


def learner_class(config) -> type[Learner]:
    """The learner class `config.learner` names (default "dqn")."""
    return LEARNERS[getattr(config, "learner", "dqn")]


def make_learner(config, network) -> Learner:
    """The learner `config.learner` names, with its settings from `config`, on `network`."""
    return learner_class(config).from_config(config, network)


def build_learner(config, obs_shape: tuple[int, ...], num_actions: int, make_custom=None) -> Learner:
    """The run's learner on a new network (`jaxdqn.networks.make_network`: the env's registered factory
    `make_custom`, else the MLP or the MinAtar network) with as many outputs per action as it needs."""
    from jaxdqn.networks import make_network

    import jax
    import jax.numpy as jnp

    from jaxdqn.errors import ConfigError

    cls = learner_class(config)
    outputs = cls.outputs_per_action(config)
    network = make_network(obs_shape, num_actions, config, make_custom, outputs)
    if make_custom is not None:  # an env's own network must emit what the learner reads
        params = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, *obs_shape), jnp.float32))
        shape = jax.eval_shape(network.apply, params, jnp.zeros((1, *obs_shape), jnp.float32)).shape
        expected = (1, num_actions) if outputs == 1 else (1, num_actions, outputs)
        if tuple(shape) != expected:
            raise ConfigError(f"--learner {cls.name}: the env's registered network emits {tuple(shape)} for one "
                              f"observation, the learner reads {expected}")
    if config.noisy and not getattr(network, "noisy", False):
        raise ConfigError("--noisy: the env's registered network has no noisy layers (give it a `noisy` field "
                          "and NoisyDense layers, see jaxdqn.networks)")
    return cls.from_config(config, network)
