"""Configuration: YAML in, one immutable typed `Config` out.

Each option is declared once, on its frozen dataclass field: `option(default,
convert, doc=...)` holds its converter (with its bounds) and its documentation;
one generic reader walks `dataclasses.fields` for every section. What involves
more than one field is checked by small functions after the generic read.

Every problem is collected with its key path (`cameras[2].port: ...`) so that
`lpr-gateway check` can print them all at once. Unknown keys are errors: a
misspelt option silently ignored is a bug a user finds in production.
"""

# option() and section() return dataclasses.field(...): not a shared default.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import os
import re
import socket
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.errors import ConfigError

# The client id's stem; a gateway that configures none adds its host and shard.
DEFAULT_CLIENT_ID = "lpr-gateway"

REDACTED = "***"
# Upper bound of images.max_pixels: Pillow's own guard in images.py is set to it.
MAX_PIXELS_LIMIT = 128_000_000
DEFAULT_MAX_PIXELS = 40_000_000  # images.max_pixels: 40 MP, far above any camera's scene

# A camera id is one MQTT topic level and part of entity ids: a safe slug,
# checked with fullmatch (`re.match` with `$` lets a trailing "\n" through).
CAMERA_ID_RE = re.compile(r"[a-z0-9_-]+")
CAMERA_ID_MAX = 64
# Camera ids that are topic levels of the gateway itself.
RESERVED_CAMERA_IDS = frozenset({"bridge"})
NODE_ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_UNSET: Any = object()  # not in the document, or refused: take the default


class Protocol(enum.Enum):
    TCP = "tcp"
    HTTP = "http"
    RTSP = "rtsp"


class OtherEvents(enum.Enum):
    """What to do with camera notifications that are not plate reads."""

    FORWARD = "forward"
    SKIP = "skip"


class SceneMode(enum.Enum):
    SEND = "send"
    SKIP = "skip"  # never publish the scene image on MQTT


class OutboxSync(enum.Enum):
    # NORMAL survives a crash or SIGKILL of the gateway (WAL); FULL also a power loss.
    NORMAL = "normal"
    FULL = "full"


# --------------------------------------------------------------------------
# Declaring an option

# A converter gets the reader (to report problems), the key path and the value
# (after ${ENV} interpolation unless the option is `raw`); it returns None when it
# refused the value, having said why.
Convert = Callable[["_Reader", str, Any], Any]


@dataclass(frozen=True, slots=True)
class Option:
    """What the reader needs to know about one field, kept in its metadata."""

    convert: Convert | None  # None: a nested section, read field by field
    doc: str = ""
    key: str | None = None  # the YAML key when it is not the field's name
    required: bool = False
    section: type | None = None  # the dataclass of a nested section
    raw: bool = False  # the converter takes the value as written (no ${ENV})
    off: bool = False  # null, "" or false switch it off (None) instead of defaulting


def option(
    default: Any = MISSING,
    convert: Convert | None = None,
    *,
    doc: str = "",
    key: str | None = None,
    required: bool = False,
    raw: bool = False,
    off: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a config option."""
    meta = {"option": Option(convert, doc, key, required, None, raw, off)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, default: Any = MISSING, *, doc: str = "") -> Any:
    """A dataclass field holding a nested section (default: the section's defaults)."""
    meta = {"option": Option(None, doc, section=cls, raw=True)}
    return field(default=cls() if default is MISSING else default, metadata=meta)


def options(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Option]]:
    """YAML key → (field, option) of a config dataclass, in field order."""
    found: dict[str, tuple[dataclasses.Field[Any], Option]] = {}
    for item in dataclasses.fields(cls):
        opt = item.metadata.get("option")
        if opt is not None:
            found[opt.key or item.name] = (item, opt)
    return found


def field_default(item: dataclasses.Field[Any]) -> Any:
    """The field's default, or `MISSING` for a field without one."""
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return MISSING


# -- converters ---------------------------------------------------------------


def string(r: _Reader, path: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        r.problem(path, f"expected a string, got {_show(value)}")
        return None
    return str(value)


def secret(r: _Reader, path: str, value: Any) -> str | None:
    """A password: like `string`, but a message never repeats the value."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        r.problem(path, f"expected a string, got {type(value).__name__} (value not shown)")
        return None
    return str(value)


def boolean(r: _Reader, path: str, value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
        return value.lower() in {"true", "yes", "1"}
    r.problem(path, f"expected true or false, got {_show(value)}")
    return None


def integer(low: int, high: int) -> Convert:
    def convert(r: _Reader, path: str, value: Any) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,20}\s*", value):
            number = int(value)
        if number is None or not low <= number <= high:
            r.problem(path, f"expected an integer {low}-{high}, got {_show(value)}")
            return None
        return number

    return convert


def number(low: float, high: float) -> Convert:
    def convert(r: _Reader, path: str, value: Any) -> float | None:
        result: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value)
            except ValueError:
                result = None
        if result is None or not low <= result <= high:
            r.problem(path, f"expected a number {low:g}-{high:g}, got {_show(value)}")
            return None
        return result

    return convert


def choice(enum_type: type[enum.Enum]) -> Convert:
    def convert(r: _Reader, path: str, value: Any) -> Any:
        for member in enum_type:
            if str(value).lower() == str(member.value):
                return member
        names = ", ".join(str(m.value) for m in enum_type)
        r.problem(path, f"expected one of {names}, got {_show(value)}")
        return None

    return convert


def broker_urls(r: _Reader, path: str, value: Any) -> tuple[str, ...] | None:
    """One URL, or a list of them (checked as URLs with the rest of mqtt)."""
    if not isinstance(value, list):
        text = string(r, path, r.interpolate(path, value))
        return None if text is None else (text,)
    if not value:
        r.problem(path, "expected a broker URL or a list of them, got an empty list")
        return None
    urls: list[str] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        text = string(r, item_path, r.interpolate(item_path, item))
        if text is None:
            return None
        urls.append(text)
    return tuple(urls)


def file_path(r: _Reader, path: str, value: Any) -> Path | None:
    text = string(r, path, value)
    return None if text is None else Path(text)


def optional_path(r: _Reader, path: str, value: Any) -> Path | None:
    """A directory that an empty value leaves unset."""
    text = string(r, path, value)
    return Path(text) if text else None


def readable_file(r: _Reader, path: str, value: Any) -> Path | None:
    text = string(r, path, value)
    if text is None:
        return None
    result = Path(text)
    try:
        with result.open("rb"):
            pass
    except OSError as exc:
        r.problem(path, f"cannot read {text!r}: {exc.strerror or exc}")
        return None
    return result


def listen_address(r: _Reader, path: str, value: Any) -> str | None:
    text = string(r, path, value)
    if text is None:
        return None
    _host, sep, port = text.rpartition(":")
    # ASCII digits only: str.isdigit() is true for "²", which int() refuses.
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) <= 65535:
        r.problem(path, f"expected host:port (port 0-65535), got {_show(value)}")
        return None
    return text


def topic_level(r: _Reader, path: str, value: Any) -> str | None:
    text = string(r, path, value)
    if text is None:
        return None
    if not text or any(ch in text for ch in "#+\0") or text.startswith("/") or text.endswith("/"):
        r.problem(
            path,
            f"not a usable MQTT topic prefix: {_show(value)} "
            "(no wildcards, no leading or trailing '/', not empty)",
        )
        return None
    return text


def ha_node_id(r: _Reader, path: str, value: Any) -> str | None:
    text = string(r, path, value)
    if text is not None and not NODE_ID_RE.fullmatch(text):
        r.problem(path, f"expected [a-zA-Z0-9_-]+, got {text!r}")
        return None
    return text


def camera_id(r: _Reader, path: str, value: Any) -> str | None:
    """Said when unsafe, but kept: a bad id still finds its duplicates."""
    text = string(r, path, value)
    if text is not None and not CAMERA_ID_RE.fullmatch(text):
        r.problem(path, f"expected [a-z0-9_-]+ (used in topics), got {text!r}")
    elif text is not None and len(text) > CAMERA_ID_MAX:
        r.problem(path, f"at most {CAMERA_ID_MAX} characters (used in topics), got {len(text)}")
    elif text in RESERVED_CAMERA_IDS:
        # `<base>/bridge/event` is the bridge's event feed; a camera called
        # `bridge` would publish its reads there.
        r.problem(path, f"{text!r} is reserved (<base>/{text}/... are the gateway's own topics)")
    return text


def time_zone(r: _Reader, path: str, value: Any) -> str | None:
    text = string(r, path, value)
    if text is None:
        return None
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        r.problem(path, f"unknown time zone {text!r}")
        return None
    return text


def level_name(r: _Reader, path: str, value: Any) -> str | None:
    text = string(r, path, value)
    if text is None:
        return None
    if text.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        r.problem(path, f"expected DEBUG, INFO, WARNING or ERROR, got {text.upper()!r}")
        return None
    return text.upper()


_MQTT_VERSIONS = {"3.1.1": 4, "311": 4, "4": 4, "5": 5, "5.0": 5}


def mqtt_version(r: _Reader, path: str, value: Any) -> int | None:
    text = string(r, path, value)
    if text is None:
        return None
    if text not in _MQTT_VERSIONS:
        r.problem(path, f"expected 3.1.1 or 5, got {text!r}")
        return None
    return _MQTT_VERSIONS[text]


def networks(r: _Reader, path: str, value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        r.problem(path, f"expected a list of addresses or networks, got {_show(value)}")
        return None
    result = []
    for index, item in enumerate(value):
        try:
            result.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            r.problem(f"{path}[{index}]", f"not an address or network: {_show(item)}")
    return tuple(result)


def resolution(r: _Reader, path: str, value: Any) -> tuple[int, int] | None:
    """`1920x1080` → (1920, 1080)."""
    text = string(r, path, value)
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*[xX×]\s*([0-9]{1,5})\s*", text)
    if match is None or not all(0 < int(side) <= 65535 for side in match.groups()):
        r.problem(path, f"expected WIDTHxHEIGHT in pixels (e.g. 1920x1080), got {_show(value)}")
        return None
    return int(match.group(1)), int(match.group(2))


def plate_table(r: _Reader, path: str, value: Any) -> dict[str, tuple[str, ...]] | None:
    if not isinstance(value, dict):
        r.problem(path, f"expected a mapping of name: [plate, ...], got {_show(value)}")
        return None
    table: dict[str, tuple[str, ...]] = {}
    for name, plates in value.items():
        key_path = f"{path}.{name}"
        text = string(r, key_path, name)
        if text is None:
            continue
        if isinstance(plates, str | int):
            plates = [plates]
        if not isinstance(plates, list) or not plates:
            r.problem(key_path, f"expected a list of plates or patterns, got {_show(plates)}")
            continue
        entries: list[str] = []
        for index, plate in enumerate(plates):
            entry = string(r, f"{key_path}[{index}]", r.interpolate(key_path, plate))
            if entry is None:
                continue
            if not plate_entry_usable(entry):
                r.problem(
                    f"{key_path}[{index}]",
                    f"not a usable entry: {_show(plate)} (a plate, a pattern with * "
                    "and ?, or list:white / list:black / list:visitor)",
                )
                continue
            entries.append(entry)
        table[text] = tuple(entries)
    return table


def color_names(r: _Reader, path: str, value: Any) -> dict[int, str] | None:
    if not isinstance(value, dict):
        r.problem(path, f"expected a mapping of code: name, got {_show(value)}")
        return None
    table: dict[int, str] = {}
    code_number = integer(0, 255)
    for code, name in value.items():
        number_ = code_number(r, f"{path}.{code}", code)
        text = string(r, f"{path}.{code}", name)
        if number_ is not None and text is not None:
            table[number_] = text
    return table


def camera_list(r: _Reader, path: str, value: Any) -> tuple[AnyCameraConfig, ...] | None:
    if not isinstance(value, list):
        r.problem(path, f"expected a list, got {_show(value)}")
        return None
    images = r.scope["images"]  # each camera's images: go on top of the global ones
    result: list[AnyCameraConfig] = []
    seen_ids: dict[str, int] = {}
    seen_paths: dict[str, list[tuple[int, HttpCameraConfig]]] = {}
    for index, item in enumerate(value):
        camera = _camera(r, f"{path}[{index}]", item, images)
        if camera is None:
            continue
        if camera.id in seen_ids:
            r.problem(
                f"{path}[{index}].id",
                f"duplicate camera id {camera.id!r} (also {path}[{seen_ids[camera.id]}])",
            )
        seen_ids.setdefault(camera.id, index)
        if isinstance(camera, HttpCameraConfig):
            sharing = seen_paths.setdefault(http_path_key(camera.path), [])
            for other_index, other in sharing:
                _check_shared_path(r, path, (other_index, other), (index, camera))
            sharing.append((index, camera))
        result.append(camera)
    return tuple(result)


def http_path_key(url_path: str) -> str:
    """A URL path as the HTTP server routes it (a trailing slash is the same path)."""
    return url_path.rstrip("/") or "/"


def _check_shared_path(
    r: _Reader,
    path: str,
    first: tuple[int, HttpCameraConfig],
    second: tuple[int, HttpCameraConfig],
) -> None:
    """Two cameras on one URL path: fine only if no request could be both cameras'."""
    (a_index, a), (b_index, b) = first, second
    if not http_matches_overlap(a.match, b.match):
        return
    if a.match is None or b.match is None:
        why = "give both a match (device and/or source) or each its own path"
    else:
        why = "their match could take the same request (give them different devices or sources)"
    r.problem(
        f"{path}[{b_index}].path" if b.match is None else f"{path}[{b_index}].match",
        f"cameras {a.id!r} ({path}[{a_index}]) and {b.id!r} share the path {b.path!r}: {why}",
    )


def http_matches_overlap(a: HttpMatchConfig | None, b: HttpMatchConfig | None) -> bool:
    """Whether one request could match both: it must meet all that each one gives.

    Apart only where both name a device and the devices differ, or both name
    sources and no network of one overlaps a network of the other.
    """
    if a is None or b is None:
        return True
    if a.device_key is not None and b.device_key is not None and a.device_key != b.device_key:
        return False
    if a.source and b.source:
        a_networks = [ipaddress.ip_network(n) for n in a.source]
        b_networks = [ipaddress.ip_network(n) for n in b.source]
        return any(
            x.version == y.version and x.overlaps(y)  # type: ignore[arg-type]
            for x in a_networks
            for y in b_networks
        )
    return True


# --------------------------------------------------------------------------
# The configuration


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: Path | None = option(
        None, readable_file, doc="CA that signed the broker's certificate"
    )
    cert_file: Path | None = option(None, readable_file, doc="client certificate (with key_file)")
    key_file: Path | None = option(None, readable_file, doc="client key (with cert_file)")
    insecure: bool = option(False, boolean, doc="skip certificate and host name checks")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    # One broker, or several to fail over between (the nodes of a cluster, or
    # a standby): connects to the first that answers, tries the next when the
    # connection is lost. Absent: the embedded broker.
    urls: tuple[str, ...] = option(
        (),
        broker_urls,
        key="url",
        raw=True,
        doc="mqtt:// or mqtts:// URL, or a list of them to fail over between; absent: embedded",
    )
    username: str | None = option(None, string, doc="broker login (none: anonymous)")
    password: str | None = option(
        None, secret, doc="never logged; required (not empty) when username is set"
    )
    client_id: str = option(
        DEFAULT_CLIENT_ID,
        string,
        doc="unique per gateway on the broker; absent: lpr-gateway-<host>-<hash of outbox.path>",
    )
    # Set when client_id was not configured and was derived from the host and
    # the outbox (see `derived_client_id`), not an option.
    client_id_derived: bool = False
    base_topic: str = option("lpr", topic_level, doc="prefix of every topic")
    protocol_version: int = option(
        4, mqtt_version, key="protocol", doc="4 = MQTT 3.1.1, 5 = MQTT 5"
    )
    keepalive_seconds: int = option(
        30, integer(1, 3600), doc="a broker that stops answering is noticed after ~1.5x this"
    )
    # Under load the publisher's turn on the event loop comes late, and at most
    # this many messages go out per turn: with 32, 32 cameras posting flat out
    # outran it and the outbox filled (bench/RESULTS.md). Memory is bounded
    # apart from it (mqtt/window.py INFLIGHT_MAX_BYTES).
    publish_window: int = option(
        128, integer(1, 1000), doc="QoS 1 messages in flight at once (and at most 16 MiB)"
    )
    # A broker that refuses larger messages (NATS max_payload, 1 MB by default;
    # cloud brokers' caps) drops the connection over one: known here, a picture
    # over it is published as missing instead (after images: re-encoding).
    # A broker that keeps the connection but acknowledges nothing (RabbitMQ after
    # a message over its max_message_size) is left after this long; raise it
    # for very large pictures over a slow link.
    ack_timeout_seconds: float = option(
        60.0, number(5, 3600), doc="no PUBACK this long with messages in flight: reconnect"
    )
    max_payload_bytes: int | None = option(
        None,
        integer(1024, 268_435_455),
        off=True,
        doc="the broker's message size limit; a picture over it is published as missing",
    )
    embedded_port: int = option(0, integer(0, 65535), doc="0: a free port")
    tls: TlsConfig | None = section(TlsConfig, None, doc="only with an mqtts:// url")

    @property
    def url(self) -> str | None:
        """The first broker (None: the embedded one)."""
        return self.urls[0] if self.urls else None

    @property
    def host(self) -> str:
        return self.broker(0)[0]

    @property
    def port(self) -> int:
        return self.broker(0)[1]

    def broker(self, index: int) -> tuple[str, int]:
        """(host, port) of the `index`-th broker, counting round the list."""
        url = self.urls[index % len(self.urls)] if self.urls else "mqtt://127.0.0.1"
        parts = urlsplit(url)
        return parts.hostname or "127.0.0.1", parts.port or (8883 if self.use_tls else 1883)

    @property
    def use_tls(self) -> bool:
        return (self.url or "").startswith("mqtts://")


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    enabled: bool = option(False, boolean, doc="publish discovery: a device per camera")
    discovery_prefix: str = option(
        "homeassistant",
        topic_level,
        doc="also where HA announces itself (<prefix>/status): discovery is re-sent then",
    )
    node_id: str | None = option(
        None,
        ha_node_id,
        doc="namespace of unique ids and discovery topics; None: derived from mqtt.client_id",
    )
    presence_hold_seconds: float = option(
        30.0,
        number(1, 86400),
        doc="'Known vehicle present' stays on this long after a camera's last known read",
    )


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    """Scene image handling. Default: byte-exact, as the camera sent it."""

    scene: SceneMode = option(
        SceneMode.SEND, choice(SceneMode), doc="skip: never published (the event says why)"
    )
    quality: int | None = option(None, integer(1, 95), doc="JPEG quality 1-95 when re-encoding")
    max_width: int | None = option(
        None, integer(16, 16384), doc="scale down (keeping the aspect ratio) when wider"
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        integer(1, MAX_PIXELS_LIMIT),
        doc="refuse to decode a larger picture, checked from its header before decoding: "
        "a small JPEG can claim 10000x10000 and cost GBs",
    )

    @property
    def reencode(self) -> bool:
        return self.scene is SceneMode.SEND and (
            self.quality is not None or self.max_width is not None
        )


class _ListenAddress:
    """host and port of a section's `listen` (where it may be off: None)."""

    __slots__ = ()
    listen: str | None

    @property
    def host(self) -> str:
        return split_listen(self.listen or "")[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen or "")[1]


@dataclass(frozen=True, slots=True)
class HttpServerConfig(_ListenAddress):
    listen: str = option("0.0.0.0:8080", listen_address, doc="host:port")
    max_body_bytes: int = option(
        20_000_000, integer(1024, 1 << 31), doc="larger bodies get 413 while streaming"
    )
    request_timeout_seconds: float = option(
        30.0, number(0.1, 3600), doc="a request that takes longer is dropped"
    )
    header_timeout_seconds: float = option(
        10.0,
        number(0.1, 3600),
        doc="a request whose headers are not complete this long after its first byte "
        "(or after the connection opened) is closed: slowloris protection",
    )
    keepalive_timeout_seconds: float = option(
        60.0, number(0.1, 3600), doc="an idle keep-alive connection is closed after this long"
    )
    max_connections: int = option(
        512,
        integer(1, 1_000_000),
        doc="open connections in total; beyond it, new ones are closed",
    )
    max_connections_per_source: int = option(
        64, integer(1, 1_000_000), doc="open connections per source address"
    )
    tls_cert_file: Path | None = option(None, readable_file, doc="serve HTTPS (with tls_key_file)")
    tls_key_file: Path | None = option(None, readable_file, doc="with tls_cert_file")


@dataclass(frozen=True, slots=True)
class MetricsConfig(_ListenAddress):
    listen: str | None = option(
        "0.0.0.0:9108", listen_address, off=True, doc="null, empty or false: no metrics endpoint"
    )


@dataclass(frozen=True, slots=True)
class UiConfig(_ListenAddress):
    """The web page: live reads, cameras, known plates, history, health."""

    listen: str | None = option(
        None, listen_address, off=True, doc="host:port of the web page; empty: no web page"
    )
    username: str | None = option(None, string, doc="login for the web page (HTTP Basic)")
    password: str | None = option(None, secret, doc="with username")
    allow_anonymous: bool = option(
        False,
        boolean,
        doc="true: listening beyond loopback without a login is meant (anyone reaching "
        "the port may add known plates and switch cameras off)",
    )


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    path: Path = option(
        Path("./data/outbox.sqlite3"), file_path, doc="put it on a persistent volume"
    )
    max_bytes: int = option(
        1_000_000_000,
        integer(1_000_000, 1 << 50),
        doc="when full, new reads are refused; what is stored is never dropped",
    )
    sync: OutboxSync = option(
        OutboxSync.NORMAL, choice(OutboxSync), doc="normal: survives a crash; full: a power loss"
    )


class HistoryImages(enum.Enum):
    """Which pictures the history keeps with each read."""

    NONE = "none"
    PLATE = "plate"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """Every published read kept for looking back (`lpr-gateway history`)."""

    enabled: bool = option(False, boolean, doc="keep a searchable history of every read")
    path: Path | None = option(
        None, optional_path, doc="its own SQLite file; default: history.sqlite3 beside the outbox"
    )
    days: float = option(30.0, number(0.01, 36500), doc="reads older than this are pruned")
    images: HistoryImages = option(
        HistoryImages.PLATE, choice(HistoryImages), doc="pictures kept: none | plate | all"
    )
    max_bytes: int = option(
        2_000_000_000, integer(1_000_000, 10**13), doc="the oldest reads go past this size"
    )

    def file(self, outbox: Path) -> Path:
        return self.path or outbox.with_name("history.sqlite3")


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    requests: bool = option(
        True,
        boolean,
        doc="answer requests on <base>/bridge/request/# (known plates, cameras on/off, "
        "health): whoever may publish there can change the allow list; false: off",
    )


@dataclass(frozen=True, slots=True)
class DedupConfig:
    window_seconds: float = option(
        10.0,
        number(0, 86400),
        doc="same camera and plate within this long of the last read let through; 0 = off",
    )
    fuzzy: bool = option(
        False, boolean, doc="plates within edit distance 1 count as the same vehicle"
    )


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Fields every camera has; the protocol subclasses add their own."""

    id: str = option(convert=camera_id, required=True, doc="[a-z0-9_-], 1-64; used in topics")
    protocol: Protocol = option(
        convert=choice(Protocol), required=True, doc="tcp | http | rtsp: the options it has"
    )
    name: str = option(convert=string, doc="display name; default: the id")
    timezone: str = option(
        "UTC", time_zone, doc="the camera's clock (HTTP local times are converted with it)"
    )
    other_events: OtherEvents = option(
        OtherEvents.FORWARD, choice(OtherEvents), doc="non-plate notifications: forward | skip"
    )
    images: ImagesConfig = section(
        ImagesConfig, doc="the effective options: these keys over the global images"
    )

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


_PORT = integer(1, 65535)
_TIMEOUT = number(0.1, 86400)


@dataclass(frozen=True, slots=True)
class ConnectingCameraConfig(CameraConfig):
    """What cameras the gateway connects to (TCP, RTSP) share."""

    connect_timeout_seconds: float = option(5.0, _TIMEOUT, doc="per connection attempt")


@dataclass(frozen=True, slots=True)
class TcpCameraConfig(ConnectingCameraConfig):
    host: str = option("", string, required=True, doc="the camera's address")
    port: int = option(5000, _PORT, doc="the camera's LPR port")
    username: str = option("admin", string, doc="the camera's login")
    password: str = option("", secret, doc="never logged; empty is warned about")
    idle_timeout_seconds: float = option(
        300.0,
        _TIMEOUT,
        doc="the protocol has no keep-alive: silence this long means a dead session",
    )
    capture_dir: Path | None = option(
        None, optional_path, doc="keep raw frames that failed to parse here"
    )


def one_or_more_networks(r: _Reader, path: str, value: Any) -> tuple[str, ...] | None:
    """An address or network, or a list of them."""
    return networks(r, path, [value] if isinstance(value, str | int) else value)


# With `match` and no `path`, cameras share this URL path.
SHARED_HTTP_PATH = "/lpr"


@dataclass(frozen=True, slots=True)
class HttpMatchConfig:
    """Which requests on a (shared) URL path are this camera's: all that is given must hold."""

    device: str | None = option(
        None,
        string,
        doc="the `device` field the camera sends (its device name), compared without "
        "case and surrounding spaces",
    )
    source: tuple[str, ...] = option(
        (),
        one_or_more_networks,
        doc="the request's source address: an address or network, or a list",
    )

    @property
    def device_key(self) -> str | None:
        return device_key(self.device) if self.device is not None else None


def device_key(name: str) -> str:
    """A device name as compared: a camera's UI is typed by people."""
    return name.strip().casefold()


@dataclass(frozen=True, slots=True)
class HttpCameraConfig(CameraConfig):
    path: str = option(
        "",
        string,
        doc="the URL path the camera posts to; default /lpr/<id>, or /lpr with match",
    )
    match: HttpMatchConfig | None = section(
        HttpMatchConfig,
        None,
        doc="tell this camera's requests apart on a path it shares with other cameras",
    )
    username: str | None = option(None, string, doc="HTTP Basic the camera must send")
    password: str | None = option(None, secret, doc="required (not empty) with username")
    allowed_sources: tuple[str, ...] = option(
        (), networks, raw=True, doc="addresses or networks; empty = any"
    )
    swap_direction: bool = option(False, boolean, doc="camera mounted facing the other way")


@dataclass(frozen=True, slots=True)
class RtspCameraConfig(ConnectingCameraConfig):
    url: str = option("", string, required=True, doc="rtsp://host[:port]/path")
    username: str | None = option(
        None, string, doc="the camera's login (absent: the URL's user-info)"
    )
    password: str | None = option(None, secret, doc="required (not empty) with username")
    http_port: int = option(80, _PORT, doc="for fetching the pictures notifications name")
    idle_timeout_seconds: float = option(
        120.0, _TIMEOUT, doc="no RTP/RTSP data for this long: reconnect"
    )
    image_timeout_seconds: float = option(3.0, _TIMEOUT, doc="per picture fetch attempt")
    # ONVIF scene description (Profile M): one read per tracked object.
    track_end_seconds: float = option(
        1.0,
        number(0.05, 3600),
        doc="scene description: an object absent this long has left; its best reading is published",
    )
    track_max_seconds: float = option(
        10.0,
        number(0.1, 86400),
        doc="scene description: an object seen this long is published then, once, even if it stays",
    )
    track_max_objects: int = option(
        64,
        integer(1, 10_000),
        doc="scene description: objects tracked at once; past it the oldest is published "
        'early (lpr_scene_tracks_total{end="evicted"})',
    )
    scene_resolution: tuple[int, int] | None = option(
        None,
        resolution,
        doc="WIDTHxHEIGHT of the video the scene description's coordinates refer to: "
        "boxes in pixels; absent, they stay in ONVIF coordinates under raw (unless the "
        "frame carries its scene picture)",
    )


AnyCameraConfig = TcpCameraConfig | HttpCameraConfig | RtspCameraConfig
CAMERA_CLASSES: dict[Protocol, type[AnyCameraConfig]] = {
    Protocol.TCP: TcpCameraConfig,
    Protocol.HTTP: HttpCameraConfig,
    Protocol.RTSP: RtspCameraConfig,
}


@dataclass(frozen=True, slots=True)
class Config:
    mqtt: MqttConfig = section(MqttConfig, doc="the broker reads are published to")
    homeassistant: HomeAssistantConfig = section(
        HomeAssistantConfig, doc="Home Assistant MQTT discovery"
    )
    http: HttpServerConfig = section(
        HttpServerConfig, doc="the server cameras of protocol http call"
    )
    metrics: MetricsConfig = section(MetricsConfig, doc="/metrics (Prometheus) and /healthz")
    outbox: OutboxConfig = section(OutboxConfig, doc="durable store between cameras and the broker")
    dedup: DedupConfig = section(DedupConfig, doc="repeated reads of one vehicle")
    history: HistoryConfig = section(HistoryConfig, doc="a searchable history of every read")
    bridge: BridgeConfig = section(BridgeConfig, doc="runtime control over MQTT")
    ui: UiConfig = section(UiConfig, doc="the web page for installers and operators")
    images: ImagesConfig = section(
        ImagesConfig, doc="scene image on MQTT; a camera may override any key"
    )
    known_plates: Mapping[str, tuple[str, ...]] = option(
        convert=plate_table,
        raw=True,
        factory=dict,
        doc="name → plates or fnmatch patterns (`*`, `?`), as written (normalized when matched)",
    )
    known_plates_tolerance: int = option(
        1, integer(0, 3), doc="edit distance for a fuzzy match; 0 = exact only"
    )
    # The vendor's table is "stand by": the built-in one is provisional.
    color_table: Mapping[int, str] = option(
        convert=color_names,
        raw=True,
        factory=dict,
        doc="TCP colour codes → names; the raw code is always published beside the name",
    )
    log_level: str = option("INFO", level_name, doc="DEBUG | INFO | WARNING | ERROR")
    cameras: tuple[AnyCameraConfig, ...] = option(
        (), camera_list, raw=True, doc="each with an id and a protocol: tcp | http | rtsp"
    )

    def cameras_of(self, protocol: Protocol) -> list[AnyCameraConfig]:
        return [c for c in self.cameras if c.protocol is protocol]


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


# --------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate; raise ConfigError with every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, environ if environ is not None else os.environ, str(path))


def parse_config(text: str, environ: Mapping[str, str], origin: str = "<config>") -> Config:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{origin}: not valid YAML: {_yaml_problem(exc)}"]) from exc
    if document is None:
        document = {}
    reader = _Reader(environ)
    config = reader.section(Config, "", document, Config())
    if reader.problems:
        raise ConfigError(reader.problems)
    assert isinstance(config, Config)
    return config


@dataclass(slots=True)
class _Read:
    """One section as read: its values by field name, before the cross-field checks."""

    path: str
    raw: Mapping[str, Any]  # as written in the document
    values: dict[str, Any]  # converted, or the default
    given: set[str]  # fields whose value came from the document

    def key_path(self, key: str) -> str:
        return _join(self.path, key)


class _Reader:
    """Walks the YAML document, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        # Key paths whose value came out of ${...} empty: the variables that were
        # unset or empty there, to name the likely culprit in a later problem.
        self.empty_from_env: dict[str, list[str]] = {}
        self._reported: set[str] = set()  # key paths with a problem already
        self._scopes: list[dict[str, Any]] = []

    @property
    def scope(self) -> dict[str, Any]:
        """The values read so far in the section being read."""
        return self._scopes[-1]

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self._reported.add(path)

    def interpolate(self, path: str, value: Any) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value
        empty: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                if not self.environ[name]:
                    empty.append(name)
                return self.environ[name]
            if default is not None:
                if not default:
                    empty.append(name)
                return default
            self.problem(path, f"environment variable {name} is not set")
            return ""

        result = _ENV_RE.sub(substitute, value)
        if not result and empty:
            self.empty_from_env[path] = empty
        return result

    def mapping(self, path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {_show(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = _closest(str(key), allowed)
                suffix = f" (did you mean {hint!r}?)" if hint else ""
                self.problem(_join(path, str(key)), f"unknown key{suffix}")
        return value

    def section(self, cls: type, path: str, value: Any, base: Any) -> Any:
        """`cls` read from `value`, its defaults taken from `base`, checked as a whole."""
        raw = self.mapping(path, value, set(options(cls)))
        defaults = {item.name: getattr(base, item.name) for item in dataclasses.fields(cls)}
        read = self.read(cls, path, raw, defaults)
        return _CHECKS.get(cls, _build)(self, cls, read)

    def read(
        self,
        cls: type,
        path: str,
        raw: Mapping[str, Any],
        defaults: Mapping[str, Any],
        preset: Mapping[str, Any] | None = None,
        only: Collection[str] | None = None,
    ) -> _Read:
        """The options of `cls` (those in `only`, but not those in `preset`) from `raw`."""
        read = _Read(path, raw, dict(preset or {}), set())
        self._scopes.append(read.values)
        try:
            for key, (item, opt) in options(cls).items():
                if item.name in read.values or (only is not None and item.name not in only):
                    continue
                default = defaults.get(item.name, field_default(item))
                result = self.option(read.key_path(key), raw.get(key, _UNSET), opt, default)
                if result is not _UNSET:
                    read.values[item.name] = result
                    read.given.add(item.name)
                elif default is not MISSING:
                    read.values[item.name] = default
        finally:
            self._scopes.pop()
        return read

    def option(self, path: str, value: Any, opt: Option, default: Any) -> Any:
        """The value read for one option, or _UNSET to take its default."""
        if opt.off and value is not _UNSET and value in (None, "", False):
            return None
        if value is _UNSET or value is None:
            if opt.required:
                self.problem(path, "is required")
            return _UNSET
        if opt.section is not None:
            return self.section(opt.section, path, value, default or opt.section())
        assert opt.convert is not None
        converted = opt.convert(self, path, value if opt.raw else self.interpolate(path, value))
        return _UNSET if converted is None else converted

    def require_password(self, read: _Read, username_key: str, password_key: str) -> None:
        """A login with an empty password is almost always an unset variable, and
        for the HTTP intake it means `Basic user:` is accepted: refuse it."""
        username = read.values[username_key] if username_key in read.given else None
        password = read.values[password_key] if password_key in read.given else None
        password_path = read.key_path(password_key)
        if not username or password:
            return
        if password_path in self._reported:
            return  # already said (e.g. "environment variable X is not set")
        if password is None:
            self.problem(password_path, f"missing while {username_key} is set")
            return
        names = self.empty_from_env.get(password_path)
        hint = f" (is {' / '.join(names)} set?)" if names else ""
        self.problem(password_path, f"empty while {username_key} is set{hint}")

    def need_pillow(self, path: str) -> None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            self.problem(
                path,
                "quality/max_width re-encode the scene image and need Pillow, which is "
                "not installed: pip install 'lpr-gateway[images]' (or remove the option)",
            )


# -- checks across fields, after the generic read --------------------------------


def _build(r: _Reader, cls: type, read: _Read) -> Any:
    return cls(**read.values)


def derived_client_id(outbox_path: Path, host: str | None = None) -> str:
    """The client id of a gateway that configures none: unique per host, and per
    shard on a host (each gateway has its own outbox), stable across restarts.
    Two gateways with one client id would take each other's session over in a
    loop on every broker, clustered ones included."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", host or socket.gethostname())[:40] or "host"
    shard = hashlib.sha256(str(outbox_path.expanduser().absolute()).encode()).hexdigest()[:8]
    return f"{DEFAULT_CLIENT_ID}-{host}-{shard}"


def _check_config(r: _Reader, cls: type, read: _Read) -> Config:
    config = Config(**read.values)
    if "mqtt" not in read.given or config.mqtt.client_id_derived:  # no client_id written
        mqtt = dataclasses.replace(
            config.mqtt,
            client_id=derived_client_id(config.outbox.path),
            client_id_derived=True,
        )
        config = dataclasses.replace(config, mqtt=mqtt)
    if any(c.images.reencode for c in config.cameras) or config.images.reencode:
        r.need_pillow("images" if config.images.reencode else "cameras[].images")
    return config


def _check_mqtt(r: _Reader, cls: type, read: _Read) -> MqttConfig:
    urls: tuple[str, ...] = read.values.get("urls", ())
    listed = isinstance(read.raw.get("url"), list)
    for index, each in enumerate(urls):
        where = f"{read.key_path('url')}[{index}]" if listed else read.key_path("url")
        parts = urlsplit(each)
        shown = redact_url(each)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            r.problem(where, f"expected mqtt://host[:port] or mqtts://..., got {shown!r}")
        else:
            try:
                _ = parts.port
            except ValueError:
                r.problem(where, f"bad port in {shown!r}")
    url = urls[0] if urls else None
    if {urlsplit(u).scheme for u in urls} == {"mqtt", "mqtts"}:
        # One TLS setup serves every broker of the list.
        r.problem(read.key_path("url"), "mixes mqtt:// and mqtts:// brokers: use one scheme")
    secure = url is not None and url.startswith("mqtts://")
    if read.values["tls"] is not None and not secure:
        # paho only sets TLS up for mqtts://: the block would be ignored and
        # the login would go over the network in clear.
        r.problem(
            read.key_path("tls"),
            "has no effect without TLS: mqtt.url is "
            f"{_show(redact_url(url)) if url else 'absent (the embedded broker)'}; "
            "use mqtts://host[:port] (or remove the tls block)",
        )
    if secure and read.values["tls"] is None:
        read.values["tls"] = TlsConfig()
    r.require_password(read, "username", "password")
    if "client_id" not in read.given:
        read.values["client_id_derived"] = True  # made unique with the outbox, in Config
    return MqttConfig(**read.values)


def _together(r: _Reader, read: _Read, first: str, second: str) -> None:
    if (first in read.raw) != (second in read.raw):
        r.problem(read.path, f"{first} and {second} go together")


def _check_match(r: _Reader, cls: type, read: _Read) -> HttpMatchConfig:
    if read.values["device"] is None and not read.values["source"]:
        r.problem(read.path, "needs device or source (or both)")
    elif read.values["device"] is not None and not device_key(read.values["device"]):
        r.problem(read.key_path("device"), "is empty")
    return HttpMatchConfig(**read.values)


def _check_tls(r: _Reader, cls: type, read: _Read) -> TlsConfig:
    _together(r, read, "cert_file", "key_file")
    return TlsConfig(**read.values)


def _check_http(r: _Reader, cls: type, read: _Read) -> HttpServerConfig:
    _together(r, read, "tls_cert_file", "tls_key_file")
    return HttpServerConfig(**read.values)


def _check_ui(r: _Reader, cls: type, read: _Read) -> UiConfig:
    r.require_password(read, "username", "password")
    ui = UiConfig(**read.values)
    if ui.password and not ui.username:
        r.problem(read.key_path("username"), "missing while password is set")
    if ui.listen and not ui.username and not ui.allow_anonymous and not is_loopback_host(ui.host):
        r.problem(
            read.key_path("listen"),
            f"{ui.listen} reaches beyond this machine and there is no login: set "
            "ui.username/ui.password, listen on 127.0.0.1, or say ui.allow_anonymous: true",
        )
    return ui


def is_loopback_host(host: str) -> bool:
    """A listen host (or a Host header's name) that only this machine reaches:
    `localhost` or a loopback address, bracketed IPv6 included."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _camera(r: _Reader, path: str, value: Any, images: ImagesConfig) -> AnyCameraConfig | None:
    if not isinstance(value, dict):
        r.problem(path, f"expected a mapping, got {_show(value)}")
        return None
    # The protocol says which options the camera has: read it first.
    protocol_field, protocol_option = options(CameraConfig)["protocol"]
    protocol = r.option(
        _join(path, "protocol"), value.get("protocol", _UNSET), protocol_option, MISSING
    )
    protocol = None if protocol is _UNSET else protocol
    cls = CAMERA_CLASSES[protocol] if protocol is not None else CameraConfig
    raw = r.mapping(path, value, set(options(cls)))
    defaults = {"images": images}
    # Without a usable protocol and id, only these two are read (and reported).
    identity = r.read(cls, path, raw, defaults, {protocol_field.name: protocol}, ("id", "timezone"))
    given_id = identity.values.get("id")
    if protocol is None or given_id is None:
        return None
    read = r.read(cls, path, raw, defaults, identity.values)
    read.given |= identity.given
    read.values.setdefault("name", given_id)
    r.require_password(read, "username", "password")
    camera: AnyCameraConfig = _CAMERA_CHECKS[protocol](r, read)
    return camera


def _check_http_camera(r: _Reader, read: _Read) -> HttpCameraConfig:
    if "path" not in read.given:
        matched = read.values.get("match") is not None
        read.values["path"] = SHARED_HTTP_PATH if matched else f"/lpr/{read.values['id']}"
    url_path = read.values["path"]
    if not url_path.startswith("/"):
        r.problem(read.key_path("path"), f"expected a URL path starting with '/', got {url_path!r}")
    return HttpCameraConfig(**read.values)


def _check_rtsp_camera(r: _Reader, read: _Read) -> RtspCameraConfig:
    url = read.values["url"]
    if url and (urlsplit(url).scheme != "rtsp" or not urlsplit(url).hostname):
        r.problem(
            read.key_path("url"), f"expected rtsp://host[:port]/path, got {redact_url(url)!r}"
        )
    elif url and "username" not in read.given:
        # Credentials in the URL are used when username is absent: the same rule,
        # read the way the RTSP adapter reads them (urlsplit).
        url_user, url_password = urlsplit(url).username, urlsplit(url).password
        if url_user and not url_password:
            r.problem(
                read.key_path("url"),
                f"has user {url_user!r} but no password: set password "
                "(and username) instead of credentials in the URL",
            )
    return RtspCameraConfig(**read.values)


_CHECKS: dict[type, Callable[[_Reader, type, _Read], Any]] = {
    Config: _check_config,
    MqttConfig: _check_mqtt,
    TlsConfig: _check_tls,
    HttpServerConfig: _check_http,
    HttpMatchConfig: _check_match,
    UiConfig: _check_ui,
}
_CAMERA_CHECKS: dict[Protocol, Callable[[_Reader, _Read], AnyCameraConfig]] = {
    Protocol.TCP: lambda r, read: TcpCameraConfig(**read.values),
    Protocol.HTTP: _check_http_camera,
    Protocol.RTSP: _check_rtsp_camera,
}


# --------------------------------------------------------------------------
# Warnings: accepted, but said at every start and by `lpr-gateway check`


def config_warnings(config: Config) -> list[str]:
    """What the config allows but should not be left that way, each with its key path."""
    warnings: list[str] = []
    tls = config.mqtt.tls
    if tls is not None and tls.insecure and config.mqtt.use_tls:
        warnings.append(
            "mqtt.tls.insecure: true: the broker's certificate and host name are not "
            "checked; anyone on the network path can pose as the broker and read the "
            "login and every read (for testing only)"
        )
    for index, camera in enumerate(config.cameras):
        p = f"cameras[{index}]"
        if (
            isinstance(camera, HttpCameraConfig)
            and camera.username is None
            and camera.password is None
            and not camera.allowed_sources
            and not (camera.match is not None and camera.match.source)
        ):
            warnings.append(
                f"{p}: HTTP camera {camera.id!r} has no username/password and no "
                f"allowed_sources: anyone who can reach {config.http.listen} can post "
                f"reads as {camera.id!r}"
            )
        if isinstance(camera, TcpCameraConfig) and not camera.password:
            warnings.append(
                f"{p}.password: TCP camera {camera.id!r} logs in as "
                f"{camera.username!r} with an empty password"
            )
    return warnings


# --------------------------------------------------------------------------
# Redaction: no message from here repeats a secret

# Query parameters some cameras take credentials in (rtsp://host/stream?password=...).
_SECRET_QUERY_RE = re.compile(
    r"([?&;](?:password|passwd|pass|pwd|token|secret|key|auth)=)[^&;#]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """`url` with the password of its user-info (and secret-looking query values)
    replaced by `***`: `rtsp://admin:secret@host/x` → `rtsp://admin:***@host/x`.

    Deliberately not urlsplit: a password with an unencoded `/`, `?` or `#` would
    end the authority early there and be shown. The user-info ends at the last
    `@` instead (over-redacting the rare path with `@` and `:` in it).
    """
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    at = url.rfind("@", start)
    if at >= 0:
        user, colon, _password = url[start:at].partition(":")
        url = f"{url[:start]}{user}{':' + REDACTED if colon else ''}{url[at:]}"
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, url)


def redacted_document(config: Any) -> Any:
    """A config section (or the whole `Config`) as plain JSON values, every
    secret replaced by `***` and every URL's password redacted: what
    `bridge/info` shows of the effective configuration.

    Walks the same option declarations the reader does, so a new option shows
    up here without being named again, and a new `secret` option stays hidden.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return _plain(config)
    document: dict[str, Any] = {}
    for key, (item, opt) in options(type(config)).items():
        value = getattr(config, item.name)
        if opt.convert is secret:
            document[key] = REDACTED if value else value
        elif key == "known_plates":
            # The allow list can be long and is personal data: counted in
            # bridge/info, listed by the known_plates/list request.
            continue
        elif isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            document[key] = [redact_url(v) if "://" in v else v for v in value]
        elif isinstance(value, str) and "://" in value:
            document[key] = redact_url(value)
        elif isinstance(value, tuple):
            document[key] = [redacted_document(v) for v in value]
        else:
            document[key] = redacted_document(value)
    return document


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message without its snippet of the document: that line may hold a password."""
    if isinstance(exc, yaml.MarkedYAMLError):
        where = exc.problem_mark
        position = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{exc.problem or 'syntax error'}{position}{context}"
    return type(exc).__name__


def _leaf(path: str) -> str:
    return path.rpartition(".")[2]


def plate_entry_usable(entry: str) -> bool:
    """A known-plates entry needs something to match: characters other than separators."""
    if entry.strip().lower().startswith("list:"):
        return entry.strip().lower() in {"list:white", "list:black", "list:visitor"}
    return any(ch.isalnum() or ch in "*?" for ch in entry)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    return repr(value) if not isinstance(value, dict | list) else type(value).__name__


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return matches[0] if matches else None
