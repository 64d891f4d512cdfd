"""Home Assistant add-on: /data/options.json + the Mosquitto add-on's broker → gateway config.

    python options_to_config.py OPTIONS_JSON CONFIG_YAML

The broker comes from the environment that run.sh fills through bashio's services API
(LPR_MQTT_HOST, LPR_MQTT_PORT, LPR_MQTT_SSL; LPR_MQTT_USERNAME/PASSWORD stay in the
environment and are referenced as ${...} so that they are never written to disk).
Camera fields that do not apply to the camera's protocol are dropped with a warning
(the add-on UI shows every field for every camera). Exit 2 on unusable options,
among them an HTTP camera with neither a login nor allowed_sources: the add-on's port
8080 is reachable from the whole network, and a read posted there can open a gate.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

COMMON_KEYS = ("id", "name", "protocol", "timezone", "other_events")
PROTOCOL_KEYS = {
    "tcp": ("host", "port", "username", "password"),
    "http": ("path", "username", "password", "allowed_sources", "swap_direction"),
    "rtsp": ("url", "username", "password", "http_port"),
}
DATA_DIR = "/data"  # the add-on's persistent folder: the outbox lives there


class OptionsError(Exception):
    """Options the gateway could not use as they are."""


def _require_login(index: int, camera: dict[str, Any]) -> None:
    """Refuse a login without a password, and an HTTP camera anyone could post as."""
    where = f"cameras[{index}] ({camera.get('id')})"
    if camera.get("username") and not camera.get("password"):
        raise OptionsError(f"{where}: username is set but password is empty; set the password")
    if camera.get("protocol") == "http" and not (
        camera.get("username") or camera.get("allowed_sources")
    ):
        raise OptionsError(
            f"{where}: an HTTP camera needs username and password, or allowed_sources "
            "(its address), or anyone on your network could post plate reads to port 8080 "
            "that your automations act on"
        )


def build_config(options: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    host = environ.get("LPR_MQTT_HOST") or "core-mosquitto"
    port = environ.get("LPR_MQTT_PORT") or "1883"
    ssl = environ.get("LPR_MQTT_SSL", "false").lower() == "true"
    mqtt: dict[str, Any] = {
        "url": f"{'mqtts' if ssl else 'mqtt'}://{host}:{port}",
        "client_id": options.get("client_id") or "lpr-gateway-addon",
        "base_topic": options.get("base_topic") or "lpr",
    }
    if environ.get("LPR_MQTT_USERNAME"):
        mqtt["username"] = "${LPR_MQTT_USERNAME}"
        mqtt["password"] = "${LPR_MQTT_PASSWORD:-}"
    cameras = []
    for index, camera in enumerate(options.get("cameras") or []):
        protocol = camera.get("protocol")
        allowed = COMMON_KEYS + PROTOCOL_KEYS.get(str(protocol), ())
        entry: dict[str, Any] = {}
        for key, value in camera.items():
            if value is None or value == "" or value == []:
                continue
            if key not in allowed:
                print(
                    f"warning: cameras[{index}] ({camera.get('id')}): '{key}' does not apply "
                    f"to protocol {protocol}, ignored",
                    file=sys.stderr,
                )
                continue
            if isinstance(value, str) and "${" in value:
                # The gateway reads ${NAME} as an environment variable and has no escape.
                raise OptionsError(
                    f"cameras[{index}].{key} contains '${{', which the gateway would read as "
                    "an environment variable reference; choose a value without it"
                )
            entry[key] = value
        _require_login(index, entry)
        cameras.append(entry)
    return {
        "log_level": str(options.get("log_level") or "info").upper(),
        "mqtt": mqtt,
        "homeassistant": {
            "enabled": bool(options.get("discovery", True)),
            "discovery_prefix": options.get("discovery_prefix") or "homeassistant",
        },
        "http": {"listen": "0.0.0.0:8080"},
        "metrics": {"listen": "0.0.0.0:9108"},
        "outbox": {
            "path": f"{DATA_DIR}/outbox.sqlite3",
            "max_bytes": int(options.get("outbox_max_mb") or 1000) * 1_000_000,
        },
        "dedup": {"window_seconds": float(options.get("dedup_window_seconds", 10))},
        "cameras": cameras,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: options_to_config.py OPTIONS_JSON CONFIG_YAML", file=sys.stderr)
        return 2
    try:
        options = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read the add-on options {argv[0]}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(options, dict):
        print(f"{argv[0]}: expected a JSON object", file=sys.stderr)
        return 2
    try:
        config = build_config(options, dict(os.environ))
    except OptionsError as exc:
        print(f"add-on options: {exc}", file=sys.stderr)
        return 2
    text = "# Generated by the lpr-gateway add-on from its options; edits are overwritten.\n"
    text += yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    Path(argv[1]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
