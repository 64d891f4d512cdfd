"""Brokers besides mosquitto for the contract tests: a private NATS server with
JetStream and its MQTT listener, started and stopped like `MosquittoProcess`
(same attributes: host, port, url, start, stop, kill, restart, close).

Each instance has its own free loopback ports and its own JetStream store in
a private directory, so a test can stop it, kill it, empty it (`wipe`) and
start it again without touching the system's NATS or anything else.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.broker import free_port


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


class NatsProcess:
    """One nats-server: JetStream on, MQTT on `port`, core NATS on another port."""

    kind = "nats"

    def __init__(self, host: str = "127.0.0.1", cluster: tuple[str, int, list[int]] | None = None):
        """`cluster`: (name, this node's route port, every node's route port)."""
        binary = find_nats_server()
        if binary is None:
            raise RuntimeError("nats-server is not installed: run the README's test command")
        self.binary = binary
        self.host = host
        self.port = free_port(host)  # MQTT
        self.nats_port = free_port(host)
        self.cluster = cluster
        self.workdir = Path(tempfile.mkdtemp(prefix="lpr-nats-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _write_config(self) -> Path:
        conf = self.workdir / "nats.conf"
        lines = [
            f'server_name: "lpr-test-{self.port}"',
            f"listen: {self.host}:{self.nats_port}",
            f'jetstream {{ store_dir: "{self.workdir / "store"}" }}',
        ]
        if self.cluster is None:
            lines.append(f"mqtt {{ listen: {self.host}:{self.port} }}")
        else:
            name, route_port, all_routes = self.cluster
            routes = ", ".join(f"nats-route://{self.host}:{p}" for p in all_routes)
            lines += [
                # Every MQTT stream (sessions, retained messages, QoS 1 messages)
                # on all three nodes: any two of them keep everything.
                f"mqtt {{ listen: {self.host}:{self.port}, stream_replicas: {len(all_routes)} }}",
                f"cluster {{ name: {name}, listen: {self.host}:{route_port}, routes: [{routes}] }}",
            ]
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def start(self, timeout: float = 15.0) -> None:
        self.spawn()
        self.wait_listening(timeout)

    def spawn(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = (self.workdir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self._write_config())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_listening(self, timeout: float = 15.0) -> None:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited at start:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"nats-server did not listen on {self.port} in {timeout}s")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "nats.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
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
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Forget every message and retained value (the server must be stopped)."""
        assert self.process is None, "stop the server first"
        shutil.rmtree(self.workdir / "store", ignore_errors=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class NatsCluster:
    """Three nats-server nodes routed into one JetStream cluster, each with its
    MQTT listener; MQTT streams replicated to all three (R3)."""

    def __init__(self, nodes: int = 3, host: str = "127.0.0.1") -> None:
        routes = [free_port(host) for _ in range(nodes)]
        name = f"lpr-{routes[0]}"
        self.nodes = [NatsProcess(host, (name, routes[i], routes)) for i in range(nodes)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        """All nodes up and the cluster able to take an MQTT QoS 1 message on each
        (JetStream elects its leaders and creates the MQTT streams first)."""
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not _takes_a_qos1_message(node):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS cluster not ready:\n{node.log_tail()}")
                time.sleep(0.5)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _takes_a_qos1_message(node: NatsProcess) -> bool:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ready-{node.port}")
    try:
        client.connect(node.host, node.port, keepalive=10)
        client.loop_start()
        info = client.publish("lpr-test/ready", b"1", qos=1)
        info.wait_for_publish(5)
        return info.is_published()
    except (OSError, RuntimeError, ValueError):
        return False
    finally:
        client.loop_stop()
        with contextlib.suppress(Exception):
            client.disconnect()
