"""Config: every error names its key path; the example config loads."""

from __future__ import annotations

import enum
import re
import subprocess
import sys
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import (
    CAMERA_CLASSES,
    Config,
    ConnectingCameraConfig,
    HttpCameraConfig,
    MqttConfig,
    Option,
    OutboxSync,
    Protocol,
    RtspCameraConfig,
    TcpCameraConfig,
    config_warnings,
    derived_client_id,
    field_default,
    load_config,
    options,
    parse_config,
    redact_url,
)
from gateway.errors import ConfigError
from gateway.homeassistant import default_node_id

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
# The example's logins all come from the environment; with one unset it is refused.
EXAMPLE_ENV = {
    "MQTT_PASSWORD": "mqtt-pw",
    "GATE_IN_PASSWORD": "tcp-pw",
    "GATE_OUT_PASSWORD": "http-pw",
    "LOBBY_PASSWORD": "rtsp-pw",
}


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ or {})
    return caught.value.problems


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
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
            "cameras[1].path: cameras 'a' (cameras[0]) and 'b' share the path '/lpr/a': "
            "give both a match (device and/or source) or each its own path",
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
    assert sorted(found) == [
        "cameras[0].host: is required",
        "cameras[0].port: expected an integer 1-65535, got 0",
        "mqtt.port: unknown key",
        "x: unknown key",
    ]


def test_not_yaml() -> None:
    assert "not valid YAML" in problems("mqtt: [")[0]


def test_protocol_helpers() -> None:
    config = parse_config(EXAMPLE.read_text(), EXAMPLE_ENV)
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


# -- refusing the unsafe --------------------------------------------------------------


def test_example_without_a_camera_password_fails_check_naming_the_variable() -> None:
    # Before: GATE_OUT_PASSWORD unset gave password "" and the HTTP intake accepted
    # `Authorization: Basic cam:` from anyone.
    env = {k: v for k, v in EXAMPLE_ENV.items() if k != "GATE_OUT_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 2, result.stdout
    assert (
        "cameras[1].password: empty while username is set (is GATE_OUT_PASSWORD set?)"
        in result.stderr
    )
    assert "1 problem(s)" in result.stderr  # the other three logins are fine


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        (
            "mqtt: {url: 'mqtt://b', username: gw, password: '${MQTT_PW:-}'}",
            {},
            "mqtt.password: empty while username is set (is MQTT_PW set?)",
        ),
        (
            "mqtt: {url: 'mqtt://b', username: gw, password: '${MQTT_PW}'}",
            {"MQTT_PW": ""},  # set, but to nothing
            "mqtt.password: empty while username is set (is MQTT_PW set?)",
        ),
        (
            "mqtt: {url: 'mqtt://b', username: gw}",
            {},
            "mqtt.password: missing while username is set",
        ),
        (
            "cameras: [{id: a, protocol: tcp, host: h, username: admin, password: ''}]",
            {},
            "cameras[0].password: empty while username is set",
        ),
        (
            "cameras: [{id: a, protocol: http, username: cam, password: '${A:-}${B:-}'}]",
            {},
            "cameras[0].password: empty while username is set (is A / B set?)",
        ),
        (
            "cameras: [{id: a, protocol: rtsp, url: 'rtsp://h/x', username: admin}]",
            {},
            "cameras[0].password: missing while username is set",
        ),
        (
            "cameras: [{id: a, protocol: rtsp, url: 'rtsp://admin:@h/x'}]",
            {},
            "cameras[0].url: has user 'admin' but no password",
        ),
        (
            "cameras: [{id: a, protocol: rtsp, url: 'rtsp://admin@h/x'}]",
            {},
            "cameras[0].url: has user 'admin' but no password",
        ),
    ],
)
def test_a_login_with_an_empty_password_is_refused(
    text: str, environ: dict[str, str], expected: str
) -> None:
    found = problems(text, environ)
    assert any(p.startswith(expected) for p in found), found


def test_an_unset_variable_is_reported_once() -> None:
    found = problems("mqtt: {url: 'mqtt://b', username: gw, password: '${NOPE}'}")
    assert found == ["mqtt.password: environment variable NOPE is not set"]


def test_logins_with_passwords_and_no_logins_are_accepted() -> None:
    config = parse_config(
        """
mqtt: {url: 'mqtt://b', username: gw, password: '${PW}'}
cameras:
  - {id: a, protocol: tcp, host: h, username: admin, password: '${PW}'}
  - {id: b, protocol: http, username: cam, password: x}
  - {id: c, protocol: http, allowed_sources: [10.0.0.0/8]}
  - {id: d, protocol: rtsp, url: 'rtsp://admin:x@h/x'}
  - {id: e, protocol: rtsp, url: 'rtsp://h/x'}
  - {id: f, protocol: rtsp, url: 'rtsp://h/x@y'}
""",
        {"PW": "p"},
    )
    assert len(config.cameras) == 6
    assert config_warnings(config) == []


def test_tls_with_a_plain_mqtt_url_is_refused() -> None:
    found = problems("mqtt: {url: 'mqtt://broker:1883', tls: {insecure: false}}")
    assert len(found) == 1
    assert found[0].startswith("mqtt.tls: has no effect without TLS")
    assert "use mqtts://" in found[0]
    embedded = problems("mqtt: {tls: {insecure: false}}")
    assert "absent (the embedded broker)" in embedded[0] and "use mqtts://" in embedded[0]
    config = parse_config("mqtt: {url: 'mqtts://broker', tls: {insecure: false}}", {})
    assert config.mqtt.use_tls and config.mqtt.tls is not None


def test_mqtt_url_takes_one_broker_or_a_list_to_fail_over_between() -> None:
    one = parse_config("mqtt: {url: 'mqtt://a:1883'}", {})
    assert one.mqtt.urls == ("mqtt://a:1883",)
    assert (one.mqtt.host, one.mqtt.port) == ("a", 1883)
    listed = parse_config(
        "mqtt: {url: ['mqtts://a', 'mqtts://b:8884', '${THIRD}']}", {"THIRD": "mqtts://c"}
    )
    assert listed.mqtt.urls == ("mqtts://a", "mqtts://b:8884", "mqtts://c")
    assert [listed.mqtt.broker(i) for i in range(4)] == [
        ("a", 8883),
        ("b", 8884),
        ("c", 8883),
        ("a", 8883),  # round the list
    ]
    assert parse_config("cameras: []", {}).mqtt.url is None  # the embedded broker


def test_a_broker_list_is_checked_element_by_element() -> None:
    assert problems("mqtt: {url: []}") == [
        "mqtt.url: expected a broker URL or a list of them, got an empty list"
    ]
    found = problems("mqtt: {url: ['mqtt://a', 'http://b', 'mqtt://user:pw@c:x']}")
    assert found == [
        "mqtt.url[1]: expected mqtt://host[:port] or mqtts://..., got 'http://b'",
        "mqtt.url[2]: bad port in 'mqtt://user:***@c:x'",
    ]
    mixed = problems("mqtt: {url: ['mqtt://a', 'mqtts://b']}")
    assert mixed == ["mqtt.url: mixes mqtt:// and mqtts:// brokers: use one scheme"]


def test_risky_settings_are_warnings() -> None:
    config = parse_config(
        """
mqtt: {url: 'mqtts://broker', tls: {insecure: true}}
http: {listen: '0.0.0.0:8080'}
cameras:
  - {id: open, protocol: http}
  - {id: gate, protocol: tcp, host: h}
""",
        {},
    )
    warnings = config_warnings(config)
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("mqtt.tls.insecure: true: the broker's certificate")
    assert warnings[1].startswith("cameras[0]: HTTP camera 'open' has no username/password")
    assert "0.0.0.0:8080" in warnings[1]
    assert warnings[2] == (
        "cameras[1].password: TCP camera 'gate' logs in as 'admin' with an empty password"
    )


def test_example_config_has_no_warnings() -> None:
    assert config_warnings(load_config(EXAMPLE, environ=EXAMPLE_ENV)) == []


# -- ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("camera_id", "expected"),
    [
        ("gate\n", r"cameras[0].id: expected [a-z0-9_-]+ (used in topics), got 'gate\n'"),
        ("gate/in", "cameras[0].id: expected [a-z0-9_-]+ (used in topics), got 'gate/in'"),
        ("Gate", "cameras[0].id: expected [a-z0-9_-]+ (used in topics), got 'Gate'"),
        ("g" * 65, "cameras[0].id: at most 64 characters (used in topics), got 65"),
    ],
)
def test_camera_id_is_a_whole_safe_topic_level(camera_id: str, expected: str) -> None:
    text = yaml.safe_dump({"cameras": [{"id": camera_id, "protocol": "http"}]})
    assert expected in problems(text)


def test_camera_id_of_64_characters_is_accepted() -> None:
    config = parse_config(yaml.safe_dump({"cameras": [{"id": "g" * 64, "protocol": "http"}]}), {})
    assert config.cameras[0].id == "g" * 64


def test_node_id_is_matched_whole() -> None:
    assert "homeassistant.node_id" in problems('homeassistant: {node_id: "lpr\\n"}')[0]


@pytest.mark.parametrize("listen", ["h:²", "h:٣", "h:99999", "h:"])
def test_listen_port_is_ascii_digits_and_never_a_traceback(listen: str) -> None:
    assert problems(yaml.safe_dump({"http": {"listen": listen}}, allow_unicode=True))[0].startswith(
        "http.listen: expected host:port"
    )


# -- redaction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:secret@host/main", "rtsp://admin:***@host/main"),
        ("rtsp://admin:se/cr?et#x@host:554/main", "rtsp://admin:***@host:554/main"),
        ("mqtt://:secret@broker", "mqtt://:***@broker"),
        ("rtsp://admin@host/main", "rtsp://admin@host/main"),  # no password to hide
        ("rtsp://host/stream@1", "rtsp://host/stream@1"),
        ("rtsp://host/main?user=a&password=secret&x=1", "rtsp://host/main?user=a&password=***&x=1"),
        ("rtsp://host:554/main", "rtsp://host:554/main"),
        ("admin:secret@host", "admin:***@host"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "text",
    [
        "mqtt: {url: 'http://gw:s3cr3t@broker'}",
        "mqtt: {url: 'mqtt://gw:s3cr3t@broker:port'}",
        "cameras: [{id: a, protocol: rtsp, url: 'http://admin:s3cr3t@cam/x'}]",
        "cameras: [{id: a, protocol: rtsp, url: 'rtsp://cam/x?password=s3cr3t', port: 1}]",
        "mqtt: {username: gw, password: {s3cr3t: 1}}",
        "cameras: [{id: a, protocol: http, username: cam, password: [s3cr3t]}]",
        'mqtt:\n  password: "s3cr3t\n  url: [',  # a YAML error on the password's line
        "mqtt: {password: s3cr3t, pasword: s3cr3t}",
    ],
)
def test_no_problem_repeats_a_secret(text: str) -> None:
    found = problems(text)
    assert found
    assert not any("s3cr3t" in p for p in found), found


def test_check_prints_the_warnings_and_still_passes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cameras: [{id: open, protocol: http}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: cameras[0]: HTTP camera 'open' has no username/password" in result.stderr
    assert "OK (1 cameras)" in result.stdout


# -- the example and the declarations cannot drift ---------------------------------------

# What the example sets on purpose; every other key it shows is at the field's default.
EXAMPLE_SETS = {
    "mqtt.url",
    "mqtt.username",
    "mqtt.password",
    "known_plates",
    "color_table",
    "cameras",
    "cameras.gate_in.host",
    "cameras.gate_in.password",
    "cameras.gate_out.path",
    "cameras.gate_out.username",
    "cameras.gate_out.password",
    "cameras.gate_out.timezone",
    "cameras.gate_out.images.scene",
    "cameras.lobby.url",
    "cameras.lobby.username",
    "cameras.lobby.password",
}
# `  # key: value` in the example documents an option left out: uncommented, it is YAML.
_COMMENTED_KEY = re.compile(r"^(\s*)# ( *[a-z_]+:(?:\s.*)?)$")


def documented(text: str) -> dict[str, tuple[Field[Any], Option]]:
    """Every key path the example shows → its field and option."""
    found: dict[str, tuple[Field[Any], Option]] = {}

    def walk(section: dict[str, Any], cls: type, path: str) -> None:
        declared = options(cls)
        for key, value in section.items():
            key_path = f"{path}.{key}" if path else key
            assert key in declared, f"{key_path}: in the example, but {cls.__name__} has no option"
            item, opt = declared[key]
            found[key_path] = (item, opt)
            if opt.section is not None and isinstance(value, dict):
                walk(value, opt.section, key_path)
            if cls is Config and item.name == "cameras":
                for camera in value:
                    cls_ = CAMERA_CLASSES[Protocol(camera["protocol"])]
                    walk(camera, cls_, f"{key_path}.{camera['id']}")

    walk(yaml.safe_load(text), Config, "")
    return found


def loaded(config: Config, path: str) -> Any:
    value: Any = config
    for key in path.split("."):
        if isinstance(value, tuple):  # cameras, by id
            value = next(camera for camera in value if camera.id == key)
        else:
            item, _opt = options(type(value))[key]
            value = getattr(value, item.name)
    return value


def test_every_key_the_example_documents_is_an_option() -> None:
    text = EXAMPLE.read_text()
    uncommented = "\n".join(_COMMENTED_KEY.sub(r"\1\2", line) for line in text.splitlines())
    keys = documented(uncommented)
    # The commented-out ones are there too (and were checked against the dataclasses).
    assert {"mqtt.tls.ca_file", "homeassistant.node_id", "images.quality"} <= set(keys)
    assert "cameras.gate_in.capture_dir" in keys and "http.tls_key_file" in keys


def test_where_the_example_shows_a_default_it_is_the_fields_default() -> None:
    config = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    shown = documented(EXAMPLE.read_text())
    assert set(shown) >= EXAMPLE_SETS, EXAMPLE_SETS - set(shown)
    for path, (item, opt) in shown.items():
        default = field_default(item)
        if opt.section is not None or default is MISSING:
            continue  # a section (its keys are checked one by one), or a required key
        if path in EXAMPLE_SETS:
            assert loaded(config, path) != default, f"{path}: at its default, drop it here"
        else:
            assert loaded(config, path) == default, f"{path}: the example and the field differ"


def test_every_option_is_documented_where_it_is_declared() -> None:
    sections = [Config, ConnectingCameraConfig, *CAMERA_CLASSES.values()]
    sections += [opt.section for _item, opt in options(Config).values() if opt.section]
    sections += [opt.section for _item, opt in options(MqttConfig).values() if opt.section]
    undocumented = [
        f"{cls.__name__}.{key}"
        for cls in sections
        for key, (_item, opt) in options(cls).items()
        if not opt.doc
    ]
    assert undocumented == []


def _yaml_form(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


# What a camera of each class needs besides the option under test.
_CAMERA_MINIMUM: dict[type, dict[str, str]] = {
    TcpCameraConfig: {"protocol": "tcp", "host": "h"},
    HttpCameraConfig: {"protocol": "http"},
    RtspCameraConfig: {"protocol": "rtsp", "url": "rtsp://h/x"},
}
# Defaults that cannot be written out alone: the HTTP path's is derived (/lpr/<id>),
# and a TCP username without a password is refused.
_NOT_WRITABLE = {(HttpCameraConfig, "path"), (TcpCameraConfig, "username")}


def _plain_defaults() -> list[tuple[str, type, Any]]:
    """(key path, class, default) of every option whose default can be written in YAML.

    Per-camera images are the global images' class: checked there."""
    sections: list[tuple[str, type]] = [("", Config)]
    sections += [("cameras.a", cls) for cls in _CAMERA_MINIMUM]
    found: list[tuple[str, type, Any]] = []
    while sections:
        path, cls = sections.pop(0)
        for key, (item, opt) in options(cls).items():
            key_path = f"{path}.{key}" if path else key
            default = field_default(item)
            if opt.section is not None:
                if not path.startswith("cameras"):
                    sections.append((key_path, opt.section))
                continue
            writable = not (opt.raw or opt.required or (cls, key) in _NOT_WRITABLE)
            if writable and default not in (MISSING, None):
                found.append((key_path, cls, default))
    return found


@pytest.mark.parametrize(
    ("path", "cls", "default"),
    [pytest.param(*case, id=f"{case[1].__name__}:{case[0]}") for case in _plain_defaults()],
)
def test_every_default_is_accepted_by_its_own_converter(path: str, cls: type, default: Any) -> None:
    # Written out, an option's default gives the default: bounds and default agree.
    *where, key = path.split(".")
    document: dict[str, Any] = {key: _yaml_form(default)}
    if where == ["cameras", "a"]:
        document = {"cameras": [{"id": "a", **_CAMERA_MINIMUM[cls], **document}]}
    else:
        for part in reversed(where):
            document = {part: document}
        if where == ["mqtt", "tls"]:  # a tls block goes with mqtts:// only
            document["mqtt"]["url"] = "mqtts://broker"
    assert loaded(parse_config(yaml.safe_dump(document), {}), path) == default


# -- HTTP cameras sharing one URL path (match) -----------------------------------------


def http_cameras(*entries: str) -> str:
    return "cameras:\n" + "".join(f" - {{{entry}}}\n" for entry in entries)


def test_cameras_with_match_share_the_default_path() -> None:
    config = parse_config(
        http_cameras(
            "id: north, protocol: http, match: {device: Gate North}",
            "id: south, protocol: http, match: {device: gate south}",
            "id: yard, protocol: http, match: {source: 10.1.2.0/24}, path: /shared/",
            "id: own, protocol: http",
        ),
        {},
    )
    paths = {camera.id: getattr(camera, "path", None) for camera in config.cameras}
    assert paths == {"north": "/lpr", "south": "/lpr", "yard": "/shared/", "own": "/lpr/own"}
    yard = config.cameras[2]
    assert isinstance(yard, HttpCameraConfig) and yard.match is not None
    assert yard.match.source == ("10.1.2.0/24",) and yard.match.device is None


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            (
                "id: a, protocol: http, match: {device: Gate}",
                "id: b, protocol: http, match: {device: ' GATE'}",
            ),
            "cameras[1].match: cameras 'a' (cameras[0]) and 'b' share the path '/lpr': "
            "their match could take the same request (give them different devices or sources)",
        ),
        (
            # a device from an address: both could be meant
            (
                "id: a, protocol: http, match: {device: Gate}",
                "id: b, protocol: http, match: {source: 10.0.0.1}",
            ),
            "cameras[1].match: cameras 'a' (cameras[0]) and 'b' share the path '/lpr': "
            "their match could take the same request (give them different devices or sources)",
        ),
        (
            (
                "id: a, protocol: http, match: {source: [10.0.0.0/8]}",
                "id: b, protocol: http, match: {source: 10.9.9.9}",
            ),
            "cameras[1].match: cameras 'a' (cameras[0]) and 'b' share the path '/lpr': "
            "their match could take the same request (give them different devices or sources)",
        ),
        (
            ("id: a, protocol: http, match: {device: Gate}", "id: b, protocol: http, path: /lpr"),
            "cameras[1].path: cameras 'a' (cameras[0]) and 'b' share the path '/lpr': "
            "give both a match (device and/or source) or each its own path",
        ),
        (
            ("id: a, protocol: http, match: {}",),
            "cameras[0].match: needs device or source (or both)",
        ),
        (("id: a, protocol: http, match: {device: ' '}",), "cameras[0].match.device: is empty"),
        (
            ("id: a, protocol: http, match: {source: nope}",),
            'cameras[0].match.source[0]: not an address or network: "nope"',
        ),
    ],
)
def test_cameras_that_could_take_the_same_request_are_an_error_naming_both(
    entries: tuple[str, ...], problem: str
) -> None:
    assert problem in problems(http_cameras(*entries))


@pytest.mark.parametrize(
    "entries",
    [
        ("match: {device: Gate A}", "match: {device: Gate B}"),
        ("match: {source: 10.0.0.0/24}", "match: {source: [10.0.1.0/24, '::1']}"),
        # same device name at two sites: the source tells them apart
        ("match: {device: Gate, source: 10.0.0.1}", "match: {device: Gate, source: 10.0.0.2}"),
        ("match: {device: Gate A, source: 10.0.0.1}", "match: {device: Gate B, source: 10.0.0.1}"),
    ],
)
def test_cameras_that_cannot_take_the_same_request_may_share(entries: tuple[str, str]) -> None:
    first, second = entries
    text = http_cameras(f"id: a, protocol: http, {first}", f"id: b, protocol: http, {second}")
    assert [camera.id for camera in parse_config(text, {}).cameras] == ["a", "b"]


def test_a_source_match_restricts_like_allowed_sources() -> None:
    open_camera = "id: a, protocol: http, match: {device: Gate}"
    by_source = "id: b, protocol: http, match: {source: 10.0.0.0/24}, path: /b"
    warnings = config_warnings(parse_config(http_cameras(open_camera, by_source), {}))
    assert [w.split(":")[0] for w in warnings] == ["cameras[0]"]


# -- shards: client ids and the check of several configs ---------------------------


def test_a_gateway_without_a_client_id_gets_one_unique_per_host_and_outbox() -> None:
    def client_id(outbox: str) -> str:
        return parse_config(f"outbox: {{path: '{outbox}'}}", {}).mqtt.client_id

    first, again, other = (
        client_id("/data/a.sqlite3"),
        client_id("/data/a.sqlite3"),
        client_id("/data/b.sqlite3"),
    )
    assert first == again  # stable across restarts: the broker sees one client
    assert first != other  # two shards on one host
    assert re.fullmatch(r"lpr-gateway-[A-Za-z0-9_-]+-[0-9a-f]{8}", first)
    assert derived_client_id(Path("/data/a.sqlite3"), "gw-1") != derived_client_id(
        Path("/data/a.sqlite3"), "gw-2"
    )
    config = parse_config("homeassistant: {enabled: true}", {})
    assert config.mqtt.client_id_derived
    # Home Assistant's unique ids do not take the host in: entities survive.
    assert default_node_id(config) == "lpr-gateway"
    explicit = parse_config("mqtt: {client_id: gate-site-1}", {})
    assert explicit.mqtt.client_id == "gate-site-1" and not explicit.mqtt.client_id_derived
    assert default_node_id(explicit) == "gate-site-1"


def check_files(tmp_path: Path, *documents: str) -> subprocess.CompletedProcess[str]:
    arguments: list[str] = []
    for index, document in enumerate(documents):
        path = tmp_path / f"shard-{index}.yaml"
        path.write_text(document)
        arguments += ["-c", str(path)]
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_of_several_shards_refuses_a_shared_camera_or_client_id(tmp_path: Path) -> None:
    a = "mqtt: {client_id: site-a}\ncameras: [{id: gate, protocol: http, path: /lpr/gate}]\n"
    b = "mqtt: {client_id: site-b}\ncameras: [{id: yard, protocol: http, path: /lpr/yard}]\n"
    assert check_files(tmp_path, a, b).returncode == 0
    same_camera = b.replace("id: yard", "id: gate")
    result = check_files(tmp_path, a, same_camera)
    assert result.returncode == 2
    assert "camera 'gate' is in" in result.stderr and "shard-1.yaml" in result.stderr
    same_id = b.replace("site-b", "site-a")
    result = check_files(tmp_path, a, same_id)
    assert result.returncode == 2
    assert "mqtt.client_id 'site-a' is in" in result.stderr
    # From the environment (a pod name) or left out: they differ where the
    # gateways run, which the check cannot see: not compared.
    from_env = "mqtt: {client_id: '${SHARD:-x}'}\n"
    assert check_files(tmp_path, from_env, from_env).returncode == 0
    assert check_files(tmp_path, "{}", "{}").returncode == 0


@pytest.mark.parametrize(
    ("ui", "expected"),
    [
        ("{listen: '0.0.0.0:8099'}", "ui.listen: 0.0.0.0:8099 reaches beyond this machine"),
        ("{listen: ':8099'}", "ui.listen: :8099 reaches beyond this machine"),
        ("{listen: 'gate.example:8099'}", "ui.listen: gate.example:8099 reaches beyond"),
        ("{listen: ':8099', username: admin}", "ui.password: missing while username is set"),
        ("{listen: ':8099', password: x}", "ui.username: missing while password is set"),
    ],
)
def test_a_web_page_beyond_loopback_needs_a_login_or_a_stated_choice(
    ui: str, expected: str
) -> None:
    found = problems(f"ui: {ui}")
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    "ui",
    [
        "{listen: '127.0.0.1:8099'}",
        "{listen: '[::1]:8099'}",
        "{listen: 'localhost:8099'}",
        "{listen: ':8099', allow_anonymous: true}",
        "{listen: ':8099', username: admin, password: secret}",
        "{listen: ''}",
    ],
)
def test_web_page_settings_that_are_accepted(ui: str) -> None:
    parse_config(f"ui: {ui}", {})
