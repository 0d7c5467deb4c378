"""The fused update kernel (jaxdqn.kernels.update), run by the Pallas interpreter on the CPU, against jax.grad."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn import losses
from jaxdqn.kernels import update as update_kernel
from jaxdqn.buffer import Batch
from jaxdqn.networks import MinAtarQNetwork, MLPQNetwork
from tests.conftest import make_trainer


def _reference(network, params, target_params, batch: Batch, double: bool, loss: str):
    """(loss, TD errors) and gradient of the trainer's loss, written with flax and `jaxdqn.losses`."""
    def loss_and_errors(params):
        q = network.apply(params, batch.obs)
        next_online = jax.lax.stop_gradient(network.apply(params, batch.next_obs)) if double else None
        targets = losses.batch_targets(batch.reward, batch.discount, network.apply(target_params, batch.next_obs),
                                       next_online)
        errors = losses.batch_td_error(q, batch.action, targets)
        elementwise = losses.td_loss(errors, loss)
        if batch.weight is not None:
            elementwise = batch.weight * elementwise
        return jnp.mean(elementwise), errors

    return jax.value_and_grad(loss_and_errors, has_aux=True)(params)


def _batches(num_batches, batch_size, obs_size, num_actions, weighted, seed=2):
    keys = jax.random.split(jax.random.key(seed), 6)
    shape = (num_batches, batch_size)
    return Batch(obs=3.0 * jax.random.normal(keys[0], (*shape, obs_size)),
                 action=jax.random.randint(keys[1], shape, 0, num_actions),
                 reward=2.0 * jax.random.normal(keys[2], shape),
                 next_obs=jax.random.normal(keys[3], (*shape, obs_size)),
                 discount=0.99 * (jax.random.uniform(keys[4], shape) > 0.2),  # some terminal transitions
                 weight=jax.random.uniform(keys[5], shape) if weighted else None)


@pytest.mark.parametrize("hidden_sizes, layer_norm, obs_size, num_actions, double, loss, weighted", [
    ((128, 128), True, 4, 2, True, "huber", False),  # CartPole with the defaults
    ((64,), False, 6, 3, False, "mse", True),  # Acrobot's sizes, no LayerNorm, max targets, weights
    ((100, 120), True, 6, 3, True, "huber", True),  # widths that are not powers of two
])
def test_loss_gradient_and_errors_match_jax_grad(hidden_sizes, layer_norm, obs_size, num_actions, double, loss,
                                                 weighted):
    network = MLPQNetwork(num_actions=num_actions, hidden_sizes=hidden_sizes, layer_norm=layer_norm)
    params = network.init(jax.random.key(0), jnp.zeros((1, obs_size)))
    leaves, tree = jax.tree.flatten(params)  # LayerNorm's scale and shift away from 1 and 0
    params = jax.tree.unflatten(tree, [leaf + 0.1 * jax.random.normal(jax.random.key(i), leaf.shape)
                                       for i, leaf in enumerate(leaves)])
    target_params = jax.tree.map(lambda leaf: leaf + 0.05 * jax.random.normal(jax.random.key(9), leaf.shape), params)
    batch_size, which = 64, 1
    batches = _batches(3, batch_size, obs_size, num_actions, weighted)
    layout = update_kernel.SlabLayout(network, obs_size, params)
    flat = jax.flatten_util.ravel_pytree(params)[0]
    flat_target = jax.flatten_util.ravel_pytree(target_params)[0]

    blocks = batch_size // update_kernel.block_shape(batch_size)[0]
    run = jax.jit(lambda p, t, b, index, losses, errors: update_kernel.loss_and_gradient(
        layout, p, t, b, index, losses, errors, batch_size, double, loss, interpret=True))
    partial_gradients, all_losses, all_errors = run(
        layout.to_slab(flat), layout.to_slab(flat_target), update_kernel.kernel_batches(batches, layout.obs_rows),
        jnp.array([which], jnp.int32), jnp.full(3 * blocks, -1.0), jnp.full(3 * batch_size, -1.0))
    assert partial_gradients.shape == (blocks, layout.rows * layout.width)
    gradient = jnp.sum(partial_gradients, axis=0)
    # Only this update's entries of the loss and error buffers are written.
    all_losses, all_errors = all_losses.reshape(3, blocks), all_errors.reshape(3, batch_size)
    np.testing.assert_array_equal(np.delete(all_losses, which, axis=0), -1.0)
    np.testing.assert_array_equal(np.delete(all_errors, which, axis=0), -1.0)
    value, errors = jnp.sum(all_losses[which]), all_errors[which]
    one = jax.tree.map(lambda leaf: None if leaf is None else leaf[which], batches)
    (expected_value, expected_errors), expected_gradient = _reference(network, params, target_params, one, double, loss)
    expected_gradient = jax.flatten_util.ravel_pytree(expected_gradient)[0]

    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(errors, expected_errors, rtol=1e-5, atol=1e-5)
    scale = float(jnp.max(jnp.abs(expected_gradient)))
    np.testing.assert_allclose(layout.from_slab(gradient), expected_gradient, atol=1e-5 * scale)
    # The padded entries of the slab get no gradient, so Adam and the target update keep them at zero.
    np.testing.assert_array_equal(gradient, layout.to_slab(layout.from_slab(gradient)))


def test_slab_layout_places_every_parameter_once():
    network = MLPQNetwork(num_actions=3, hidden_sizes=(32, 32))
    params = network.init(jax.random.key(0), jnp.zeros((1, 6)))
    layout = update_kernel.SlabLayout(network, 6, params)
    flat = jax.flatten_util.ravel_pytree(params)[0]
    slab = np.asarray(layout.to_slab(flat)).reshape(layout.rows, layout.width)
    assert layout.width == 32 and layout.obs_rows == 16 and layout.action_rows == 16
    assert layout.parameter_rows == 16 + 3 + 32 + 3 + 16 + 1
    assert layout.rows * layout.width % update_kernel.CHUNK == 0 and layout.rows - layout.parameter_rows < 64
    np.testing.assert_array_equal(layout.from_slab(layout.to_slab(flat)), flat)
    assert np.count_nonzero(np.isin(layout.ravel_of_slab, np.arange(flat.size))) == flat.size
    head = layout.blocks[("Dense_2", "kernel")]  # stored transposed: [actions, width]
    np.testing.assert_array_equal(slab[head.start:head.start + 3, :32], params["params"]["Dense_2"]["kernel"].T)
    first = layout.blocks[("Dense_0", "kernel")]
    np.testing.assert_array_equal(slab[first.start:first.start + 6], params["params"]["Dense_0"]["kernel"])
    assert not slab[first.start + 6:first.start + 16].any()  # padded observation rows


@pytest.mark.parametrize("clipped, due, active", [(False, True, True), (True, False, True), (True, True, False)])
def test_adam_step_matches_optax(clipped, due, active):
    """The optimizer kernel against optax's clip_by_global_norm + adam and optax.incremental_update."""
    import optax

    size, parts = 2 * update_kernel.CHUNK, 4
    keys = jax.random.split(jax.random.key(3), 5)
    partials = 0.01 * jax.random.normal(keys[0], (parts, size))
    params, target = jax.random.normal(keys[1], (size,)), jax.random.normal(keys[2], (size,))
    max_norm, lr, tau = (0.1 if clipped else 1e3), 3e-3, 0.3
    optimizer = optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(lr))
    state = optimizer.init(params)
    grads = jnp.sum(partials, axis=0)
    _, state = optimizer.update(grads, state, params)  # a second step: moments and bias corrections not trivial
    updates, expected_state = optimizer.update(grads * 0.5 + 0.001, state, params)
    expected_params = params + updates
    expected_target = optax.incremental_update(expected_params, target, tau) if due else target
    count = expected_state[1][0].count  # chain(clip, chain(scale_by_adam, scale))
    row = [lr, 1 - 0.9 ** count, 1 - 0.999 ** count, 0.9, 0.999, 1e-8, 0.0, max_norm, tau, float(due), float(active)]
    scalars = jnp.zeros((3, update_kernel.SCALARS)).at[1, :11].set(jnp.array(row, jnp.float32)).reshape(-1)
    mu, nu = state[1][0].mu, state[1][0].nu
    out = jax.jit(lambda *args: update_kernel.adam_step(*args, interpret=True))(
        (partials * 0.5 + 0.001 / parts), scalars, jnp.array([1], jnp.int32), params, target, mu, nu)
    expected = (expected_params, expected_target, expected_state[1][0].mu, expected_state[1][0].nu)
    if not active:
        expected = (params, target, mu, nu)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    assert clipped == bool(optax.tree.norm(grads * 0.5 + 0.001) > max_norm)


def test_supports():
    assert update_kernel.supports(MLPQNetwork(num_actions=2), obs_size=4, batch_size=256)
    assert update_kernel.supports(MLPQNetwork(num_actions=3, hidden_sizes=(100, 128)), obs_size=6, batch_size=64)
    assert not update_kernel.supports(MLPQNetwork(num_actions=2), obs_size=4, batch_size=96)  # not a power of two
    assert not update_kernel.supports(MLPQNetwork(num_actions=2, hidden_sizes=(64, 128)), obs_size=4, batch_size=256)
    assert not update_kernel.supports(MLPQNetwork(num_actions=2, hidden_sizes=(256,)), obs_size=4, batch_size=256)
    assert not update_kernel.supports(MLPQNetwork(num_actions=2, dueling=True), obs_size=4, batch_size=256)
    assert not update_kernel.supports(MinAtarQNetwork(num_actions=3), obs_size=400, batch_size=256)


@pytest.mark.parametrize("overrides", [{}, {"prioritized": True, "loss": "mse", "double": False, "lr_anneal": False}])
def test_training_steps_learn_the_same_with_the_kernel(small_config, overrides):
    """Train steps from one state with XLA's update and with the kernel's: the same learner after them,
    Adam's state included (and, with prioritized replay, the same priorities)."""
    config = small_config(num_envs=16, buffer_size=16 * 8, hidden_sizes=(32, 32), batch_size=32, updates_per_step=3, fused_acting=False,
                          learning_starts=32, target_update_frequency=2, tau=0.5, **overrides)
    states = {}
    for mode in (None, "interpret"):
        dqn = make_trainer(config, kernels=mode)
        assert dqn.backend.update.value == (mode or "xla") and dqn.backend.acting.value == "xla"
        state = dqn.init(jax.random.key(0), config.hparams)
        step = jax.jit(dqn.train_step)
        for _ in range(5):  # learning starts after 32 transitions are stored (2 steps of 16): at the third step
            state = step(state)[0]
        states[mode] = state
    xla, kernel = states[None], states["interpret"]
    assert int(kernel.updates) == int(xla.updates) == 3 * config.updates_per_step
    for name in ("params", "target_params", "opt_state"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), getattr(xla, name),
                     getattr(kernel, name))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), xla.params, dqn.init(jax.random.key(0),
                                                                                          config.hparams).params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the updates did change the network
    if config.prioritized:
        np.testing.assert_allclose(xla.buffer.priority, kernel.buffer.priority, rtol=1e-4)


def test_agents_vmapped_learn_the_same_with_the_kernels(small_config):
    """Two agents in one program (`jax.vmap` over `run_chunk`, as `jaxdqn.population` runs them) through
    both kernels and the slab layout, against XLA's path (greedy acting: the same transitions)."""
    config = small_config(num_envs=16, buffer_size=16 * 8, hidden_sizes=(32,), batch_size=16, updates_per_step=2,
                          learning_starts=16, eps=0.0, min_eps=0.0)
    hparams = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), config.hparams)
    states = {}
    for kernels in (None, "interpret"):
        dqn = make_trainer(config, kernels=kernels)
        state = jax.vmap(dqn.init)(jax.random.split(jax.random.key(0), 2), hparams)
        states[kernels] = jax.jit(jax.vmap(lambda state: dqn.run_chunk(state, num_iterations=3)[0]))(state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), states[None].params,
                 states["interpret"].params)
    first = states["interpret"].params["params"]["Dense_0"]["kernel"]
    assert not np.allclose(first[0], first[1])  # two agents, two different networks


def test_a_chunk_with_both_kernels_keeps_the_slab_inside_and_matches_xla(small_config):
    """With acting and learning both kernels, `run_chunk` keeps the learner in the slab layout for the
    chunk (acting reads the slab too) and hands back the parameter trees: the same numbers as XLA's path
    (greedy acting, so that both paths store the same transitions)."""
    config = small_config(num_envs=16, buffer_size=16 * 8, hidden_sizes=(32, 32), batch_size=32, updates_per_step=2,
                          learning_starts=32, eps=0.0, min_eps=0.0)
    results = {}
    for kernels in (None, "interpret"):
        dqn = make_trainer(config, kernels=kernels)
        assert dqn.backend.uses_slab == (kernels is not None)
        initial = dqn.init(jax.random.key(0), config.hparams)
        state, metrics = jax.jit(lambda state: dqn.run_chunk(state, num_iterations=5))(initial)  # 3 that learn
        assert not state.slab and jax.tree.structure(state) == jax.tree.structure(initial)
        results[kernels] = state, metrics
    (xla, xla_metrics), (kernel, kernel_metrics) = results[None], results["interpret"]
    np.testing.assert_array_equal(xla.buffer.transitions.action, kernel.buffer.transitions.action)
    assert int(kernel.updates) == 3 * config.updates_per_step
    for name in ("params", "target_params", "opt_state"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), getattr(xla, name),
                     getattr(kernel, name))
    np.testing.assert_allclose(kernel_metrics.loss, xla_metrics.loss, rtol=1e-4)
