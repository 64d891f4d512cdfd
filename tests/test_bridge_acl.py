"""deploy/mosquitto/acl.example, on a real mosquitto: only operators can drive the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess, find_mosquitto
from tests.helpers import (
    MqttCollector,
    eventually,
    gateway_config,
    http_camera_entry,
    publish_once,
)

pytestmark = pytest.mark.broker

ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "acl.example"
USERS = {"lpr-gateway": "gw-pw", "lpr-admin": "admin-pw", "viewer": "viewer-pw"}


def publish_as(broker: MosquittoProcess, user: str, topic: str, payload: str) -> None:
    publish_once(
        broker.host,
        broker.port,
        topic,
        payload,
        user=user,
        password=USERS[user],
        client_prefix="acl",
    )


def write_passwords(passwd: Path) -> None:
    for n, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    passwd.chmod(0o600)


class LoggedInCollector(MqttCollector):
    def __init__(self, broker: MosquittoProcess, user: str) -> None:
        super().__init__(broker.host, broker.port, topics=("lpr/bridge/response/#",))
        self._client.username_pw_set(user, USERS[user])


async def test_only_operators_may_send_requests(tmp_path: Path) -> None:
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    passwd = tmp_path / "passwd"
    await asyncio.to_thread(write_passwords, passwd)
    (tmp_path / "broker").mkdir()
    broker = MosquittoProcess(
        workdir=tmp_path / "broker",
        extra_config=("allow_anonymous false", f"password_file {passwd}", f"acl_file {ACL}"),
    )
    broker.start()
    try:
        url = f"mqtt://{broker.host}:{broker.port}"
        config = gateway_config(
            url,
            tmp_path,
            [http_camera_entry("gate", "cam", "pw")],
            mqtt={"username": "lpr-gateway", "password": USERS["lpr-gateway"]},
        )
        with LoggedInCollector(broker, "viewer") as viewer:
            async with Gateway(config) as gw:
                await eventually(lambda: gw.publisher is not None and gw.publisher.connected)
                request = "lpr/bridge/request/camera/disable"
                # The viewer's request is dropped by the broker: never carried out.
                await asyncio.to_thread(publish_as, broker, "viewer", request, json.dumps("gate"))
                await asyncio.to_thread(
                    publish_as, broker, "lpr-admin", "lpr/bridge/request/health_check", ""
                )
                await viewer.until_count("lpr/bridge/response/health_check", 1)
                assert not viewer.on("lpr/bridge/response/camera/disable")
                assert not gw.switches.is_disabled("gate")
                # An operator's is, and everyone logged in reads the response.
                await asyncio.to_thread(
                    publish_as, broker, "lpr-admin", request, json.dumps("gate")
                )
                responses = await viewer.until_count("lpr/bridge/response/camera/disable", 1)
                assert responses[0].json()["status"] == "ok"
                assert gw.switches.is_disabled("gate")
    finally:
        broker.close()
