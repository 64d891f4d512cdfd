"""Brokers besides mosquitto for the contract tests, started and stopped like
`MosquittoProcess` (same attributes: host, port, url, start, stop, kill,
restart, close): a private NATS server with JetStream and its MQTT listener,
and a private RabbitMQ node with the `rabbitmq_mqtt` plugin.

Each instance has its own free loopback ports and its own store in a private
directory, so a test can stop it, kill it, empty it (`wipe`) and start it
again without touching the system's NATS or RabbitMQ or anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from gateway.broker import end_process, free_port


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
        if self.process is not None:
            end_process(self.process, sig, timeout)
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


def _takes_a_qos1_message(node: NatsProcess | RabbitMqProcess) -> bool:
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


RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def find_rabbitmq_server() -> Path | None:
    """The real start script, not /usr/sbin/rabbitmq-server: Debian's wrapper
    switches to the `rabbitmq` user (who could not read our private work dir)
    and sends the node's output to /var/log/rabbitmq, the system node's."""
    script = RABBITMQ_SCRIPTS / "rabbitmq-server"
    return script if os.access(script, os.X_OK) else None


def find_epmd() -> str | None:
    found = shutil.which("epmd")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(candidates[-1]) if candidates else None


def _app_dependencies(plugins: Path) -> dict[str, tuple[Path, list[str]]]:
    """Each application in RabbitMQ's plugins directory: its directory and the
    applications its .app file says it needs."""
    found: dict[str, tuple[Path, list[str]]] = {}
    for entry in plugins.iterdir():
        name = re.sub(r"-[0-9][0-9.]*$", "", entry.name)
        app_file = entry / "ebin" / f"{name}.app"
        if not app_file.is_file():
            continue
        text = app_file.read_text(encoding="utf-8", errors="replace")
        needs: list[str] = []
        for key in ("applications", "included_applications"):
            listed = re.search(r"\{\s*" + key + r"\s*,\s*\[([^\]]*)\]", text)
            if listed:
                needs += re.findall(r"[a-z][a-z0-9_]*", listed.group(1))
        found[name] = (entry, needs)
    return found


def plugins_for(plugins: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The directories of `wanted` and of everything they need, transitively
    (empty when the layout is not the one expected: then use all of them)."""
    apps = _app_dependencies(plugins)
    todo, chosen = list(wanted), set[str]()
    while todo:
        name = todo.pop()
        if name in apps and name not in chosen:
            chosen.add(name)
            todo += apps[name][1]
    if not all(name in chosen for name in wanted):
        return []
    return sorted(apps[name][0] for name in chosen)


class RabbitMqProcess:
    """One private RabbitMQ node with the `rabbitmq_mqtt` plugin, MQTT on `port`
    (same attributes as NatsProcess, plus `wipe`).

    Nothing is shared with a system RabbitMQ: its own node name, its own epmd
    (Erlang's port mapper) on a free port, its own cookie (HOME is in the work
    dir), config file, `enabled_plugins`, data and log directories; AMQP and
    Erlang distribution on free loopback ports, no management listener. The
    start script's environment is built from scratch, so nothing of the system
    node's (/etc/rabbitmq/rabbitmq-env.conf and its ERL_FLAGS, conf.d) is read.
    Starting takes 5-15 s: share one node (the `rabbitmq_node` fixture).
    """

    kind = "rabbitmq"

    def __init__(self, host: str = "127.0.0.1") -> None:
        script, epmd = find_rabbitmq_server(), find_epmd()
        if script is None or epmd is None:
            raise RuntimeError("rabbitmq-server is not installed: run the README's test command")
        self.script, self.epmd_binary = script, epmd
        self.host = host
        self.port = free_port(host)  # MQTT
        self.amqp_port = free_port(host)
        self.dist_port = free_port(host)
        self.epmd_port = free_port(host)
        self.nodename = f"lpr-test-{self.port}@localhost"
        self.workdir = Path(tempfile.mkdtemp(prefix="lpr-rabbitmq-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self._write_files()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """RABBITMQ_MNESIA_BASE: definitions, message stores, retained messages."""
        return self.workdir / "mnesia"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _write_files(self) -> None:
        home = self.workdir / "home"
        home.mkdir(mode=0o700)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20), encoding="ascii")
        cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        (self.workdir / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        # The MQTT plugin and nothing else: no management listener.
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        config = [
            f"listeners.tcp.default = {self.host}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            # 3.10's anonymous MQTT login: clients without credentials are
            # logged in as mqtt.default_user, and a fresh node creates
            # guest/guest (allowed from loopback only, which is where we are).
            "mqtt.allow_anonymous = true",
            "mqtt.default_user = guest",
            "mqtt.default_pass = guest",
            "mqtt.vhost = /",
            # Stated, not assumed: where wipe() finds the retained messages.
            "mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_dets",
            "log.console = false",
            "log.file.level = info",
        ]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(config) + "\n", encoding="utf-8")
        # Only the applications the node and the MQTT plugin need, linked into
        # a private plugins directory: at every boot RabbitMQ reads the config
        # schema and scans the modules of every application it can see, which
        # for all 70 of the Debian package costs ~4 s on this machine kind.
        plugins = self.script.resolve().parent.parent / "plugins"
        needed = plugins_for(plugins, ("rabbit", "rabbitmq_prelaunch", "rabbitmq_mqtt"))
        self.plugins_dir = plugins
        if needed:
            self.plugins_dir = self.workdir / "plugins"
            self.plugins_dir.mkdir()
            for app in needed:
                (self.plugins_dir / app.name).symlink_to(app)

    def _environment(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        return {
            **inherited,
            "HOME": str(self.workdir / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.workdir / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_DIR": str(self.plugins_dir),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            # Distribution on loopback only, and never a stray epmd daemon of
            # its own (ours is already there; a daemon would outlive the test).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
        }

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        if self.running:
            return
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                [self.epmd_binary, "-port", str(self.epmd_port), "-address", self.host],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        log = (self.workdir / "startup.log").open("ab")
        # A process group of its own: the script runs the Erlang VM as its
        # child, and a kill must reach both.
        self.process = subprocess.Popen(
            [str(self.script)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the MQTT listener takes a QoS 1 message (it opens before the
        node has finished booting); RuntimeError, the node killed, if not."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited at start:\n{self.log_tail()}")
            listening = False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                listening = True
            if listening and _takes_a_qos1_message(self):
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"RabbitMQ MQTT not ready on {self.port} in {timeout}s")

    def eval(self, expression: str, timeout: float = 60.0) -> str:
        """Evaluate an Erlang expression on the node (`rabbitmqctl eval`), e.g. to
        change a setting at runtime; its printed result."""
        result = subprocess.run(
            [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", self.nodename, "eval", expression],
            env=self._environment(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval failed: {result.stdout}{result.stderr}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in [self.workdir / "startup.log", *sorted(self.workdir.glob("log/*.log"))]:
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"== {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 30.0) -> None:
        """Orderly: SIGTERM to the script, which stops the node and waits for it."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 0.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        if sig == signal.SIGTERM:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            _wait_unreaped(process.pid, timeout)
        # The script is not reaped yet, so its process group id is still ours
        # alone: whatever is left in the group (the VM, on SIGKILL or after a
        # timeout) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Forget every message and retained value (the node must be stopped).

        Like NatsProcess.wipe, the node's definitions stay (its users, its
        vhost, the Raft group that tracks MQTT client ids): the next start is a
        restart, not a first boot that waits 3-6 s for cluster peers.
        """
        assert self.process is None, "stop the node first"
        for node_dir in self.data_dir.glob("*@*"):
            if not node_dir.is_dir():
                continue
            for store in node_dir.glob("mqtt_retained_*.dets"):
                store.unlink()
            shutil.rmtree(node_dir / "msg_stores", ignore_errors=True)

    def close(self) -> None:
        self.stop()
        if self.epmd is not None:
            self.epmd.terminate()
            try:
                self.epmd.wait(5)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait()
            self.epmd = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_unreaped(pid: int, timeout: float) -> None:
    """Wait (bounded) for child `pid` to exit without reaping it: until it is
    reaped its pid, and so its process group id, cannot be reused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


class RetainedJanitor:
    """Leaves a shared broker as it found it: what was retained during a test
    is cleared afterwards, and checked gone.

    For the session's one RabbitMQ node (a node per test would cost 10-15 s
    each): a later test must not pass on a retained value an earlier one left.
    Entering subscribes to `#` to learn every topic published while the test
    runs; `clear()` publishes an empty retained message to each (MQTT's way to
    delete one) and then asks for them again by exact name (RabbitMQ 3.x sends
    retained messages to exact subscriptions only).
    """

    def __init__(self, host: str, port: int) -> None:
        from tests.helpers import MqttCollector

        self.host, self.port = host, port
        self.watcher = MqttCollector(host, port, topics=("#",))

    def __enter__(self) -> RetainedJanitor:
        self.watcher.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.watcher.__exit__()

    def clear(self, also: tuple[str, ...] = ()) -> None:
        """Delete every retained message on the topics seen (and `also`);
        AssertionError if the broker still sends one back."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        topics = sorted({m.topic for m in self.watcher.messages} | set(also))
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"janitor-{self.port}")
        left: list[str] = []
        sentinel = f"lpr-test/janitor/{secrets.token_hex(4)}"
        done = threading.Event()

        def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            if message.topic == sentinel:
                done.set()
            elif message.retain and message.payload:
                left.append(message.topic)

        client.on_message = on_message
        client.connect(self.host, self.port, keepalive=10)
        client.loop_start()
        try:
            for topic in topics:
                client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
            subscribed = threading.Event()
            client.on_subscribe = lambda *_: subscribed.set()
            client.subscribe([(topic, 1) for topic in [*topics, sentinel]])
            if not subscribed.wait(10):
                raise AssertionError("janitor: no SUBACK")
            # A broker sends retained messages right after the SUBACK, before
            # anything published later: once the sentinel is back, whatever
            # was still retained has arrived.
            client.publish(sentinel, b"1", qos=1).wait_for_publish(10)
            if not done.wait(10):
                raise AssertionError("janitor: the sentinel did not come back")
        finally:
            client.disconnect()  # before loop_stop, which otherwise waits out a 1 s select
            client.loop_stop()
        assert not left, f"retained messages the janitor could not clear: {left}"
