"""The GPU fast paths of the trainer, behind one choice (`backend.choose`).

`acting` (epsilon-greedy acting as one Pallas kernel) and `update` (a DQN gradient update as three) run
the default MLP Q-network; `backend` decides, from the config, the platform and the learner's network,
which path acting and learning take, and holds the glue between the trainer and the kernels (the
parameter slab, the optimizer's per-update scalars). The pure-JAX path (`jaxdqn.learners`) is the
reference the kernels are tested against.
"""

from jaxdqn.kernels.backend import Backend, Path, choose

__all__ = ["Backend", "Path", "choose"]
