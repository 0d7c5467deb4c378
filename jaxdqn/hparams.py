"""The hyperparameters that may be traced, in a module of their own: defining them imports flax (and so JAX),
which `jaxdqn.config` leaves out so that the command line parses without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from flax import struct

if TYPE_CHECKING:
    from jaxdqn.config import TrainConfig


@struct.dataclass
class HParams:
    """The hyperparameters that may be traced (vmapped or swept) inside one compiled program."""

    lr: jnp.ndarray
    gamma: jnp.ndarray
    eps: jnp.ndarray
    min_eps: jnp.ndarray
    tau: jnp.ndarray

    @classmethod
    def from_config(cls, config: TrainConfig) -> HParams:
        return cls(**{name: np.float32(getattr(config, name)) for name in ("lr", "gamma", "eps", "min_eps", "tau")})
