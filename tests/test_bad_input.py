"""Bad input and failing outputs: one line on stderr, exit code 2 before any work, and no output lost.

Each case of BAD_INPUT runs `jaxdqn.train.main` or `jaxdqn.evaluate.main` in process (the checks run
before anything compiles) and asserts exit code 2, exactly one stderr line holding the expected
fragment, and that no file or folder was created, changed or deleted. One small checkpoint, trained once
per module (`saved`), serves the cases that load one. Then the faults: a read-only folder, a full disk,
two runs racing for one log folder, and a checkpoint whose config names code to import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jaxdqn import checkpoint, preflight
from jaxdqn.errors import ConfigError
from tests.conftest import ROOT, subprocess_env

TINY = ["--num_envs", "16", "--total_steps", "256", "--buffer_size", "256", "--batch_size", "32",
        "--updates_per_step", "2", "--learning_starts", "64", "--chunk_steps", "64", "--eval_frequency", "128",
        "--eval_episodes", "8", "--hidden_sizes", "16", "--quiet"]

# A user's environment modules, importable from the test's folder (`modules`).
MODULES = {
    "raises_on_import.py": "raise RuntimeError('this module fails at import')\n",
    "bad_syntax.py": "def broken(:\n",
    "needs_args.py": ("import abc\nfrom gymnax.environments.environment import Environment\n"
                      "class NeedsArgs(Environment):\n    def __init__(self, size):\n        super().__init__()\n"
                      "class Abstract(abc.ABC):\n    @abc.abstractmethod\n    def step(self): ...\n"),
    # Imported only if trusted: it leaves a mark, then stops the run with an error.
    "marks_import.py": ("import os\nopen(os.environ['JAXDQN_TEST_MARK'], 'w').close()\n"
                        "raise RuntimeError('imported')\n"),
}


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("modules")
    for name, text in MODULES.items():
        (folder / name).write_text(text)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A tiny run with a checkpoint every chunk (steps 64, 128, 192, 256), its programs in a compile cache, and
    copies of its checkpoints whose config was damaged or names code to import."""
    import jaxdqn.train

    root = tmp_path_factory.mktemp("saved")
    paths = {"ckpt": root / "ckpt", "log": root / "log", "cache": root / "cache"}
    with pytest.MonkeyPatch.context() as patch:  # JAX's own persistent cache stays off in this process
        patch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
        assert jaxdqn.train.main([*TINY, "--save_model", str(paths["ckpt"]), "--checkpoint_frequency", "1",
                                  "--keep_checkpoints", "4", "--log_dir", str(paths["log"]),
                                  "--compile_cache", str(paths["cache"])]) == 0
    for name, change in {"words": {"num_envs": "sixty-four"}, "lacks": {"hidden_sizes": None},
                         "abort": {"env": "os:abort"}, "marks": {"env": "marks_import:Env"}}.items():
        paths[name] = root / name
        shutil.copytree(paths["ckpt"], paths[name])
        for config_file in paths[name].glob("*/config/metadata"):  # the config item: the run's config as JSON
            config = json.loads(config_file.read_text()) | change
            config_file.write_text(json.dumps({key: value for key, value in config.items() if value is not None}))
    paths["other_log"] = root / "other_log"  # an earlier run's outputs, not those of the run resumed
    shutil.copytree(paths["log"], paths["other_log"])
    (root / "a_file").write_text("not a folder")
    paths["file"] = root / "a_file"
    return paths


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every file and folder under `folders` with its size and modification time."""
    entries = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            stat = path.stat()
            entries[str(path)] = (path.is_dir(), stat.st_size if path.is_file() else 0, stat.st_mtime_ns
                                  if path.is_file() else 0)
    return entries


def run_main(module: str, argv: list[str]) -> int:
    if module == "train":
        from jaxdqn.train import main
    else:
        from jaxdqn.evaluate import main
    try:
        return main([*map(str, argv)])
    except SystemExit as exit_info:  # argparse's own errors
        return exit_info.code


def error_line(capsys, prog: str) -> str:
    """The one line on stderr (asserted to be the only one), without the program's prefix."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


# (module, argv with {placeholders}, expected fragment of the one-line error, a regular expression)
BAD_INPUT = [
    # --env that cannot be imported or built
    ("train", ["--env", ":"], r"environment ':': expected package\.module:Attribute"),
    ("train", ["--env", "./notenv.py:NotEnv"], r"cannot import module './notenv\.py'.*not a file path"),
    ("train", ["--env", "raises_on_import:Env"],
     r"cannot import module 'raises_on_import' .*RuntimeError: this module fails at import"),
    ("train", ["--env", "bad_syntax:Env"], r"cannot import module 'bad_syntax' .*SyntaxError"),
    ("train", ["--env", "needs_args:NeedsArgs"],
     r"'needs_args:NeedsArgs' \(module 'needs_args'\) could not be built: TypeError: .*missing 1 required"),
    ("train", ["--env", "needs_args:Abstract"], r"could not be built: TypeError: Can't instantiate abstract class"),
    ("train", ["--env", ""], r"--env needs a value, got ''"),
    # numbers: int32 counters and seeds, non-finite floats, a run that would not learn
    ("train", ["--seed", 2**31 - 1], r"--seed must be between -2147483648 and 2147483646, got 2147483647"),
    ("train", ["--seed", -(2**31) - 1], r"--seed must be between"),
    ("train", ["--total_steps", 10**15], r"int32 step counter allows at most 2,147,483,647"),
    ("train", ["--total_steps", 10**12], r"int32 update counter allows at most 2,147,483,647"),
    ("train", ["--buffer_size", 2**40], r"--buffer_size 1099511627776 exceeds the int32 index"),
    ("train", ["--lr", "inf"], r"--lr must be a finite number, got inf"),
    ("train", ["--gamma", "nan"], r"--gamma must be a finite number, got nan"),
    ("train", ["--max_grad_norm", "inf"], r"--max_grad_norm must be a finite number"),
    ("train", ["--priority_alpha", "nan"], r"--priority_alpha must be a finite number"),
    ("train", ["--noise_per_env"], r"--noise_per_env needs --noisy"),
    ("train", ["--learning_starts", 10**15], r"--learning_starts \(10+\) must be below --total_steps \(3000000\)"),
    # memory
    ("train", ["--eval_episodes", 10**9], r"needs about .* of memory, more than the .* largest: evaluation episodes "
                                          r"\(--eval_episodes\)"),
    ("train", ["--num_seeds", 10**6], r"needs about .* for 1,000,000 agents \(--num_seeds, --sweep\), more than"),
    ("train", ["--hidden_sizes", "1000000,1000000"], r"more than .*largest: parameters.*\(--hidden_sizes\)"),
    ("evaluate", ["--load_model", "{ckpt}", "--episodes", 10**10], r"largest: evaluation episodes \(--episodes\)"),
    ("evaluate", ["--load_model", "{ckpt}", "--seed", 2**40], r"--seed must be between .* \(int32\)"),
    # output paths
    ("train", ["--log_dir", "{file}"], r"--log_dir .*a_file is a file, not a folder"),
    ("train", ["--log_dir", "{file}/run"], r"--log_dir .*a_file/run is under .*a_file, which is a file"),
    ("train", ["--save_model", "/proc/x"], r"--save_model /proc/x: cannot write in /proc"),
    ("train", ["--save_model", "{file}/ckpt"], r"is under .*a_file, which is a file"),
    ("train", ["--save_model", ""], r"--save_model needs a value, got ''"),
    ("train", ["--log_dir", ""], r"--log_dir needs a value, got ''"),
    ("train", ["--log_dir", "{log}"], r"--log_dir .*log holds an earlier run's outputs .*pass --overwrite"),
    ("train", ["--load_model", "{ckpt}", "--total_steps", 512, "--log_dir", "{other_log}", "--save_model", "{tmp}/new"],
     r"--log_dir .*other_log holds an earlier run's outputs"),
    ("evaluate", ["--load_model", "{ckpt}", "--out", "/proc/x.json"], r"--out /proc/x\.json: cannot write in /proc"),
    ("evaluate", ["--load_model", "{ckpt}", "--out", "{tmp}/missing/x.json"], r"folder .*missing does not exist"),
    ("evaluate", ["--load_model", "{ckpt}", "--out", "{file}/x.json"], r"folder .*a_file does not exist"),
    ("evaluate", ["--load_model", "{ckpt}", "--out", ""], r"--out needs a value, got ''"),
    # damaged checkpoint config, and code a checkpoint names
    ("evaluate", ["--load_model", "{words}"],
     r"checkpoint .*words/256 has an invalid config: --num_envs must be an integer, got 'sixty-four'"),
    ("train", ["--load_model", "{words}", "--total_steps", 512], r"--num_envs must be an integer, got 'sixty-four'"),
    ("evaluate", ["--load_model", "{lacks}"], r"checkpoint .*lacks/256: its config lacks hidden_sizes"),
    ("evaluate", ["--load_model", "{abort}"],
     r"the checkpoint's environment 'os:abort' would import module 'os'.*--trust_checkpoint_code"),
    ("train", ["--load_model", "{abort}", "--total_steps", 512, "--log_dir", "{tmp}/log"],
     r"'os:abort' would import module 'os'"),
]


@pytest.mark.parametrize("module, argv, fragment", BAD_INPUT, ids=[" ".join(map(str, case[1]))[:60]
                                                                   for case in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(module, argv, fragment, saved, modules, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default runs/ folder would land here
    names = {name: str(path) for name, path in saved.items()} | {"tmp": str(tmp_path)}
    argv = [str(arg).format(**names) for arg in argv]
    argv.append("--no_compile_cache")  # the user's commands, else as they were typed: the checks come first
    before = snapshot(saved["ckpt"].parent, tmp_path)
    assert run_main(module, argv) == 2
    line = error_line(capsys, f"jaxdqn.{module}")
    assert re.search(fragment, line), line
    assert snapshot(saved["ckpt"].parent, tmp_path) == before


# Read-only folders -----------------------------------------------------------------------------------

def read_only(monkeypatch, folder: Path) -> None:
    """Makes writes into `folder` fail as on a read-only mount (EROFS). Tests run as root, for whom chmod does not
    stop writes, so the file creation that `jaxdqn.preflight` probes with is refused instead."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(preflight.tempfile, "mkstemp", mkstemp)


class ReachedTraining(Exception):
    pass


def stop_at_training(monkeypatch) -> None:
    """`jaxdqn.train.train` raises ReachedTraining: the checks passed, and nothing is compiled."""
    import jaxdqn.train

    def train(*args, **kwargs):
        raise ReachedTraining

    monkeypatch.setattr(jaxdqn.train, "train", train)


def test_read_only_checkpoint_or_log_folder_is_one_line_before_training(saved, tmp_path, capsys, monkeypatch):
    from jaxdqn.train import main

    locked = tmp_path / "read_only"
    shutil.copytree(saved["ckpt"], locked / "ckpt")
    read_only(monkeypatch, locked)
    stop_at_training(monkeypatch)
    before = snapshot(tmp_path)
    cases = {  # argv: the fragment of the one-line error
        ("--save_model", locked / "new"): r"--save_model .*new: cannot write in .*read_only \(Read-only file system\)",
        ("--log_dir", locked / "log"): r"--log_dir .*log: cannot write in .*read_only \(Read-only file system\)",
    }
    for flags, fragment in cases.items():
        assert main([*TINY, *map(str, flags), "--no_compile_cache"]) == 2
        assert re.search(fragment, error_line(capsys, "jaxdqn.train"))
    # Resuming a read-only checkpoint folder would train, then fail at the first save: refused at once ...
    resume = ["--load_model", str(locked / "ckpt"), "--total_steps", "512", "--log_dir", str(tmp_path / "log"),
              "--no_compile_cache", "--quiet"]
    assert main(resume) == 2
    assert re.search(r"--load_model .*ckpt: cannot write in .*Read-only file system.*pass --save_model",
                     error_line(capsys, "jaxdqn.train"))
    assert snapshot(tmp_path) == before
    # ... unless --save_model names a writable folder
    with pytest.raises(ReachedTraining):
        main([*resume, "--save_model", str(tmp_path / "elsewhere")])
    # evaluate's default output, DIR/eval.json, is in the read-only folder
    from jaxdqn.evaluate import main as evaluate_main

    assert evaluate_main(["--load_model", str(locked / "ckpt"), "--no_compile_cache"]) == 2
    assert re.search(r"--out .*eval\.json: cannot write in .*Read-only", error_line(capsys, "jaxdqn.evaluate"))


def test_a_real_read_only_mount_is_refused_before_training(saved, tmp_path):
    """The same with a read-only bind mount (where the machine lets a private mount namespace be made)."""
    folder = tmp_path / "mounted"
    shutil.copytree(saved["ckpt"], folder)
    script = (f"(mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}) 2>/dev/null || exit 99; "
              f"if touch {folder}/x 2>/dev/null; then exit 99; fi; "  # 99: no read-only mount to be had
              f"exec {sys.executable} -m jaxdqn.train --load_model {folder} --log_dir {tmp_path / 'log'} "
              f"--total_steps 512 --no_compile_cache --quiet")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=ROOT,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    if result.returncode == 99 or result.stderr.startswith("unshare:"):
        pytest.skip(f"no private read-only mount here: {result.stderr.strip()[:200]}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"jaxdqn.train: error: --load_model {folder}: cannot write in {folder} "
                                          f"(Read-only file system); pass --save_model with a writable folder"]
    assert not (tmp_path / "log").exists()


# A full disk -----------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_exit_1_and_the_earlier_checkpoints_stay(saved, tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    import jaxdqn.train

    monkeypatch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
    directory = tmp_path / "ckpt"
    shutil.copytree(saved["ckpt"], directory)
    for step in ("192", "256"):  # resume from 128 into the same folder, with the same programs (the cache's)
        shutil.rmtree(directory / step)
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):  # Orbax meets ENOSPC writing the next checkpoint
        if step > 128:
            (Path(self.directory) / f"{step}{checkpoint.TMP_SUFFIX}").mkdir()  # what a write cut short leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    code = jaxdqn.train.main(["--load_model", str(directory), "--log_dir", str(tmp_path / "log"), "--quiet",
                              "--compile_cache", str(saved["cache"])])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert lines[0].startswith("jaxdqn.train: resuming") and len(lines) == 2, lines
    assert re.fullmatch(r"jaxdqn\.train: error: the checkpoint at env step 192 could not be written to .*ckpt "
                        r"\(OSError: \[Errno 28\] No space left on device\); the earlier checkpoints there are kept",
                        lines[1]), lines[1]
    assert checkpoint.complete_steps(directory) == [64, 128]
    assert checkpoint.find(directory).step == 128  # still resumable
    assert not (tmp_path / "log" / "summary.json").exists()


def test_overwrite_deletes_the_old_checkpoints_only_once_a_new_one_is_complete(saved, tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    import jaxdqn.train

    monkeypatch.setattr(jaxdqn.train, "enable_compile_cache", lambda path: None)
    directory = tmp_path / "ckpt"
    shutil.copytree(saved["ckpt"], directory)
    real_save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):  # the run is stopped at its first save
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The same run again (its programs are in the cache), over the old one's checkpoints.
    argv = [*TINY, "--save_model", str(directory), "--overwrite", "--checkpoint_frequency", "1",
            "--keep_checkpoints", "4", "--log_dir", str(tmp_path / "log"), "--compile_cache", str(saved["cache"])]
    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    assert jaxdqn.train.main(argv) == 1
    assert "could not be written" in error_line(capsys, "jaxdqn.train")
    replaced = directory / checkpoint.REPLACED
    assert checkpoint.complete_steps(replaced) == [64, 128, 192, 256]  # nothing lost
    with pytest.raises(ConfigError, match=r"\.replaced holds the checkpoints an --overwrite run replaced"):
        checkpoint.find(directory)
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert jaxdqn.train.main(argv) == 0
    assert checkpoint.complete_steps(directory) == [64, 128, 192, 256] and not replaced.exists()


# Two runs, one folder ---------------------------------------------------------------------------------

def test_a_second_run_into_a_log_or_checkpoint_folder_in_use_is_refused(tmp_path, capsys, monkeypatch):
    from jaxdqn.train import main

    monkeypatch.chdir(tmp_path)
    for flag in ("--log_dir", "--save_model"):
        folder = tmp_path / flag.strip("-")
        with preflight.claim_dir(folder, flag):  # the first run, still writing
            before = snapshot(tmp_path)
            assert main([*TINY, flag, str(folder), "--no_compile_cache"]) == 2
            assert re.search(rf"{flag} .* is in use by another run", error_line(capsys, "jaxdqn.train"))
            assert snapshot(tmp_path) == before
        with preflight.claim_dir(folder, flag):  # free again once the first run ended
            pass


def test_default_log_folders_of_runs_started_in_the_same_second_differ(tmp_path):
    name = preflight.default_log_dir("CartPole-v1", root=tmp_path / "runs")
    with contextlib.ExitStack() as runs:  # three runs, each holding its folder
        folders = [runs.enter_context(preflight.claim_dir(name, "--log_dir", unique=True)) for _ in range(3)]
    assert [folder.name for folder in folders] == [name.name, f"{name.name}-2", f"{name.name}-3"]
    assert all(folder.is_dir() for folder in folders)


# Code a checkpoint names ----------------------------------------------------------------------------------

def test_a_checkpoint_env_module_is_imported_only_when_the_user_names_it(saved, modules, tmp_path, capsys,
                                                                        monkeypatch):
    from jaxdqn.evaluate import main

    mark = tmp_path / "imported"
    monkeypatch.setenv("JAXDQN_TEST_MARK", str(mark))
    assert main(["--load_model", str(saved["marks"]), "--no_compile_cache"]) == 2
    assert "would import module 'marks_import'" in error_line(capsys, "jaxdqn.evaluate")
    assert not mark.exists()
    for trusted in (["--trust_checkpoint_code"], ["--env", "marks_import:Env"]):
        assert main(["--load_model", str(saved["marks"]), "--out", str(tmp_path), *trusted, "--no_compile_cache"]) == 2
        assert "cannot import module 'marks_import'" in error_line(capsys, "jaxdqn.evaluate")
        assert mark.exists()
        mark.unlink()
        sys.modules.pop("marks_import", None)
