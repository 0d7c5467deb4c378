"""Other JAX suites (`jaxdqn.suites`): their ids train through the CLI, and each adapter keeps gymnax's step contract.

The contract tests step an adapter and, on the same states, actions and keys, the suite's own step and reset:
the observation after an auto-reset, `info["final_observation"]`, the reward, and termination kept apart from
truncation must agree. A suite's tests skip when it is not installed (`pip install -e ".[navix]"`, ...).

All CLI runs share one subprocess (one Python start-up), with XLA's CPU backend set to compile fast (as in
tests/test_gymnax_envs.py); the contract checks compile in this process with the same options.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import FAST_COMPILE, FAST_COMPILE_OPTIONS, ROOT, subprocess_env


# The ids each suite trains through the CLI (Jumanji's Minesweeper has a 10 x 10 multi-discrete action space).
CLI_IDS = {
    "navix": ["navix:Navix-Empty-8x8-v0"],
    "xminigrid": ["xminigrid:MiniGrid-Empty-8x8"],
    "craftax": ["craftax:Craftax-Classic-Symbolic-v1"],
    "jumanji": ["jumanji:Snake-v1", "jumanji:Minesweeper-v0"],
}
INSTALLED = {suite for suite in CLI_IDS if importlib.util.find_spec(suite) is not None}


def needs(suite: str):
    return pytest.mark.skipif(suite not in INSTALLED, reason=f'{suite} is not installed: pip install -e ".[{suite}]"')


# argv: log folder, env names. Prints one JSON line: {name: [exit code, stderr]}.
TRAIN_EACH = """
import contextlib, io, json, sys, traceback
from jaxdqn.train import main
log_root, results = sys.argv[1], {}
for name in sys.argv[2:]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(["--env", name, "--num_envs", "2", "--total_steps", "8", "--chunk_steps", "8",
                         "--buffer_size", "8", "--batch_size", "2", "--updates_per_step", "1",
                         "--learning_starts", "4", "--eval_frequency", "8", "--eval_episodes", "1",
                         "--hidden_sizes", "8", "--no_compile_cache", "--quiet",
                         "--log_dir", f"{log_root}/{name.replace(':', '_')}"])
        except BaseException:  # noqa: BLE001  (reported for this name; the next ones still run)
            traceback.print_exc()
            code = "exception"
    results[name] = [code, stderr.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Trains every installed suite's CLI_IDS in one subprocess: `(log root, {name: [exit code, stderr]})`."""
    log_root = tmp_path_factory.mktemp("suites")
    names = [name for suite in sorted(INSTALLED) for name in CLI_IDS[suite]]
    env = subprocess_env(XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")
    process = subprocess.run([sys.executable, "-c", TRAIN_EACH, str(log_root), *names], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    return log_root, json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("suite", [pytest.param(suite, marks=needs(suite)) for suite in CLI_IDS])
def test_suite_ids_train_through_the_cli(cli_runs, suite):
    log_root, results = cli_runs
    for name in CLI_IDS[suite]:
        code, stderr = results[name]
        assert code == 0, f"{name}:\n{stderr[-3000:]}"
        summary = json.loads((log_root / name.replace(":", "_") / "summary.json").read_text())
        assert summary["env"] == name and summary["total_steps"] == 8
        assert math.isfinite(summary["eval_return_mean"]) and summary["eval_length_mean"] >= 1, summary


# The step contract ------------------------------------------------------------------------------------------

def check_contract(env, params, reference, prepare=None, steps=64, num_actions=None, seed=0):
    """Steps one adapted env `steps` times with random actions, and `reference` on the same inputs.

    The env starts from `env.reset`, changed by `prepare(state)` if given; actions are drawn from the first
    `num_actions` (default: all of them). One env rather than a batch: unbatched, the suites' branches stay
    branches, and the program compiles several times faster (the CLI runs train batches of them).

    `reference(key, state, action)` gives, from the suite's own functions, what the adapter's `env.step(key,
    state, action, params)` must return: a dict of obs, final_observation, reward, terminated, truncated.

    Returns:
      `(mismatches, ends)`: the fields that differed at any step, and how many episodes ended terminated and
      truncated (so that a test can require both kinds of episode end to have been checked).
    """
    import jax
    import jax.numpy as jnp

    num_actions = num_actions or env.action_space(params).n

    def differ(got, expected):  # floats computed by two copies of one function may round differently
        if jnp.issubdtype(expected.dtype, jnp.floating):
            return ~(jnp.abs(got - expected) <= 1e-5 * (1.0 + jnp.abs(expected)))  # NaN differs too
        return got != expected

    def run(key):
        reset_key, key = jax.random.split(key)
        _, state = env.reset(reset_key, params)
        if prepare is not None:
            state = prepare(state)

        def one_step(state, key):
            action_key, step_key = jax.random.split(key)
            action = jax.random.randint(action_key, (), 0, num_actions)
            obs, next_state, reward, terminated, truncated, info = env.step(step_key, state, action, params)
            got = dict(obs=obs, final_observation=info["final_observation"], reward=reward, terminated=terminated,
                       truncated=truncated)
            expected = reference(step_key, state, action)
            differs = {field: jnp.any(differ(got[field], expected[field])) for field in got}
            return next_state, (differs, terminated, truncated)

        _, (differs, terminated, truncated) = jax.lax.scan(one_step, state, jax.random.split(key, steps))
        return {field: jnp.any(value) for field, value in differs.items()}, jnp.sum(terminated), jnp.sum(truncated)

    key = jax.random.key(seed)
    compiled = jax.jit(run).lower(key).compile(compiler_options=FAST_COMPILE_OPTIONS)
    differs, terminated, truncated = compiled(key)
    return sorted(field for field, value in differs.items() if value), (int(terminated), int(truncated))


def gymnax_keys(key):
    """The keys gymnax's `Environment.step` splits its key into: the step's, then the reset's."""
    import jax

    return jax.random.split(key)


@needs("navix")
def test_navix_step_contract():
    import jax.numpy as jnp
    import navix
    from navix.environments.environment import StepType

    from jaxdqn.suites import NavixEnv

    navix_env = navix.make("Navix-Empty-5x5-v0", max_steps=15)  # short episodes: both kinds of end occur
    env = NavixEnv(navix_env, "navix:Navix-Empty-5x5-v0", "test")

    def reference(key, state, action):
        _, reset_key = gymnax_keys(key)
        stepped = navix_env.step(state.inner, action)  # Navix's own step
        done = stepped.step_type != StepType.TRANSITION
        return dict(obs=jnp.where(done, navix_env.reset(reset_key).observation, stepped.observation),
                    final_observation=stepped.observation, reward=stepped.reward,
                    terminated=stepped.step_type == StepType.TERMINATION,
                    truncated=stepped.step_type == StepType.TRUNCATION)

    # Navix's first three actions turn and move forward: random walks of them often reach the goal.
    mismatches, (terminated, truncated) = check_contract(env, env.default_params, reference, steps=600, num_actions=3)
    assert mismatches == []
    assert terminated > 0 and truncated > 0, (terminated, truncated)


@needs("xminigrid")
def test_xminigrid_step_contract():
    import jax.numpy as jnp
    import xminigrid

    from jaxdqn.suites import XMiniGridEnv

    xminigrid_env, xminigrid_params = xminigrid.make("MiniGrid-Empty-5x5")
    xminigrid_params = xminigrid_params.replace(max_steps=15)  # short episodes: both kinds of end occur
    env = XMiniGridEnv(xminigrid_env, xminigrid_params, "xminigrid:MiniGrid-Empty-5x5", "test")

    def reference(key, state, action):
        _, reset_key = gymnax_keys(key)
        stepped = xminigrid_env.step(xminigrid_params, state.inner, action)  # XLand-MiniGrid's own step
        goal_reached = stepped.last() & (stepped.discount == 0.0)
        reset = xminigrid_env.reset(xminigrid_params, reset_key)
        return dict(obs=jnp.where(stepped.last(), reset.observation, stepped.observation),
                    final_observation=stepped.observation, reward=stepped.reward, terminated=goal_reached,
                    truncated=stepped.last() & ~goal_reached)

    # XLand-MiniGrid's first three actions move forward and turn: random walks of them often reach the goal.
    mismatches, (terminated, truncated) = check_contract(env, env.default_params, reference, steps=600, num_actions=3)
    assert mismatches == []
    assert terminated > 0 and truncated > 0, (terminated, truncated)


@needs("craftax")
def test_craftax_step_contract():
    """The env starts at zero health (it dies at once: terminated), then its next episodes reach a 4-step time
    limit (truncated); Craftax's `done` alone does not tell these apart."""
    import jax.numpy as jnp
    from craftax.craftax_classic.envs.craftax_symbolic_env import CraftaxClassicSymbolicEnvNoAutoReset

    from jaxdqn.suites import CraftaxEnv

    craftax_env = CraftaxClassicSymbolicEnvNoAutoReset()
    env = CraftaxEnv(craftax_env, "craftax:Craftax-Classic-Symbolic-v1", "test")
    params = env.default_params.replace(inner=env.default_params.inner.replace(max_timesteps=4))
    craftax_params = params.inner

    def reference(key, state, action):
        step_key, reset_key = gymnax_keys(key)
        obs, stepped, reward, done, _ = craftax_env.step_env(step_key, state.inner, action, craftax_params)
        reset_obs, _ = craftax_env.reset_env(reset_key, craftax_params)
        time_up = stepped.timestep >= craftax_params.max_timesteps
        return dict(obs=jnp.where(done, reset_obs, obs), final_observation=obs, reward=reward,
                    terminated=done & ~time_up, truncated=done & time_up)

    def dead(state):
        return state.replace(inner=state.inner.replace(player_health=0 * state.inner.player_health))

    mismatches, (terminated, truncated) = check_contract(env, params, reference, prepare=dead, steps=9)
    assert mismatches == []
    assert (terminated, truncated) == (1, 2)  # died at step 1; time limit at steps 5 and 9


@needs("jumanji")
def test_jumanji_step_contract():
    """Snake's episodes end at a wall or at its own body, terminated (Jumanji's discount 0); none is truncated."""
    import jax.numpy as jnp
    from jumanji.environments import Snake
    from jumanji.types import StepType

    from jaxdqn.suites import JumanjiEnv

    snake = Snake(num_rows=6, num_cols=6)
    env = JumanjiEnv(snake, "jumanji:Snake-v1", "test")

    def flat(observation):  # written out here rather than taken from the adapter
        return jnp.concatenate([observation.grid.ravel(), jnp.atleast_1d(observation.step_count).astype(jnp.float32),
                                observation.action_mask.astype(jnp.float32)])

    def reference(key, state, action):
        _, reset_key = gymnax_keys(key)
        _, stepped = snake.step(state.inner, action)  # Jumanji's own step
        last = stepped.step_type == StepType.LAST
        _, reset = snake.reset(reset_key)
        return dict(obs=jnp.where(last, flat(reset.observation), flat(stepped.observation)),
                    final_observation=flat(stepped.observation), reward=stepped.reward,
                    terminated=last & (stepped.discount == 0.0), truncated=last & (stepped.discount != 0.0))

    mismatches, (terminated, truncated) = check_contract(env, env.default_params, reference)
    assert mismatches == []
    assert terminated > 0 and truncated == 0, (terminated, truncated)


@needs("jumanji")
def test_jumanji_multi_discrete_action_is_a_joint_index():
    import jax
    import jax.numpy as jnp

    from jaxdqn.registry import make_env

    _, env, params = make_env("jumanji:Minesweeper-v0")  # a 10 x 10 board: the action is (row, column)
    assert env.action_space(params).n == 100
    assert env.suite_action(jnp.int32(37)).tolist() == [3, 7]
    assert env.suite_action(jnp.int32(99)).tolist() == [9, 9]

    def boards(key):  # the flat observation starts with the board
        reset_key, step_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)
        *_, info = env.step(step_key, state, jnp.int32(37), params)
        _, row_column = env.jumanji_env.step(state.inner, jnp.array([3, 7], jnp.int32))  # Jumanji's own step
        _, column_row = env.jumanji_env.step(state.inner, jnp.array([7, 3], jnp.int32))
        return (info["final_observation"][:100], row_column.observation.board.ravel(),
                column_row.observation.board.ravel())

    key = jax.random.key(0)
    adapted, row_column, column_row = jax.jit(boards).lower(key).compile(compiler_options=FAST_COMPILE_OPTIONS)(key)
    assert jnp.array_equal(adapted, row_column) and not jnp.array_equal(adapted, column_row)


@needs("jumanji")
def test_suite_settings_are_in_the_parameters_that_key_compiled_programs():
    """An adapter a user's factory builds with other settings under the same name must not reuse programs."""
    from jumanji.environments import Snake

    from jaxdqn.suites import JumanjiEnv

    def params_text(**settings):
        return repr(JumanjiEnv(Snake(**settings), "jumanji:Snake-v1", "test").default_params)

    assert params_text(time_limit=50) == params_text(time_limit=50)
    assert params_text(time_limit=50) != params_text(time_limit=60)
    assert "0x" not in params_text()  # no object address: the same text in every process


# One-line errors --------------------------------------------------------------------------------------------

def train_error(capsys, tmp_path, name: str) -> tuple[int, list[str]]:
    """`jaxdqn.train.main` for `name`: its exit code and stderr lines; nothing may have been written."""
    from jaxdqn.train import main

    code = main(["--env", name, "--no_compile_cache", "--log_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    return code, capsys.readouterr().err.splitlines()


def test_suite_not_installed_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    from jaxdqn import registry

    name = "navix:Navix-DoorKey-5x5-v0"
    registry.unregister(name)
    monkeypatch.setitem(sys.modules, "navix", None)  # `import navix` now fails as if navix were not installed
    code, lines = train_error(capsys, tmp_path, name)
    assert code == 2
    assert lines == ["jaxdqn.train: error: environment 'navix:Navix-DoorKey-5x5-v0' needs Navix, which is not "
                     "installed: pip install -e \".[navix]\""]


@needs("jumanji")
@pytest.mark.parametrize(("name", "message"), [
    ("jumanji:MultiCVRP-v0", "environment 'jumanji:MultiCVRP-v0' has a BoundedArray action space; DQN needs "
                             "discrete actions"),
    ("jumanji:JobShop-v0", "environment 'jumanji:JobShop-v0' has a MultiDiscreteArray action space of 21 x 21 x 21 "
                           "x 21 x 21 x 21 x 21 x 21 x 21 x 21 = 16,679,880,978,201 joint actions; DQN takes at most "
                           "1,024"),
    ("jumanji:LevelBasedForaging-v0", "environment 'jumanji:LevelBasedForaging-v0' gives one reward per agent "
                                      "(shape (2,)); DQN needs one scalar reward"),
    ("jumanji:Snake-v9", "unknown Jumanji environment 'Snake-v9'; try one of: jumanji:Snake-v1, jumanji:BinPack-v2, "
                         "jumanji:Maze-v0"),
])
def test_jumanji_env_dqn_cannot_train_is_one_line_exit_2(capsys, tmp_path, name, message):
    code, lines = train_error(capsys, tmp_path, name)
    assert code == 2
    assert lines == [f"jaxdqn.train: error: {message}"]


@needs("xminigrid")
def test_xland_id_without_rule_set_is_one_line_exit_2(capsys, tmp_path):
    code, lines = train_error(capsys, tmp_path, "xminigrid:XLand-MiniGrid-R1-9x9")
    assert code == 2
    assert lines == ["jaxdqn.train: error: environment 'xminigrid:XLand-MiniGrid-R1-9x9' needs a rule set from an "
                     "XLand-MiniGrid benchmark, which jaxdqn does not load; train a MiniGrid-* id"]


def test_suite_names_are_not_import_paths():
    """A checkpoint of a suite's env resumes without `--trust_checkpoint_code`: its name imports no user module."""
    from jaxdqn.registry import is_import_path

    assert not is_import_path("navix:Navix-Empty-8x8-v0") and not is_import_path("jumanji:Snake-v1")
    assert is_import_path("mypackage.envs:MyEnv")
