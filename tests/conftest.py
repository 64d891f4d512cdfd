"""Fixtures: a real mosquitto per test, on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.broker import MosquittoProcess, find_mosquitto


@pytest.fixture
def mqtt_broker() -> Iterator[MosquittoProcess]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    broker = MosquittoProcess()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
