"""CliffWalking-v1 (Gymnasium 1.3; Sutton & Barto 2018, Example 6.6) as a pure-JAX gymnax environment.

A 4 x 12 grid: the walker starts at (3, 0), the goal is (3, 11), and the cells (3, 1..10) between them
are a cliff. This port reproduces `gymnasium.make("CliffWalking-v1")` (not slippery, its default):

- states `row * 12 + col`; the start is 36;
- 4 actions: 0 up, 1 right, 2 down, 3 left; moves off the grid leave the walker in place;
- stepping into the cliff costs -100 and puts the walker back at the start (the episode goes on);
  every other step costs -1;
- entering the goal (47) terminates the episode;
- reset is deterministic (state 36).

One deliberate addition: Gymnasium registers CliffWalking-v1 without a time limit, but thousands of
vectorized episodes and greedy evaluations need a bound (a greedy policy that walks into a wall would
never end), so episodes are truncated after `EnvParams.max_steps_in_episode = 200` steps (the optimal
path takes 13). `jaxdqn.check_port` applies the port's limit to a reference that has none, and says
so in its report.

Unlike the Taxi port, which tabulates its rules, the step here is written directly with `jnp`
arithmetic and `jnp.where`, the way most ports are written (see docs/porting.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdqn.envs.toy_text import EnvParams, EnvState, ToyTextPort
from jaxdqn.registry import register

NUM_ROWS, NUM_COLS = 4, 12
NUM_STATES = NUM_ROWS * NUM_COLS
NUM_ACTIONS = 4
START = 3 * NUM_COLS + 0  # 36
GOAL = 3 * NUM_COLS + 11  # 47
# (row, col) change of up, right, down, left.
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)


class CliffWalking(ToyTextPort):
    """Gymnasium's CliffWalking-v1 with one-hot observations; see the module docstring."""

    env_id = "CliffWalking-v1"
    num_states = NUM_STATES
    num_discrete_actions = NUM_ACTIONS
    reference = "gymnasium:CliffWalking-v1"

    def step_env(
        self, key: jax.Array, state: EnvState, action: int | jax.Array, params: EnvParams
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, Any]]:
        row, col = jnp.divmod(state.s, NUM_COLS)
        move = jnp.asarray(MOVES)[action]
        row = jnp.clip(row + move[0], 0, NUM_ROWS - 1)
        col = jnp.clip(col + move[1], 0, NUM_COLS - 1)
        in_cliff = (row == NUM_ROWS - 1) & (col >= 1) & (col <= NUM_COLS - 2)
        s = jnp.where(in_cliff, START, row * NUM_COLS + col).astype(jnp.int32)
        reward = jnp.where(in_cliff, -100.0, -1.0).astype(jnp.float32)
        next_state = EnvState(s=s, time=state.time + 1)
        return self.get_obs(next_state), next_state, reward, self.is_terminated(next_state, params), {}

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        state = EnvState(s=jnp.int32(START), time=0)
        return self.get_obs(state), state

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.s == GOAL


# The optimal path (up, 11 x right, down) returns -13, and the greedy evaluation is deterministic.
SOLVED_THRESHOLD = -13.0

# Measured with `python -m jaxdqn.train --env CliffWalking-v1` on the 2-core CPU, seeds 0-3: the greedy
# return reaches -13 (optimal) at 0.46-0.59M env steps and stays there to 1M; about 10 s.
DEFAULTS = {
    "total_steps": 1_000_000,
    "num_envs": 256,
    "buffer_size": 65_536,
    "batch_size": 256,
    "replay_ratio": 2.0,  # 2 updates of 256 per vector step of 256 envs
    "learning_starts": 4_096,
    "target_update_frequency": 256,
    "tau": 1.0,  # hard target copies every 256 updates (what was tuned), whatever the global default
    "eps_decay_steps": 250_000,
    "chunk_steps": 32_768,
    "eval_frequency": 65_536,
}

register("CliffWalking-v1", CliffWalking, defaults=DEFAULTS, solved_threshold=SOLVED_THRESHOLD)
