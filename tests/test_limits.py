"""The open-file limit raised at start-up (in a child process: limits are per process)."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
import textwrap

import pytest

from gateway.limits import raise_open_file_limit

CHILD = textwrap.dedent(
    """
    import logging, resource, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from gateway.limits import raise_open_file_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
    print("returned", *raise_open_file_limit())
    print("now", *resource.getrlimit(resource.RLIMIT_NOFILE))
    """
)


def run_child(soft: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(soft)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard != resource.RLIM_INFINITY and hard > 64, "needs a finite hard limit above 64"
    lines = run_child(64)
    assert lines == [
        f"open-file limit raised from 64 to {hard} (the hard limit)",
        f"returned {hard} {hard}",
        f"now {hard} {hard}",
    ]


def test_already_at_the_hard_limit_is_left_alone() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lines = run_child(hard)
    assert lines == [
        f"open-file limit: {hard} (already at the hard limit)",
        f"returned {hard} {hard}",
        f"now {hard} {hard}",
    ]


def test_a_limit_that_cannot_be_raised_never_fails_the_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The refusal itself cannot be provoked unprivileged (lowering the hard
    # limit is one-way), so setrlimit is made to refuse as a container might.
    def refuse(*_: object) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (64, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    with caplog.at_level(logging.INFO, logger="gateway.limits"):
        assert raise_open_file_limit() == (64, 4096)
    assert caplog.messages == [
        "open-file limit: could not raise 64 to 4096 (not allowed); running with 64"
    ]
