"""The fused acting kernel (jaxdqn.fused_acting), run by the Pallas interpreter on the CPU, against flax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn import fused_acting
from jaxdqn.networks import MinAtarQNetwork, MLPQNetwork


def _perturbed_params(network, obs):
    """Initial parameters plus noise, so that LayerNorm's scale and shift are not the trivial 1 and 0."""
    params = network.init(jax.random.key(0), obs[:1])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [leaf + 0.2 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])


@pytest.mark.parametrize("hidden_sizes, layer_norm, num_actions, obs_size, batch", [
    ((128, 128), True, 2, 4, 512),  # CartPole with the defaults
    ((100,), False, 3, 6, 1000),  # widths, observation and batch that are not powers of two
    ((64, 32), True, 5, 2, 130),  # a batch that is not a whole number of blocks
    ((32,), True, 2, 4, 32768),  # blocks of 256 rows (`block_shape`)
])
def test_kernel_takes_the_greedy_action_of_the_flax_network(hidden_sizes, layer_norm, num_actions, obs_size, batch):
    network = MLPQNetwork(num_actions=num_actions, hidden_sizes=hidden_sizes, layer_norm=layer_norm)
    obs = 2.0 * jax.random.normal(jax.random.key(2), (batch, obs_size))
    params = _perturbed_params(network, obs)
    q_values = network.apply(params, obs)
    actions = jax.jit(lambda p, o: fused_acting.greedy_actions(network, p, o, interpret=True))(params, obs)
    assert actions.shape == (batch,) and actions.dtype == jnp.int32
    top_two = jnp.sort(q_values, axis=1)[:, -2:]
    clear = np.asarray(top_two[:, 1] - top_two[:, 0] > 1e-4)  # rows whose best action is not a near-tie
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(actions)[clear], np.asarray(jnp.argmax(q_values, axis=1))[clear])
    assert len(np.unique(np.asarray(actions))) > 1  # not a constant that happens to match


def test_block_shape_leaves_enough_blocks_to_fill_the_gpu():
    assert fused_acting.block_shape(4096) == (64, 4)
    assert fused_acting.block_shape(16384) == (128, 4)
    assert fused_acting.block_shape(65536) == (256, 8)


def test_only_plain_mlps_within_the_size_limits_take_the_kernel():
    assert fused_acting.supports(MLPQNetwork(num_actions=2), obs_size=4)  # CartPole
    assert fused_acting.supports(MLPQNetwork(num_actions=4, hidden_sizes=(128, 128, 128)), obs_size=16)
    assert not fused_acting.supports(MLPQNetwork(num_actions=2, dueling=True), obs_size=4)
    assert not fused_acting.supports(MLPQNetwork(num_actions=2, hidden_sizes=(256,)), obs_size=4)
    assert not fused_acting.supports(MLPQNetwork(num_actions=6), obs_size=500)  # Taxi's one-hot states
    assert not fused_acting.supports(MinAtarQNetwork(num_actions=3), obs_size=400)


def test_training_steps_act_the_same_with_the_kernel(small_config):
    """Two train steps per path from the same state: the same stored actions, the same learner.

    Outside shard_map: the Pallas interpreter does not run under shard_map's varying-axes checks
    (the compiled kernel does; the GPU benchmarks run it there).
    """
    from jaxdqn.agent import DQN
    from jaxdqn.networks import make_network
    from jaxdqn.registry import make_env

    config = small_config(num_envs=64, buffer_size=64 * 8, hidden_sizes=(32, 32), eps=0.0, min_eps=0.0,
                          learning_starts=0)
    _, env, env_params = make_env(config.env)
    network = make_network(env.observation_space(env_params).shape, env.action_space(env_params).n, config)
    states = {}
    for acting_kernel in (None, "interpret"):
        dqn = DQN(config, env, env_params, network)
        dqn.acting_kernel = acting_kernel
        state = dqn.init(jax.random.key(0), config.hparams)
        for _ in range(2):
            state = jax.jit(dqn.train_step)(state)[0]
        states[acting_kernel] = state
    actions = [np.asarray(states[mode].buffer.data.action) for mode in (None, "interpret")]
    np.testing.assert_array_equal(actions[0], actions[1])
    assert len(np.unique(actions[0])) > 1  # greedy (epsilon 0) actions of an untrained network, both of them
    np.testing.assert_allclose(np.asarray(states[None].params["params"]["Dense_0"]["kernel"]),
                               np.asarray(states["interpret"].params["params"]["Dense_0"]["kernel"]), rtol=1e-5)
