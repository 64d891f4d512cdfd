"""The bridge request API and event feed, against a real mosquitto and real camera simulators."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.adapters.base import ReconnectPolicy
from gateway.app import INFO_CONFIG_MAX_BYTES, Gateway, bounded_info_config
from gateway.bridge_api import MAX_REQUEST_BYTES, BadRequestError, parse_request
from gateway.broker import MosquittoProcess
from gateway.config import Config, redacted_document
from gateway.event import PlateEvent, Source, utc_now
from gateway.outbox import EventDraft, MessageDraft, Outbox
from gateway.simulate.rtsp import RtspCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.helpers import (
    MqttCollector,
    Received,
    eventually,
    gateway_config,
    http_camera_entry,
    sample,
    tcp_simulator_entry,
)

pytestmark = pytest.mark.broker

FAST_RETRIES = ReconnectPolicy(initial_seconds=0.05, max_seconds=0.2, auth_retry_seconds=0.2)
TOPICS = ("lpr/bridge/#", "lpr/+/event", "lpr/+/known/#", "lpr/+/availability")


class Requester:
    """Sends requests as a client would and waits for their responses."""

    def __init__(self, sub: MqttCollector) -> None:
        self.sub = sub
        self.sent = 0

    async def ask(
        self, path: str, payload: Any = "", *, raw: bytes | None = None, retain: bool = False
    ) -> dict[str, Any]:
        topic = f"lpr/bridge/response/{path}"
        before = len(self.sub.on(topic))
        body = (
            raw
            if raw is not None
            else (payload if isinstance(payload, str) else json.dumps(payload))
        )
        await asyncio.to_thread(self.sub.publish, f"lpr/bridge/request/{path}", body, retain)
        responses = await self.sub.until_count(topic, before + 1)
        document: dict[str, Any] = responses[before].json()
        return document

    async def error_after(self, path: str, count: int) -> str:
        """The `count`-th response on `path`, an error."""
        responses = await self.sub.until_count(f"lpr/bridge/response/{path}", count)
        document = responses[count - 1].json()
        assert document["status"] == "error", document
        error: str = document["error"]
        return error

    async def ok(self, path: str, payload: Any = "", **kwargs: Any) -> Any:
        response = await self.ask(path, payload, **kwargs)
        assert response["status"] == "ok", response
        return response["data"]

    async def error(self, path: str, payload: Any = "", **kwargs: Any) -> str:
        response = await self.ask(path, payload, **kwargs)
        assert response["status"] == "error", response
        assert response["data"] == {}
        error: str = response["error"]
        return error


def events(sub: MqttCollector, kind: str) -> list[dict[str, Any]]:
    found = [m.json() for m in sub.on("lpr/bridge/event")]
    return [e for e in found if e["type"] == kind]


async def until_event(sub: MqttCollector, kind: str, count: int = 1, **data: Any) -> dict[str, Any]:
    def matching() -> list[dict[str, Any]]:
        return [e for e in events(sub, kind) if all(e["data"].get(k) == v for k, v in data.items())]

    await sub.until(lambda _: len(matching()) >= count)
    return matching()[count - 1]


def read(camera: str, plate: str) -> PlateEvent:
    return PlateEvent(camera=camera, source=Source.HTTP, plate=plate, received=utc_now())


def info(sub: MqttCollector) -> dict[str, Any]:
    document: dict[str, Any] = sub.on("lpr/bridge/info")[-1].json()
    return document


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    async with Gateway(config, reconnect_policy=FAST_RETRIES) as gw:
        await eventually(lambda: gw.publisher is not None and gw.publisher.connected)
        yield gw


async def test_known_plates_are_listed_added_matched_and_removed(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, known_plates={"Staff": ["B AB 1234", "FL*"]})
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            listed = await api.ok("known_plates/list")
            assert listed == {
                "known_plates": [
                    {
                        "name": "Staff",
                        "source": "config",
                        "plates": ["B AB 1234", "FL*"],
                        "cameras": None,
                    }
                ]
            }
            response = await api.ask(
                "known_plates/add",
                {"name": "Visitors", "plates": ["XY 9876", "xy9876"], "transaction": "t-1"},
            )
            assert response == {
                "status": "ok",
                "data": {"name": "Visitors", "plates": ["XY 9876"]},
                "transaction": "t-1",
            }
            change = await until_event(sub, "known_plates_changed", action="added")
            assert change["data"] == {"action": "added", "name": "Visitors", "plates": ["XY 9876"]}
            assert change["time"].endswith("Z")
            await sub.until(lambda _: info(sub).get("known_plates", {}).get("runtime_entries") == 1)
            assert info(sub)["known_plates"] == {"names": 2, "entries": 3, "runtime_entries": 1}

            # Applies at once: the next read of the plate is known.
            await gw.submit(read("cam", "XY9876"))
            known = await sub.until_count("lpr/cam/known/visitors", 1)
            assert known[0].json()["known"] == "Visitors"
            assert known[0].json()["match"] == "exact"

            listed = await api.ok("known_plates/list")
            assert listed["known_plates"][1] == {
                "name": "Visitors",
                "source": "runtime",
                "plates": ["XY 9876"],
                "cameras": None,
                "valid_until": None,
            }
            error = await api.error("known_plates/remove", {"name": "Staff"})
            assert "config file" in error and "cannot be removed" in error
            error = await api.error("known_plates/add", {"name": "Staff", "plates": ["Q1234"]})
            assert "config file" in error
            error = await api.error(
                "known_plates/remove", {"name": "Visitors", "plates": ["NOPE1"]}
            )
            assert "no plate" in error and "nothing removed" in error
            assert (
                await api.error("known_plates/remove", "Nobody") == "no known plates named 'Nobody'"
            )
            # A bare string names what to remove, as Zigbee2MQTT takes a bare id.
            removed = await api.ok("known_plates/remove", json.dumps("Visitors"))
            assert removed == {"name": "Visitors", "plates": ["XY 9876"]}
            await until_event(sub, "known_plates_changed", action="removed")

            await gw.submit(read("cam", "XY9876"))
            reads = await sub.until_count("lpr/cam/event", 2)
            assert reads[1].json()["known"] is None
            assert len(sub.on("lpr/cam/known/visitors")) == 1
            assert (
                sample(
                    gw.metrics, "lpr_bridge_requests_total", request="known_plates/add", status="ok"
                )
                == 1
            )
            assert (
                sample(
                    gw.metrics,
                    "lpr_bridge_requests_total",
                    request="known_plates/remove",
                    status="error",
                )
                == 3
            )


async def test_an_entry_scoped_to_a_camera_and_one_that_expires(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras = [
        http_camera_entry("gate_in", "cam", "pw"),
        http_camera_entry("gate_out", "cam", "pw"),
    ]
    config = gateway_config(mqtt_broker.url, tmp_path, cameras)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            await api.ok(
                "known_plates/add",
                {"name": "Gate staff", "plates": ["GS 1000"], "cameras": ["gate_in"]},
            )
            until = time.time() + 1.5
            stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(until))
                + f".{int(until * 1000) % 1000:03d}Z"
            )
            await api.ok(
                "known_plates/add", {"name": "Courier", "plates": ["CR 2000"], "valid_until": stamp}
            )
            await gw.submit(read("gate_in", "GS1000"))
            await gw.submit(read("gate_out", "GS1000"))
            await gw.submit(read("gate_out", "CR2000"))
            await sub.until_count("lpr/gate_out/event", 2)
            await sub.until_count("lpr/gate_in/event", 1)
            assert sub.on("lpr/gate_in/event")[0].json()["known"] == "Gate staff"
            assert [m.json()["known"] for m in sub.on("lpr/gate_out/event")] == [None, "Courier"]

            expired = await until_event(sub, "known_plates_changed", action="expired")
            assert expired["data"]["plates"] == ["CR 2000"]
            await gw.submit(read("gate_out", "CR2000"))
            reads = await sub.until_count("lpr/gate_out/event", 3)
            assert reads[2].json()["known"] is None
            names = [item["name"] for item in (await api.ok("known_plates/list"))["known_plates"]]
            assert names == ["Gate staff"]


@pytest.mark.parametrize(
    ("path", "payload", "reason"),
    [
        ("known_plates/add", b"{not json", "not valid JSON"),
        ("known_plates/add", b"[1, 2]", "expected a JSON object"),
        ("known_plates/add", b"\xff\xfe", "not valid JSON"),
        ("known_plates/add", b"[" * 100_00 + b"]" * 100_00, "not valid JSON"),
        ("known_plates/add", b'{"name": "A"}', "missing field(s): plates"),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["A1"], "colour": 1}',
            "unknown field(s) colour",
        ),
        (
            "known_plates/add",
            b'{"name": "", "plates": ["AB12"]}',
            "name: expected a non-empty string",
        ),
        ("known_plates/add", b'{"name": "A", "plates": []}', "plates: expected a non-empty list"),
        ("known_plates/add", b'{"name": "A", "plates": ["--"]}', "plates[0]: not a usable entry"),
        ("known_plates/add", b'{"name": "A", "plates": [7]}', "plates[0]: not a usable entry"),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "cameras": ["nope"]}',
            "unknown camera(s): nope",
        ),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "cameras": "gate"}',
            "cameras: expected a list",
        ),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "valid_until": "2027-01-31T00:00:00"}',
            "give the time zone",
        ),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "valid_until": "soon"}',
            "not an ISO 8601 time",
        ),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "valid_until": "2001-01-01T00:00:00Z"}',
            "already past",
        ),
        (
            "known_plates/add",
            b'{"name": "A", "plates": ["AB12"], "transaction": {"x": 1}}',
            "transaction: expected",
        ),
        ("known_plates/remove", b'{"plates": ["AB12"]}', "missing field(s): name"),
        ("known_plates/list", b'{"all": true}', "unknown field(s) all"),
        ("camera/disable", b'{"id": "nope"}', "id: no camera 'nope' in the config"),
        ("camera/enable", b'{"id": 5}', "id: no camera 5 in the config"),
        ("camera/disable", b"{}", "missing field(s): id"),
        ("health_check", b'"x"', "expected a JSON object"),
        ("discovery/republish", b"", "Home Assistant discovery is off"),
        ("no/such/request", b"{}", "unknown request 'no/such/request'"),
        ("known_plates/add", b"x" * (MAX_REQUEST_BYTES + 1), f"(at most {MAX_REQUEST_BYTES})"),
    ],
)
async def test_each_bad_request_gets_its_reason_and_is_counted(
    mqtt_broker: MosquittoProcess, tmp_path: Path, path: str, payload: bytes, reason: str
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, [http_camera_entry("gate", "cam", "pw")])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            response = await api.ask(path, raw=payload + b"" if payload else b"")
            assert response["status"] == "error" and reason in response["error"], response
            label = (
                path if gw.bridge_requests and path in gw.bridge_requests.handlers else "unknown"
            )
            await eventually(
                lambda: (
                    sample(gw.metrics, "lpr_bridge_requests_total", request=label, status="error")
                    == 1
                )
            )
            # Publishing goes on undisturbed.
            await gw.submit(read("gate", "AB1234"))
            await sub.until_count("lpr/gate/event", 1)


async def test_transaction_echo_retained_requests_and_a_flood(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, [http_camera_entry("gate", "cam", "pw")])
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            response = await api.ask("health_check", {"transaction": 17})
            assert response["transaction"] == 17 and response["data"]["healthy"] is True
            response = await api.ask("known_plates/add", {"transaction": "t9", "name": "A"})
            assert response["transaction"] == "t9" and response["status"] == "error"
            assert "transaction" not in await api.ask("health_check")
            # A retained request is carried out once; the broker's copy of it, sent
            # again at every (re)subscription, is refused, not carried out again.
            await api.ok("camera/disable", raw=b"gate", retain=True)
            assert gw.publisher is not None
            gw.publisher.link.close()  # the gateway reconnects and subscribes again
            error = await api.error_after("camera/disable", 2)
            assert "retained requests are ignored" in error
            assert gw.switches.is_disabled("gate")
            await asyncio.to_thread(sub.publish, "lpr/bridge/request/camera/disable", b"", True)
            # A flood: every request is answered (ok, or busy past the queue), none lost.
            for n in range(200):
                sub.publish("lpr/bridge/request/health_check", json.dumps({"transaction": n}))
            await sub.until(
                lambda msgs: sum(m.topic == "lpr/bridge/response/health_check" for m in msgs) >= 202
            )
            statuses = {m.json()["status"] for m in sub.on("lpr/bridge/response/health_check")}
            assert "ok" in statuses
            assert gw.publisher is not None and gw.publisher.connected


async def test_health_check_outbox_stats_and_discovery_republish(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        [http_camera_entry("gate", "cam", "pw")],
        homeassistant={"enabled": True},
    )
    with MqttCollector(
        mqtt_broker.host, mqtt_broker.port, topics=(*TOPICS, "homeassistant/#")
    ) as sub:
        async with running(config) as gw:
            api = Requester(sub)
            health = await api.ok("health_check")
            assert health["status"] == "healthy" and health["mqtt_connected"] is True
            stats = await api.ok("outbox/stats")
            assert set(stats) == {
                "events",
                "bytes",
                "max_bytes",
                "oldest_age_seconds",
                "dead_letters",
            }
            assert stats["dead_letters"] == 0
            await sub.until(lambda msgs: any(m.topic.endswith("/gate_plate/config") for m in msgs))
            discovery = next(
                m.topic for m in sub.messages if m.topic.endswith("/gate_plate/config")
            )
            before = len(sub.on(discovery))
            assert (await api.ok("discovery/republish"))["republished"] is True
            await sub.until_count(discovery, before + 1)
            assert gw.discovery is not None


async def test_bridge_requests_false_turns_the_api_off(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, bridge={"requests": False})
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config) as gw:
            assert gw.bridge_requests is None
            await sub.until(lambda _: bool(sub.on("lpr/bridge/info")))
            assert info(sub)["config"]["bridge"] == {"requests": False}
            sub.publish("lpr/bridge/request/health_check", b"")
            # Nothing answers: give a would-be answer ample time to arrive.
            await gw.submit(read("cam", "AB1234"))
            await sub.until_count("lpr/cam/event", 1)
            await asyncio.sleep(0.5)
            assert not sub.on("lpr/bridge/response/health_check")


async def test_bridge_info_carries_the_effective_config_without_secrets(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    cameras = [
        http_camera_entry("gate", "cam", "http-secret"),
        {"id": "lobby", "protocol": "rtsp", "url": "rtsp://admin:rtsp-secret@127.0.0.1:9/x"},
    ]
    config = gateway_config(mqtt_broker.url, tmp_path, cameras, known_plates={"Staff": ["AB1234"]})
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config):
            await sub.until(lambda _: bool(sub.on("lpr/bridge/info")))
            payload = sub.on("lpr/bridge/info")[-1].payload
            assert b"secret" not in payload
            document = json.loads(payload)
            assert document["config"]["cameras"][0]["password"] == "***"
            assert document["config"]["cameras"][1]["url"] == "rtsp://admin:***@127.0.0.1:9/x"
            assert "known_plates" not in document["config"]
            assert document["known_plates"] == {"names": 1, "entries": 1, "runtime_entries": 0}


async def test_a_disabled_camera_stays_off_across_a_restart(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    async with TcpCameraSimulator() as sim:
        cameras = [
            tcp_simulator_entry("gate_in", sim.port),
            http_camera_entry("gate_out", "cam", "pw"),
        ]
        config = gateway_config(mqtt_broker.url, tmp_path, cameras)
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
            api = Requester(sub)
            async with running(config) as gw:
                await sim.wait_logged_in()
                await sub.until(lambda _: _last(sub, "lpr/gate_in/availability") == b"online")
                assert await api.ok("camera/disable", {"id": "gate_in"}) == {
                    "id": "gate_in",
                    "enabled": False,
                    "changed": True,
                }
                # The session is closed and not opened again.
                await eventually(lambda: sim.logged_in_sessions == 0, what="session closed")
                await sub.until(lambda _: _last(sub, "lpr/gate_in/availability") == b"offline")
                await until_event(sub, "camera_disabled", camera="gate_in")
                await until_event(sub, "camera_offline", camera="gate_in")
                await sub.until(lambda _: _camera_state(sub, "gate_in") == "disabled")
                connections = sim.connections
                # Several retry periods of FAST_RETRIES: a reconnect would have come.
                await asyncio.sleep(1.0)
                assert sim.connections == connections

                await api.ok("camera/disable", json.dumps("gate_out"))
                await sub.until(lambda _: _last(sub, "lpr/gate_out/availability") == b"offline")
                assert await _post(gw, "gate_out") == 503
                await api.ok("known_plates/add", {"name": "Kept", "plates": ["KP 1234"]})
                again = await api.ok("camera/disable", {"id": "gate_in"})
                assert again["changed"] is False

            logins = sim.logins
            async with running(config) as gw:
                await sub.until(lambda _: _camera_state(sub, "gate_in") == "disabled")
                assert _camera_state(sub, "gate_out") == "disabled"
                assert await _post(gw, "gate_out") == 503
                listed = await api.ok("known_plates/list")
                assert listed["known_plates"][0]["name"] == "Kept"
                await gw.submit(read("gate_out", "KP1234"))
                await sub.until_count("lpr/gate_out/known/kept", 1)
                await asyncio.sleep(0.5)
                assert sim.logins == logins

                await api.ok("camera/enable", {"id": "gate_in"})
                await sim.wait_logged_in()
                await sub.until(lambda _: _last(sub, "lpr/gate_in/availability") == b"online")
                await until_event(sub, "camera_enabled", camera="gate_in")
                await until_event(sub, "camera_online", camera="gate_in", count=2)
                await api.ok("camera/enable", {"id": "gate_out"})
                await sub.until(lambda _: _last(sub, "lpr/gate_out/availability") == b"online")
                assert await _post(gw, "gate_out") == 200
                await sub.until(lambda _: _camera_state(sub, "gate_in") == "online")


async def test_a_disabled_rtsp_camera_is_torn_down_and_comes_back(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    sim = RtspCameraSimulator(username="admin", password="secret", rate=0, seed=7, camera="lobby")
    async with sim:
        camera = {
            "id": "lobby",
            "protocol": "rtsp",
            "url": sim.url,
            "username": "admin",
            "password": "secret",
            "http_port": sim.http_port,
        }
        config = gateway_config(mqtt_broker.url, tmp_path, [camera])
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
            async with running(config):
                api = Requester(sub)
                async with asyncio.timeout(20):
                    await sim.wait_playing()
                await api.ok("camera/disable", "lobby")
                async with asyncio.timeout(20):
                    await sim.wait_connections(0)
                assert sim.stats.teardowns == 1
                await sub.until(lambda _: _last(sub, "lpr/lobby/availability") == b"offline")
                await api.ok("camera/enable", "lobby")
                async with asyncio.timeout(20):
                    await sim.wait_playing()
                await sub.until(lambda _: _last(sub, "lpr/lobby/availability") == b"online")


async def test_a_refused_login_is_announced(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    async with TcpCameraSimulator(password="other") as sim:
        config = gateway_config(mqtt_broker.url, tmp_path, [tcp_simulator_entry("gate", sim.port)])
        with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
            async with running(config):
                refused = await until_event(sub, "login_refused", camera="gate")
                assert "401" in refused["data"]["detail"]
                await eventually(lambda: sim.login_failures >= 3, what="retries")
                # Said once a minute per camera, not at every retry.
                assert len(events(sub, "login_refused")) == 1


async def test_a_dead_letter_is_announced(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(mqtt_broker.url, tmp_path, [http_camera_entry("cam", "c", "pw")])
    # A row an older version stored with a topic the broker would refuse.
    outbox = Outbox(config.outbox.path, config.outbox.max_bytes)
    outbox.open()
    poisoned = MessageDraft("lpr/cam/camera_event/a\x00b", b"{}", False)
    outbox.append_batch([EventDraft("poisoned-1", "cam", (poisoned,), time.time())])
    outbox.close()
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, topics=TOPICS) as sub:
        async with running(config):
            letter = await until_event(sub, "dead_letter", event_id="poisoned-1")
            assert letter["data"]["camera"] == "cam" and "U+0000" in letter["data"]["reason"]


@given(st.binary(max_size=300), st.sampled_from(["known_plates/add", "camera/disable", "x"]))
@settings(max_examples=300, deadline=None)
def test_parse_request_takes_any_bytes(payload: bytes, path: str) -> None:
    try:
        request = parse_request(path, payload)
    except BadRequestError:
        return
    assert isinstance(request.arguments, dict)


def _last(sub: MqttCollector, topic: str) -> bytes | None:
    found: list[Received] = sub.on(topic)
    return found[-1].payload if found else None


def _camera_state(sub: MqttCollector, camera: str) -> str | None:
    if not sub.on("lpr/bridge/info"):
        return None
    for entry in info(sub)["cameras"]:
        if entry["id"] == camera:
            state: str = entry["state"]
            return state
    return None


async def _post(gw: Gateway, camera: str) -> int:
    assert gw.http_server is not None
    url = f"http://127.0.0.1:{gw.http_server.port}/lpr/{camera}"
    headers = {"Authorization": "Basic " + base64.b64encode(b"cam:pw").decode()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps({"plate": "AB123CD"}), headers=headers) as response,
    ):
        return response.status


def test_bridge_info_summarises_the_settings_of_many_cameras(tmp_path: Path) -> None:
    cameras = [http_camera_entry(f"cam{n}", "cam", "pw") for n in range(400)]
    config = gateway_config("mqtt://127.0.0.1:1", tmp_path, cameras)
    document = bounded_info_config(redacted_document(config))
    assert len(json.dumps(document)) <= INFO_CONFIG_MAX_BYTES
    assert document["cameras"]["count"] == 400
    assert document["mqtt"]["password"] is None
    few = redacted_document(gateway_config("mqtt://127.0.0.1:1", tmp_path, cameras[:3]))
    assert bounded_info_config(few) == few
