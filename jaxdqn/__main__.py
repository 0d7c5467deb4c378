"""`python -m jaxdqn COMMAND [FLAGS]`: the `jaxdqn` command (`jaxdqn.cli.main`): train, evaluate, check-port."""

import sys

from jaxdqn.cli import main

if __name__ == "__main__":
    sys.exit(main())
