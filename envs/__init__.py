"""Simulators ported to pure JAX, installed as `jaxdqn.envs` (from the envs/ folder of the repository);
importing this package registers them with `jaxdqn.registry`.

- `jaxdqn.envs.taxi`: Gymnasium's Taxi-v4, registered as "Taxi-v4".
- `jaxdqn.envs.cliffwalking`: Gymnasium's CliffWalking-v1, registered as "CliffWalking-v1".

Each port is checked against its Gymnasium reference with `python -m jaxdqn.check_port` (see
docs/porting.md).
"""

from jaxdqn.envs import cliffwalking, taxi

__all__ = ["cliffwalking", "taxi"]
