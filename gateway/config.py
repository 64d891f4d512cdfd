"""Configuration: YAML in, one immutable typed `Config` out.

Every problem is collected with its key path (`cameras[2].port: ...`) so that
`lpr-gateway check` can print them all at once. Unknown keys are errors: a
misspelt option silently ignored is a bug a user finds in production.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway.errors import ConfigError

T = TypeVar("T")

REDACTED = "***"
# Upper bound of images.max_pixels: Pillow's own guard in images.py is set to it.
MAX_PIXELS_LIMIT = 128_000_000
DEFAULT_MAX_PIXELS = 40_000_000  # images.max_pixels: 40 MP, far above any camera's scene

# A camera id is one MQTT topic level and part of entity ids: a safe slug,
# checked with fullmatch (`re.match` with `$` lets a trailing "\n" through).
CAMERA_ID_RE = re.compile(r"[a-z0-9_-]+")
CAMERA_ID_MAX = 64
NODE_ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING = object()


class Protocol(enum.Enum):
    TCP = "tcp"
    HTTP = "http"
    RTSP = "rtsp"


class OtherEvents(enum.Enum):
    """What to do with camera notifications that are not plate reads."""

    FORWARD = "forward"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | None = None  # None: start the embedded broker
    username: str | None = None
    password: str | None = None
    client_id: str = "lpr-gateway"
    base_topic: str = "lpr"
    protocol_version: int = 4  # 4 = MQTT 3.1.1, 5 = MQTT 5
    keepalive_seconds: int = 30
    publish_window: int = 32  # QoS 1 messages in flight at once
    embedded_port: int = 0  # 0: a free port
    tls: TlsConfig | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url or "mqtt://127.0.0.1").hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "mqtt://127.0.0.1")
        if parts.port:
            return parts.port
        return 8883 if self.use_tls else 1883

    @property
    def use_tls(self) -> bool:
        return (self.url or "").startswith("mqtts://")


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    # Namespace of unique ids and discovery topics; None: derived from mqtt.client_id.
    node_id: str | None = None


class SceneMode(enum.Enum):
    SEND = "send"
    SKIP = "skip"  # never publish the scene image on MQTT


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    """Scene image handling. Default: byte-exact, as the camera sent it."""

    scene: SceneMode = SceneMode.SEND
    quality: int | None = None  # JPEG quality 1-95 when re-encoding
    max_width: int | None = None  # scale down (keeping the aspect ratio) when wider
    # Refuse to decode a picture larger than this (pixels), checked from its
    # header before decoding: a small JPEG can claim 10000x10000 and cost GBs.
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def reencode(self) -> bool:
        return self.scene is SceneMode.SEND and (
            self.quality is not None or self.max_width is not None
        )


@dataclass(frozen=True, slots=True)
class HttpServerConfig:
    listen: str = "0.0.0.0:8080"
    max_body_bytes: int = 20_000_000
    request_timeout_seconds: float = 30.0
    # A request whose headers are not complete this long after its first byte
    # (or after the connection opened) is closed: slowloris protection.
    header_timeout_seconds: float = 10.0
    # An idle keep-alive connection is closed after this long.
    keepalive_timeout_seconds: float = 60.0
    max_connections: int = 512  # open connections in total; beyond it, new ones are closed
    max_connections_per_source: int = 64  # open connections per source address
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str | None = "0.0.0.0:9108"  # None: no metrics endpoint

    @property
    def host(self) -> str:
        return split_listen(self.listen or "")[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen or "")[1]


class OutboxSync(enum.Enum):
    # NORMAL survives a crash or SIGKILL of the gateway (WAL); FULL also a power loss.
    NORMAL = "normal"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    path: Path = Path("./data/outbox.sqlite3")
    max_bytes: int = 1_000_000_000
    sync: OutboxSync = OutboxSync.NORMAL


@dataclass(frozen=True, slots=True)
class DedupConfig:
    window_seconds: float = 10.0
    fuzzy: bool = False  # plates within edit distance 1 count as the same vehicle


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Fields every camera has; the protocol subclasses add their own."""

    id: str
    protocol: Protocol
    name: str
    timezone: str = "UTC"
    other_events: OtherEvents = OtherEvents.FORWARD
    images: ImagesConfig = ImagesConfig()  # the effective options (global merged in)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class TcpCameraConfig(CameraConfig):
    host: str = ""
    port: int = 5000
    username: str = "admin"
    password: str = ""
    connect_timeout_seconds: float = 5.0
    # The protocol has no keep-alive: silence this long means a dead session.
    idle_timeout_seconds: float = 300.0
    capture_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class HttpCameraConfig(CameraConfig):
    path: str = ""
    username: str | None = None
    password: str | None = None
    allowed_sources: tuple[str, ...] = ()  # addresses or networks; empty = any
    swap_direction: bool = False  # camera mounted facing the other way


@dataclass(frozen=True, slots=True)
class RtspCameraConfig(CameraConfig):
    url: str = ""
    username: str | None = None
    password: str | None = None
    http_port: int = 80
    connect_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 120.0
    image_timeout_seconds: float = 3.0


AnyCameraConfig = TcpCameraConfig | HttpCameraConfig | RtspCameraConfig


@dataclass(frozen=True, slots=True)
class Config:
    mqtt: MqttConfig = MqttConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    http: HttpServerConfig = HttpServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    outbox: OutboxConfig = OutboxConfig()
    dedup: DedupConfig = DedupConfig()
    images: ImagesConfig = ImagesConfig()
    # name → plates or fnmatch patterns (`*`, `?`), as written (normalized when matched)
    known_plates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    known_plates_tolerance: int = 1  # edit distance for a fuzzy match; 0 = exact only
    # TCP colour codes → names. The vendor's table is "stand by": this default is
    # provisional; the raw code is always published beside the name.
    color_table: Mapping[int, str] = field(default_factory=dict)
    log_level: str = "INFO"
    cameras: tuple[AnyCameraConfig, ...] = ()

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
    config = reader.config(document)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert config is not None
    return config


class _Reader:
    """Walks the YAML document, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        # Key paths whose value came out of ${...} empty: the variables that were
        # unset or empty there, to name the likely culprit in a later problem.
        self.empty_from_env: dict[str, list[str]] = {}
        self._reported: set[str] = set()  # key paths with a problem already

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self._reported.add(path)

    # -- scalars -----------------------------------------------------------

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

    def secret(self, path: str, value: Any) -> str | None:
        """A password: like `string`, but a message never repeats the value."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(path, f"expected a string, got {type(value).__name__} (value not shown)")
            return None
        return str(value)

    def require_password(
        self, username_path: str, username: str | None, password_path: str, password: str | None
    ) -> None:
        """A login with an empty password is almost always an unset variable, and
        for the HTTP intake it means `Basic user:` is accepted: refuse it."""
        if not username or password:
            return
        if password_path in self._reported:
            return  # already said (e.g. "environment variable X is not set")
        if password is None:
            self.problem(password_path, f"missing while {_leaf(username_path)} is set")
            return
        names = self.empty_from_env.get(password_path)
        hint = f" (is {' / '.join(names)} set?)" if names else ""
        self.problem(password_path, f"empty while {_leaf(username_path)} is set{hint}")

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

    def get(
        self,
        section: Mapping[str, Any],
        path: str,
        key: str,
        convert: Callable[[str, Any], T | None],
        default: T,
    ) -> T:
        raw = section.get(key, _MISSING)
        if raw is _MISSING or raw is None:
            return default
        key_path = _join(path, key)
        converted = convert(key_path, self.interpolate(key_path, raw))
        return default if converted is None else converted

    def required(
        self,
        section: Mapping[str, Any],
        path: str,
        key: str,
        convert: Callable[[str, Any], T | None],
    ) -> T | None:
        if section.get(key) is None:
            self.problem(_join(path, key), "is required")
            return None
        key_path = _join(path, key)
        return convert(key_path, self.interpolate(key_path, section[key]))

    def string(self, path: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(path, f"expected a string, got {_show(value)}")
            return None
        return str(value)

    def boolean(self, path: str, value: Any) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        self.problem(path, f"expected true or false, got {_show(value)}")
        return None

    def integer(self, low: int, high: int) -> Callable[[str, Any], int | None]:
        def convert(path: str, value: Any) -> int | None:
            number: int | None = None
            if isinstance(value, int) and not isinstance(value, bool):
                number = value
            elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,20}\s*", value):
                number = int(value)
            if number is None or not low <= number <= high:
                self.problem(path, f"expected an integer {low}-{high}, got {_show(value)}")
                return None
            return number

        return convert

    def number(self, low: float, high: float) -> Callable[[str, Any], float | None]:
        def convert(path: str, value: Any) -> float | None:
            number: float | None = None
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    number = None
            if number is None or not low <= number <= high:
                self.problem(path, f"expected a number {low:g}-{high:g}, got {_show(value)}")
                return None
            return number

        return convert

    def choice(self, enum_type: type[Any]) -> Callable[[str, Any], Any]:
        def convert(path: str, value: Any) -> Any:
            for member in enum_type:
                if str(value).lower() == str(member.value):
                    return member
            names = ", ".join(str(m.value) for m in enum_type)
            self.problem(path, f"expected one of {names}, got {_show(value)}")
            return None

        return convert

    def readable_file(self, path: str, value: Any) -> Path | None:
        text = self.string(path, value)
        if text is None:
            return None
        file_path = Path(text)
        try:
            with file_path.open("rb"):
                pass
        except OSError as exc:
            self.problem(path, f"cannot read {text!r}: {exc.strerror or exc}")
            return None
        return file_path

    def listen(self, path: str, value: Any) -> str | None:
        text = self.string(path, value)
        if text is None:
            return None
        _host, sep, port = text.rpartition(":")
        # ASCII digits only: str.isdigit() is true for "²", which int() refuses.
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) <= 65535:
            self.problem(path, f"expected host:port (port 0-65535), got {_show(value)}")
            return None
        return text

    def topic_level(self, path: str, value: Any) -> str | None:
        text = self.string(path, value)
        if text is None:
            return None
        if (
            not text
            or any(ch in text for ch in "#+\0")
            or text.startswith("/")
            or text.endswith("/")
        ):
            self.problem(
                path,
                f"not a usable MQTT topic prefix: {_show(value)} "
                "(no wildcards, no leading or trailing '/', not empty)",
            )
            return None
        return text

    # -- sections ----------------------------------------------------------

    def config(self, document: Any) -> Config | None:
        top = self.mapping(
            "",
            document,
            {
                "mqtt",
                "homeassistant",
                "http",
                "metrics",
                "outbox",
                "dedup",
                "images",
                "known_plates",
                "known_plates_tolerance",
                "color_table",
                "log_level",
                "cameras",
            },
        )
        log_level = self.get(top, "", "log_level", self.string, "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            self.problem("log_level", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        images = self.images("images", top.get("images"), ImagesConfig())
        cameras = self.cameras(top.get("cameras"), images)
        if any(c.images.reencode for c in cameras) or images.reencode:
            self.need_pillow("images" if images.reencode else "cameras[].images")
        return Config(
            mqtt=self.mqtt(top.get("mqtt")),
            homeassistant=self.homeassistant(top.get("homeassistant")),
            http=self.http(top.get("http")),
            metrics=self.metrics(top.get("metrics")),
            outbox=self.outbox(top.get("outbox")),
            dedup=self.dedup(top.get("dedup")),
            images=images,
            known_plates=self.known_plates(top.get("known_plates")),
            known_plates_tolerance=self.get(
                top, "", "known_plates_tolerance", self.integer(0, 3), 1
            ),
            color_table=self.color_table(top.get("color_table")),
            log_level=log_level,
            cameras=cameras,
        )

    def need_pillow(self, path: str) -> None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            self.problem(
                path,
                "quality/max_width re-encode the scene image and need Pillow, which is "
                "not installed: pip install 'lpr-gateway[images]' (or remove the option)",
            )

    def images(self, p: str, value: Any, base: ImagesConfig) -> ImagesConfig:
        """`images:` globally, or per camera on top of the global one."""
        section = self.mapping(p, value, {"scene", "quality", "max_width", "max_pixels"})
        return ImagesConfig(
            scene=self.get(section, p, "scene", self.choice(SceneMode), base.scene),
            quality=self.get(section, p, "quality", self.integer(1, 95), base.quality),
            max_width=self.get(section, p, "max_width", self.integer(16, 16384), base.max_width),
            max_pixels=self.get(
                section, p, "max_pixels", self.integer(1, MAX_PIXELS_LIMIT), base.max_pixels
            ),
        )

    def known_plates(self, value: Any) -> dict[str, tuple[str, ...]]:
        p = "known_plates"
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(p, f"expected a mapping of name: [plate, ...], got {_show(value)}")
            return {}
        table: dict[str, tuple[str, ...]] = {}
        for name, plates in value.items():
            key_path = f"{p}.{name}"
            text = self.string(key_path, name)
            if text is None:
                continue
            if isinstance(plates, str | int):
                plates = [plates]
            if not isinstance(plates, list) or not plates:
                self.problem(
                    key_path, f"expected a list of plates or patterns, got {_show(plates)}"
                )
                continue
            entries: list[str] = []
            for index, plate in enumerate(plates):
                entry = self.string(f"{key_path}[{index}]", self.interpolate(key_path, plate))
                if entry is None:
                    continue
                if not _plate_entry_usable(entry):
                    self.problem(
                        f"{key_path}[{index}]",
                        f"not a usable entry: {_show(plate)} (a plate, a pattern with * "
                        "and ?, or list:white / list:black / list:visitor)",
                    )
                    continue
                entries.append(entry)
            table[text] = tuple(entries)
        return table

    def mqtt(self, value: Any) -> MqttConfig:
        p = "mqtt"
        section = self.mapping(
            p,
            value,
            {
                "url",
                "username",
                "password",
                "client_id",
                "base_topic",
                "protocol",
                "keepalive_seconds",
                "publish_window",
                "embedded_port",
                "tls",
            },
        )
        url = self.get(section, p, "url", self.string, None)
        if url is not None:
            parts = urlsplit(url)
            shown = redact_url(url)
            if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
                self.problem(
                    f"{p}.url", f"expected mqtt://host[:port] or mqtts://..., got {shown!r}"
                )
            else:
                try:
                    _ = parts.port
                except ValueError:
                    self.problem(f"{p}.url", f"bad port in {shown!r}")
        protocol = self.get(section, p, "protocol", self.string, "3.1.1")
        versions = {"3.1.1": 4, "311": 4, "4": 4, "5": 5, "5.0": 5}
        if protocol not in versions:
            self.problem(f"{p}.protocol", f"expected 3.1.1 or 5, got {protocol!r}")
        tls = self.tls(_join(p, "tls"), section.get("tls"))
        secure = url is not None and url.startswith("mqtts://")
        if tls is not None and not secure:
            # paho only sets TLS up for mqtts://: the block would be ignored and
            # the login would go over the network in clear.
            self.problem(
                f"{p}.tls",
                "has no effect without TLS: mqtt.url is "
                f"{_show(redact_url(url)) if url else 'absent (the embedded broker)'}; "
                "use mqtts://host[:port] (or remove the tls block)",
            )
        if secure and tls is None:
            tls = TlsConfig()
        username = self.get(section, p, "username", self.string, None)
        password = self.get(section, p, "password", self.secret, None)
        self.require_password(f"{p}.username", username, f"{p}.password", password)
        return MqttConfig(
            url=url,
            username=username,
            password=password,
            client_id=self.get(section, p, "client_id", self.string, "lpr-gateway"),
            base_topic=self.get(section, p, "base_topic", self.topic_level, "lpr"),
            protocol_version=versions.get(protocol, 4),
            keepalive_seconds=self.get(section, p, "keepalive_seconds", self.integer(1, 3600), 30),
            publish_window=self.get(section, p, "publish_window", self.integer(1, 1000), 32),
            embedded_port=self.get(section, p, "embedded_port", self.integer(0, 65535), 0),
            tls=tls,
        )

    def tls(self, p: str, value: Any) -> TlsConfig | None:
        if value is None:
            return None
        section = self.mapping(p, value, {"ca_file", "cert_file", "key_file", "insecure"})
        config = TlsConfig(
            ca_file=self.get(section, p, "ca_file", self.readable_file, None),
            cert_file=self.get(section, p, "cert_file", self.readable_file, None),
            key_file=self.get(section, p, "key_file", self.readable_file, None),
            insecure=self.get(section, p, "insecure", self.boolean, False),
        )
        if ("cert_file" in section) != ("key_file" in section):
            self.problem(p, "cert_file and key_file go together")
        return config

    def homeassistant(self, value: Any) -> HomeAssistantConfig:
        p = "homeassistant"
        section = self.mapping(p, value, {"enabled", "discovery_prefix", "node_id"})
        node_id = self.get(section, p, "node_id", self.string, None)
        if node_id is not None and not NODE_ID_RE.fullmatch(node_id):
            self.problem(f"{p}.node_id", f"expected [a-zA-Z0-9_-]+, got {node_id!r}")
        return HomeAssistantConfig(
            enabled=self.get(section, p, "enabled", self.boolean, False),
            discovery_prefix=self.get(
                section, p, "discovery_prefix", self.topic_level, "homeassistant"
            ),
            node_id=node_id,
        )

    def http(self, value: Any) -> HttpServerConfig:
        p = "http"
        section = self.mapping(
            p,
            value,
            {
                "listen",
                "max_body_bytes",
                "request_timeout_seconds",
                "header_timeout_seconds",
                "keepalive_timeout_seconds",
                "max_connections",
                "max_connections_per_source",
                "tls_cert_file",
                "tls_key_file",
            },
        )
        config = HttpServerConfig(
            listen=self.get(section, p, "listen", self.listen, "0.0.0.0:8080"),
            max_body_bytes=self.get(
                section, p, "max_body_bytes", self.integer(1024, 1 << 31), 20_000_000
            ),
            request_timeout_seconds=self.get(
                section, p, "request_timeout_seconds", self.number(0.1, 3600), 30.0
            ),
            header_timeout_seconds=self.get(
                section, p, "header_timeout_seconds", self.number(0.1, 3600), 10.0
            ),
            keepalive_timeout_seconds=self.get(
                section, p, "keepalive_timeout_seconds", self.number(0.1, 3600), 60.0
            ),
            max_connections=self.get(
                section, p, "max_connections", self.integer(1, 1_000_000), 512
            ),
            max_connections_per_source=self.get(
                section, p, "max_connections_per_source", self.integer(1, 1_000_000), 64
            ),
            tls_cert_file=self.get(section, p, "tls_cert_file", self.readable_file, None),
            tls_key_file=self.get(section, p, "tls_key_file", self.readable_file, None),
        )
        if ("tls_cert_file" in section) != ("tls_key_file" in section):
            self.problem(p, "tls_cert_file and tls_key_file go together")
        return config

    def metrics(self, value: Any) -> MetricsConfig:
        p = "metrics"
        section = self.mapping(p, value, {"listen"})
        if "listen" in section and section["listen"] in (None, "", False):
            return MetricsConfig(listen=None)
        return MetricsConfig(listen=self.get(section, p, "listen", self.listen, "0.0.0.0:9108"))

    def outbox(self, value: Any) -> OutboxConfig:
        p = "outbox"
        section = self.mapping(p, value, {"path", "max_bytes", "sync"})
        path = Path(self.get(section, p, "path", self.string, "./data/outbox.sqlite3"))
        return OutboxConfig(
            path=path,
            max_bytes=self.get(
                section, p, "max_bytes", self.integer(1_000_000, 1 << 50), 1_000_000_000
            ),
            sync=self.get(section, p, "sync", self.choice(OutboxSync), OutboxSync.NORMAL),
        )

    def dedup(self, value: Any) -> DedupConfig:
        p = "dedup"
        section = self.mapping(p, value, {"window_seconds", "fuzzy"})
        return DedupConfig(
            window_seconds=self.get(section, p, "window_seconds", self.number(0, 86400), 10.0),
            fuzzy=self.get(section, p, "fuzzy", self.boolean, False),
        )

    def color_table(self, value: Any) -> dict[int, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("color_table", f"expected a mapping of code: name, got {_show(value)}")
            return {}
        table: dict[int, str] = {}
        for code, name in value.items():
            number = self.integer(0, 255)(f"color_table.{code}", code)
            text = self.string(f"color_table.{code}", name)
            if number is not None and text is not None:
                table[number] = text
        return table

    def cameras(self, value: Any, images: ImagesConfig) -> tuple[AnyCameraConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem("cameras", f"expected a list, got {_show(value)}")
            return ()
        cameras: list[AnyCameraConfig] = []
        seen_ids: dict[str, int] = {}
        seen_paths: dict[str, int] = {}
        for index, item in enumerate(value):
            camera = self.camera(f"cameras[{index}]", item, images)
            if camera is None:
                continue
            if camera.id in seen_ids:
                self.problem(
                    f"cameras[{index}].id",
                    f"duplicate camera id {camera.id!r} (also cameras[{seen_ids[camera.id]}])",
                )
            seen_ids.setdefault(camera.id, index)
            if isinstance(camera, HttpCameraConfig):
                if camera.path in seen_paths:
                    self.problem(
                        f"cameras[{index}].path",
                        f"path {camera.path!r} already used by cameras[{seen_paths[camera.path]}]",
                    )
                seen_paths.setdefault(camera.path, index)
            cameras.append(camera)
        return tuple(cameras)

    _COMMON: ClassVar[set[str]] = {"id", "name", "protocol", "timezone", "other_events", "images"}
    _BY_PROTOCOL: ClassVar[dict[Protocol, set[str]]] = {
        Protocol.TCP: {
            "host",
            "port",
            "username",
            "password",
            "connect_timeout_seconds",
            "idle_timeout_seconds",
            "capture_dir",
        },
        Protocol.HTTP: {"path", "username", "password", "allowed_sources", "swap_direction"},
        Protocol.RTSP: {
            "url",
            "username",
            "password",
            "http_port",
            "connect_timeout_seconds",
            "idle_timeout_seconds",
            "image_timeout_seconds",
        },
    }

    def camera(self, p: str, value: Any, images: ImagesConfig) -> AnyCameraConfig | None:
        if not isinstance(value, dict):
            self.problem(p, f"expected a mapping, got {_show(value)}")
            return None
        protocol = self.required(value, p, "protocol", self.choice(Protocol))
        allowed = self._COMMON | (self._BY_PROTOCOL[protocol] if protocol else set())
        section = self.mapping(p, value, allowed)
        camera_id = self.required(section, p, "id", self.string)
        if camera_id is not None and not CAMERA_ID_RE.fullmatch(camera_id):
            self.problem(f"{p}.id", f"expected [a-z0-9_-]+ (used in topics), got {camera_id!r}")
        elif camera_id is not None and len(camera_id) > CAMERA_ID_MAX:
            self.problem(
                f"{p}.id",
                f"at most {CAMERA_ID_MAX} characters (used in topics), got {len(camera_id)}",
            )
        timezone = self.get(section, p, "timezone", self.string, "UTC")
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.problem(f"{p}.timezone", f"unknown time zone {timezone!r}")
        if protocol is None or camera_id is None:
            return None
        common: dict[str, Any] = {
            "id": camera_id,
            "protocol": protocol,
            "name": self.get(section, p, "name", self.string, camera_id),
            "timezone": timezone,
            "other_events": self.get(
                section, p, "other_events", self.choice(OtherEvents), OtherEvents.FORWARD
            ),
            "images": self.images(f"{p}.images", section.get("images"), images),
        }
        port = self.integer(1, 65535)
        timeout = self.number(0.1, 86400)
        username = self.get(section, p, "username", self.string, None)
        password = self.get(section, p, "password", self.secret, None)
        self.require_password(f"{p}.username", username, f"{p}.password", password)
        if protocol is Protocol.TCP:
            return TcpCameraConfig(
                **common,
                host=self.required(section, p, "host", self.string) or "",
                port=self.get(section, p, "port", port, 5000),
                username="admin" if username is None else username,
                password=password or "",
                connect_timeout_seconds=self.get(
                    section, p, "connect_timeout_seconds", timeout, 5.0
                ),
                idle_timeout_seconds=self.get(section, p, "idle_timeout_seconds", timeout, 300.0),
                capture_dir=_opt_path(self.get(section, p, "capture_dir", self.string, None)),
            )
        if protocol is Protocol.HTTP:
            path = self.get(section, p, "path", self.string, f"/lpr/{camera_id}")
            if not path.startswith("/"):
                self.problem(f"{p}.path", f"expected a URL path starting with '/', got {path!r}")
            return HttpCameraConfig(
                **common,
                path=path,
                username=username,
                password=password,
                allowed_sources=self.sources(
                    f"{p}.allowed_sources", section.get("allowed_sources")
                ),
                swap_direction=self.get(section, p, "swap_direction", self.boolean, False),
            )
        url = self.required(section, p, "url", self.string) or ""
        if url and (urlsplit(url).scheme != "rtsp" or not urlsplit(url).hostname):
            self.problem(f"{p}.url", f"expected rtsp://host[:port]/path, got {redact_url(url)!r}")
        elif url and username is None:
            # Credentials in the URL are used when username is absent: the same rule,
            # read the way the RTSP adapter reads them (urlsplit).
            url_user, url_password = urlsplit(url).username, urlsplit(url).password
            if url_user and not url_password:
                self.problem(
                    f"{p}.url",
                    f"has user {url_user!r} but no password: set password "
                    "(and username) instead of credentials in the URL",
                )
        return RtspCameraConfig(
            **common,
            url=url,
            username=username,
            password=password,
            http_port=self.get(section, p, "http_port", port, 80),
            connect_timeout_seconds=self.get(section, p, "connect_timeout_seconds", timeout, 5.0),
            idle_timeout_seconds=self.get(section, p, "idle_timeout_seconds", timeout, 120.0),
            image_timeout_seconds=self.get(section, p, "image_timeout_seconds", timeout, 3.0),
        )

    def sources(self, p: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(p, f"expected a list of addresses or networks, got {_show(value)}")
            return ()
        result = []
        for index, item in enumerate(value):
            try:
                result.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError:
                self.problem(f"{p}[{index}]", f"not an address or network: {_show(item)}")
        return tuple(result)


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


def _plate_entry_usable(entry: str) -> bool:
    """A known-plates entry needs something to match: characters other than separators."""
    if entry.strip().lower().startswith("list:"):
        return entry.strip().lower() in {"list:white", "list:black", "list:visitor"}
    return any(ch.isalnum() or ch in "*?" for ch in entry)


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


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
