"""A private mosquitto process: the embedded broker of the default setup.

When `mqtt.url` is absent the gateway starts mosquitto on 127.0.0.1 and
supervises it. mosquitto rather than a Python broker: a pure-Python broker was
measured 3-10x slower and delivered retained messages to non-matching
subscriptions. The same class starts the brokers of the test suite.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.errors import BrokerError

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the spawning thread dies (and so when
    our process dies, even by SIGKILL).

    Otherwise a killed gateway leaves its private broker running, holding the
    port (a fixed `embedded_port` would then fail at the next start).
    Linux only; elsewhere the broker is stopped on orderly exit as usual.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class MosquittoProcess:
    """Start, stop, kill and restart one mosquitto on a fixed 127.0.0.1 port."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        persistence: bool = False,
        workdir: Path | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        """`extra_config`: more mosquitto.conf lines for this listener (TLS, auth)."""
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError(
                "mosquitto is not installed; install it (apt-get install mosquitto) "
                "or set mqtt.url to an existing broker"
            )
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.persistence = persistence
        self.extra_config = extra_config
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lpr-mosquitto-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *(
                []
                if any(line.startswith("allow_anonymous") for line in self.extra_config)
                else ["allow_anonymous true"]
            ),
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            # Started as root, mosquitto would drop to the `mosquitto` user and
            # lose access to our private work dir: stay who we are.
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_inflight_messages 0",
            "max_queued_messages 10000",
            "max_queued_bytes 0",
            *self.extra_config,
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        """Spawn and wait until it listens (blocking)."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it. Call it from a thread that
        lives as long as the broker should: the child is told to stop when the
        thread that spawned it ends (PR_SET_PDEATHSIG), e.g. when we are killed."""
        if self.running:
            return
        conf = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the broker accepts connections; BrokerError if it does not."""
        process = self.process
        if process is None:
            raise BrokerError("mosquitto was not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise BrokerError(f"mosquitto exited at start: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Orderly stop (SIGTERM); mosquitto saves retained state if persistence is on."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is saved."""
        self._end(signal.SIGKILL, 5.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
