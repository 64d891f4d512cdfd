"""The RTSP simulator's Profile M mode: scene descriptions as a client receives them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.codecs.onvif import OnvifSceneFrame, ScenePlate, parse_metadata
from gateway.codecs.rtsp import Authenticator, AuthVerdict
from gateway.simulate.rtsp import RtspCameraSimulator, _parser
from tests.simulate.test_rtsp import PASSWORD, USER, RawClient


async def _frames(client: RawClient, count: int) -> list[OnvifSceneFrame]:
    frames: list[OnvifSceneFrame] = []
    while len(frames) < count:
        document = await client.next_document()
        frames += [r for r in parse_metadata(document.data) if isinstance(r, OnvifSceneFrame)]
    return frames


def _simulator(**settings: Any) -> RtspCameraSimulator:
    defaults: dict[str, Any] = {"rate": 0.0, "seed": 7, "motion_every": 0}
    return RtspCameraSimulator(username=USER, password=PASSWORD, **{**defaults, **settings})


async def test_drive_scene_streams_overlapping_objects_improving_until_they_end() -> None:
    async with _simulator() as simulator:
        await _drive_and_check(simulator)


async def _drive_and_check(simulator: RtspCameraSimulator) -> None:
    client = await RawClient.connect(simulator)
    await client.start_stream()
    async with asyncio.timeout(10):
        await simulator.wait_playing()
        await client.next_document()  # the Initialized state at stream start
        driving = asyncio.create_task(simulator.drive_scene(vehicles=2, frames=3, interval=0.01))
        # Vehicle 0 in frames 0-2, vehicle 1 in frames 1-3, then its Delete in frame 4.
        frames = await _frames(client, 5)
        vehicles = await driving
    await client.close()
    first, second = vehicles
    seen: dict[str, list[ScenePlate]] = {}
    for frame in frames:
        for reading in frame.plates:
            seen.setdefault(reading.object_id, []).append(reading)
    assert [len(f.plates) for f in frames] == [1, 2, 2, 1, 0]  # two objects at once
    assert frames[-1].ended == (str(second.object_id),)  # ended by the object tree
    for vehicle in vehicles:
        readings = seen[str(vehicle.object_id)]
        likelihoods = [r.confidence or 0.0 for r in readings]
        assert likelihoods == sorted(likelihoods) and len(set(likelihoods)) == 3  # improving
        assert readings[0].plate != vehicle.plate  # the first frame misreads it
        assert readings[-1].plate == vehicle.plate and readings[-1].confidence == vehicle.likelihood
    # Vehicle 0's crop is inline; vehicle 1's is served at its ImageRef, the best one last.
    inline = seen[str(first.object_id)][-1].image
    assert inline is not None and inline.data == first.picture
    assert first.ended_by == "absence" and second.ended_by == "delete"
    assert second.picture_ref is not None
    assert seen[str(second.object_id)][-1].image_ref == second.picture_ref
    assert await _get_picture(simulator, second.picture_ref) == second.picture


async def _get_picture(simulator: RtspCameraSimulator, path: str) -> bytes:
    """GET behind the simulator's Digest, answered the way the gateway answers it."""
    auth = Authenticator(USER, PASSWORD, lambda: "0a4f113b")
    url = f"http://127.0.0.1:{simulator.http_port}{path}"
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            authorization = auth.authorization("GET", path)
            headers = {"Authorization": authorization} if authorization else {}
            async with http.get(url, headers=headers) as response:
                if response.status == 401:
                    verdict = auth.on_unauthorized(
                        response.headers.getall("WWW-Authenticate", []), authorization
                    )
                    assert verdict is AuthVerdict.RETRY
                    continue
                assert response.status == 200
                return await response.read()
    raise AssertionError("the simulator did not accept the Digest answer")


async def test_profile_m_producer_streams_scene_descriptions() -> None:
    arguments = _parser().parse_args(["--profile-m", "--scene-fps", "50", "--rate", "20"])
    assert arguments.profile_m and arguments.scene_fps == 50
    settings = {"profile_m": True, "rate": arguments.rate, "scene_fps": arguments.scene_fps}
    async with _simulator(**settings) as simulator:
        client = await RawClient.connect(simulator)
        await client.start_stream()
        async with asyncio.timeout(10):
            await simulator.wait_playing()
            frames = await _frames(client, 3)
        await client.close()
    assert all(frame.plates or frame.ended for frame in frames)
    assert not simulator.sent_reads  # scene descriptions instead of notifications
