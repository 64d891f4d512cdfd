"""Deterministic cases beside the fuzzers: truncations of every seed.

A crash found by a fuzzer (hypothesis prints the falsifying bytes, atheris
saves `crash-<sha1>`, `python -m tests.fuzz.long` saves `.fuzz-crashes/…`)
becomes a test that feeds those bytes to its target, so that it is checked on
every run from then on: here, or in tests/codecs/test_fuzz_regressions.py
(the 10^6-input runs, see bench/RESULTS.md "Long fuzzing").
"""

from __future__ import annotations

import pytest

from tests.fuzz.seeds import seeds
from tests.fuzz.targets import TARGETS

PREFIXES = 300  # per seed: every prefix of a seed this small, evenly spaced ones beyond


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_prefixes_of_every_seed(name: str) -> None:
    target = TARGETS[name]
    for seed in seeds(name):
        step = max(1, len(seed) // PREFIXES)
        for end in range(0, len(seed) + 1, step):
            target(seed[:end])
