"""bench/fuzz.py, the fuzzer of every parser of untrusted input: each target runs clean on a
small budget here (the million-input runs are the benchmark's, figures in docs/security.md),
and the harness counts what it is meant to find."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest

from tests.helpers import REPO

_spec = importlib.util.spec_from_file_location("fuzz", REPO / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz"] = fuzz  # dataclasses look their module up there
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
def test_every_target_runs_clean_on_a_small_budget(name):
    result = fuzz.run(name, 3000, seed=7)
    assert (result.crashes, result.garbage) == (0, 0), result.examples
    assert result.checked > 0  # some inputs got through to a good value that was checked


def test_the_harness_counts_crashes_and_garbage_and_passes_documented_rejections():
    def build(rng: random.Random):
        def check(item: int) -> int:
            if item == 0:
                raise ValueError("documented rejection")
            if item == 1:
                raise fuzz.Garbage("bad value published as good")
            if item == 2:
                raise KeyError("a crash")
            return 1
        return (lambda: rng.randrange(4)), check

    fuzz.target("selftest", rejects=(ValueError,))(build)
    try:
        result = fuzz.run("selftest", 400, seed=1)
    finally:
        del fuzz.TARGETS["selftest"]
    assert result.rejected and result.garbage and result.crashes and result.checked
    assert result.rejected + result.garbage + result.crashes + result.checked == 400
    assert any(e.startswith("crash: KeyError") for e in result.examples)
    assert fuzz.main(["--inputs", "50", "--only", "nmea"]) == 0
