"""The README's two commands stay true: CI runs the README's test command, and the train command parses."""

from __future__ import annotations

import re

from jaxdqn.train import make_train_parser
from tests.conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readmes_test_command():
    install_and_train, install_and_test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = install_and_test.split(" && ")
    assert f"python3 -m pip install -q {install.split('pip install ', 1)[1]}" in ci
    assert f"python3 {test.removeprefix('python ')}" in ci


def test_the_readmes_train_command_parses_with_its_flags():
    install_and_train, _ = readme_commands()
    assert install_and_train.startswith("pip install -e . && python -m jaxdqn.train ")
    flags = install_and_train.split("python -m jaxdqn.train ", 1)[1].split()
    args = make_train_parser().parse_args(flags)
    assert args.env == "cartpole" and args.num_envs == 4096
