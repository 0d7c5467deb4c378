"""Fixed-seed training runs whose parameters must not change when the code is reorganised.

`python -m tests.equivalence_cases OUT.npz` (with two host devices, as `tests/test_equivalence.py` runs
it) trains each case below for a few chunks through `jaxdqn.train.build_program` and writes the online
and target parameters of device 0; `tests/data/equivalence_reference_cpu*.npz` hold the values of the tree
before the learner/kernels/cli redesign (under the tests' cheaper XLA settings, one file per kind of CPU:
tests/test_equivalence.py says how). A change of behaviour changes some bit of them.
"""

from __future__ import annotations

import sys

# Every algorithm setting written out (the defaults of the tree the reference came from), so that a later
# change of a default does not change what these cases run.
ALGORITHM = dict(env="CartPole-v1", seed=0, lr=5e-4, lr_anneal=True, gamma=0.99, max_grad_norm=10.0,
                 target_update_frequency=1, tau=0.05, loss="huber", double=True, n_step=1, prioritized=False,
                 priority_alpha=0.6, priority_beta=0.4, eps=1.0, min_eps=0.05, layer_norm=True, dueling=False,
                 sync="grads")
SMALL = dict(ALGORITHM, num_envs=16, total_steps=16 * 48, buffer_size=256, batch_size=32, updates_per_step=2,
             learning_starts=64, chunk_steps=16 * 16, eval_frequency=16 * 48, eval_episodes=4, hidden_sizes=(16,),
             eps_decay_steps=256)

CASES = {
    # The default algorithm (double, huber, LayerNorm, Polyak tau, lr annealing).
    "default": dict(SMALL),
    "dueling_nstep_prioritized": dict(SMALL, dueling=True, n_step=3, prioritized=True),
    "two_devices": dict(SMALL, num_devices=2),
    "two_devices_local_sgd": dict(SMALL, num_devices=2, sync="params"),
    "population": dict(SMALL, num_seeds=2, sweep=("lr=1e-3,3e-4",)),
    "minatar_conv": dict(SMALL, env="Breakout-MinAtar", num_envs=8, total_steps=8 * 24, chunk_steps=8 * 8,
                         eval_frequency=8 * 24, buffer_size=128, learning_starts=32, hidden_sizes=(16,)),
}


def case_params(name: str) -> dict[str, "np.ndarray"]:
    """`{leaf path: array}` of the online and target parameters (device 0) after the case's chunks."""
    import jax
    import numpy as np

    from jaxdqn import parallel
    from jaxdqn.config import TrainConfig
    from jaxdqn.train import build_program

    config = TrainConfig(**{"num_devices": 1, **CASES[name]}).validate()
    program = build_program(config)
    state = program.initial_state()
    for _ in range(config.num_chunks):
        state, _ = program.run_chunk(state)
    trees = parallel.first_device({"params": state.params, "target_params": state.target_params})
    return {f"{name}/{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(trees)}


def all_case_params() -> dict[str, "np.ndarray"]:
    values = {}
    for name in CASES:
        values.update(case_params(name))
    return values


if __name__ == "__main__":
    import numpy as np

    np.savez(sys.argv[1], **all_case_params())
