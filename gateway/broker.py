"""A private mosquitto process: the embedded broker of the default setup.

When `mqtt.url` is absent the gateway starts mosquitto on 127.0.0.1 and
supervises it. mosquitto rather than a Python broker: a pure-Python broker was
measured 3-10x slower and delivered retained messages to non-matching
subscriptions. The same class starts the brokers of the test suite.

With `anonymous=False` (the gateway's and the demo's broker) it accepts one
login, random per instance, from a password file in a 0700 directory: any
other local user can reach 127.0.0.1 but can neither read the plates nor
publish into the gateway's topics. The test suite's brokers stay anonymous.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import getpass
import hashlib
import logging
import os
import secrets
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


def end_process(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send `sig` unless it has ended, wait up to `timeout`, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """A password file entry's hash as mosquitto 2.0 writes it (`$7$`: PBKDF2-SHA512,
    101 iterations, 12-byte salt): no `mosquitto_passwd`, and no password on a
    command line where `ps` would show it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${iterations}${salt_b64}${digest_b64}"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # an existing file keeps its old mode otherwise
        file.write(text)


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
        anonymous: bool = True,
    ) -> None:
        """`extra_config`: more mosquitto.conf lines for this listener (TLS, auth).

        `anonymous=False`: a random login for this instance (`username`,
        `password`; kept across restart()), anonymous clients refused. Then
        `extra_config` must not set up authentication itself.
        """
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
        self.anonymous = anonymous
        self.username: str | None = None
        self.password: str | None = None
        if not anonymous:
            auth_keys = {"allow_anonymous", "password_file"}
            if any((line.split() or [""])[0] in auth_keys for line in extra_config):
                raise ValueError("anonymous=False sets up its own login: no auth in extra_config")
            self.username = f"lpr-gateway-{secrets.token_hex(4)}"
            self.password = secrets.token_urlsafe(24)
        self._own_workdir = workdir is None
        # mkdtemp: mode 0700, so the password file, the config and any
        # persistence database are ours alone.
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lpr-mosquitto-"))
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # never the password
        login = "anonymous" if self.anonymous else f"user {self.username}"
        return f"MosquittoProcess({self.url}, {login})"

    @property
    def url(self) -> str:
        """Where it listens; never the credentials (see `username`, `password`)."""
        return f"mqtt://{self.host}:{self.port}"

    def _auth_lines(self) -> list[str]:
        if self.username is None or self.password is None:
            if any(line.startswith("allow_anonymous") for line in self.extra_config):
                return []
            return ["allow_anonymous true"]
        passwd = self.workdir / "passwd"
        _write_private(passwd, f"{self.username}:{mosquitto_password_hash(self.password)}\n")
        return ["allow_anonymous false", f"password_file {passwd}"]

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *self._auth_lines(),
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
        _write_private(conf, "\n".join(lines) + "\n")
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
        end_process(self.process, sig, timeout)
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
