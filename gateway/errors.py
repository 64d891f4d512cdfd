"""The gateway's error tree: one root, subclasses that say whose fault it is."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is wrong; carries every problem found, each with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class CameraProtocolError(GatewayError):
    """A camera (the peer) broke its protocol: corrupt frame, bad body, hostile XML."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind  # short, stable label used as a metric label value
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class CodecMisuseError(GatewayError):
    """The gateway's own code drove a sans-IO codec wrongly: bytes fed after the
    end of the stream, an event asked of a finished session, a frame built with
    out-of-range fields. A bug on this side, never the camera's doing (that is
    `CameraProtocolError`): the line h11 draws between LocalProtocolError and
    RemoteProtocolError. Where a value handed to an encoder came from the camera,
    the caller turns this into a `CameraProtocolError`."""


class BrokerError(GatewayError):
    """The MQTT broker refused us or went away."""


class ImageTransformError(GatewayError):
    """A scene could not be re-encoded (undecodable, too many pixels, not a JPEG);
    the gateway publishes the bytes as received."""


class StartupError(GatewayError):
    """The gateway cannot start: a busy port, an unusable outbox. The message says
    what and where, and what to do; the process exits 2 without touching data."""
