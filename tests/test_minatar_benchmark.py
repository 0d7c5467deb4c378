"""benchmarks.minatar: PQN's tests placed on the wall clock, the return at a given time, and bad input."""

from __future__ import annotations

import pytest

from benchmarks import minatar


def test_pqn_tests_are_placed_at_an_even_pace_after_start_up():
    """A 100 s process whose run took 80 s: start-up and compiling end at 20 s; the test at half the budget
    lands at 20 + 80 / 2 = 60 s, the last at 100 s."""
    record = {"run_s": 80.0, "env_steps_per_seed": 1000, "test_curve": [[0, 1.0, 0, 2], [500, 5.0, 4, 6],
                                                                        [1000, 9.0, 8, 10]]}
    assert minatar.pqn_curve(record, process_s=100.0) == [(20.0, 1.0), (60.0, 5.0), (100.0, 9.0)]


def test_the_return_at_a_wall_time_is_the_last_evaluation_before_it():
    curve = [(30.0, 2.0), (60.0, 7.0), (90.0, 11.0)]
    assert minatar.return_at(curve, 89.9) == 7.0
    assert minatar.return_at(curve, 90.0) == 11.0
    assert minatar.return_at(curve, 10.0) is None


def test_a_missing_pqn_runner_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        minatar.main(["--games", "Breakout-MinAtar", "--pqn", str(tmp_path / "nowhere.py")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--pqn" in error[0] and "no such file" in error[0]
