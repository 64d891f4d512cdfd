"""The HTTP camera simulator: what it sends parses back to what it meant; its CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.codecs.http_body import BodyOptions, HttpCameraNotice, HttpPlateRead, parse_json_body
from gateway.event import Direction, Image
from gateway.simulate.http import (
    DIRECTION_WORDS,
    OTHER_EVENTS,
    TIME_FORMATS,
    HttpCameraSimulator,
    main,
)

SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")


def test_reads_rotate_formats_and_parse_back_exactly() -> None:
    sim = HttpCameraSimulator("http://unused", tz=SEOUL)
    seen_formats: set[str] = set()
    seen_prefix: set[bool] = set()
    seen_directions: set[str] = set()
    for index in range(6):
        sent, body = sim.build_read(index)
        result = parse_json_body(body, BodyOptions(tz=SEOUL))
        assert isinstance(result, HttpPlateRead)
        assert result.plate == sent.plate
        assert result.time == sent.time
        assert result.direction is (Direction.IN if sent.direction == "Approach" else Direction.OUT)
        assert sent.read is not None
        assert result.plate_image == Image(data=sent.read.plate_jpeg)
        assert result.scene_image == Image(data=sent.read.scene_jpeg)
        assert result.problems == ()
        assert result.raw == {"device": "Network Camera"}
        seen_formats.add(TIME_FORMATS[index % 3])
        seen_prefix.add(sent.data_uri)
        seen_directions.add(sent.direction or "")
        assert (b"data:image/jpeg;base64," in body) is sent.data_uri
    assert seen_formats == set(TIME_FORMATS)
    assert seen_prefix == {True, False}
    assert seen_directions == set(DIRECTION_WORDS)


def test_time_formats_are_the_three_the_spec_names() -> None:
    sim = HttpCameraSimulator("http://unused")
    texts = [
        json.loads(sim.build_read(i)[1][:2000].split(b', "plate_image"')[0] + b"}")
        for i in range(3)
    ]
    assert "time_msec" in texts[0]
    assert texts[1]["time"][19] == ":" and len(texts[1]["time"]) == 23
    assert texts[2]["time"][19] == "." and len(texts[2]["time"]) == 23


def test_other_events_parse_as_notices() -> None:
    sim = HttpCameraSimulator("http://unused")
    kinds = set()
    for index in range(len(OTHER_EVENTS)):
        sent, body = sim.build_other_event(index)
        result = parse_json_body(body)
        assert isinstance(result, HttpCameraNotice)
        assert result.data["event"] == sent.kind
        kinds.add(result.kind)
        assert (sent.snapshot is not None) == (result.kind == "vehicle_counting")
        if sent.snapshot is not None:
            assert result.images == {"snapshot": Image(sent.snapshot)}
    assert kinds == {
        "vehicle_counting",
        "list_event",
        "attributes",
        "violation",
        "parking_detection",
    }


def test_evidence_pictures_and_device() -> None:
    sim = HttpCameraSimulator("http://unused", evidence=True, device="Gate North")
    sent, body = sim.build_read(0)
    result = parse_json_body(body)
    assert isinstance(result, HttpPlateRead)
    assert len(sent.evidence) == 2 and len(set(sent.evidence)) == 2
    assert result.evidence0_image == Image(sent.evidence[0])
    assert result.evidence1_image == Image(sent.evidence[1])
    assert result.raw == {"device": "Gate North"}
    assert HttpCameraSimulator("http://unused").build_read(0)[0].evidence == ()


def test_time_msec_comes_in_both_shapes() -> None:
    sim = HttpCameraSimulator("http://unused")
    shapes = [sim.build_read(index)[0].fields["time_msec"] for index in (0, 3, 6)]
    assert isinstance(shapes[0], int) and isinstance(shapes[1], str) and len(shapes[2]) == 23


@contextlib.asynccontextmanager
async def recording_server(status: int = 200) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "size": len(body),
            }
        )
        return web.json_response({"status": "ok"}, status=status)

    runner = web.ServerRunner(web.Server(handle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/lpr/cam", seen
    finally:
        await runner.cleanup()


async def test_simulator_records_statuses_and_sends_basic_auth() -> None:
    async with (
        recording_server(status=503) as (url, seen),
        HttpCameraSimulator(url, user="cam", password="pw", other_event_every=3) as sim,
    ):
        sent = await sim.run(count=6, rate=0)
    assert [s.status for s in sent] == [503] * 6
    assert sim.status_counts() == {503: 6}
    assert [s.kind == "plate" for s in sent] == [True, True, False, True, True, False]
    assert all(r["auth"] == "Basic Y2FtOnB3" for r in seen)  # cam:pw
    assert all(r["size"] > 300_000 for r, s in zip(seen, sent, strict=True) if s.kind == "plate")


async def test_get_mode() -> None:
    async with (
        recording_server() as (url, seen),
        HttpCameraSimulator(url, get_mode=True) as sim,
    ):
        sent = await sim.send_read()
    assert sent.status == 200
    assert seen[0]["method"] == "GET"
    assert seen[0]["query"] == {"Caption": "LPR", "description": sent.plate}
    assert seen[0]["auth"] is None


async def test_connection_refused_is_recorded_not_raised() -> None:
    async with HttpCameraSimulator("http://127.0.0.1:9/lpr/x", timeout=2) as sim:
        sent = await sim.send_read()
    assert sent.status is None and sent.error


@pytest.mark.parametrize(("status", "code"), [(200, 0), (401, 1)])
async def test_cli_reports_status_codes(
    status: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async with recording_server(status=status) as (url, seen):
        argv = ["--url", url, "--rate", "100", "--count", "3", "--user", "cam", "--password", "x"]
        assert await asyncio.to_thread(main, argv) == code
    out = capsys.readouterr().out
    assert f"status codes: {status}: 3" in out
    assert len(seen) == 3


async def test_cli_get_mode(capsys: pytest.CaptureFixture[str]) -> None:
    async with recording_server() as (url, seen):
        assert (
            await asyncio.to_thread(main, ["--url", url, "--get", "--count", "2", "--rate", "100"])
            == 0
        )
    assert [r["method"] for r in seen] == ["GET", "GET"]
    assert "status codes: 200: 2" in capsys.readouterr().out


def test_cli_rejects_bad_arguments() -> None:
    assert main(["--url", "http://x", "--rate", "0"]) == 2
    assert main(["--url", "http://x", "--timezone", "Mars/Base"]) == 2
