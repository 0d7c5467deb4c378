"""The DQN loop users run today: ONE Gymnasium env stepped from Python, a numpy replay buffer on the host.

This is the classic single-environment architecture of CleanRL's `dqn.py` and of the PyTorch project
jaxdqn descends from, written in JAX so that no torch is needed: every env step is a Python call to
`gymnasium`, the greedy action is one jitted forward pass (a device round trip on a GPU), the
transition goes into numpy arrays, and every `train_frequency` steps one jitted gradient update runs
on a batch sampled on the host and copied to the device. `benchmarks.throughput` times it as the
baseline that the vectorized trainer is compared with.

Hyperparameters are CleanRL's `dqn.py` defaults (buffer 10,000, batch 128, one update every 10 steps,
hard target copy every 500 steps, Adam 2.5e-4, MSE loss); the Q-network is jaxdqn's MLP (128-128 with
LayerNorm) so that a forward pass costs what it costs in the trainer. The first `learning_starts`
steps fill the buffer untimed (epsilon decays over them, as CleanRL's schedule starts); the timed
steps that follow are the steady state of a long run: epsilon at `min_eps`, learning every
`train_frequency` steps.

    python -m benchmarks.classic_dqn --steps 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import checks
from benchmarks.machine import default_out, report_written
from jaxdqn.errors import OneLineParser
from jaxdqn.networks import MLPQNetwork


@dataclasses.dataclass(frozen=True)
class ClassicConfig:
    env_id: str = "CartPole-v1"
    buffer_size: int = 10_000
    batch_size: int = 128
    train_frequency: int = 10  # env steps between gradient updates
    learning_starts: int = 10_000  # untimed steps that fill the buffer before learning starts
    target_frequency: int = 500  # env steps between hard copies of the online network
    lr: float = 2.5e-4
    gamma: float = 0.99
    eps: float = 1.0
    min_eps: float = 0.05
    eps_decay_steps: int = 10_000
    hidden_sizes: tuple[int, ...] = (128, 128)
    seed: int = 0


class HostReplay:
    """A circular replay buffer of numpy arrays, filled one transition at a time."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
        self.obs = np.zeros((capacity, *obs_shape), np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), np.float32)
        self.action = np.zeros(capacity, np.int32)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.next_index = capacity, 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.next_index
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i], self.terminated[i] = (
            obs, action, reward, next_obs, terminated)
        self.next_index = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int):
        index = rng.integers(0, max(self.size, 1), batch_size)
        return self.obs[index], self.action[index], self.reward[index], self.next_obs[index], self.terminated[index]


def has_gymnasium_env(env_id: str) -> bool:
    """Whether Gymnasium registers `env_id` (CartPole-v1 does; the gymnax-only MinAtar ids do not)."""
    return env_id in gymnasium.envs.registry


def run(config: ClassicConfig, steps: int) -> dict:
    """Fills the buffer for `learning_starts` steps, then times `steps` steps of acting and learning."""
    env = gymnasium.make(config.env_id)
    obs_shape, num_actions = env.observation_space.shape, int(env.action_space.n)
    network = MLPQNetwork(num_actions=num_actions, hidden_sizes=config.hidden_sizes)
    optimizer = optax.adam(config.lr)
    params = network.init(jax.random.key(config.seed), jnp.zeros((1, *obs_shape), jnp.float32))
    target_params, opt_state = params, optimizer.init(params)

    @jax.jit
    def greedy_action(params, obs):
        return jnp.argmax(network.apply(params, obs[None])[0])

    @jax.jit
    def update(params, target_params, opt_state, obs, action, reward, next_obs, terminated):
        def loss_fn(params):
            next_value = jnp.max(network.apply(target_params, next_obs), axis=-1)
            target = reward + config.gamma * (1.0 - terminated) * next_value
            q = jnp.take_along_axis(network.apply(params, obs), action[:, None], axis=-1)[:, 0]
            return jnp.mean(jnp.square(target - q))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        param_updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, param_updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    replay = HostReplay(config.buffer_size, obs_shape)
    # Compile both jitted functions before anything is timed.
    jax.block_until_ready(greedy_action(params, np.zeros(obs_shape, np.float32)))
    jax.block_until_ready(update(params, target_params, opt_state, *replay.sample(rng, config.batch_size)))

    obs, _ = env.reset(seed=config.seed)
    episode_return, returns = 0.0, []
    started = None
    for step in range(config.learning_starts + steps):
        if step == config.learning_starts:  # the buffer is filled: time the steady state from here
            started, returns = time.perf_counter(), []
        epsilon = max(config.min_eps, config.eps + (config.min_eps - config.eps) * step / config.eps_decay_steps)
        if rng.random() < epsilon:
            action = int(rng.integers(num_actions))
        else:
            action = int(greedy_action(params, obs.astype(np.float32)))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, reward, next_obs, terminated)  # next_obs is the pre-reset observation
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            returns.append(episode_return)
            episode_return = 0.0
        if step >= config.learning_starts:
            if step % config.train_frequency == 0:
                params, opt_state, _ = update(params, target_params, opt_state, *replay.sample(rng, config.batch_size))
            if step % config.target_frequency == 0:
                target_params = params
    jax.block_until_ready(params)
    seconds = time.perf_counter() - started
    return {
        "env": config.env_id,
        "num_envs": 1,
        "timed_steps": steps,
        "untimed_fill_steps": config.learning_starts,
        "seconds": seconds,
        "env_steps_per_s": steps / seconds,
        "updates_per_s": (steps // config.train_frequency) / seconds,
        "mean_return_timed_episodes": float(np.mean(returns)) if returns else None,
        "device": jax.devices()[0].device_kind,
        "config": dataclasses.asdict(config),
    }


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks.classic_dqn", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="timed env steps after the untimed buffer fill")
    parser.add_argument("--learning_starts", type=int, default=ClassicConfig.learning_starts,
                        help="untimed env steps that fill the buffer first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to write the result as JSON "
                             "(default: benchmarks/results/classic_dqn_<machine>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    checks.positive(parser, args, "steps")
    checks.non_negative(parser, args, "learning_starts")
    checks.seed(parser, args)
    result = run(ClassicConfig(learning_starts=args.learning_starts, seed=args.seed), args.steps)
    print(json.dumps(result, indent=1))
    out = Path(args.out) if args.out else default_out("classic_dqn", result["device"]).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    report_written("classic_dqn", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
