"""What an install of jaxdqn claims and needs: only the `jaxdqn` import name, and every imported package declared."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib

from tests.conftest import ROOT, subprocess_env


def test_only_jaxdqn_is_claimed_as_an_import_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(package == "jaxdqn" or package.startswith("jaxdqn.") for package in setuptools["packages"])


def test_a_users_own_envs_and_benchmarks_packages_are_left_alone(tmp_path):
    for name in ("envs", "benchmarks"):  # a user project with packages of these names, which must not load
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise SystemExit('the user package was imported')\n")
    code = ("import sys; from jaxdqn.registry import get_spec; "
            "print(get_spec('Taxi-v4').name, get_spec('cliffwalking').name, 'envs' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env=subprocess_env(PYTHONPATH=f"{tmp_path}:{ROOT}"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Taxi-v4", "CliffWalking-v1", "False"]


def _requirement_names(distribution: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Names of the distributions `distribution` requires (with `extras`), markers evaluated for this Python."""
    from packaging.requirements import Requirement

    names = set()
    for text in importlib.metadata.requires(distribution) or ():
        requirement = Requirement(text)
        environments = [{"extra": extra} for extra in ("", *extras)]
        if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
            names.add(_canonical(requirement.name))
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(distribution: str) -> set[str]:
    """`distribution` and everything it requires, transitively (installed distributions only)."""
    seen, todo = set(), [_canonical(distribution)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_requirement_names(name) - seen)
        except importlib.metadata.PackageNotFoundError:  # an optional requirement not installed
            pass
    return seen


def test_every_package_jaxdqn_imports_is_a_declared_requirement():
    """A package imported by jaxdqn (or by a library it imports) that nothing declares breaks a fresh install.

    gymnax 1.0.1 imports `six` without declaring it, so jaxdqn declares it: this test fails if such a
    package is installed here only by chance (another package or an earlier session brought it in).
    """
    modules = ["jaxdqn.train", "jaxdqn.evaluate", "jaxdqn.check_port", "jaxdqn.checkpoint", "jaxdqn.envs"]
    code = (f"import sys; at_start = set(sys.modules); [__import__(name) for name in {modules!r}]; "
            "from jaxdqn.registry import make_env; make_env('Breakout-MinAtar'); "
            "print(' '.join(sorted({name.partition('.')[0] for name in set(sys.modules) - at_start})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    owners = importlib.metadata.packages_distributions()
    declared = _closure("jaxdqn")
    undeclared = {}
    for module in result.stdout.split():
        distributions = {_canonical(name) for name in owners.get(module, ())}
        if distributions and not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported but not required by jaxdqn or its requirements: {undeclared}"
