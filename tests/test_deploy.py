"""Deployment artefacts in deploy/: each checked by the real tool where the machine has it,
and by running what it describes against a real gateway and a real mosquitto otherwise.

- compose: `docker compose config` (or docker-compose 1.x) validates the file; the
  gateway config it mounts parses with the .env example; the mosquitto.conf it mounts
  keeps retained messages across a restart of a real mosquitto; the gateway started the
  way the image starts it (env-only secrets) passes the image's HEALTHCHECK and exits 0
  on SIGTERM.
- Dockerfile: multi-stage, slim and supported Python, non-root, the outbox on a VOLUME,
  exec form; the build context its .dockerignore leaves (as docker-py reads it) builds
  the package.
- systemd: the unit runs the config it checks and leaves time to drain;
  `systemd-analyze verify` and the offline security score.
- Kubernetes: manifests parse, probes on /healthz, per-ordinal configs parse, disjoint
  cameras and distinct client ids, the ordinal selection of the container command.
- Home Assistant add-on: manifest and schema, run.sh with a stand-in bashio.
- Grafana: every metric a query names is one a running gateway exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
import yaml
from docker.utils.build import exclude_paths
from paho.mqtt.enums import CallbackAPIVersion

from gateway import __version__
from gateway.app import ADAPTER_STOP_SECONDS, SHUTDOWN_DRAIN_SECONDS, Gateway
from gateway.broker import MosquittoProcess, find_mosquitto
from gateway.cli import EXIT_CONFIG
from gateway.config import Config, HttpCameraConfig, load_config, parse_config
from tests.helpers import free_port, gateway_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


# -- small helpers -------------------------------------------------------------------


def env_example() -> dict[str, str]:
    """KEY=VALUE lines of deploy/.env.example (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def required_env_vars(text: str) -> set[str]:
    """`${VAR}` references without a default, outside comments."""
    names = set()
    for line in text.splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        names.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", code))
    return names


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def healthcheck_argv() -> list[str]:
    final = stages(dockerfile_instructions(DEPLOY / "Dockerfile"))[-1]
    (args,) = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)  # exec form: a JSON array, no shell in between
    assert isinstance(argv, list) and argv[0] == "python"
    return [sys.executable, *argv[1:]]


def run_healthcheck(url: str) -> int:
    env = {"PATH": os.environ["PATH"], "LPR_HEALTHZ_URL": url}
    return subprocess.run(healthcheck_argv(), env=env, capture_output=True, timeout=10).returncode


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class AuthSubscriber:
    """A paho subscriber with a broker login (the deploy broker refuses anonymous clients)."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connect_reason: Any = None
        self._cond = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"deploy-{uuid.uuid4().hex[:8]}"
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self.port = port

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self.connect_reason = reason
            self._cond.notify_all()
        if not reason.is_failure:
            client.subscribe("#", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def __enter__(self) -> AuthSubscriber:
        self._client.connect("127.0.0.1", self.port)
        self._client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self.connect_reason is not None, timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, topic: str, payload: bytes | None = None, timeout: float = 10.0) -> bool:
        """The retain flag of the first message on `topic` (with `payload`, if given)."""

        def found() -> tuple[str, bytes, bool] | None:
            for message in self.messages:
                if message[0] == topic and (payload is None or message[1] == payload):
                    return message
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout=timeout):
                raise AssertionError(f"nothing on {topic}; got {[m[0] for m in self.messages]}")
            message = found()
            assert message is not None
            return message[2]


def publish_retained(port: int, username: str, password: str, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="deploy-pub")
    client.username_pw_set(username, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def deploy_broker(workdir: Path, username: str, password: str) -> Iterator[MosquittoProcess]:
    """mosquitto with deploy/mosquitto/mosquitto.conf, on a free loopback port.

    Only the machine-specific lines are rewritten: the listener (1883 is taken on a
    developer machine), the password file and persistence locations (the container's
    /mosquitto/data). Persistence stays OFF in what the test class writes itself, so a
    retained message survives a restart only if the deploy conf turns it on.
    """
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto is not installed: run the README's test command, which installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(password_file), username, password],
        check=True,
        capture_output=True,
    )
    password_file.chmod(0o600)
    lines = []
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.split()[0]
        if key in ("listener", "persistence_location", "log_dest"):
            continue  # the test class writes its own
        if key == "password_file":
            stripped = f"password_file {password_file}"
        lines.append(stripped)
    broker = MosquittoProcess(persistence=False, workdir=workdir, extra_config=tuple(lines))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


# -- docker compose ---------------------------------------------------------------------


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def run_compose(
    args: list[str], env_file: Path, home: Path, file: Path = DEPLOY / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor docker-compose 1.x is installed")
    # A clean environment: values must come from the env file, as on a fresh host.
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(
        [*command, "-f", str(file), "--env-file", str(env_file), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_config_validates(tmp_path: Path) -> None:
    # `config` parses, interpolates and validates against the compose schema without
    # talking to a Docker engine (there is none on this machine).
    result = run_compose(["config"], DEPLOY / ".env.example", tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert {"gateway", "mosquitto"} <= set(rendered["services"])
    # Monitoring is opt-in (compose v2 leaves inactive profiles out, 1.x marks them).
    for name, service in rendered["services"].items():
        if name not in ("gateway", "mosquitto"):
            assert service["profiles"] == ["monitoring"], name
    gateway = rendered["services"]["gateway"]
    assert gateway["environment"]["MQTT_PASSWORD"] == env_example()["MQTT_PASSWORD"]
    published = {(str(p["target"]), str(p["published"])) for p in gateway["ports"]}
    assert ("8080", "8080") in published and ("9108", "9108") in published

    monitoring = run_compose(
        ["--profile", "monitoring", "config", "--services"], DEPLOY / ".env.example", tmp_path
    )
    assert monitoring.returncode == 0, monitoring.stderr
    assert set(monitoring.stdout.split()) == {"gateway", "mosquitto", "prometheus", "grafana"}


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("# no secrets\n")
    result = run_compose(["config"], empty, tmp_path)
    assert result.returncode != 0
    assert "MQTT_PASSWORD" in result.stderr


def test_compose_file_wiring() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    gateway, broker = services["gateway"], services["mosquitto"]
    # The image is built from the repository root with deploy/Dockerfile.
    context = (DEPLOY / gateway["build"]["context"]).resolve()
    assert context == ROOT and (context / gateway["build"]["dockerfile"]).is_file()
    # Every bind-mounted host path exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    # Outbox on a named volume at the image's VOLUME; config mounted where CMD reads it.
    final = stages(dockerfile_instructions(DEPLOY / "Dockerfile"))[-1]
    volume_args = [rest for keyword, rest in final if keyword == "VOLUME"]
    assert json.loads(volume_args[0]) == ["/data"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}
    assert mounts["/data"] in compose["volumes"]
    assert mounts["/etc/lpr-gateway/config.yaml"] == "./config.yaml"
    assert any(v.endswith(":/mosquitto/data") for v in broker["volumes"])
    # Monitoring only with --profile monitoring.
    for name, service in services.items():
        expected = ["monitoring"] if name in ("prometheus", "grafana") else None
        assert service.get("profiles") == expected, name
    # Every variable compose insists on (${VAR:?...}) is in the .env example, and every
    # ${VAR} the gateway config needs is passed to the gateway container.
    text = (DEPLOY / "docker-compose.yml").read_text()
    insisted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert insisted and insisted <= set(env_example())
    needed = required_env_vars((DEPLOY / "config.yaml").read_text())
    assert needed <= set(gateway["environment"]), needed - set(gateway["environment"])


def test_compose_gateway_config_parses_with_env_example() -> None:
    environ = {**env_example(), "MQTT_URL": "mqtt://mosquitto:1883"}
    config = parse_config((DEPLOY / "config.yaml").read_text(), environ, "deploy/config.yaml")
    assert config.mqtt.url == "mqtt://mosquitto:1883"
    assert config.mqtt.password == environ["MQTT_PASSWORD"]
    assert str(config.outbox.path).startswith("/data/")
    assert config.http.listen.endswith(":8080") and config.metrics.port == 9108
    camera = config.cameras[0]
    assert isinstance(camera, HttpCameraConfig)
    assert camera.password == environ["CAMERA_HTTP_PASSWORD"]
    # A missing secret is an error naming the variable, not an empty password.
    without = {k: v for k, v in environ.items() if k != "MQTT_PASSWORD"}
    with pytest.raises(Exception, match="MQTT_PASSWORD"):
        parse_config((DEPLOY / "config.yaml").read_text(), without)


def test_mosquitto_conf_requires_login_and_keeps_retained_across_restart(tmp_path: Path) -> None:
    user, password = "lpr-gateway", "s3cret"
    with deploy_broker(tmp_path / "broker", user, password) as broker:
        with AuthSubscriber(broker.port, None, None) as anonymous:
            assert anonymous.connect_reason.is_failure  # allow_anonymous false
        publish_retained(broker.port, user, password, "lpr/gate/last", b'{"plate":"B123"}')
        broker.stop()  # orderly: mosquitto writes its persistence file
        assert (tmp_path / "broker" / "mosquitto.db").is_file()
        broker.start()
        with AuthSubscriber(broker.port, user, password) as late:
            assert late.wait_for("lpr/gate/last", b'{"plate":"B123"}') is True


def test_gateway_as_the_image_runs_it(tmp_path: Path) -> None:
    """deploy/config.yaml + .env.example secrets + the deploy broker, like `compose up`:
    the image's HEALTHCHECK turns healthy, SIGTERM ends the process with 0 and `offline`."""
    env = env_example()
    user, password = env["MQTT_USERNAME"], env["MQTT_PASSWORD"]
    with deploy_broker(tmp_path / "broker", user, password) as broker:
        http_port, metrics_port = free_port(), free_port()
        text = (DEPLOY / "config.yaml").read_text()
        for old, new in (
            ('"0.0.0.0:8080"', f'"127.0.0.1:{http_port}"'),
            ('"0.0.0.0:9108"', f'"127.0.0.1:{metrics_port}"'),
            ("/data/outbox.sqlite3", str(tmp_path / "data" / "outbox.sqlite3")),
        ):
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        config_file = tmp_path / "config.yaml"
        config_file.write_text(text)
        process_env = {
            "PATH": os.environ["PATH"],
            **env,
            "MQTT_URL": broker.url,  # compose sets mqtt://mosquitto:1883
        }
        healthz = f"http://127.0.0.1:{metrics_port}/healthz"
        with AuthSubscriber(broker.port, user, password) as sub:
            process = subprocess.Popen(
                [str(VENV_BIN / "lpr-gateway"), "run", "-c", str(config_file)],
                env=process_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                wait_until(lambda: run_healthcheck(healthz) == 0, 15, "HEALTHCHECK to pass")
                sub.wait_for("lpr/bridge/state", b"online")
                # The README's try-it command: a simulated HTTP camera with the .env
                # example's camera password; its read reaches the authenticated broker.
                simulate = subprocess.run(
                    [
                        str(VENV_BIN / "lpr-gateway"),
                        *("simulate", "http", "--count", "1"),
                        *("--url", f"http://127.0.0.1:{http_port}/lpr/gate_out"),
                        *("--user", "camera", "--password", env["CAMERA_HTTP_PASSWORD"]),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert simulate.returncode == 0, simulate.stdout + simulate.stderr
                sub.wait_for("lpr/gate_out/event")
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                # The wait bounds a hung gateway; how fast it stops is this
                # machine's speed, printed, not asserted.
                assert process.wait(timeout=15) == 0
                print(f"stopped {time.monotonic() - started:.2f} s after SIGTERM")
                sub.wait_for("lpr/bridge/state", b"offline")
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                assert process.stderr is not None
                log = process.stderr.read().decode(errors="replace")
                process.stderr.close()
            assert password not in log  # secrets are never logged
            assert run_healthcheck(healthz) != 0  # nothing listens any more


async def test_healthcheck_fails_while_broker_is_down(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path)
    async with Gateway(config) as gw:
        url = f"http://127.0.0.1:{gw.metrics_port}/healthz"
        for _ in range(200):
            if await asyncio.to_thread(run_healthcheck, url) == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("healthy gateway: HEALTHCHECK never passed")
        await asyncio.to_thread(mqtt_broker.stop)
        for _ in range(200):
            if await asyncio.to_thread(run_healthcheck, url) != 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("broker down (/healthz 503): HEALTHCHECK kept passing")


# -- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_multistage_slim_nonroot_exec_form() -> None:
    """Properties the image must have, whatever the Dockerfile's wording."""
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for k, rest in instructions if k == "ARG"}
    *builders, final = stages(instructions)
    assert builders, "multi-stage: the build happens in a stage the image does not keep"
    # The final image is a slim Python the project supports.
    base = final[0][1].split()[0]
    for name, value in args.items():
        base = base.replace(f"${{{name}}}", value)
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(?:-\w+)?", base)
    assert match is not None, base
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"])
    assert required is not None
    assert (int(match[1]), int(match[2])) >= (int(required[1]), int(required[2]))
    keywords = [k for k, _ in final]
    # Non-root: a numeric uid that is not 0, set after the root-only steps.
    (user,) = [rest for k, rest in final if k == "USER"]
    uid = user.split(":")[0]
    for name, value in args.items():
        uid = uid.replace(f"${{{name}}}", value)
    assert uid.isdigit() and int(uid) != 0
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    # Exec form for both, so the gateway is PID 1 and gets SIGTERM, and the
    # command is the gateway's `run`.
    entrypoint, command = (
        json.loads(next(r for k, r in final if k == keyword)) for keyword in ("ENTRYPOINT", "CMD")
    )
    assert isinstance(entrypoint, list) and isinstance(command, list)
    assert [*entrypoint, *command][:2] == ["lpr-gateway", "run"]
    # No build tools and no package installs in the final stage; the venv comes built.
    final_runs = " ".join(rest for k, rest in final if k == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip ", "pip3 "):
        assert tool not in final_runs, tool
    assert any(k == "COPY" and rest.startswith("--from=") for k, rest in final)
    # The outbox directory of the shipped config is a volume, so it outlives the container.
    shipped = parse_config((DEPLOY / "config.yaml").read_text(), env_example())
    volumes = [v for k, rest in final if k == "VOLUME" for v in json.loads(rest)]
    assert any(shipped.outbox.path.is_relative_to(v) for v in volumes), volumes
    # HEALTHCHECK and the metrics port agree with the shipped config.
    healthcheck_argv()
    env_line = next(rest for k, rest in final if k == "ENV" and "LPR_HEALTHZ_URL" in rest)
    match = re.search(r"LPR_HEALTHZ_URL=http://127\.0\.0\.1:(\d+)/healthz", env_line)
    assert match is not None
    assert int(match[1]) == shipped.metrics.port


def docker_context(tmp_path: Path) -> Path:
    """What BuildKit sends for `docker build -f deploy/Dockerfile .`, chosen by docker-py's
    implementation of .dockerignore (no daemon needed)."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.strip().startswith("#")]
    context = tmp_path / "context"
    for relative in exclude_paths(str(ROOT), patterns, dockerfile="deploy/Dockerfile"):
        path = ROOT / relative
        if path.is_file() and not relative.startswith(".git/"):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return context


def test_docker_context_is_small_and_builds_the_package(tmp_path: Path) -> None:
    context = docker_context(tmp_path)
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    assert not any(f.startswith((".venv/", "tests/", "bench/", ".git/")) for f in files)
    assert not any("__pycache__" in f for f in files)
    # Every COPY source of the Dockerfile is in the context.
    for keyword, rest in dockerfile_instructions(DEPLOY / "Dockerfile"):
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (context / source).exists(), f"COPY {source}: not in the build context"
    assert "gateway/simulate/assets" in {str(Path(f).parent) for f in files}
    # What the builder stage runs (`pip wheel .`) works on exactly this context.
    result = subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "w").iterdir()] == [
        f"lpr_gateway-{__version__}-py3-none-any.whl"
    ]


# -- systemd ----------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "lpr-gateway.service").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_systemd_unit_runs_the_checked_config_and_leaves_time_to_drain() -> None:
    """What the unit must do for this gateway; its hardening is scored by systemd below."""
    unit = unit_directives()
    (check,) = unit["ExecStartPre"]
    (run,) = unit["ExecStart"]
    binary, command, flag, config = run.split()
    assert (command, flag) == ("run", "-c")
    assert check.split() == [binary, "check", "-c", config]  # the same file, checked first
    (config_dir,) = unit["ConfigurationDirectory"]
    assert Path(config).parent == Path("/etc") / config_dir
    # The outbox lives in the state directory the unit gives its dynamic user.
    (state_dir,) = unit["StateDirectory"]
    assert unit["WorkingDirectory"] == [f"/var/lib/{state_dir}"]
    # A bad config exits with the CLI's config status: restarting will not fix it.
    assert str(EXIT_CONFIG) in unit["RestartPreventExitStatus"][0].split()
    assert unit["KillSignal"] == ["SIGTERM"]
    stop_budget = ADAPTER_STOP_SECONDS + SHUTDOWN_DRAIN_SECONDS
    assert float(unit["TimeoutStopSec"][0]) > 2 * stop_budget


def _verifiable_unit(tmp_path: Path) -> Path:
    # systemd-analyze verify checks that ExecStart's binary exists and is executable;
    # /opt/lpr-gateway/venv is not installed here, so verify a copy whose binary path
    # points at a stand-in executable. Everything else in the unit is verified as is.
    fake = tmp_path / "lpr-gateway"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    lines = (DEPLOY / "systemd" / "lpr-gateway.service").read_text().splitlines()
    binary = "/opt/lpr-gateway/venv/bin/lpr-gateway"
    exec_lines = [n for n, line in enumerate(lines) if line.startswith("Exec") and binary in line]
    assert len(exec_lines) == 2  # ExecStartPre (config check) and ExecStart
    for n in exec_lines:
        lines[n] = lines[n].replace(binary, str(fake))
    unit = tmp_path / "lpr-gateway.service"
    unit.write_text("\n".join(lines) + "\n")
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _verifiable_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown keys or bad values ("..., ignoring"): any line about
    # our unit is a failure.
    complaints = [line for line in result.stderr.splitlines() if "lpr-gateway" in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_systemd_security_exposure(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _verifiable_unit(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    if result.returncode != 0 and match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {result.stderr.strip()}")
    assert match is not None, result.stdout
    # 0 = fully locked down, 10 = unprotected; systemd calls < 2 "OK" (measured: 1.4).
    assert float(match[1]) < 2.0, result.stdout


# -- Kubernetes -------------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml_docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_kubernetes_manifests_parse_and_probe_healthz() -> None:
    objects = k8s_objects()
    kinds = {kind for kind, _ in objects}
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "ServiceMonitor"} <= kinds
    sts = objects[("StatefulSet", "lpr-gateway")]
    pod = sts["spec"]["template"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-push": 8080, "metrics": 9108}
    for probe in ("livenessProbe", "readinessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == "/healthz", probe
        assert ports.get(http_get["port"], http_get["port"]) == 9108, probe
    # The outbox on a per-pod claim, mounted where the configs put it.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Services select the pods; the ServiceMonitor selects a Service with a `metrics` port.
    pod_labels = pod["metadata"]["labels"]
    services = {name: doc for (kind, name), doc in objects.items() if kind == "Service"}
    assert sts["spec"]["serviceName"] in services
    for name, service in services.items():
        selector = dict(service["spec"]["selector"])
        selector.pop("statefulset.kubernetes.io/pod-name", None)
        assert selector.items() <= pod_labels.items(), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, name
    monitor = objects[("ServiceMonitor", "lpr-gateway")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    watched = [
        s
        for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert watched
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in watched)


def k8s_instance_configs() -> list[Config]:
    objects = k8s_objects()
    sts = objects[("StatefulSet", "lpr-gateway")]
    data = objects[("ConfigMap", "lpr-gateway-config")]["data"]
    secret = objects[("Secret", "lpr-gateway-secrets")]["stringData"]
    replicas = sts["spec"]["replicas"]
    assert sorted(data) == [f"config-{i}.yaml" for i in range(replicas)]
    configs = []
    for ordinal in range(replicas):
        text = data[f"config-{ordinal}.yaml"]
        # Everything a config needs comes from the Secret or the downward API.
        assert required_env_vars(text) <= set(secret) | {"POD_NAME"}
        environ = {**secret, "POD_NAME": f"lpr-gateway-{ordinal}"}
        configs.append(parse_config(text, environ, f"config-{ordinal}.yaml"))
    return configs


def test_kubernetes_instances_share_nothing_but_the_broker() -> None:
    configs = k8s_instance_configs()
    assert len(configs) >= 2
    assert len({c.mqtt.url for c in configs}) == 1  # one (clustered) broker
    assert len({c.mqtt.client_id for c in configs}) == len(configs)  # distinct sessions
    camera_ids = [camera.id for c in configs for camera in c.cameras]
    assert len(camera_ids) == len(set(camera_ids))  # no camera read twice
    for config in configs:
        assert str(config.outbox.path).startswith("/data/")  # the pod's own claim
        assert config.metrics.port == 9108 and config.http.listen.endswith(":8080")
    # HTTP cameras of instance i post to the push Service of pod lpr-gateway-i.
    services = {name: doc for (kind, name), doc in k8s_objects().items() if kind == "Service"}
    for ordinal, config in enumerate(configs):
        if any(isinstance(camera, HttpCameraConfig) for camera in config.cameras):
            push = services[f"lpr-gateway-{ordinal}-push"]
            selector = push["spec"]["selector"]
            assert selector["statefulset.kubernetes.io/pod-name"] == f"lpr-gateway-{ordinal}"
            assert push["spec"]["publishNotReadyAddresses"] is True


def test_kubernetes_pod_picks_its_config_by_ordinal(tmp_path: Path) -> None:
    (container,) = k8s_objects()[("StatefulSet", "lpr-gateway")]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "lpr-gateway"
    stand_in.write_text('#!/bin/sh\necho "pid=$$ $*"\n')
    stand_in.chmod(0o755)
    for hostname, ordinal in (("lpr-gateway-0", 0), ("lpr-gateway-1", 1), ("lpr-gateway-12", 12)):
        result = subprocess.run(
            ["/bin/sh", "-c", f"echo shell=$$; {script}"],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": hostname},
            capture_output=True,
            text=True,
            timeout=10,
        )
        shell_line, gateway_line = result.stdout.splitlines()
        assert gateway_line.split(" ", 1)[1] == f"run -c /etc/lpr-gateway/config-{ordinal}.yaml"
        # exec: the gateway replaces the shell (same pid), so it receives SIGTERM itself.
        assert shell_line.split("=")[1] == gateway_line.split()[0].split("=")[1]


def test_kustomize_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "kubernetes")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "ServiceMonitor"}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "lpr", doc["metadata"]["name"]


# -- Home Assistant add-on --------------------------------------------------------------

ADDON = DEPLOY / "homeassistant-addon"


def _schema_accepts(schema: str, value: Any) -> bool:
    """The add-on schema types this add-on uses, as the Supervisor reads them."""
    kind = schema.rstrip("?")
    if kind in ("str", "password"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "port":
        return isinstance(value, int) and 1 <= value <= 65535
    match = re.fullmatch(r"(int|float)\((-?[\d.]*),(-?[\d.]*)\)", kind)
    if match:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if match[1] == "int" and not isinstance(value, int):
            return False
        low, high = match[2], match[3]
        return (not low or value >= float(low)) and (not high or value <= float(high))
    match = re.fullmatch(r"list\((.*)\)", kind)
    if match:
        return value in match[1].split("|")
    match = re.fullmatch(r"match\((.*)\)", kind)
    if match:
        return isinstance(value, str) and re.fullmatch(match[1], value) is not None
    raise AssertionError(f"schema type {schema!r} not known to this test")


def _check_against_schema(options: Any, schema: Any, path: str) -> None:
    if isinstance(schema, dict):
        assert isinstance(options, dict), path
        for key in options:
            assert key in schema, f"{path}.{key}: option without a schema entry"
        for key, sub in schema.items():
            optional = isinstance(sub, str) and sub.endswith("?")
            if key not in options:
                assert optional or isinstance(sub, list), f"{path}.{key}: required, no default"
                continue
            _check_against_schema(options[key], sub, f"{path}.{key}")
    elif isinstance(schema, list):
        assert isinstance(options, list), path
        for index, item in enumerate(options):
            _check_against_schema(item, schema[0], f"{path}[{index}]")
    else:
        assert _schema_accepts(schema, options), f"{path}: {options!r} does not fit {schema!r}"


def test_addon_manifest_and_schema() -> None:
    manifest = yaml.safe_load((ADDON / "config.yaml").read_text())
    for key in ("name", "version", "slug", "description", "arch", "options", "schema"):
        assert key in manifest, key
    assert manifest["version"] == __version__
    assert re.fullmatch(r"[a-z0-9_]+", manifest["slug"])
    assert "mqtt:need" in manifest["services"]
    assert "8080/tcp" in manifest["ports"]
    _check_against_schema(manifest["options"], manifest["schema"], "options")
    # The schema's camera fields are the gateway's camera keys.
    camera_schema = manifest["schema"]["cameras"][0]
    build = yaml.safe_load((ADDON / "build.yaml").read_text())
    assert set(build["build_from"]) == set(manifest["arch"])
    instructions = dockerfile_instructions(ADDON / "Dockerfile")
    assert instructions[0] == ("ARG", "BUILD_FROM")
    assert instructions[1] == ("FROM", "${BUILD_FROM}")
    assert json.loads(next(r for k, r in instructions if k == "CMD")) == ["/run.sh"]
    assert {"id", "protocol", "host", "port", "url", "path", "password"} <= set(camera_schema)


def run_addon(
    tmp_path: Path, options: dict[str, Any], mqtt_host: str | None = "core-mosquitto"
) -> subprocess.CompletedProcess[str]:
    """run.sh under a stand-in bashio; `lpr-gateway run` stands in as `lpr-gateway check`."""
    stub = tmp_path / "bashio.sh"
    stub.write_text(
        'bashio::services.available() { [ -n "${STUB_MQTT_HOST:-}" ]; }\n'
        'bashio::services() { case "$2" in host) echo "$STUB_MQTT_HOST";; '
        "port) echo 1884;; ssl) echo false;; username) echo addons;; "
        "password) echo 'pw-from-supervisor';; esac; }\n"
        'bashio::log.info() { echo "INFO: $*" >&2; }\n'
        'bashio::exit.nok() { echo "FATAL: $*" >&2; exit 1; }\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "lpr-gateway"
    stand_in.write_text(
        f'#!/bin/sh\n[ "$1" = run ] || exit 9\nshift\nexec {VENV_BIN / "lpr-gateway"} check "$@"\n'
    )
    stand_in.chmod(0o755)
    (tmp_path / "options.json").write_text(json.dumps(options))
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "LPR_ADDON_OPTIONS": str(tmp_path / "options.json"),
        "LPR_ADDON_CONFIG": str(tmp_path / "gateway.yaml"),
        "LPR_ADDON_HELPER": str(ADDON / "options_to_config.py"),
        "LPR_ADDON_PYTHON": sys.executable,
    }
    if mqtt_host:
        env["STUB_MQTT_HOST"] = mqtt_host
    return subprocess.run(
        ["bash", "-c", f'source "{stub}"; source "{ADDON / "run.sh"}"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_addon_run_script_with_default_options(tmp_path: Path) -> None:
    options = yaml.safe_load((ADDON / "config.yaml").read_text())["options"]
    # The default HTTP camera has a user name but no password: port 8080 is open to
    # the LAN, so the add-on refuses to start until the password is set.
    result = run_addon(tmp_path, options)
    assert result.returncode != 0
    assert "cameras[0] (gate): username is set but password is empty" in result.stderr
    assert not (tmp_path / "gateway.yaml").exists()
    options["cameras"][0]["password"] = "camera-pw"
    result = run_addon(tmp_path, options)
    assert result.returncode == 0, result.stderr
    assert "OK (1 cameras)" in result.stdout  # `lpr-gateway check` accepted the config
    text = (tmp_path / "gateway.yaml").read_text()
    generated = yaml.safe_load(text)
    assert generated["mqtt"]["url"] == "mqtt://core-mosquitto:1884"
    assert generated["homeassistant"] == {"enabled": True, "discovery_prefix": "homeassistant"}
    assert generated["outbox"]["path"] == "/data/outbox.sqlite3"
    assert "pw-from-supervisor" not in text  # the broker password stays in the environment
    assert (tmp_path / "gateway.yaml").stat().st_mode & 0o077 == 0


def test_addon_maps_every_protocol(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "log_level": "debug",
        "base_topic": "plates",
        "client_id": "ha-lpr",
        "discovery": False,
        "discovery_prefix": "homeassistant",
        "dedup_window_seconds": 0,
        "outbox_max_mb": 50,
        "cameras": [
            {"id": "gate_in", "protocol": "tcp", "host": "192.0.2.10", "port": 5000,
             "username": "admin", "password": "a${b}c", "path": "/ignored"},
            {"id": "gate_out", "protocol": "http", "path": "/lpr/gate_out", "swap_direction": True,
             "timezone": "Europe/Berlin", "allowed_sources": ["192.0.2.11", "198.51.100.0/24"]},
            {"id": "lobby", "protocol": "rtsp", "url": "rtsp://192.0.2.12:554/main",
             "http_port": 8081, "username": "", "other_events": "skip"},
        ],
    }  # fmt: skip
    _check_against_schema(
        options, yaml.safe_load((ADDON / "config.yaml").read_text())["schema"], "options"
    )
    result = run_addon(tmp_path, options)
    # "${b}" in a password: the gateway would read it as a variable, with no escape.
    assert result.returncode != 0
    assert "cameras[0].password contains '${'" in result.stderr
    assert not (tmp_path / "gateway.yaml").exists()
    options["cameras"][0]["password"] = "plain"
    result = run_addon(tmp_path, options)
    assert result.returncode == 0, result.stderr
    assert "'path' does not apply to protocol tcp" in result.stderr
    generated = yaml.safe_load((tmp_path / "gateway.yaml").read_text())
    config = parse_config(
        (tmp_path / "gateway.yaml").read_text(),
        {"LPR_MQTT_USERNAME": "addons", "LPR_MQTT_PASSWORD": "x"},
    )
    assert [c.protocol.value for c in config.cameras] == ["tcp", "http", "rtsp"]
    assert config.mqtt.client_id == "ha-lpr" and config.mqtt.base_topic == "plates"
    assert config.log_level == "DEBUG" and config.outbox.max_bytes == 50_000_000
    assert "path" not in generated["cameras"][0]
    assert "username" not in generated["cameras"][2]  # empty fields are left to defaults
    http_camera = config.cameras[1]
    assert isinstance(http_camera, HttpCameraConfig)
    assert http_camera.allowed_sources == ("192.0.2.11/32", "198.51.100.0/24")


@pytest.mark.parametrize(
    ("camera", "expected"),
    [
        (
            {"id": "gate", "protocol": "http", "path": "/lpr/gate", "allowed_sources": []},
            "cameras[0] (gate): an HTTP camera needs username and password, or allowed_sources",
        ),
        (
            {"id": "gate", "protocol": "http", "password": "pw"},
            "cameras[0] (gate): an HTTP camera needs username and password, or allowed_sources",
        ),
        (
            {"id": "gate", "protocol": "tcp", "host": "192.0.2.10", "username": "admin",
             "password": ""},
            "cameras[0] (gate): username is set but password is empty",
        ),
    ],
)  # fmt: skip
def test_addon_refuses_a_camera_anyone_could_post_as(
    tmp_path: Path, camera: dict[str, Any], expected: str
) -> None:
    options = yaml.safe_load((ADDON / "config.yaml").read_text())["options"]
    options["cameras"] = [camera]
    result = run_addon(tmp_path, options)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not (tmp_path / "gateway.yaml").exists()


def test_addon_generated_config_refuses_an_empty_broker_password() -> None:
    """The Supervisor's broker password arrives as ${LPR_MQTT_PASSWORD}: empty is refused."""
    import importlib.util

    from gateway.errors import ConfigError

    spec = importlib.util.spec_from_file_location("addon_options", ADDON / "options_to_config.py")
    assert spec is not None and spec.loader is not None
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    build_config = helper.build_config
    options = {"cameras": [{"id": "gate", "protocol": "http", "allowed_sources": ["192.0.2.1"]}]}
    text = yaml.safe_dump(build_config(options, {"LPR_MQTT_USERNAME": "addons"}))
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {"LPR_MQTT_USERNAME": "addons"})
    assert caught.value.problems == [
        "mqtt.password: empty while username is set (is LPR_MQTT_PASSWORD set?)"
    ]


def test_addon_refuses_to_start_without_broker(tmp_path: Path) -> None:
    options = yaml.safe_load((ADDON / "config.yaml").read_text())["options"]
    result = run_addon(tmp_path, options, mqtt_host=None)
    assert result.returncode != 0
    assert "Mosquitto" in result.stderr
    assert not (tmp_path / "gateway.yaml").exists()


# -- Grafana and Prometheus -------------------------------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside {...} or by/without (...)), ranges, strings or Grafana variables."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match[0].lower() in PROMQL_WORDS:
            continue
        names.add(match[0])
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "lpr-gateway.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable["type"] == "query" and isinstance(query, str):
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            queries.append(inner[1] if inner else query)
    return queries


def exported_sample_names(exposition: str) -> set[str]:
    """Every sample name a family exports, from its `# TYPE` line, whether or not a
    labelled child exists yet (parse errors, HTTP statuses… appear only when they happen)."""
    names = set()
    for line in exposition.splitlines():
        match = re.fullmatch(r"# TYPE (\S+) (\w+)", line)
        if not match:
            continue
        name, kind = match[1], match[2]
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {name, f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)  # counters already carry _total on their TYPE line
    return names


def test_promql_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(lpr_publish_latency_seconds_bucket"
        '{instance=~"$instance"}[$__rate_interval]))) / sum(up{job="x"}) or vector(0)'
    )
    assert promql_metric_names(expr) == {"lpr_publish_latency_seconds_bucket", "up"}


async def test_grafana_dashboard_names_only_exported_metrics(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    queries = dashboard_queries()
    assert queries
    used = set().union(*(promql_metric_names(q) for q in queries))
    config = gateway_config(mqtt_broker.url, tmp_path, cameras=[{"id": "gate", "protocol": "http"}])
    async with Gateway(config) as gw:
        url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            exposition = await response.text()
    exported = exported_sample_names(exposition)
    assert "lpr_events_received_total" in exported and "lpr_events_received" not in exported
    unknown = used - exported
    assert not unknown, f"dashboard queries metrics the gateway does not export: {unknown}"
    # What the dashboard must show.
    for needed in (
        "lpr_events_received_total",
        "lpr_parse_errors_total",
        "lpr_outbox_events",
        "lpr_outbox_bytes",
        "lpr_mqtt_connected",
        "lpr_publish_latency_seconds_bucket",
        "lpr_camera_connected",
        "lpr_camera_reconnects_total",
        "lpr_http_requests_total",
    ):
        assert needed in used, needed
    for query in queries:
        if "histogram_quantile" in query:
            assert "_bucket" in query and re.search(r"by \([^)]*\ble\b", query), query


def test_prometheus_and_grafana_provisioning_point_at_the_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    shipped = parse_config((DEPLOY / "config.yaml").read_text(), env_example())
    assert int(port) == shipped.metrics.port and job["metrics_path"] == "/metrics"
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "lpr-gateway.yml").read_text()
    )
    mounted = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    dashboard_dir = providers["providers"][0]["options"]["path"]
    assert f"{dashboard_dir}/lpr-gateway.json" in mounted
    dashboard = json.loads((DEPLOY / "grafana" / "lpr-gateway.json").read_text())
    assert dashboard["uid"] == "lpr-gateway" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -- the 3-node NATS cluster (deploy/nats-cluster) ------------------------------------

NATS_CLUSTER = DEPLOY / "nats-cluster"


def nats_env() -> dict[str, str]:
    lines = (NATS_CLUSTER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_nats_node_config_is_accepted_by_nats_server() -> None:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    env = {**os.environ, **nats_env(), "SERVER_NAME": "nats-1"}
    result = subprocess.run(
        [binary, "-t", "-c", str(NATS_CLUSTER / "nats.conf")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (NATS_CLUSTER / "nats.conf").read_text()
    assert "stream_replicas: 3" in text  # every MQTT stream on all three nodes


def test_the_nats_cluster_compose_file_validates_and_the_gateway_lists_every_node(
    tmp_path: Path,
) -> None:
    compose = yaml.safe_load((NATS_CLUSTER / "docker-compose.yml").read_text())
    nodes = sorted(name for name in compose["services"] if name.startswith("nats-"))
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    config = load_config(NATS_CLUSTER / "config.yaml", environ=nats_env())
    assert config.mqtt.urls == tuple(f"mqtt://{node}:1883" for node in nodes)
    assert config.mqtt.max_payload_bytes == 1024 * 1024  # NATS's max_payload default
    assert (NATS_CLUSTER / compose["services"]["gateway"]["build"]["context"]).resolve() == ROOT
    result = run_compose(
        ["config"], NATS_CLUSTER / ".env.example", tmp_path, NATS_CLUSTER / "docker-compose.yml"
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["nats-2"]["environment"]["SERVER_NAME"] == "nats-2"
