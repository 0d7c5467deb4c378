"""jaxdqn: Deep Q-Networks in pure JAX, vectorized end to end.

Environments, replay buffer, acting and learning run in one jitted XLA program over thousands of
gymnax environments, sharded over devices. See README.md.

`jaxdqn.load_policy(DIR)` loads an agent saved by `python -m jaxdqn.train --save_model DIR` as a
greedy policy; it is imported on first use, so that `import jaxdqn` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["load_policy"]

TYPE_CHECKING = False  # True for type checkers (mypy and pyright read the name), without importing typing
if TYPE_CHECKING:  # what they see of the lazy attribute below (jaxdqn ships py.typed)
    from jaxdqn.checkpoint import load_policy


def __getattr__(name: str):
    if name == "load_policy":
        from jaxdqn.checkpoint import load_policy

        return load_policy
    raise AttributeError(f"module 'jaxdqn' has no attribute {name!r}")
