"""Config: every error names its key path; the example config loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import (
    HttpCameraConfig,
    OutboxSync,
    Protocol,
    RtspCameraConfig,
    TcpCameraConfig,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ or {})
    return caught.value.problems


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert [c.id for c in config.cameras] == ["gate_in", "gate_out", "lobby"]
    tcp, http, rtsp = config.cameras
    assert isinstance(tcp, TcpCameraConfig) and tcp.port == 5000
    assert isinstance(http, HttpCameraConfig) and http.timezone == "Europe/Berlin"
    assert isinstance(rtsp, RtspCameraConfig) and rtsp.http_port == 80
    assert config.outbox.sync is OutboxSync.NORMAL
    assert config.color_table == {1: "white", 2: "black"}


def test_empty_config_is_all_defaults() -> None:
    config = parse_config("", {})
    assert config.mqtt.url is None  # embedded broker
    assert config.mqtt.base_topic == "lpr"
    assert config.dedup.window_seconds == 10
    assert config.cameras == ()


def test_env_interpolation() -> None:
    text = """
mqtt: {url: "mqtt://${HOST}:${PORT:-1883}", password: "${PW}"}
cameras:
  - {id: a, protocol: tcp, host: "${CAM_HOST:-10.0.0.1}", port: "${CAM_PORT}"}
"""
    config = parse_config(text, {"HOST": "broker", "PW": "s3cret", "CAM_PORT": "6000"})
    assert config.mqtt.url == "mqtt://broker:1883"
    assert config.mqtt.password == "s3cret"
    camera = config.cameras[0]
    assert isinstance(camera, TcpCameraConfig)
    assert (camera.host, camera.port) == ("10.0.0.1", 6000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cameras:\n - {id: a, protocol: tcp, host: h}\n - {id: b, protocol: tcp, host: h}\n"
            " - {id: c, protocol: tcp, host: h, port: abc}",
            'cameras[2].port: expected an integer 1-65535, got "abc"',
        ),
        ("mqtt: {urll: x}", "mqtt.urll: unknown key (did you mean 'url'?)"),
        ("bogus: 1", "bogus: unknown key"),
        (
            "cameras:\n - {id: a, protocol: tcp, host: h}\n - {id: a, protocol: http}",
            "cameras[1].id: duplicate camera id 'a' (also cameras[0])",
        ),
        (
            "cameras:\n - {id: A B, protocol: tcp, host: h}",
            "cameras[0].id: expected [a-z0-9_-]+ (used in topics), got 'A B'",
        ),
        (
            "cameras:\n - {id: a, protocol: smtp}",
            'cameras[0].protocol: expected one of tcp, http, rtsp, got "smtp"',
        ),
        ("cameras:\n - {id: a, protocol: tcp}", "cameras[0].host: is required"),
        ("cameras:\n - {id: a, protocol: http, port: 5}", "cameras[0].port: unknown key"),
        (
            "cameras:\n - {id: a, protocol: rtsp, url: 'http://x'}",
            "cameras[0].url: expected rtsp://host[:port]/path, got 'http://x'",
        ),
        (
            "mqtt: {base_topic: 'lpr/#'}",
            'mqtt.base_topic: not a usable MQTT topic prefix: "lpr/#" '
            "(no wildcards, no leading or trailing '/', not empty)",
        ),
        (
            "mqtt: {base_topic: '/lpr'}",
            'mqtt.base_topic: not a usable MQTT topic prefix: "/lpr" '
            "(no wildcards, no leading or trailing '/', not empty)",
        ),
        (
            "mqtt: {url: 'http://broker'}",
            "mqtt.url: expected mqtt://host[:port] or mqtts://..., got 'http://broker'",
        ),
        (
            "mqtt: {tls: {ca_file: /nonexistent/ca.pem}}",
            "mqtt.tls.ca_file: cannot read '/nonexistent/ca.pem': No such file or directory",
        ),
        ("mqtt: {password: '${NOPE}'}", "mqtt.password: environment variable NOPE is not set"),
        ("dedup: {window_seconds: -1}", "dedup.window_seconds: expected a number 0-86400, got -1"),
        (
            "cameras:\n - {id: a, protocol: http, timezone: Mars/Olympus}",
            "cameras[0].timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "cameras:\n - {id: a, protocol: http, allowed_sources: [10.0.0.0/8, nope]}",
            'cameras[0].allowed_sources[1]: not an address or network: "nope"',
        ),
        (
            "cameras:\n - {id: a, protocol: http}\n - {id: b, protocol: http, path: /lpr/a}",
            "cameras[1].path: path '/lpr/a' already used by cameras[0]",
        ),
        ("mqtt: {protocol: 4.0}", "mqtt.protocol: expected 3.1.1 or 5, got '4.0'"),
        ("http: {listen: 8080}", "http.listen: expected host:port (port 0-65535), got 8080"),
        ("cameras: {id: a}", "cameras: expected a list, got dict"),
        ("mqtt: [1]", "mqtt: expected a mapping, got list"),
    ],
)
def test_errors_name_the_key_path(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_all_problems_reported_at_once() -> None:
    found = problems("mqtt: {port: 1}\ncameras:\n - {id: a, protocol: tcp, port: 0}\nx: 1")
    assert len(found) == 4, found


def test_not_yaml() -> None:
    assert "not valid YAML" in problems("mqtt: [")[0]


def test_protocol_helpers() -> None:
    config = parse_config(EXAMPLE.read_text(), {})
    assert [c.id for c in config.cameras_of(Protocol.HTTP)] == ["gate_out"]
    assert config.mqtt.port == 1883 and config.mqtt.host == "127.0.0.1"


@pytest.mark.parametrize(("content", "code"), [("mqtt: {url: 'ftp://x'}\n", 2), ("", 0)])
def test_check_command_exit_codes(tmp_path: Path, content: str, code: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == code, result.stderr
    if code:
        assert "mqtt.url:" in result.stderr


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cameras:\n - {id: a, protocol: tcp, host: h, port: abc}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert 'cameras[0].port: expected an integer 1-65535, got "abc"' in result.stderr
