"""Outbox full (outbox.max_bytes, the broker unreachable): intake refuses cleanly.

HTTP answers 503, TCP and RTSP reads are counted as refused
(`lpr_events_refused_total{reason="outbox_full"}`), no camera session drops,
no task dies; when the broker is back the outbox drains and intake resumes,
and every read that was accepted arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.publisher import BrokerBackoff
from tests.faults.harness import (
    HTTP_CAMERA,
    RTSP_CAMERA,
    TCP_CAMERA,
    CountingCollector,
    HttpLoad,
    plate_key,
    record,
    sha,
    three_cameras,
    wait_listening,
)
from tests.faults.proxy import GateProxy
from tests.helpers import eventually, gateway_config, sample

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(60)]

MAX_BYTES = 1_000_000  # the smallest outbox.max_bytes the config takes: 3 TCP reads


async def test_outbox_full_refuses_cleanly_and_recovers(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    proxy = GateProxy(mqtt_broker.host, mqtt_broker.port)
    await proxy.start()
    proxy.close_gate()  # the broker is unreachable for the gateway
    with CountingCollector(
        mqtt_broker.host, mqtt_broker.port, topics=("lpr/+/event",)
    ) as collector:
        async with three_cameras(rate=0.0) as cams:
            config = gateway_config(
                f"mqtt://127.0.0.1:{proxy.port}",
                tmp_path,
                cams.entries(),
                outbox={"max_bytes": MAX_BYTES},
            )
            async with Gateway(config, broker_backoff=BrokerBackoff(max_seconds=0.3)) as gw:

                def refused(camera: str) -> float:
                    return sample(
                        gw.metrics, "lpr_events_refused_total", camera=camera, reason="outbox_full"
                    )

                assert config.http.port
                await wait_listening(config.http.port)
                async with asyncio.timeout(10):
                    await cams.tcp.wait_logged_in()
                    await cams.rtsp.wait_playing()
                connects_before = {
                    c: sample(gw.metrics, "lpr_camera_reconnects_total", camera=c)
                    for c in (TCP_CAMERA, RTSP_CAMERA)
                }
                # TCP: push reads one by one until the outbox refuses; sort each.
                tcp_accepted: list[str] = []
                tcp_refused = 0

                def sorted_out(pushed: int) -> Callable[[], bool]:
                    return lambda: gw.outbox.pending_events + refused(TCP_CAMERA) == pushed

                for n in range(8):
                    await cams.tcp.push(1)
                    key = sha(cams.tcp.sent_reads[-1][1])
                    await eventually(sorted_out(n + 1))
                    if refused(TCP_CAMERA) > tcp_refused:
                        tcp_refused += 1
                    else:
                        tcp_accepted.append(key)
                assert 1 <= len(tcp_accepted) <= 3 and tcp_refused >= 5
                # HTTP: the camera is told 503 (it will retry), never a 200.
                async with HttpLoad(config.http.port, rate=0) as http:
                    await http.stop()
                    replies = [await http.sim.send_read() for _ in range(3)]
                    assert [r.status for r in replies] == [503, 503, 503]
                    assert replies[0].reply is not None
                    assert refused(HTTP_CAMERA) == 3
                    assert sample(gw.metrics, "lpr_http_requests_total", status="503") == 3
                    # RTSP: reads arrive, pictures are fetched, the outbox refuses them.
                    cams.rtsp.push(3)
                    await eventually(lambda: refused(RTSP_CAMERA) == 3)
                    health = gw.health()
                    assert not health["healthy"]
                    assert any("outbox" in p for p in health["problems"]), health
                    assert not any("stopped unexpectedly" in p for p in health["problems"])
                    # No session was dropped over it.
                    for camera in (TCP_CAMERA, RTSP_CAMERA):
                        assert sample(gw.metrics, "lpr_camera_connected", camera=camera) == 1
                        reconnects = sample(
                            gw.metrics, "lpr_camera_reconnects_total", camera=camera
                        )
                        assert reconnects == connects_before[camera]
                    # The broker comes back: the outbox drains, intake resumes.
                    proxy.open_gate()
                    await eventually(lambda: gw.outbox.pending_events == 0, timeout=20)
                    # (one at a time: a 1 MB outbox holds only three reads with scenes)
                    after = []
                    for _ in range(2):
                        await cams.tcp.push(1)
                        tcp_accepted.append(sha(cams.tcp.sent_reads[-1][1]))
                        await eventually(lambda: gw.outbox.pending_events == 0, timeout=20)
                        after.append(await http.sim.send_read())
                        await eventually(lambda: gw.outbox.pending_events == 0, timeout=20)
                    assert [r.status for r in after] == [200, 200]
                    rtsp_after = cams.rtsp.push(2)
                    wanted = {
                        TCP_CAMERA: set(tcp_accepted),
                        RTSP_CAMERA: {sha(r.picture) for r in rtsp_after},
                        HTTP_CAMERA: {str(r.reply["id"]) for r in after},
                    }

                    def arrived() -> dict[str, set[str]]:
                        got: dict[str, set[str]] = {c: set() for c in wanted}
                        for event in collector.events():
                            key = (
                                event["id"] if event["camera"] == HTTP_CAMERA else plate_key(event)
                            )
                            got[event["camera"]].add(str(key))
                        return got

                    await collector.until(
                        lambda _: all(wanted[c] <= arrived()[c] for c in wanted), timeout=20
                    )
                    assert gw.health()["healthy"], gw.health()
                    rss_tasks = len(asyncio.all_tasks())
    await proxy.close()
    got = arrived()
    refused_total = tcp_refused + 3 + 3
    accepted_total = sum(len(v) for v in wanted.values())
    received = sum(len(wanted[c] & got[c]) for c in wanted)
    record(
        f"outbox full (max_bytes {MAX_BYTES}, broker cut off): refused {refused_total}"
        f" (TCP {tcp_refused} counted, HTTP 3 answered 503, RTSP 3 counted), sessions kept,"
        f" then broker back: accepted {accepted_total}, received {received},"
        f" lost {accepted_total - received}; tasks alive {rss_tasks}"
    )
    assert received == accepted_total
