"""Fixtures: a real mosquitto per test, on a free 127.0.0.1 port; one private
RabbitMQ node for the whole session, started only if a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.broker import MosquittoProcess, find_mosquitto
from tests.brokers import RabbitMqProcess


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


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[RabbitMqProcess]:
    """Once per session: a RabbitMQ node takes 10-15 s to boot. Tests that use
    it leave it running and clear what they retained (see `RetainedJanitor`)."""
    node = RabbitMqProcess()
    node.start()
    try:
        yield node
    finally:
        node.close()
