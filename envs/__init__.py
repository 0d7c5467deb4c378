"""Simulators ported to pure JAX; importing this package registers them with `jaxdqn.registry`.

- `envs.taxi`: Gymnasium's Taxi-v4, registered as "Taxi-v4".
- `envs.cliffwalking`: Gymnasium's CliffWalking-v1, registered as "CliffWalking-v1".

Each port is checked against its Gymnasium reference with `python -m jaxdqn.check_port` (see
docs/porting.md).
"""

from envs import cliffwalking, taxi

__all__ = ["cliffwalking", "taxi"]
