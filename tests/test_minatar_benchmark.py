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


def test_variants_are_labelled_runs_with_their_flags_added(capsys):
    parser = minatar.make_parser()
    assert minatar.parse_variants(parser, ['lambda=--n_step 4 --td_lambda 0.65', "lr=--lr '2e-3'"]) == [
        ("jaxdqn lambda", ["--n_step", "4", "--td_lambda", "0.65"]), ("jaxdqn lr", ["--lr", "2e-3"])]
    for bad in ("--n_step 4", "two words=--lr 1e-3", '=--lr 1e-3', 'q=--lr "1e-3'):
        with pytest.raises(SystemExit) as exit_info:
            minatar.parse_variants(parser, [bad])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "--variant" in error[0]


def test_every_jaxdqn_row_gets_its_return_at_pqns_wall_time():
    def row(system, curve, wall_s):
        return {"env": "Breakout-MinAtar", "system": system, "seeds": 2, "env_steps": 100, "final_return_mean":
                curve[-1][1], "final_return_min": 0.0, "final_return_max": 1.0, "compile_s": 1.0, "wall_s": wall_s,
                "curve": curve}

    rows = [row("jaxdqn", [(10.0, 1.0), (20.0, 2.0)], 20.0), row("jaxdqn lambda", [(10.0, 3.0), (30.0, 4.0)], 30.0),
            row("pqn", [(25.0, 5.0)], 25.0)]
    lines = minatar.markdown(rows, "cpu").splitlines()
    assert lines[4].endswith("| 2.0 (at 25 s) |")  # finished before PQN: its last evaluation
    assert lines[5].endswith("| 3.0 (at 25 s) |")  # the evaluation at 10 s, not the one at 30 s
    assert lines[6].endswith("|  |")
