"""The fused acting kernel (jaxdqn.kernels.acting), run by the Pallas interpreter on the CPU, against flax and by counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn.kernels import acting as acting_kernel
from jaxdqn.networks import MinAtarQNetwork, MLPQNetwork
from tests.conftest import make_trainer


def _perturbed_params(network, obs):
    """Initial parameters plus noise, so that LayerNorm's scale and shift are not the trivial 1 and 0."""
    params = network.init(jax.random.key(0), obs[:1])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [leaf + 0.2 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])


def _kernel_actions(network, params, obs, epsilon=0.0, seed=0, precision="float32"):
    act = jax.jit(lambda p, o, k, e: acting_kernel.epsilon_greedy_actions(network, p, o, k, e, precision=precision,
                                                                         interpret=True))
    return np.asarray(act(params, obs, jax.random.key(seed), jnp.float32(epsilon)))


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
    q_values = np.asarray(network.apply(params, obs))
    best = q_values.argmax(axis=1)
    top_two = np.sort(q_values, axis=1)[:, -2:]
    actions = _kernel_actions(network, params, obs, precision="float32")
    assert actions.shape == (batch,) and actions.dtype == np.int32
    clear = top_two[:, 1] - top_two[:, 0] > 1e-4  # rows whose best action is not a near-tie
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(actions[clear], best[clear])
    assert len(np.unique(actions)) > 1  # not a constant that happens to match
    # bfloat16 operands (8-bit significands): the action taken is the best one, or short of it by
    # rounding only, under 1% of the Q-values' scale.
    actions = _kernel_actions(network, params, obs, precision="bfloat16")
    shortfall = top_two[:, 1] - q_values[np.arange(batch), actions]
    assert shortfall.max() <= 0.01 * np.abs(q_values).max(), shortfall.max()
    assert np.mean(actions == best) > 0.95


def test_kernel_explores_with_probability_epsilon_uniformly_over_the_actions():
    network = MLPQNetwork(num_actions=3, hidden_sizes=(32,))
    batch = 20_000
    obs = jax.random.normal(jax.random.key(2), (batch, 4))
    params = _perturbed_params(network, obs)
    greedy = _kernel_actions(network, params, obs, epsilon=0.0)
    assert len(np.unique(greedy)) > 1
    explored = _kernel_actions(network, params, obs, epsilon=1.0)
    counts = np.bincount(explored, minlength=3) / batch
    np.testing.assert_allclose(counts, 1 / 3, atol=0.015)  # 1/3 within about 4 standard deviations
    assert np.mean(explored == greedy) < 0.4  # the random choices ignore the greedy ones
    # epsilon 0.3: a random action differs from the greedy one with probability 2/3.
    mixed = _kernel_actions(network, params, obs, epsilon=0.3)
    assert abs(np.mean(mixed != greedy) - 0.3 * 2 / 3) < 0.015
    # Another key draws other choices; the same key the same ones.
    np.testing.assert_array_equal(mixed, _kernel_actions(network, params, obs, epsilon=0.3))
    other = _kernel_actions(network, params, obs, epsilon=0.3, seed=1)
    assert np.mean(other != mixed) > 0.1
    # Rows next to each other, or a block apart, explore independently.
    first, second = (mixed != greedy)[:-1], (mixed != greedy)[1:]
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.05


def test_block_shape_leaves_enough_blocks_to_fill_the_gpu():
    assert acting_kernel.block_shape(4096) == (64, 4)
    assert acting_kernel.block_shape(16384) == (128, 4)
    assert acting_kernel.block_shape(65536) == (256, 8)


def test_only_plain_mlps_within_the_size_limits_take_the_kernel():
    assert acting_kernel.supports(MLPQNetwork(num_actions=2), obs_size=4)  # CartPole
    assert acting_kernel.supports(MLPQNetwork(num_actions=4, hidden_sizes=(128, 128, 128)), obs_size=16)
    assert not acting_kernel.supports(MLPQNetwork(num_actions=2, dueling=True), obs_size=4)
    assert not acting_kernel.supports(MLPQNetwork(num_actions=2, hidden_sizes=(256,)), obs_size=4)
    assert not acting_kernel.supports(MLPQNetwork(num_actions=6), obs_size=500)  # Taxi's one-hot states
    assert not acting_kernel.supports(MinAtarQNetwork(num_actions=3), obs_size=400)


def test_training_steps_act_the_same_with_the_kernel(small_config):
    """Two train steps per path from the same state: the same stored actions, the same learner.

    Outside shard_map: the Pallas interpreter does not run under shard_map's varying-axes checks
    (the compiled kernel does; the GPU benchmarks run it there).
    """
    config = small_config(num_envs=64, buffer_size=64 * 8, hidden_sizes=(32, 32), eps=0.0, min_eps=0.0, fused_update=False,
                          learning_starts=0)
    states = {}
    for mode in (None, "interpret"):
        dqn = make_trainer(config, kernels=mode)
        assert dqn.backend.acting.value == (mode or "xla") and dqn.backend.update.value == "xla"
        state = dqn.init(jax.random.key(0), config.hparams)
        for _ in range(2):
            state = jax.jit(dqn.train_step)(state)[0]
        states[mode] = state
    actions = [np.asarray(states[mode].buffer.transitions.action) for mode in (None, "interpret")]
    np.testing.assert_array_equal(actions[0], actions[1])
    assert len(np.unique(actions[0])) > 1  # greedy (epsilon 0) actions of an untrained network, both of them
    np.testing.assert_allclose(np.asarray(states[None].params["params"]["Dense_0"]["kernel"]),
                               np.asarray(states["interpret"].params["params"]["Dense_0"]["kernel"]), rtol=1e-5)

