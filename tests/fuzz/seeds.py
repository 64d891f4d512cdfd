"""Seed inputs for the fuzz targets: real output of the project's camera simulators.

- TCP: the frames the TCP simulator writes (login reply, recognition frames of
  every flavour with the real plate and scene JPEGs);
- HTTP: the bodies the HTTP simulator posts (every time format, data-URI and
  bare base64 images, other event kinds, image-less bodies);
- RTSP: the bytes the RTSP simulator sends a client over a real socket
  (OPTIONS, DESCRIBE with SDP, SETUP, PLAY replies, then interleaved RTP frames
  carrying ONVIF documents);
- RTP: the packets those documents are cut into;
- ONVIF: plate, motion and Initialized documents, with other namespace prefixes.

Large images are kept in one seed per target and cut short in the others, so
that most fuzz cases run in microseconds.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime

from gateway.codecs import onvif, rtp, rtsp, tcp
from gateway.simulate.common import PlateGenerator
from gateway.simulate.http import HttpCameraSimulator
from gateway.simulate.rtsp import AuthMode, RtspCameraSimulator
from gateway.simulate.tcp import TcpCameraSimulator
from tests.fuzz.targets import rtp_frame_packets

MOMENT = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)


@functools.cache
def tcp_frames() -> list[bytes]:
    sim = TcpCameraSimulator(seed=1)
    generator = PlateGenerator(1)
    frames = [tcp.encode_login_reply(200), tcp.encode_login_reply(401, as_number=True)]
    for n, flavour in enumerate(tcp.Flavour):
        read = generator.read("fuzz")
        images = [read.plate_jpeg, read.scene_jpeg] if n == 0 else [read.plate_jpeg[:600]]
        frames.append(
            tcp.encode_recognition_frame(sim.next_metadata(read), images, flavour=flavour)
        )
    return frames


@functools.cache
def tcp_streams() -> list[bytes]:
    frames = tcp_frames()
    small = frames[3:]
    return [
        b"\xff" + frames[0] + frames[2],  # login reply, then a full-size read (~9 kB slices)
        b"\x05" + frames[0] + b"".join(small),
        b"\x40" + b"garbage\xcc\x00" + b"".join(small) + small[0][: len(small[0]) // 2],
        # The log-amplification stream: a fake header every 10 bytes, then a read.
        b"\x02" + frames[0] + b"\xcc\xff\x01\x88\x02\x00\x00\x00\x00\x00" * 200 + small[0],
    ]


@functools.cache
def tcp_results() -> list[bytes]:
    """The DATA of the recognition frames (what parse_recognition_result gets)."""
    out = []
    for frame in tcp_frames()[2:]:
        decoder = tcp.FrameDecoder()
        decoder.receive_data(frame)
        event = decoder.next_event()
        assert isinstance(event, tcp.Frame)
        out.append(event.data)
    return out


@functools.cache
def http_bodies() -> list[bytes]:
    sim = HttpCameraSimulator("http://127.0.0.1/lpr/fuzz", seed=2)
    bodies = [sim.build_read(0)[1]]
    small = HttpCameraSimulator("http://127.0.0.1/lpr/fuzz", seed=3, images=False)
    bodies += [small.build_read(i, MOMENT)[1] for i in range(6)]
    bodies += [small.build_other_event(i)[1] for i in range(5)]
    # A body with short (but real-prefix) images: the base64 paths without 400 kB each time.
    full = sim.build_read(1)[1]
    cut = full.find(b'"plate_image"')
    bodies.append(full[:cut] + b'"plate_image": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}')
    return bodies


@functools.cache
def onvif_documents() -> list[bytes]:
    prefixes = {"tt": "ns0", "wsnt": "b", "tns1": "t1"}
    return [
        onvif.build_plate_document(
            "부산02가1234", MOMENT, "/LPR/20260301123015.jpg", fraction=True
        ),
        onvif.build_plate_document("AB123CD", MOMENT, None, speed=None, direction="2"),
        onvif.build_plate_document("XY1", MOMENT, "/LPR/1.jpg", prefixes=prefixes),
        onvif.build_motion_document(MOMENT, True),
        onvif.build_initialized_document(MOMENT, "AB123CD", "/LPR/0.jpg"),
        # A Profile M scene description: two plate objects (crop inline, by ImageRef), a Delete.
        onvif.build_scene_document(
            [
                onvif.SceneFrameSpec(
                    MOMENT,
                    [
                        onvif.SceneObjectSpec(
                            1,
                            [("AB123CD", 0.9), ("A8123CD", 0.4)],
                            country_code="FR",
                            vehicle=("Car", "Renault", "Clio"),
                            color_ycbcr=(235.0, 128.0, 128.0),
                            box=(-0.5, 0.1, -0.2, -0.1),
                            image=b"\xff\xd8\xff\xe0 tiny crop \xff\xd9",
                        ),
                        onvif.SceneObjectSpec(2, [("부산02가1234", 0.7)], image_ref="/LPR/2.jpg"),
                    ],
                    deleted=[3],
                )
            ]
        ),
    ]


@functools.cache
def rtp_streams() -> list[bytes]:
    out = []
    for n, document in enumerate(onvif_documents()):
        packets = rtp.packetize(document, 0x1234 + n, 65530, 90000 * n, 107, max_payload=400)
        out.append(rtp_frame_packets(packets))
    return out


@functools.cache
def rtsp_streams() -> list[bytes]:
    """What the RTSP simulator sends a client, captured from a real session."""
    captured = asyncio.run(_capture_rtsp_session())
    # The first byte picks the slicing: byte by byte (0) only for a short
    # prefix, which costs microseconds per byte; the whole session in 38-byte
    # slices (1), half of it in 260-byte slices (7).
    return [
        b"\x01" + captured,
        b"\x07" + captured[: len(captured) // 2],
        b"\x00" + captured[:1500],
    ]


async def _capture_rtsp_session() -> bytes:
    async with RtspCameraSimulator(auth=AuthMode.NONE, rate=0, seed=4, motion_every=2) as sim:
        reader, writer = await asyncio.open_connection(sim.host, sim.rtsp_port)
        received = bytearray()
        parser = rtsp.RtspReader()

        async def exchange(
            method: str, uri: str, cseq: int, headers: list[tuple[str, str]]
        ) -> rtsp.RtspResponse:
            writer.write(rtsp.encode_request(method, uri, cseq, headers))
            while True:
                event = parser.next_event()
                if isinstance(event, rtsp.RtspResponse):
                    return event
                data = await reader.read(65536)
                received.extend(data)
                parser.receive_data(data)

        await exchange("OPTIONS", sim.url, 1, [])
        described = await exchange("DESCRIBE", sim.url, 2, [("Accept", "application/sdp")])
        track = rtsp.find_metadata_track(rtsp.parse_sdp(described.body), sim.url + "/")
        setup = await exchange(
            "SETUP", track.control_url, 3, [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")]
        )
        session = (setup.headers.get("Session") or "").split(";")[0]
        await exchange("PLAY", sim.url, 4, [("Session", session)])
        sim.push(4)
        await sim._drain_all()
        async with asyncio.timeout(5):
            while received.count(b"$") < 8:
                received.extend(await reader.read(65536))
        writer.close()
        return bytes(received)


def seeds(target: str) -> list[bytes]:
    return {
        "tcp-stream": tcp_streams,
        "tcp-result": tcp_results,
        "http-body": http_bodies,
        "rtsp-stream": rtsp_streams,
        "rtsp-client": rtsp_streams,
        "rtp": rtp_streams,
        "onvif": onvif_documents,
    }[target]()
