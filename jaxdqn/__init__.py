"""jaxdqn: Deep Q-Networks in pure JAX, vectorized end to end.

Environments, replay buffer, acting and learning run in one jitted XLA program over thousands of
gymnax environments, sharded over devices. See README.md.
"""

__version__ = "0.1.0"
