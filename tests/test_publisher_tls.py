"""MQTT 5 over TLS with a client certificate and a password, against a real mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import PlateEvent, Source, utc_now
from gateway.pipeline import Admission
from tests.helpers import MqttCollector, free_port, gateway_config


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def password_file(tmp_path: Path, user: str, password: str) -> Path:
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), user, password], check=True, timeout=30
    )
    return passwords


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
        "-subj",
        "/CN=test-ca",
    )
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
            "-subj",
            f"/CN={name}",
        )
        ext = d / f"{name}.ext"
        ext.write_text(extra + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(d / f"{name}.crt"),
            "-extfile",
            str(ext),
        )
    return {p.stem + p.suffix: p for p in d.iterdir()}


async def test_mqtt5_tls_client_cert_and_password(pki: dict[str, Path], tmp_path: Path) -> None:
    passwords = password_file(tmp_path, "gw", "s3cret")
    tls_port = free_port()
    broker = MosquittoProcess(
        extra_config=(
            "allow_anonymous false",
            f"password_file {passwords}",
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki['ca.crt']}",
            f"certfile {pki['server.crt']}",
            f"keyfile {pki['server.key']}",
            "require_certificate true",
        )
    )
    broker.start()
    try:
        config = gateway_config(
            f"mqtts://127.0.0.1:{tls_port}",
            tmp_path,
            mqtt={
                "protocol": "5",
                "username": "gw",
                "password": "s3cret",
                "tls": {
                    "ca_file": str(pki["ca.crt"]),
                    "cert_file": str(pki["client.crt"]),
                    "key_file": str(pki["client.key"]),
                },
            },
        )
        # The plain listener (first one) needs the password too.
        sub = MqttCollector(broker.host, broker.port, topics=("lpr/#",))
        sub._client.username_pw_set("gw", "s3cret")
        with sub:
            async with Gateway(config) as gw:
                await sub.until(lambda _: gw.publisher is not None and gw.publisher.connected)
                event = PlateEvent(camera="c", source=Source.TCP, plate="TLS1", received=utc_now())
                assert await gw.submit(event) is Admission.ACCEPTED
                (received,) = await sub.until_count("lpr/c/event", 1)
                assert received.json()["id"] == event.id
    finally:
        broker.close()


async def test_wrong_password_is_reported_not_fatal(tmp_path: Path) -> None:
    passwords = password_file(tmp_path, "gw", "right")
    broker = MosquittoProcess(extra_config=("allow_anonymous false", f"password_file {passwords}"))
    broker.start()
    try:
        config = gateway_config(broker.url, tmp_path, mqtt={"username": "gw", "password": "wrong"})
        async with Gateway(config) as gw:
            for _ in range(100):
                if gw.publisher is not None and gw.publisher.last_error:
                    break
                await asyncio.sleep(0.05)
            assert gw.publisher is not None and not gw.publisher.connected
            assert (
                "Not authorized" in (gw.publisher.last_error or "")
                or "authori" in (gw.publisher.last_error or "").lower()
            )
            assert "right" not in (gw.publisher.last_error or "")
            health = gw.health()
            assert not health["healthy"]
    finally:
        broker.close()
