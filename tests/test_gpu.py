"""The compiled GPU kernels against the reference XLA path, on a GPU (`pytest -m gpu`; skipped without one).

CI has no GPU: run these through a GPU machine whenever the kernels or the backend choice change. Each
compares the same train steps or chunks with the kernels (`jaxdqn.kernels.Path.KERNEL`, chosen by
`jaxdqn.kernels.choose` as a run would) and without them (`--no-fused_acting --no-fused_update`), one
device and under `shard_map` over every local GPU. Matrix products on the GPU use TF32 in both paths,
in different orders, so parameters agree to a relative 1e-3, not bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import make_trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run with -m gpu on one)")]


# The small config's other sizes, made to fit 4,096 envs (a buffer of two vector steps, a chunk of two).
AT_4096_ENVS = dict(num_envs=4096, buffer_size=4096 * 2, batch_size=256, total_steps=4096 * 4, chunk_steps=4096 * 2,
                    eval_frequency=4096 * 4)


def assert_close_trees(a, b, rtol=1e-3, atol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


def test_the_default_run_chooses_both_kernels_and_other_learners_or_networks_do_not(small_config):
    from jaxdqn import kernels

    default = make_trainer(small_config(hidden_sizes=(128, 128), **AT_4096_ENVS))
    assert default.backend.acting is kernels.Path.KERNEL and default.backend.update is kernels.Path.KERNEL
    assert default.backend.uses_slab and default.backend.stacked_networks
    dueling = make_trainer(small_config(dueling=True, **AT_4096_ENVS))
    assert dueling.backend.acting is kernels.Path.XLA and dueling.backend.update is kernels.Path.XLA


def test_compiled_acting_kernel_takes_the_greedy_actions_of_the_network(small_config):
    """Greedy acting (epsilon 0) at 4,096 envs: the kernel's action is the network's argmax wherever the
    best two Q-values are apart by more than TF32's rounding."""
    config = small_config(hidden_sizes=(128, 128), eps=0.0, min_eps=0.0, fused_update=False, **AT_4096_ENVS)
    trainer = make_trainer(config)
    state = trainer.init(jax.random.key(0), config.hparams)
    obs = state.obs + jax.random.normal(jax.random.key(1), state.obs.shape)  # spread over the observation space
    kernel_actions = jax.jit(trainer.select_actions)(state.params, obs, jax.random.key(2), jnp.float32(0.0))
    q = jax.jit(trainer.learner.q_values)(state.params, obs)
    top_two = jnp.sort(q, axis=-1)[:, -2:]
    clear = np.asarray(top_two[:, 1] - top_two[:, 0] > 1e-3)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(np.asarray(kernel_actions)[clear], np.asarray(jnp.argmax(q, axis=-1))[clear])


@pytest.mark.parametrize("overrides", [{}, {"prioritized": True, "loss": "mse", "double": False}])
def test_compiled_update_kernel_learns_what_xla_learns(small_config, overrides):
    """A chunk of train steps with both kernels (slab layout inside the chunk) and with XLA's path: the
    same learner after them (greedy acting, so both paths store the same transitions)."""
    config = small_config(num_envs=256, buffer_size=256 * 16, batch_size=256, hidden_sizes=(128, 128),
                          updates_per_step=4, learning_starts=512, eps=0.0, min_eps=0.0, **overrides)
    results = {}
    for fused in (True, False):
        trainer = make_trainer(dataclasses.replace(config, fused_acting=fused, fused_update=fused))
        assert trainer.backend.uses_slab == fused
        state = trainer.init(jax.random.key(0), config.hparams)
        state, metrics = jax.jit(lambda state: trainer.run_chunk(state, num_iterations=6))(state)
        results[fused] = state, metrics
    (kernel, kernel_metrics), (xla, xla_metrics) = results[True], results[False]
    assert int(kernel.updates) == int(xla.updates) == 4 * config.updates_per_step
    assert_close_trees(kernel.params, xla.params)
    assert_close_trees(kernel.target_params, xla.target_params)
    np.testing.assert_allclose(float(kernel_metrics.loss), float(xla_metrics.loss), rtol=1e-3)


def test_kernels_under_shard_map_over_every_gpu_match_xla():
    """The trainer's own program (`jaxdqn.train.build_program`: shard_map over all local GPUs) with the
    kernels and without: the same parameters after two chunks, identical on every device."""
    from jaxdqn.config import TrainConfig
    from jaxdqn.train import build_program

    devices = jax.local_device_count()
    base = TrainConfig(num_envs=1024 * devices, total_steps=1024 * devices * 16, buffer_size=1024 * devices * 8,
                       batch_size=256 * devices, updates_per_step=4, learning_starts=2048 * devices,
                       chunk_steps=1024 * devices * 8, eps=0.0, min_eps=0.0).validate()
    params = {}
    for fused in (True, False):
        program = build_program(dataclasses.replace(base, fused_acting=fused, fused_update=fused))
        assert program.dqn.backend.uses_slab == fused
        state = program.initial_state()
        initial = [np.asarray(leaf)[0] for leaf in jax.tree.leaves(state.params)]
        for _ in range(2):
            state, _ = program.run_chunk(state)
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]
        assert all((leaf == leaf[0]).all() for leaf in leaves)  # averaged gradients: one network everywhere
        params[fused] = initial, [leaf[0] for leaf in leaves]
    # What the ~50 updates changed, compared leaf by leaf. TF32's rounding, in different orders, moves a few
    # weights apart as training goes on (one H200: 17 of 16,384 weights beyond rtol 1e-3 and a bias leaf 1.7e-3
    # off in norm, relative to its value); a wrong kernel changes whole leaves differently.
    (kernel_initial, kernel_final), (xla_initial, xla_final) = params[True], params[False]
    for k0, k1, x0, x1 in zip(kernel_initial, kernel_final, xla_initial, xla_final):
        np.testing.assert_array_equal(k0, x0)
        change = np.linalg.norm(x1 - x0)
        assert change > 0 and np.linalg.norm((k1 - k0) - (x1 - x0)) <= 1e-2 * change
