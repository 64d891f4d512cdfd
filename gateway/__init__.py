"""lpr-gateway: licence-plate reads from LPR cameras (TCP, HTTP, RTSP/ONVIF) to MQTT."""

# The one place the version is written: pyproject.toml reads it from here
# (setuptools' dynamic version). Asking importlib.metadata at import instead
# loaded its modules and the email parser: 1.4 MB of every gateway's memory.
__version__ = "0.1.0"
