"""The command line as users run it: `lpr-gateway run` says what is risky at every start."""

from __future__ import annotations

from pathlib import Path

from gateway.broker import MosquittoProcess
from tests.helpers import GatewayProcess


def test_run_logs_every_config_warning_at_start(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """Warnings are not only for `check`: a risky setting left in place stays visible
    in the logs of every start (here an HTTP camera anyone may post as)."""
    config = {
        "mqtt": {"url": mqtt_broker.url},
        "cameras": [{"id": "open_cam", "protocol": "http", "path": "/lpr/open"}],
    }
    with GatewayProcess(config, tmp_path) as gateway:
        log = "\n".join(gateway.log_tail(200))
    assert "config: cameras[0]: HTTP camera 'open_cam' has no username/password" in log
    assert "open-file limit" in log
