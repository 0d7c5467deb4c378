"""The replay ratio and the schedules mean the same thing at every num_envs (jaxdqn.config.TrainConfig).

`--replay_ratio` (transitions sampled for learning per env step) sets the gradient updates of a vector step:
replay_ratio x num_envs / batch_size, and below one update per vector step, one update every k-th vector step.
Epsilon decays over env steps, the learning rate over the run's updates, the target network moves once per
update. So two runs with the same flags but num_envs make the same number of updates from the same number
of env steps, explore alike at the same env step, and both learn. The figures here are worked out by hand.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdqn.config import MIN_VECTOR_STEPS, build_config
from jaxdqn.registry import get_spec
from tests.conftest import make_trainer
from tests.probe_envs import q_values

# 262,144 env steps, the first 32,768 (the default learning_starts) collected before learning.
SAME_BUDGET = dict(total_steps=262_144, chunk_steps=8192, batch_size=256, replay_ratio=2.0, eps_decay_steps=131_072)


def cartpole(**flags):
    return build_config(flags, get_spec("CartPole-v1"))


@pytest.mark.parametrize("num_envs, updates, interval, iterations, first, learning_steps", [
    # 64 x 2 / 256 = 1/2 update per vector step: one every second step; 4,096 vector steps, learning from the
    # 512th (32,768 / 64): (4,096 - 512) / 2 = 1,792 learning steps of one update.
    (64, 1, 2, 4096, 512, 1792),
    # 4,096 x 2 / 256 = 32 updates per vector step; 64 vector steps, learning from the 8th: 56 of 32 updates.
    (4096, 32, 1, 64, 8, 56),
])
def test_the_same_flags_make_the_same_updates_from_the_same_env_steps(num_envs, updates, interval, iterations,
                                                                       first, learning_steps):
    config = cartpole(num_envs=num_envs, **SAME_BUDGET)
    assert (config.vector_step_updates, config.learn_interval) == (updates, interval)
    assert (config.total_iterations, config.learning_starts_iteration) == (iterations, first)
    assert config.total_updates == learning_steps * updates == 1792
    # 1,792 updates x 256 transitions = 2 x the 229,376 env steps after learning_starts: the replay ratio.
    assert config.total_updates * config.batch_size == 2 * (262_144 - 32_768)


def test_epsilon_is_the_same_at_the_same_env_step():
    """Epsilon 1 -> 0.05 over 131,072 env steps: 0.525 half-way (65,536 env steps), 0.05 from 131,072 on."""
    for num_envs in (64, 4096):
        config = cartpole(num_envs=num_envs, **SAME_BUDGET, eps=1.0, min_eps=0.05)
        trainer = make_trainer(config)
        epsilon = [float(trainer.epsilon(jnp.int32(env_steps // num_envs), config.hparams))
                   for env_steps in (0, 65_536, 131_072, 262_144)]
        np.testing.assert_allclose(epsilon, [1.0, 0.525, 0.05, 0.05], rtol=1e-6)


def test_fewer_updates_than_vector_steps_round_to_whole_intervals():
    # 64 x 0.5 / 256 = 1/8 update per vector step: one every 8th.
    assert cartpole(num_envs=64, replay_ratio=0.5).learn_interval == 8
    # 16,384 x 2 / 256 = 128 updates per vector step; 2 x 100 / 256 = 0.78 rounds to one every step.
    assert cartpole(num_envs=16_384).vector_step_updates == 128
    assert (cartpole(num_envs=100).vector_step_updates, cartpole(num_envs=100).learn_interval) == (1, 1)
    # An explicit --updates_per_step wins over the replay ratio.
    assert (cartpole(num_envs=64, updates_per_step=3).vector_step_updates,
            cartpole(num_envs=64, updates_per_step=3).learn_interval) == (3, 1)


def test_the_default_budget_follows_num_envs_with_epsilon_decay_alike():
    """3M env steps, unless that is fewer than 256 vector steps: 16,384 envs train 4,194,304 env steps and
    decay epsilon over 500,000 x 4,194,304 / 3M = 699,050 (rounded down) of them, the same share of the run."""
    assert (cartpole(num_envs=4096).total_steps, cartpole(num_envs=4096).eps_decay_steps) == (3_000_000, 500_000)
    large = cartpole(num_envs=16_384)
    assert (large.total_steps, large.eps_decay_steps) == (MIN_VECTOR_STEPS * 16_384, 699_050)
    assert cartpole(num_envs=16_384, total_steps=1_000_000).total_steps == 1_000_000  # a given budget stays


def test_an_env_with_its_own_budget_keeps_it_up_to_256_vector_steps():
    """Breakout-MinAtar's 5M env steps (and MinAtar's lr 1e-3) stand at 4,096 envs; at 65,536 envs 5M would be
    76 vector steps, so it trains 256 x 65,536 = 16,777,216 and decays epsilon over
    500,000 x 16,777,216 / 5M = 1,677,721 (rounded down) env steps, a tenth of the run as at 4,096 envs."""
    breakout = get_spec("Breakout-MinAtar")
    small = build_config({"num_envs": 4096}, breakout)
    assert (small.total_steps, small.eps_decay_steps, small.lr) == (5_000_000, 500_000, 1e-3)
    assert small.eval_every_chunks == 4  # 524,288 env steps: chunks of 131,072
    large = build_config({"num_envs": 65_536}, breakout)
    assert (large.total_steps, large.eps_decay_steps) == (16_777_216, 1_677_721)
    assert build_config({"num_envs": 65_536, "total_steps": 2_000_000}, breakout).total_steps == 2_000_000


def test_classic_control_takes_a_squared_td_error_unless_told_otherwise():
    """CartPole-v1 and Acrobot-v1 default to mse at every num_envs; the other envs keep the original's huber, and a
    given --loss wins over an env's default."""
    for name, loss in (("CartPole-v1", "mse"), ("Acrobot-v1", "mse"), ("MountainCar-v0", "huber"),
                       ("Breakout-MinAtar", "huber")):
        for num_envs in (16, 65_536):
            config = build_config({"num_envs": num_envs}, get_spec(name))
            assert (config.loss, config.min_eps) == (loss, 0.05), (name, num_envs)
    assert build_config({"loss": "huber"}, get_spec("cartpole")).loss == "huber"


def test_the_default_batch_grows_where_a_vector_step_would_make_more_than_128_updates():
    """2 x 65,536 / 256 would be 512 updates per vector step; the default batch becomes 2 x 65,536 / 128 = 1,024
    instead (in multiples of 256), for 128 updates of 1,024. Up to 16,384 envs it stays 256 (128 updates of 256
    there), and a given batch size, updates_per_step or a lower replay ratio decide for themselves."""
    for num_envs, batch_size, updates in ((4096, 256, 32), (16_384, 256, 128), (32_768, 512, 128),
                                          (65_536, 1024, 128)):
        config = cartpole(num_envs=num_envs)
        assert (config.batch_size, config.vector_step_updates) == (batch_size, updates)
    assert cartpole(num_envs=65_536, batch_size=256).vector_step_updates == 512
    assert cartpole(num_envs=65_536, updates_per_step=4).batch_size == 256
    assert cartpole(num_envs=65_536, replay_ratio=0.5).batch_size == 256  # 0.5 x 65,536 / 128 = 256


@pytest.mark.parametrize("num_envs", [64, 16_384])
def test_the_same_flags_learn_the_probe_env_at_64_and_16384_envs(num_envs):
    """TwoStep (Q(0) = gamma x 1 = 0.5, Q(1) = 1) with 65,536 env steps at either size: 64 envs learn on
    1,024 - 256 vector steps with 2 updates each, 16,384 envs on 4 - 1 with 512 each: 1,536 updates both."""
    from jaxdqn.train import build_program

    config = build_config(dict(num_envs=num_envs, total_steps=65_536, chunk_steps=16_384, learning_starts=16_384,
                               buffer_size=65_536, batch_size=64, lr=1e-2, lr_anneal=False, gamma=0.5,
                               hidden_sizes=(32,), eps_decay_steps=65_536, eval_episodes=8, num_devices=1),
                          get_spec("tests.probe_envs:TwoStep"))
    assert config.total_updates == 1536
    program = build_program(config)
    state = program.initial_state()
    for _ in range(config.num_chunks):
        state, _ = program.run_chunk(state)
    from jaxdqn import parallel

    assert int(parallel.first_device(state.updates)) == 1536
    np.testing.assert_allclose(q_values(program, state, [[0.0], [1.0]]), [[0.5], [1.0]], atol=0.1)
