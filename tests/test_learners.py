"""The learners behind `--learner` (jaxdqn.learners): DQN, C51 (Bellemare et al. 2017), QR-DQN (Dabney et
al. 2018), noisy nets (Fortunato et al. 2018) and the Rainbow preset.

Losses against values worked out by hand; the categorical projection conserves mass; QR-DQN's quantiles
order themselves on a probe env with a known return distribution; every learner learns the probe envs
(with double, dueling, n-step and prioritized replay); every learner's checkpoint round-trips through evaluation;
the losses and the projection match rlax's on the same inputs.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn.learners import C51, DQN, QRDQN
from jaxdqn.learners.c51 import categorical_projection
from jaxdqn.learners.qrdqn import quantile_huber_loss
from jaxdqn.networks import MLPQNetwork
from tests.probe_envs import q_values


def test_categorical_projection_splits_each_atom_between_its_neighbours_and_conserves_mass():
    support = jnp.array([0.0, 1.0, 2.0, 3.0])
    # Target atoms at 0.5 (half to 0, half to 1), 2.25 (3/4 to 2, 1/4 to 3), 7 (clipped to 3) and -1 (to 0).
    projected = categorical_projection(jnp.array([0.5, 2.25, 7.0, -1.0]), jnp.array([0.4, 0.4, 0.1, 0.1]), support)
    np.testing.assert_allclose(projected, [0.2 + 0.1, 0.2, 0.3, 0.1 + 0.1], atol=1e-6)
    probabilities = jax.nn.softmax(jax.random.normal(jax.random.key(0), (51,)))
    support = jnp.linspace(-10.0, 10.0, 51)
    for shift, scale in [(0.0, 1.0), (3.3, 0.99), (-50.0, 0.5), (0.7, 0.0)]:
        projected = categorical_projection(shift + scale * support, probabilities, support)
        assert float(jnp.sum(projected)) == pytest.approx(1.0, abs=1e-5) and float(jnp.min(projected)) >= 0.0


def test_c51_loss_is_the_cross_entropy_of_the_projected_target():
    """Three atoms {-1, 0, 1}; the next state's greedy action carries all its mass on atom 0; reward 0.5,
    discount 1: the target is 0.5 on atoms 0 and 1. With uniform logits at (s, a) the loss is ln 3."""
    learner = C51(network=None, double=False, num_atoms=3, v_min=-1.0, v_max=1.0)
    outputs = jnp.zeros((2, 3))
    next_target = jnp.array([[0.0, 20.0, 0.0], [20.0, 0.0, 0.0]])  # action 0: mean 0; action 1: mean -1
    loss, priority = learner.transition_loss(outputs, jnp.int32(1), jnp.float32(0.5), jnp.float32(1.0), next_target,
                                             None)
    assert float(loss) == pytest.approx(np.log(3.0), rel=1e-5) and float(priority) == float(loss)
    # Greedy logits on atoms 1 and 2 halve the loss's two terms: -(0.5 ln p1 + 0.5 ln p2), p1 = p2 = e^2/(2e^2+1).
    sharp = jnp.array([[0.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    p = np.exp(2.0) / (2 * np.exp(2.0) + 1)
    loss, _ = learner.transition_loss(sharp, jnp.int32(1), jnp.float32(0.5), jnp.float32(1.0), next_target, None)
    assert float(loss) == pytest.approx(-np.log(p), rel=1e-5)
    # Q-values are the distributions' means.
    np.testing.assert_allclose(learner.action_values(next_target[None])[0], [0.0, -1.0], atol=1e-6)


def test_quantile_huber_loss_by_hand():
    """Two quantiles (tau 1/4, 3/4) at 0 against one target sample 2: both errors are u = 2 > 0, so each
    term is tau * Huber(2) = tau * 1.5; the sum over quantiles is (1/4 + 3/4) * 1.5 = 1.5. With the target
    at -0.5 (u = -0.5 < 0): (3/4 + 1/4) * 0.125."""
    assert float(quantile_huber_loss(jnp.zeros(2), jnp.array([2.0]))) == pytest.approx(1.5)
    assert float(quantile_huber_loss(jnp.zeros(2), jnp.array([-0.5]))) == pytest.approx(0.125)
    # Quantiles at 0 and 1 against samples {0, 1}: pairs (0,0) and (1,1) cost nothing, (0, 1) u = 1:
    # tau_1 * 0.5 / 2 samples, (1, 0) u = -1: (1 - tau_2) * 0.5 / 2; total (0.25 + 0.25) * 0.25.
    assert float(quantile_huber_loss(jnp.array([0.0, 1.0]), jnp.array([0.0, 1.0]))) == pytest.approx(0.125)


def test_qrdqn_targets_are_the_greedy_next_actions_quantiles():
    learner = QRDQN(network=None, double=True, num_quantiles=2)
    outputs = jnp.array([[1.0, 3.0], [0.0, 0.0]])
    next_target = jnp.array([[5.0, 7.0], [0.0, 2.0]])
    next_online = jnp.array([[0.0, 0.0], [1.0, 1.0]])  # double: the online network picks action 1
    loss, _ = learner.transition_loss(outputs, jnp.int32(0), jnp.float32(1.0), jnp.float32(0.5), next_target,
                                      next_online)
    expected = quantile_huber_loss(jnp.array([1.0, 3.0]), 1.0 + 0.5 * jnp.array([0.0, 2.0]))
    assert float(loss) == pytest.approx(float(expected))
    assert float(expected) > 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")  # rlax's and TFP's own
def test_losses_and_projection_match_rlax_on_the_same_inputs():
    """rlax (DeepMind's RL building blocks) on random batches: its categorical L2 projection, its categorical
    (double) Q-learning cross-entropy and its quantile (double) Q-learning loss with Huber threshold 1 against
    the C51 and QR-DQN learners' per-transition losses. rlax's distributions are [actions, atoms] for C51 and
    [quantiles, actions] for QR-DQN."""
    import rlax

    keys = iter(jax.random.split(jax.random.key(7), 16))
    batch, num_actions, num_atoms = 32, 3, 11
    support = jnp.linspace(-5.0, 5.0, num_atoms)
    reward = 3.0 * jax.random.normal(next(keys), (batch,))
    discount = jnp.where(jax.random.uniform(next(keys), (batch,)) < 0.2, 0.0, 0.9)
    action = jax.random.randint(next(keys), (batch,), 0, num_actions)
    outputs, next_target, next_online = (2.0 * jax.random.normal(next(keys), (batch, num_actions, num_atoms))
                                         for _ in range(3))

    probabilities = jax.nn.softmax(next_target[:, 0], axis=-1)
    ours = jax.vmap(categorical_projection, in_axes=(0, 0, None))(reward[:, None] + discount[:, None] * support,
                                                                   probabilities, support)
    theirs = jax.vmap(rlax.categorical_l2_project, in_axes=(0, 0, None))(
        reward[:, None] + discount[:, None] * support, probabilities, support)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)

    c51 = C51(network=None, double=True, num_atoms=num_atoms, v_min=-5.0, v_max=5.0)
    ours, _ = jax.vmap(c51.transition_loss)(outputs, action, reward, discount, next_target, next_online)
    theirs = jax.vmap(rlax.categorical_double_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0, 0))(
        support, outputs, action, reward, discount, support, next_target, c51.action_values(next_online))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    single = dataclasses.replace(c51, double=False)
    ours, _ = jax.vmap(single.transition_loss, in_axes=(0, 0, 0, 0, 0, None))(outputs, action, reward, discount,
                                                                             next_target, None)
    theirs = jax.vmap(rlax.categorical_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0))(
        support, outputs, action, reward, discount, support, next_target)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)

    qrdqn = QRDQN(network=None, double=True, num_quantiles=num_atoms)
    tau = (jnp.arange(num_atoms) + 0.5) / num_atoms
    ours, _ = jax.vmap(qrdqn.transition_loss)(outputs, action, reward, discount, next_target, next_online)
    quantiles_first = lambda values: jnp.swapaxes(values, -1, -2)  # noqa: E731
    theirs = jax.vmap(rlax.quantile_q_learning, in_axes=(0, None, 0, 0, 0, 0, 0, None))(
        quantiles_first(outputs), tau, action, reward, discount, quantiles_first(next_online),
        quantiles_first(next_target), 1.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_noisy_network_samples_noise_per_key_and_uses_the_means_without_one():
    network = MLPQNetwork(num_actions=3, hidden_sizes=(8,), noisy=True)
    obs = jnp.ones((4, 5))
    params = network.init(jax.random.key(0), obs)
    assert set(params["params"]["Dense_0"]) == {"mu_kernel", "mu_bias", "sigma_kernel", "sigma_bias"}
    learner = DQN(network=network)
    first, again = learner.q_values(params, obs, jax.random.key(1)), learner.q_values(params, obs, jax.random.key(1))
    other, mean = learner.q_values(params, obs, jax.random.key(2)), learner.q_values(params, obs)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other) and not np.allclose(first, mean)
    zero_sigma = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.zeros_like(leaf) if "sigma" in jax.tree_util.keystr(path) else leaf, params)
    np.testing.assert_allclose(learner.q_values(zero_sigma, obs, jax.random.key(1)), mean, rtol=1e-6)


def test_noise_per_example_gives_each_row_its_own_factorised_draw():
    """Four copies of one observation get four different Q-values, reproducibly from one key. With the means
    at zero, one layer's output j is sum_i x_i f(e_in_i) sigma_ij f(e_out_j): variance sum_i x_i^2 sigma_ij^2
    (E f(e)^2)^2 with E f(e)^2 = E|e| = sqrt(2 / pi), checked over 20,000 rows (independent noise on every
    weight instead of factorised noise would give E e^2 = 1, a variance 2.5 times as large)."""
    from jaxdqn.networks import NOISE_PER_EXAMPLE, NoisyDense

    network = MLPQNetwork(num_actions=3, hidden_sizes=(8,), noisy=True)
    obs = jnp.ones((4, 5))
    params = network.init(jax.random.key(0), obs)
    learner = DQN(network=network)
    rows = np.asarray(learner.q_values(params, obs, jax.random.key(1), per_example=True))
    assert len({tuple(row) for row in rows}) == 4
    np.testing.assert_array_equal(rows, learner.q_values(params, obs, jax.random.key(1), per_example=True))

    layer = NoisyDense(features=2)
    x = jnp.array([1.0, -2.0, 0.5])
    sigma = jnp.array([[0.3, 0.1], [0.2, 0.4], [0.5, 0.2]])
    layer_params = {"params": {"mu_kernel": jnp.zeros((3, 2)), "mu_bias": jnp.zeros(2), "sigma_kernel": sigma,
                               "sigma_bias": jnp.zeros(2)}}
    outputs = layer.apply(layer_params, jnp.tile(x, (20_000, 1)), rngs={NOISE_PER_EXAMPLE: jax.random.key(2)})
    expected = (x[:, None] ** 2 * sigma**2).sum(axis=0) * (2.0 / np.pi)
    np.testing.assert_allclose(np.var(np.asarray(outputs), axis=0), expected, rtol=0.06)


PROBE = dict(num_envs=32, total_steps=32 * 300, buffer_size=32 * 64, batch_size=64, updates_per_step=4,
             learning_starts=256, chunk_steps=32 * 100, eps_decay_steps=32 * 100, lr=1e-2, lr_anneal=False, gamma=0.5,
             hidden_sizes=(32,), eval_episodes=8, num_devices=1)
LEARNERS = {
    "c51": dict(learner="c51", v_min=-2.0, v_max=2.0, num_atoms=21),
    "qrdqn": dict(learner="qrdqn", num_quantiles=8),
    "rainbow": dict(preset="rainbow", v_min=-2.0, v_max=2.0, num_atoms=21),
    # Noisy nets explore by their noise alone; a bandit's worse arm is then soon left untried, and its value
    # unlearned: the probe keeps epsilon-greedy exploration on top so that every Q-value is learned.
    "noisy_dqn": dict(noisy=True, eps=1.0, min_eps=0.3),
}


def probe_config(env: str, **flags):
    from jaxdqn.config import build_config
    from jaxdqn.registry import get_spec

    return build_config({**PROBE, **flags}, get_spec(f"tests.probe_envs:{env}"))


def run(config):
    from jaxdqn.train import build_program

    program = build_program(config)
    state = program.initial_state()
    for _ in range(config.num_chunks):
        state, _ = program.run_chunk(state)
    return program, state


@pytest.mark.parametrize("name", list(LEARNERS))
def test_every_learner_learns_the_probe_envs(name):
    """ActionReward (Q = -1, +1) and TwoStep (Q(0) = gamma = 0.5, Q(1) = 1) through the trainer."""
    program, state = run(probe_config("ActionReward", **LEARNERS[name]))
    np.testing.assert_allclose(q_values(program, state, [[0.0]]), [[-1.0, 1.0]], atol=0.15)
    program, state = run(probe_config("TwoStep", **LEARNERS[name], n_step=1))
    np.testing.assert_allclose(q_values(program, state, [[0.0], [1.0]]), [[0.5], [1.0]], atol=0.15)


def test_rainbow_preset_sets_its_flags_and_given_flags_override_it():
    config = probe_config("ActionReward", preset="rainbow", n_step=2)
    assert (config.learner, config.double, config.dueling, config.prioritized, config.noisy) == ("c51", True, True,
                                                                                                 True, False)
    assert config.n_step == 2 and config.priority_alpha == 0.5 and config.eps == 1.0
    assert json.loads(config.to_json())["learner"] == "c51"
    noisy = probe_config("ActionReward", preset="rainbow", noisy=True)
    assert noisy.noisy and noisy.eps == 0.0 and noisy.min_eps == 0.0  # noisy nets explore by themselves
    assert probe_config("ActionReward", noisy=True, eps=0.3).eps == 0.3


def quantile_huber_minimizers(taus: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """For each tau, the theta minimising the mean quantile Huber loss (kappa 1) against `samples`, by grid search.

    With every |sample - theta| below kappa the loss is |tau - 1{u < 0}| u^2 / 2, whose minimiser is the
    tau-expectile; for U(0, 1) that is sqrt(tau) / (sqrt(tau) + sqrt(1 - tau)), not tau itself.
    """
    grid = np.linspace(0.0, 1.0, 2001)
    u = samples[None, :] - grid[:, None]
    huber = np.where(np.abs(u) <= 1.0, 0.5 * u * u, np.abs(u) - 0.5)
    return np.array([grid[np.argmin(np.mean(np.abs(tau - (u < 0)) * huber, axis=1))] for tau in taus])


def test_qrdqn_quantiles_order_themselves_on_a_known_return_distribution():
    """UniformReward: one step with reward ~ U(0, 1). The learned values come out ascending, at the
    minimisers of the quantile Huber loss for that distribution (worked out here by grid search)."""
    program, state = run(probe_config("UniformReward", learner="qrdqn", num_quantiles=8, total_steps=32 * 600,
                                      lr=3e-3))
    from jaxdqn import parallel

    params = parallel.first_device(state.params)
    quantiles = np.asarray(program.dqn.network.apply(params, jnp.zeros((1, 1))))[0, 0]
    assert np.all(np.diff(quantiles) > 0), quantiles
    taus = (np.arange(8) + 0.5) / 8
    expected = quantile_huber_minimizers(taus, np.linspace(0.0, 1.0, 4001))
    np.testing.assert_allclose(expected[[0, 7]], [0.205, 0.795], atol=0.005)  # the expectiles, by formula
    np.testing.assert_allclose(quantiles, expected, atol=0.05)


@pytest.mark.parametrize("flags, fields", [
    (["--learner", "c51", "--v_min", "-2", "--v_max", "2", "--num_atoms", "21"], {"learner": "c51", "num_atoms": 21}),
    (["--learner", "qrdqn", "--num_quantiles", "8"], {"learner": "qrdqn", "num_quantiles": 8}),
    (["--noisy", "--noise_per_env", "--eps", "1", "--min_eps", "0.3"],
     {"learner": "dqn", "noisy": True, "noise_per_env": True}),
], ids=["c51", "qrdqn", "noisy_dqn_noise_per_env"])
def test_checkpoints_evaluate_and_load_as_a_greedy_policy(tmp_path, flags, fields):
    """Each learner's checkpoint, written by the CLI, evaluates and loads as the greedy policy it learned."""
    from jaxdqn import load_policy
    from jaxdqn.evaluate import evaluate
    from jaxdqn.train import main

    out = tmp_path / "run"
    code = main(["--env", "tests.probe_envs:ActionReward", *flags,
                 *[item for key, value in PROBE.items() if key not in ("hidden_sizes", "lr_anneal")
                   for item in (f"--{key}", str(value))],
                 "--no-lr_anneal", "--hidden_sizes", "32", "--save_model", str(out), "--no_compile_cache", "--quiet",
                 "--log_dir", str(tmp_path / "log")])
    assert code == 0
    result = evaluate(str(out), episodes=8)
    assert result["return_mean"] == pytest.approx(1.0)  # the greedy action is the rewarded one
    policy, config = load_policy(out)
    assert {key: dataclasses.asdict(config)[key] for key in fields} == fields
    np.testing.assert_array_equal(np.asarray(policy(jnp.zeros((3, 1)))), [1, 1, 1])


def test_distributional_learners_train_two_agents_on_two_devices(tmp_path):
    """QR-DQN and the Rainbow preset through the CLI with two seeds in one program on two CPU devices."""
    import subprocess
    import sys

    from tests.conftest import ROOT, cheap_compile_env

    for name, flags in [("qrdqn", ["--learner", "qrdqn"]), ("rainbow", ["--preset", "rainbow"])]:
        log_dir = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "jaxdqn.train", "--env", "CartPole-v1", *flags, "--num_envs", "16",
             "--total_steps", "1024", "--chunk_steps", "512", "--buffer_size", "256", "--batch_size", "32",
             "--learning_starts", "128", "--eval_frequency", "1024", "--eval_episodes", "4", "--hidden_sizes", "16",
             "--num_seeds", "2", "--num_devices", "2", "--no_compile_cache", "--quiet", "--log_dir", str(log_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env=cheap_compile_env(2, JAX_PLATFORMS="cpu"))
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((log_dir / "summary.json").read_text())
        assert len(summary["agents"]) == 2 and summary["num_devices"] == 2
        assert json.loads((log_dir / "config.json").read_text())["learner"] == ("qrdqn" if name == "qrdqn" else "c51")
