"""Deterministic cases beside the fuzzers: truncations of every seed.

A crash found by a fuzzer (hypothesis prints the falsifying bytes, atheris
saves `crash-<sha1>`) becomes a test here that feeds those bytes to its target,
so that it is checked on every run from then on. None has been found so far
(60 s per target with each fuzzer, see bench/RESULTS.md).
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
