"""The RTSP camera simulator against a raw asyncio RTSP client written here, on 127.0.0.1.

The client below is deliberately independent of gateway/codecs/rtsp.py: its own
response reader, its own Digest (RFC 2617) and its own RTP header reading, so
that the simulator is checked against the RFCs, not against the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from gateway.codecs.onvif import (
    OnvifNotification,
    OnvifPlateRead,
    PropertyOperation,
    parse_metadata,
)
from gateway.errors import CameraProtocolError
from gateway.simulate.rtsp import AuthMode, Fault, RtspCameraSimulator

USER, PASSWORD = "admin", "s3cret"


# --------------------------------------------------------------------------
# A small, independent RTSP client


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Packet:
    channel: int
    sequence: int
    marker: bool
    payload_type: int
    ssrc: int
    payload: bytes


@dataclass
class Document:
    packets: list[Packet]

    @property
    def data(self) -> bytes:
        return b"".join(p.payload for p in self.packets)


def _digest_header(
    challenge: str, method: str, uri: str, user: str, password: str, nc: int = 1
) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params["realm"], params["nonce"]
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    if "qop" in params:
        cnonce, ncs = "0a4f113b", f"{nc:08x}"
        response = hashlib.md5(f"{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        return (
            f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'qop=auth, nc={ncs}, cnonce="{cnonce}", response="{response}"'
        )
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}"'
    )


@dataclass
class RawClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    url: str
    user: str = USER
    password: str = PASSWORD
    cseq: int = 0
    packets: list[Packet] = field(default_factory=list)  # received, not yet in a document
    received: list[Packet] = field(default_factory=list)  # every packet, in order
    noise: bytes = b""
    challenge: str | None = None
    session: str | None = None

    @classmethod
    async def connect(cls, simulator: RtspCameraSimulator) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", simulator.rtsp_port)
        return cls(reader, writer, simulator.url)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    def authorization(self, method: str, uri: str) -> str | None:
        if self.challenge is None:
            return None
        if self.challenge.lower().startswith("basic"):
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return f"Basic {token}"
        return _digest_header(self.challenge, method, uri, self.user, self.password)

    async def request(
        self, method: str, uri: str, headers: dict[str, str] | None = None, *, auth: bool = True
    ) -> Response:
        self.cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: test-client"]
        all_headers = dict(headers or {})
        if self.session and "Session" not in all_headers:
            all_headers["Session"] = self.session
        if auth:
            authorization = self.authorization(method, uri)
            if authorization:
                all_headers["Authorization"] = authorization
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        while True:
            item = await self._read_item()
            if isinstance(item, Response):
                assert item.headers.get("cseq") == str(self.cseq)
                return item

    async def authed(
        self, method: str, uri: str, headers: dict[str, str] | None = None
    ) -> Response:
        """A request that answers one 401 challenge, as every client does."""
        response = await self.request(method, uri, headers)
        if response.status == 401:
            self.challenge = response.headers["www-authenticate"]
            response = await self.request(method, uri, headers)
        return response

    async def _read_item(self) -> Response | Packet:
        first = await self.reader.readexactly(1)
        while first not in (b"$", b"R"):
            # Neither a frame nor a response: garbage on the stream. Kept for the test.
            self.noise += first
            first = await self.reader.readexactly(1)
        if first == b"$":
            head = await self.reader.readexactly(3)
            (length,) = struct.unpack(">H", head[1:])
            data = await self.reader.readexactly(length)
            packet = Packet(
                channel=head[0],
                sequence=struct.unpack(">H", data[2:4])[0],
                marker=bool(data[1] & 0x80),
                payload_type=data[1] & 0x7F,
                ssrc=struct.unpack(">I", data[8:12])[0],
                payload=data[12:],
            )
            assert data[0] >> 6 == 2  # RTP version 2
            self.packets.append(packet)
            self.received.append(packet)
            return packet
        head = first + await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        match = re.match(r"RTSP/1\.0 (\d{3}) ", lines[0])
        assert match, lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Response(int(match.group(1)), headers, body)

    async def next_document(self) -> Document:
        """Packets until one with the marker bit (bounded by the caller's timeout)."""
        packets: list[Packet] = []
        while True:
            while self.packets:
                packet = self.packets.pop(0)
                packets.append(packet)
                if packet.marker:
                    return Document(packets)
            await self._read_item()

    async def start_stream(self, track_url: str | None = None) -> Response:
        """OPTIONS, DESCRIBE, SETUP of the metadata track (interleaved), PLAY."""
        await self.request("OPTIONS", self.url)
        describe = await self.authed("DESCRIBE", self.url, {"Accept": "application/sdp"})
        assert describe.status == 200
        base = describe.headers["content-base"]
        setup = await self.authed(
            "SETUP",
            track_url or base + "trackID=3",
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
        )
        assert setup.status == 200, setup
        self.session = setup.headers["session"].split(";")[0]
        play = await self.authed("PLAY", self.url, {"Range": "npt=0.000-"})
        assert play.status == 200
        return setup


@pytest.fixture
async def make_simulator() -> AsyncIterator[type[RtspCameraSimulator]]:
    started: list[RtspCameraSimulator] = []

    class Factory(RtspCameraSimulator):
        def __init__(self, **kwargs: object) -> None:
            kwargs.setdefault("username", USER)
            kwargs.setdefault("password", PASSWORD)
            kwargs.setdefault("rate", 0.0)
            kwargs.setdefault("seed", 7)
            super().__init__(**kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Factory
    for simulator in started:
        await simulator.stop()


async def _started(factory: type[RtspCameraSimulator], **kwargs: object) -> RtspCameraSimulator:
    simulator = factory(**kwargs)  # type: ignore[arg-type]
    await simulator.start()
    return simulator


async def _playing_client(simulator: RtspCameraSimulator) -> RawClient:
    client = await RawClient.connect(simulator)
    await client.start_stream()
    async with asyncio.timeout(5):
        await simulator.wait_playing()
        initialized = await client.next_document()
    assert all(r.initialized for r in parse_metadata(initialized.data))  # type: ignore[union-attr]
    return client


# --------------------------------------------------------------------------
# Handshake and authentication


async def test_options_lists_get_parameter_without_auth(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    client = await RawClient.connect(simulator)
    response = await client.request("OPTIONS", simulator.url)
    assert response.status == 200
    public = {m.strip() for m in response.headers["public"].split(",")}
    assert {"OPTIONS", "DESCRIBE", "SETUP", "PLAY", "GET_PARAMETER", "TEARDOWN"} <= public
    await client.close()


async def test_get_parameter_can_be_left_out_of_public(make_simulator: type) -> None:
    simulator = await _started(make_simulator, advertise_get_parameter=False)
    client = await RawClient.connect(simulator)
    response = await client.request("OPTIONS", simulator.url)
    assert "GET_PARAMETER" not in response.headers["public"]
    await client.close()


async def test_describe_needs_digest_and_announces_three_tracks(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    client = await RawClient.connect(simulator)
    unauthorized = await client.request("DESCRIBE", simulator.url)
    assert unauthorized.status == 401
    challenge = unauthorized.headers["www-authenticate"]
    assert challenge.startswith("Digest ")
    assert 'realm="LPR Camera"' in challenge and "nonce=" in challenge and 'qop="auth"' in challenge

    client.challenge = challenge
    client.password = "wrong"
    wrong = await client.request("DESCRIBE", simulator.url)
    assert wrong.status == 401
    assert simulator.stats.auth_failures == 1

    client.password = PASSWORD
    client.challenge = wrong.headers["www-authenticate"]
    described = await client.request("DESCRIBE", simulator.url)
    assert described.status == 200
    assert described.headers["content-type"] == "application/sdp"
    assert described.headers["content-base"] == f"rtsp://127.0.0.1:{simulator.rtsp_port}/main/"
    sdp = described.body.decode()
    media = re.findall(r"^m=(\w+) ", sdp, re.MULTILINE)
    assert media == ["video", "audio", "application"]
    assert "a=rtpmap:107 vnd.onvif.metadata/90000" in sdp
    controls = re.findall(r"^a=control:(\S+)", sdp, re.MULTILINE)
    assert controls == ["*", "trackID=1", "trackID=2", "trackID=3"]  # relative to Content-Base
    assert "\r\n" in sdp
    await client.close()


async def test_digest_without_qop(make_simulator: type) -> None:
    simulator = await _started(make_simulator, digest_qop=False)
    client = await RawClient.connect(simulator)
    first = await client.request("DESCRIBE", simulator.url)
    assert "qop" not in first.headers["www-authenticate"]
    client.challenge = first.headers["www-authenticate"]
    assert (await client.request("DESCRIBE", simulator.url)).status == 200
    await client.close()


async def test_basic_auth(make_simulator: type) -> None:
    simulator = await _started(make_simulator, auth=AuthMode.BASIC)
    client = await RawClient.connect(simulator)
    first = await client.request("DESCRIBE", simulator.url)
    assert first.status == 401
    assert first.headers["www-authenticate"] == 'Basic realm="LPR Camera"'
    client.challenge = first.headers["www-authenticate"]
    client.password = "nope"
    assert (await client.request("DESCRIBE", simulator.url)).status == 401
    client.password = PASSWORD
    assert (await client.request("DESCRIBE", simulator.url)).status == 200
    await client.close()


async def test_an_expired_nonce_is_answered_stale(make_simulator: type) -> None:
    simulator = await _started(make_simulator, nonce_lifetime_seconds=0.0)
    client = await RawClient.connect(simulator)
    client.challenge = (await client.request("DESCRIBE", simulator.url)).headers["www-authenticate"]
    stale = await client.request("DESCRIBE", simulator.url)
    assert stale.status == 401
    assert "stale=TRUE" in stale.headers["www-authenticate"]
    assert simulator.stats.stale_nonces == 1
    assert simulator.stats.auth_failures == 0  # the password was right
    await client.close()


async def test_only_interleaved_transport_and_known_sessions(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    client = await RawClient.connect(simulator)
    udp = await client.authed(
        "SETUP",
        simulator.url + "/trackID=3",
        {"Transport": "RTP/AVP;unicast;client_port=5000-5001"},
    )
    assert udp.status == 461
    unknown_track = await client.authed(
        "SETUP", simulator.url + "/trackID=9", {"Transport": "RTP/AVP/TCP;interleaved=0-1"}
    )
    assert unknown_track.status == 404
    no_session = await client.authed("PLAY", simulator.url)
    assert no_session.status == 454
    setup = await client.authed(
        "SETUP", simulator.url + "/trackID=3", {"Transport": "RTP/AVP/TCP;unicast;interleaved=4-5"}
    )
    assert setup.status == 200
    assert "interleaved=4-5" in setup.headers["transport"]
    assert re.fullmatch(r"\d+;timeout=60", setup.headers["session"])
    wrong = await client.authed("PLAY", simulator.url, {"Session": "12345"})
    assert wrong.status == 454
    await client.close()


async def test_garbage_request_gets_400_and_the_connection_closes(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    reader, writer = await asyncio.open_connection("127.0.0.1", simulator.rtsp_port)
    writer.write(b"HELLO THERE\r\n\r\n")
    async with asyncio.timeout(5):
        reply = await reader.read()
    assert reply.startswith(b"RTSP/1.0 400 ")
    writer.close()


# --------------------------------------------------------------------------
# Streaming


async def test_initialized_then_plate_documents_split_over_packets(make_simulator: type) -> None:
    simulator = await _started(make_simulator, motion_every=2, session_timeout=30)
    client = await RawClient.connect(simulator)
    setup = await client.start_stream()
    assert setup.headers["session"].endswith(";timeout=30")
    async with asyncio.timeout(5):
        await simulator.wait_playing()
        initialized = await client.next_document()
        sent = simulator.push(3)
        documents = [await client.next_document() for _ in range(4)]  # read 2 has motion first
    init_results = parse_metadata(initialized.data)
    assert init_results and all(r.initialized for r in init_results)  # type: ignore[union-attr]

    plates: list[OnvifPlateRead] = []
    motions = 0
    all_packets = [p for d in [initialized, *documents] for p in d.packets]
    for document in documents:
        assert len(document.packets) > 1  # each document spans several RTP packets
        assert [p.marker for p in document.packets] == [False] * (len(document.packets) - 1) + [
            True
        ]
        for result in parse_metadata(document.data):
            if isinstance(result, OnvifPlateRead):
                plates.append(result)
            elif isinstance(result, OnvifNotification):
                motions += 1
    assert motions == 1
    assert [p.plate for p in plates] == [s.plate for s in sent]
    assert [p.picture_path for p in plates] == [s.picture_path for s in sent]
    assert [p.time for p in plates] == [s.time for s in sent]
    assert [p.speed_kmh for p in plates] == [s.speed_kmh for s in sent]
    assert all(p.property_operation is PropertyOperation.CHANGED for p in plates)
    # One SSRC, payload type 107, channel 0, sequence numbers without gaps.
    assert {(p.channel, p.payload_type) for p in all_packets} == {(0, 107)}
    assert len({p.ssrc for p in all_packets}) == 1
    sequences = [p.sequence for p in all_packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
    assert all(s.sessions == 1 for s in sent)
    await client.close()


async def test_stream_start_re_announces_the_last_read_as_initialized(
    make_simulator: type,
) -> None:
    simulator = await _started(make_simulator)
    [earlier] = simulator.push(1)
    assert earlier.sessions == 0
    client = await RawClient.connect(simulator)
    await client.start_stream()
    async with asyncio.timeout(5):
        document = await client.next_document()
    plates = [r for r in parse_metadata(document.data) if isinstance(r, OnvifPlateRead)]
    assert [(p.plate, p.initialized) for p in plates] == [(earlier.plate, True)]
    await client.close()


async def test_forced_plates_and_motion_notifications(make_simulator: type) -> None:
    simulator = await _started(make_simulator, motion_every=0)
    client = await _playing_client(simulator)
    sent = simulator.push(2, plate="43거6510")
    simulator.push_motion(False)
    async with asyncio.timeout(5):
        documents = [await client.next_document() for _ in range(3)]
    first, second, motion = (parse_metadata(d.data) for d in documents)
    assert [r.plate for r in (*first, *second) if isinstance(r, OnvifPlateRead)] == [
        "43거6510",
        "43거6510",
    ]
    assert sent[0].picture_path != sent[1].picture_path  # two reads, two pictures
    [notification] = motion
    assert isinstance(notification, OnvifNotification)
    assert notification.topic.path == "RuleEngine/CellMotionDetector/Motion"
    assert notification.data_items == {"IsMotion": "false"}
    await client.close()


async def test_reads_at_the_configured_rate(make_simulator: type) -> None:
    simulator = await _started(make_simulator, rate=20.0, motion_every=0)
    client = await _playing_client(simulator)
    async with asyncio.timeout(5):
        documents = [await client.next_document() for _ in range(5)]
    plates = [r for d in documents for r in parse_metadata(d.data)]
    assert all(isinstance(p, OnvifPlateRead) and not p.initialized for p in plates)
    assert len(simulator.sent_reads) >= 5
    await client.close()


async def test_teardown_ends_the_session(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    client = await _playing_client(simulator)
    response = await client.authed("TEARDOWN", simulator.url)
    assert response.status == 200
    assert simulator.stats.teardowns == 1
    [sent] = simulator.push(1)
    assert sent.sessions == 0
    await client.close()


async def test_session_closes_without_keepalive(make_simulator: type) -> None:
    simulator = await _started(make_simulator, session_timeout=1)
    client = await _playing_client(simulator)
    async with asyncio.timeout(5):
        assert await client.reader.read() == b""  # the camera hung up
        await simulator.wait_connections(0)
    assert simulator.stats.sessions_timed_out == 1
    await client.close()


async def test_keepalive_holds_the_session_past_its_timeout(make_simulator: type) -> None:
    simulator = await _started(make_simulator, session_timeout=1)
    client = await _playing_client(simulator)
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5
    while loop.time() < until:
        response = await client.authed("GET_PARAMETER", simulator.url)
        assert response.status == 200
        await asyncio.sleep(0.3)
    assert simulator.stats.sessions_timed_out == 0
    assert simulator.stats.keepalives >= 5
    [sent] = simulator.push(1)
    async with asyncio.timeout(5):
        document = await client.next_document()
    [read] = parse_metadata(document.data)
    assert isinstance(read, OnvifPlateRead) and read.plate == sent.plate
    await client.close()


async def test_options_with_the_session_is_a_keepalive_too(make_simulator: type) -> None:
    simulator = await _started(make_simulator, session_timeout=1, advertise_get_parameter=False)
    client = await _playing_client(simulator)
    for _ in range(6):
        assert (await client.request("OPTIONS", simulator.url)).status == 200
        await asyncio.sleep(0.3)
    assert simulator.stats.sessions_timed_out == 0
    assert simulator.connection_count == 1
    await client.close()


# --------------------------------------------------------------------------
# Faults


async def test_lose_packet_leaves_a_sequence_gap(make_simulator: type) -> None:
    simulator = await _started(make_simulator, motion_every=0)
    client = await _playing_client(simulator)
    simulator.push(1, faults=[Fault.LOSE_PACKET])
    [good] = simulator.push(1)
    async with asyncio.timeout(5):
        damaged = await client.next_document()
        following = await client.next_document()
    sequences = [p.sequence for p in damaged.packets]
    assert any((b - a) % 65536 != 1 for a, b in itertools.pairwise(sequences))
    with pytest.raises(CameraProtocolError):
        parse_metadata(damaged.data)  # what a client that ignores the gap would parse
    [read] = parse_metadata(following.data)
    assert isinstance(read, OnvifPlateRead) and read.plate == good.plate
    await client.close()


async def test_fault_every_nth_read(make_simulator: type) -> None:
    simulator = await _started(make_simulator, faults=[Fault.MISSING_PICTURE], fault_every=2)
    sent = simulator.push(4)
    assert [bool(s.faults) for s in sent] == [False, True, False, True]
    assert simulator.picture_paths() == [sent[0].picture_path, sent[2].picture_path]


async def test_garbage_and_bad_documents_on_the_stream(make_simulator: type) -> None:
    simulator = await _started(make_simulator, motion_every=0)
    client = await _playing_client(simulator)
    [sent] = simulator.push(1, faults=[Fault.GARBAGE, Fault.BAD_DOCUMENT])
    async with asyncio.timeout(5):
        bad = await client.next_document()
        good = await client.next_document()
    assert client.noise.startswith(b"\x00\x17garbage")
    with pytest.raises(CameraProtocolError):
        parse_metadata(bad.data)
    [read] = parse_metadata(good.data)
    assert isinstance(read, OnvifPlateRead) and read.plate == sent.plate
    await client.close()


async def test_drop_cuts_the_connection_mid_document(make_simulator: type) -> None:
    simulator = await _started(make_simulator, motion_every=0)
    client = await _playing_client(simulator)
    already = len(client.received)
    simulator.push(1, faults=[Fault.DROP])
    with pytest.raises(asyncio.IncompleteReadError):
        async with asyncio.timeout(5):
            await client.next_document()
    partial = client.received[already:]
    assert partial  # part of the document came, never its marker
    assert not any(p.marker for p in partial)
    async with asyncio.timeout(5):
        await simulator.wait_connections(0)
    await client.close()


async def test_drop_connections_then_a_new_session_works(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    client = await _playing_client(simulator)
    simulator.drop_connections()
    async with asyncio.timeout(5):
        assert await client.reader.read() == b""
    await client.close()
    again = await _playing_client(simulator)
    assert simulator.stats.sessions_started == 2
    await again.close()


# --------------------------------------------------------------------------
# Pictures


def _basic_header(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _picture_url(simulator: RtspCameraSimulator, path: str) -> str:
    return f"http://127.0.0.1:{simulator.http_port}{path}"


async def test_only_the_10_latest_pictures_are_served(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    sent = simulator.push(12)
    assert len({s.picture_path for s in sent}) == 12
    assert all(re.fullmatch(r"/LPR/\d{14}\d{2,}\.jpg", s.picture_path) for s in sent)
    digest = aiohttp.DigestAuthMiddleware(login=USER, password=PASSWORD)
    async with aiohttp.ClientSession(middlewares=(digest,)) as http:
        for index, read in enumerate(sent):
            async with http.get(_picture_url(simulator, read.picture_path)) as response:
                if index < 2:
                    assert response.status == 404, read.picture_path
                else:
                    assert response.status == 200
                    assert response.content_type == "image/jpeg"
                    body = await response.read()
                    assert body == read.picture
                    assert body[:2] == b"\xff\xd8"
    assert simulator.stats.pictures_served == 10


async def test_pictures_need_the_same_auth(make_simulator: type) -> None:
    simulator = await _started(make_simulator)
    [read] = simulator.push(1)
    url = _picture_url(simulator, read.picture_path)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Digest ")
        async with http.get(url, headers=_basic_header()) as response:
            assert response.status == 401  # Basic is not what this camera asked for
    wrong = aiohttp.DigestAuthMiddleware(login=USER, password="wrong")
    async with aiohttp.ClientSession(middlewares=(wrong,)) as http, http.get(url) as response:
        assert response.status == 401


async def test_pictures_with_basic_auth(make_simulator: type) -> None:
    simulator = await _started(make_simulator, auth=AuthMode.BASIC)
    [read] = simulator.push(1)
    url = _picture_url(simulator, read.picture_path)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="LPR Camera"'
        async with http.get(url, headers=_basic_header()) as response:
            assert response.status == 200
            assert await response.read() == read.picture


async def test_slow_and_missing_pictures(make_simulator: type) -> None:
    simulator = await _started(make_simulator, auth=AuthMode.NONE, slow_picture_seconds=3.0)
    [slow] = simulator.push(1, faults=[Fault.SLOW_PICTURE])
    [missing] = simulator.push(1, faults=[Fault.MISSING_PICTURE])
    [normal] = simulator.push(1)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(
                _picture_url(simulator, slow.picture_path),
                timeout=aiohttp.ClientTimeout(total=0.3),
            ):
                pass
        async with http.get(_picture_url(simulator, missing.picture_path)) as response:
            assert response.status == 404
        async with http.get(_picture_url(simulator, normal.picture_path)) as response:
            assert response.status == 200


# --------------------------------------------------------------------------
# Command line


def test_main_runs_until_sigterm(tmp_path: Path) -> None:
    code = "import sys; from gateway.simulate.rtsp import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--http-port", "0", "--rate", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"RTSP port (\d+) HTTP port (\d+)", line)
        assert match, line
        port = int(match.group(1))

        async def options() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            data = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return data

        assert asyncio.run(options()).startswith(b"RTSP/1.0 200 OK")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


# --------------------------------------------------------------------------
# Interoperability: an RTSP client this project did not write


def _gstreamer_rtspsrc() -> str | None:
    """gst-launch-1.0 when it and the rtspsrc element are installed, else None."""
    launch, inspect = shutil.which("gst-launch-1.0"), shutil.which("gst-inspect-1.0")
    if launch is None or inspect is None:
        return None
    found = subprocess.run(
        [inspect, "--exists", "rtspsrc"], capture_output=True, timeout=30, check=False
    )
    return launch if found.returncode == 0 else None


_DUMP_LINE = re.compile(r"^([0-9a-f]{8}) \(0x[0-9a-f]+\): ((?:[0-9a-f]{2} )+)")


def _dumped_buffers(text: str) -> list[bytes]:
    """The buffers `fakesink dump=true` printed as hex, in order."""
    buffers: list[bytearray] = []
    for line in text.splitlines():
        match = _DUMP_LINE.match(line)
        if match is None:
            continue
        if match.group(1) == "00000000":
            buffers.append(bytearray())
        if buffers:
            buffers[-1] += bytes.fromhex(match.group(2))
    return [bytes(b) for b in buffers]


@pytest.mark.slow
async def test_gstreamer_rtspsrc_plays_the_metadata_track(make_simulator: type) -> None:
    launch = _gstreamer_rtspsrc()
    if launch is None:
        pytest.skip(
            "GStreamer rtspsrc not installed "
            "(apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base "
            "gstreamer1.0-plugins-good)"
        )
    simulator = await _started(make_simulator, rate=10.0, motion_every=0, session_timeout=5)
    process = await asyncio.create_subprocess_exec(
        launch,
        "-q",
        "rtspsrc",
        f"location={simulator.url}",
        f"user-id={USER}",
        f"user-pw={PASSWORD}",
        "protocols=tcp",
        "latency=0",
        "!",
        "application/x-rtp,media=application,encoding-name=VND.ONVIF.METADATA",
        "!",
        "fakesink",
        "dump=true",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GST_DEBUG": "0"},
    )
    try:
        async with asyncio.timeout(20):
            await simulator.wait_playing()
            await simulator.wait_reads(5)
            await asyncio.sleep(0.3)  # let the last documents reach the sink
    finally:
        if process.returncode is None:
            process.terminate()
        stdout, stderr = await process.communicate()

    # GStreamer's own Digest client got in, set up every track, and played.
    methods = [method for method, _ in simulator.stats.requests]
    assert methods.count("SETUP") == 3 and "PLAY" in methods, methods
    assert simulator.stats.auth_failures == 0

    # Reassemble what rtspsrc handed downstream and read it with the ONVIF parser.
    plates: list[str] = []
    document = bytearray()
    # The last dump may be cut short by terminate() on a loaded machine: leave it out.
    for packet in _dumped_buffers(stdout.decode("latin-1"))[:-1]:
        assert packet[0] >> 6 == 2 and packet[1] & 0x7F == 107
        document += packet[12:]
        if packet[1] & 0x80:
            for result in parse_metadata(bytes(document)):
                if isinstance(result, OnvifPlateRead) and not result.initialized:
                    plates.append(result.plate)
            document.clear()
    sent = [s.plate for s in simulator.sent_reads if s.sessions]
    assert len(plates) >= 3, stderr.decode(errors="replace")[-2000:]
    assert plates == sent[: len(plates)]
