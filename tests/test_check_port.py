"""The port checker finds seeded bugs at the right place, and its CLI exits 0, 1 or 2.

Each bugged port (tests/bugged_ports.py) follows the correct Taxi port's trajectory until its bug first
matters, so the expected episode and step are found by replaying the correct port with the same seed
(`check_port.port_steps`) and looking for the first transition the bug affects.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

import pytest

from jaxdqn.envs.taxi import DROPOFF, EAST, Taxi, decode
from jaxdqn.check_port import PortError, check_port, port_steps
from jaxdqn.registry import ConfigError
from tests import bugged_ports
from tests.conftest import ROOT, cheap_compile_env

SEED = 1  # its first delivery is in episode 14, so a delivery bug is found late
REFERENCE = "gymnasium:Taxi-v4"


class Row(NamedTuple):
    """One transition of the correct port: where it happened and what it did."""

    episode: int
    step: int
    state: int  # the integer Taxi state before the step
    action: int
    reward: float
    terminated: bool
    truncated: bool


@functools.lru_cache(maxsize=None)
def correct_run(seed: int = SEED, episodes: int = 30) -> tuple[Row, ...]:
    """The correct port's first `episodes` episodes, as `check_port` steps them with this seed."""
    env = Taxi()
    _, state, steps = port_steps(env, env.default_params, seed)
    rows, s, episode, step_in_episode = [], int(state.s), 0, 0
    while episode < episodes:
        port = next(steps)
        step_in_episode += 1
        rows.append(Row(episode, step_in_episode, s, port.action, port.reward, port.terminated, port.truncated))
        if port.terminated or port.truncated:
            episode, step_in_episode = episode + 1, 0
        s = int(port.state.s)
    return tuple(rows)


def first_transition(affected: Callable[[Row], bool]) -> tuple[int, int]:
    """`(episode, step)` of the correct port's first transition that the bug affects."""
    for row in correct_run():
        if affected(row):
            return row.episode, row.step
    raise AssertionError("the bug is never reached in the correct run")


def test_wrong_reward_is_found_at_the_first_delivery():
    episode, step = first_transition(lambda row: row.reward == 20.0)
    assert episode > 0  # found after several auto-resets and reference re-alignments
    report = check_port(bugged_ports.WrongRewardTaxi(), REFERENCE, episodes=30, seed=SEED)
    assert not report.ok
    found = report.divergence
    assert (found.episode, found.step, found.field) == (episode, step, "reward")
    assert (found.port, found.reference) == (10.0, 20)
    assert found.actions[-1] == DROPOFF and len(found.actions) == step
    assert report.episodes == episode + 1


def test_wrong_transition_is_found_at_the_first_move_through_the_wall():
    episode, step = first_transition(lambda row: decode(row.state)[:2] == (0, 1) and row.action == EAST)
    report = check_port(bugged_ports.WrongTransitionTaxi(), REFERENCE, episodes=30, seed=SEED)
    found = report.divergence
    assert (found.episode, found.step, found.field) == (episode, step, "observation")
    # The port's taxi went to column 2, the reference's stayed in column 1.
    assert decode(found.port)[:2] == (0, 2) and decode(found.reference)[:2] == (0, 1)


def test_missing_auto_reset_is_found_at_the_end_of_the_first_episode():
    episode, step = first_transition(lambda row: row.terminated or row.truncated)
    report = check_port(bugged_ports.NoAutoResetTaxi(), REFERENCE, episodes=30, seed=SEED)
    found = report.divergence
    assert (found.episode, found.step, found.field) == (episode, step, "auto_reset")
    assert found.port == f"state.time={step} after the step"


def test_late_truncation_is_found_at_the_time_limit():
    episode, step = first_transition(lambda row: row.truncated)
    assert step == 200
    report = check_port(bugged_ports.LateTruncationTaxi(), REFERENCE, episodes=30, seed=SEED)
    found = report.divergence
    assert (found.episode, found.step, found.field) == (episode, 200, "truncated")
    assert (found.port, found.reference) == (False, True)


def test_wrong_observation_dtype_is_a_contract_error():
    with pytest.raises(PortError) as error:
        check_port(bugged_ports.IntObservationTaxi(), REFERENCE, episodes=5)
    assert error.value.check == "observation dtype"
    assert "int32" in str(error.value) and "float32" in str(error.value)


def test_python_if_on_a_traced_value_is_a_contract_error():
    with pytest.raises(PortError) as error:
        check_port(bugged_ports.PythonIfTaxi(), REFERENCE, episodes=5)
    message = str(error.value)
    assert error.value.check == "python control flow"
    assert message.startswith("uses Python control flow on a traced value in step_env: ")
    assert "bugged_ports.py" in message and "if action == PICKUP" in message
    assert "\n" not in message


def test_a_time_limit_unlike_the_references_is_a_divergence():
    env = Taxi()
    report = check_port(env, REFERENCE, episodes=5, params=env.default_params.replace(max_steps_in_episode=100))
    assert (report.divergence.field, report.divergence.port, report.divergence.reference) == ("time_limit", 100, 200)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # gymnasium's own warning about Taxi-v3
def test_bad_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown environment"):
        check_port("NoSuchEnv-v0", REFERENCE)
    with pytest.raises(ConfigError, match="unknown reference.*Taxi-v4"):
        check_port("Taxi-v4", "gymnasium:Taxi-v3")  # Gymnasium 1.3 says: use Taxi-v4


# The command line --------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxdqn.check_port", *args], cwd=ROOT,
                          env=cheap_compile_env(), capture_output=True, text=True, timeout=120)


def test_cli_exits_0_on_a_match():
    result = run_cli("--env", "CliffWalking-v1", "--reference", "gymnasium:CliffWalking-v1", "--episodes", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("MATCH")
    assert "compared 20 episodes" in result.stdout


def test_cli_exits_1_and_prints_the_divergence():
    episode, step = first_transition(lambda row: row.reward == 20.0)
    result = run_cli("--env", "tests.bugged_ports:WrongRewardTaxi", "--reference", REFERENCE,
                     "--seed", str(SEED), "--episodes", "30")
    assert result.returncode == 1, result.stderr
    assert f"DIVERGENCE at episode {episode}, step {step}, field 'reward': port 10.0, reference 20" in result.stdout


@pytest.mark.parametrize(
    "args, message, in_a_process",
    [
        (("--env", "tests.bugged_ports:PythonIfTaxi", "--reference", REFERENCE),
         "uses Python control flow on a traced value in step_env: ", True),  # traced there: its whole stderr
        (("--env", "NoSuchEnv-v0", "--reference", REFERENCE), "unknown environment 'NoSuchEnv-v0'", False),
        (("--env", "Taxi-v4", "--reference", "gymnasium:NoSuchEnv-v0"), "unknown reference", False),
        (("--env", "Taxi-v4", "--episodes", "0"), "--episodes must be positive", False),
    ],
)
def test_cli_exits_2_with_one_line_on_bad_input(args, message, in_a_process, capfd):
    """In a real process, or through `main` in this one."""
    if in_a_process:
        result = run_cli(*args)
        code, stderr = result.returncode, result.stderr
    else:
        from jaxdqn.check_port import main

        capfd.readouterr()
        code, stderr = main(list(args)), capfd.readouterr().err
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("python -m jaxdqn.check_port: error: ") and message in lines[0]
