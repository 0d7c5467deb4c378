"""The parameters after a few chunks are bit-identical to those the tree produced before it was
reorganised (`tests/equivalence_cases.py`): default config, dueling + n-step + prioritized, two devices
(averaged gradients and local SGD), a population sweep, and the MinAtar network; on the CPU.

The reference's bits are those of one XLA: jaxlib 0.10.2's CPU backend with the tests' cheaper settings
(`conftest.CHEAP_COMPILE`). It was first written under XLA's default settings by the tree before the
redesign; the tree of 2026-12-03 reproduced it bit for bit under those defaults and then wrote the one
stored now under the cheaper settings, which compile the cases in about half the CPU time.

XLA's CPU code also depends on the machine's vector instructions (capping them with `--xla_cpu_max_isa`
changes these bits), and the suite's machines come in kinds that round differently (by up to 2.4e-7
here). So there is one reference per kind seen, each written by the same tree:
`equivalence_reference_cpu1.npz` as above (and met again by CI on a clean clone of commit 897af12),
`equivalence_reference_cpu2.npz` by that tree on an AMD EPYC with AVX2 and no AVX-512 (2026-12-03). The
produced bits must equal one of them exactly; a change of behaviour changes some bit of both.
"""

from __future__ import annotations

import subprocess
import sys

from importlib.metadata import version

import numpy as np
import pytest

from tests.conftest import ROOT, cheap_compile_env

REFERENCES = sorted((ROOT / "tests" / "data").glob("equivalence_reference_cpu*.npz"))
REFERENCE_JAXLIB = "0.10.2"


@pytest.mark.skipif(version("jaxlib") != REFERENCE_JAXLIB,
                    reason=f"the reference holds jaxlib {REFERENCE_JAXLIB}'s bits; another XLA rounds differently")
def test_parameters_bit_identical_to_reference(tmp_path):
    assert len(REFERENCES) == 2, REFERENCES  # both kinds of CPU, before the minute the cases take
    out = tmp_path / "params.npz"
    subprocess.run([sys.executable, "-m", "tests.equivalence_cases", str(out)], cwd=ROOT, check=True, timeout=600,
                   env=cheap_compile_env(devices=2, JAX_PLATFORMS="cpu"))
    differing = {}  # reference -> the arrays whose bits differ from it
    with np.load(out) as produced:
        for path in REFERENCES:
            with np.load(path) as reference:
                assert sorted(produced.files) == sorted(reference.files)
                differing[path.name] = [name for name in reference.files
                                        if produced[name].dtype != reference[name].dtype
                                        or not np.array_equal(produced[name], reference[name])]
    closest = min(differing, key=lambda name: len(differing[name]))
    assert not differing[closest], f"parameters differ from every reference; from {closest} in {differing[closest]}"
