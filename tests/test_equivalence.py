"""The parameters after a few chunks are bit-identical to those the tree produced before it was
reorganised (`tests/equivalence_cases.py`): default config, dueling + n-step + prioritized, two devices
(averaged gradients and local SGD), a population sweep, and the MinAtar network; on the CPU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, subprocess_env

REFERENCE = ROOT / "tests" / "data" / "equivalence_reference.npz"


def test_parameters_bit_identical_to_reference(tmp_path):
    out = tmp_path / "params.npz"
    subprocess.run([sys.executable, "-m", "tests.equivalence_cases", str(out)], cwd=ROOT, check=True, timeout=600,
                   env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                                      JAX_PLATFORMS="cpu"))
    with np.load(REFERENCE) as reference, np.load(out) as produced:
        assert sorted(produced.files) == sorted(reference.files)
        differing = [name for name in reference.files
                     if produced[name].dtype != reference[name].dtype
                     or not np.array_equal(produced[name], reference[name])]
    assert not differing, f"parameters differ from the reference in {differing}"
