"""lpr-gateway: licence-plate reads from LPR cameras (TCP, HTTP, RTSP/ONVIF) to MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lpr-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
