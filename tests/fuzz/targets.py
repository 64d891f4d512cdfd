"""Fuzz targets: one function per codec, bytes in, invariants checked.

Each target feeds its input to a sans-IO codec the way the adapter does and
checks what every codec promises: it never raises anything but
`CameraProtocolError` (where raising is its way to refuse), its buffers stay
within their bounds, a stream always ends (no event loop without progress),
and what it returns converts to an event whose JSON is valid (no NaN or
infinity). A violated promise is an AssertionError or any other exception: a
crash for the fuzzer.

The same targets are driven by hypothesis (tests/fuzz/test_fuzz.py, seeded
with the simulators' real output and mutated) and by atheris
(tests/fuzz/run_atheris.py, coverage-guided).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.codecs import http_body, onvif, rtp, rtsp, tcp
from gateway.codecs.scene_tracker import SceneTracker
from gateway.errors import CameraProtocolError
from gateway.event import CameraEvent, PlateEvent, Resolution

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Decoder bounds small enough that a fuzzer reaches them.
TCP_MAX_DATA = 1 << 20
RTSP_MAX_HEADER = 4096
RTSP_MAX_BODY = 65536
RTP_MAX_DOCUMENT = 65536
# More events than bytes fed means the decoder loops without consuming input.
EVENT_BUDGET_PER_BYTE = 1


def _strict_json(document: object) -> None:
    # What the publisher will do with it: NaN/inf or a lone surrogate is a crash.
    json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")


def slices(data: bytes, step: int) -> list[bytes]:
    step = max(1, step)
    return [data[i : i + step] for i in range(0, len(data), step)]


def split_step(data: bytes) -> tuple[int, bytes]:
    """The first byte chooses how the rest is sliced (so one input is one case)."""
    if not data:
        return 1, b""
    rest = data[1:]
    return max(1 + data[0] * 37, len(rest) // 4096), rest


# -- TCP ---------------------------------------------------------------------------


def tcp_stream(data: bytes) -> None:
    """Frame decoder over a sliced stream, then the result parser on each frame."""
    step, stream = split_step(data)
    decoder = tcp.FrameDecoder(TCP_MAX_DATA)
    budget = len(stream) * EVENT_BUDGET_PER_BYTE + 16

    def drain() -> bool:
        nonlocal budget
        while True:
            event = decoder.next_event()
            if event is tcp.NEED_DATA:
                # What is held for an incomplete frame is bounded by the frame limit.
                assert decoder.buffered <= TCP_MAX_DATA + 64 + 65536, decoder.buffered
                return True
            budget -= 1
            assert budget >= 0, "decoder produced events without consuming input"
            if isinstance(event, tcp.Frame):
                assert len(event.data) <= TCP_MAX_DATA
                if event.known_command is tcp.Command.RECOG_POST:
                    tcp_result(event.data)
                elif event.known_command is tcp.Command.LOGIN_REPLY:
                    tcp_login_reply(event.data)
            elif isinstance(event, tcp.StreamBroken | tcp.EndOfStream):
                assert decoder.next_event() == event  # the end is final
                return False

    for piece in slices(stream, step):
        decoder.receive_data(piece)
        if not drain():
            return
    decoder.receive_data(b"")
    drain()


def tcp_result(data: bytes) -> None:
    try:
        result = tcp.parse_recognition_result(data)
    except CameraProtocolError:
        return
    event = tcp.to_plate_event(
        result, camera="fuzz", received=NOW, color_table=tcp.effective_color_table(None)
    )
    assert isinstance(event, PlateEvent)
    _strict_json(event.to_json_dict("lpr"))


def tcp_login_reply(data: bytes) -> None:
    try:
        tcp.parse_login_reply(data)
    except CameraProtocolError:
        return


# -- HTTP --------------------------------------------------------------------------


def http_body_target(data: bytes) -> None:
    try:
        parsed = http_body.parse_json_body(data)
    except CameraProtocolError:
        return
    event = http_body.to_event(parsed, "fuzz", NOW)
    assert isinstance(event, PlateEvent | CameraEvent)
    _strict_json(event.to_json_dict("lpr"))


# -- RTSP --------------------------------------------------------------------------


def rtsp_stream(data: bytes) -> None:
    """The client's reader over a sliced server stream: replies and `$` frames."""
    step, stream = split_step(data)
    reader = rtsp.RtspReader(max_header_bytes=RTSP_MAX_HEADER, max_body_bytes=RTSP_MAX_BODY)
    budget = len(stream) + 16

    def drain() -> bool:
        nonlocal budget
        while True:
            try:
                event = reader.next_event()
            except CameraProtocolError:
                # Failed for good: it says so again rather than resynchronising.
                try:
                    reader.next_event()
                except CameraProtocolError:
                    return False
                raise AssertionError("reader recovered after an error") from None
            if event is rtsp.NEED_DATA:
                assert reader.buffered <= RTSP_MAX_HEADER + RTSP_MAX_BODY + 65540
                return True
            if event is rtsp.CLOSED:
                return False
            budget -= 1
            assert budget >= 0, "reader produced events without consuming input"
            if isinstance(event, rtsp.RtspResponse):
                assert len(event.body) <= RTSP_MAX_BODY
                event.cseq  # noqa: B018 - the header lookup must not raise

    for piece in slices(stream, step):
        reader.receive_data(piece)
        if not drain():
            return
    reader.receive_data(b"")
    drain()


def rtsp_client(data: bytes) -> None:
    """The whole client machine over a sliced server stream: handshake, keep-alive,
    metadata packets into the reassembler and the ONVIF parser, teardown."""
    step, stream = split_step(data)
    client = rtsp.RtspClient(
        "rtsp://127.0.0.1:554/main",
        username="admin",
        password="secret",
        cnonce=lambda: "0a4f113b",
        max_header_bytes=RTSP_MAX_HEADER,
        max_body_bytes=RTSP_MAX_BODY,
    )
    client.start()
    client.data_to_send()
    reassembler = rtp.RtpReassembler(max_document_bytes=RTP_MAX_DOCUMENT)
    budget = len(stream) + 16
    for piece in [*slices(stream, step), b""]:
        client.receive_data(piece)
        try:
            while True:
                event = client.next_event()
                if isinstance(event, rtsp.Signal):
                    break
                budget -= 1
                assert budget >= 0, "client produced events without consuming input"
                if isinstance(event, rtsp.SessionStarted):
                    assert client.state is rtsp.ClientState.PLAYING
                    reassembler.expect_first_sequence(event.first_sequence)
                    client.send_keepalive()
                elif isinstance(event, rtsp.MetadataPacket):
                    reassembler.receive_data(event.data)
                    while (result := reassembler.next_event()) is not rtp.NEED_DATA:
                        if isinstance(result, rtp.RtpDocument):
                            onvif_document(result.data)
        except CameraProtocolError:
            return  # the session would end here: the peer's error, counted
        client.data_to_send()
    client.send_teardown()
    client.data_to_send()


# -- RTP ---------------------------------------------------------------------------


def rtp_packets(data: bytes) -> None:
    """Length-prefixed packets (2 bytes BE each) into the reassembler."""
    reassembler = rtp.RtpReassembler(max_document_bytes=RTP_MAX_DOCUMENT)
    pos = 0
    while pos + 2 <= len(data):
        size = int.from_bytes(data[pos : pos + 2], "big") % 2048
        packet = data[pos + 2 : pos + 2 + size]
        pos += 2 + size
        reassembler.receive_data(packet)
        while (event := reassembler.next_event()) is not rtp.NEED_DATA:
            if isinstance(event, rtp.RtpDocument):
                assert len(event.data) <= RTP_MAX_DOCUMENT
                onvif_document(event.data)
        assert len(reassembler._sources) <= reassembler.max_sources


def rtp_frame_packets(packets: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in packets)


# -- ONVIF -------------------------------------------------------------------------


def onvif_document(data: bytes) -> None:
    try:
        results = onvif.parse_metadata(data)
    except CameraProtocolError:
        return
    tracker = SceneTracker(max_objects=4)
    for result in results:
        if isinstance(result, onvif.OnvifPlateRead):
            _strict_json(onvif.to_plate_event(result, "fuzz", NOW).to_json_dict("lpr"))
            tracker.notification(result.plate, 0.0)
        elif isinstance(result, onvif.OnvifNotification):
            _strict_json(onvif.to_camera_event(result, "fuzz", NOW).to_json_dict())
        elif isinstance(result, onvif.OnvifSceneFrame):
            for finished in tracker.observe(result, 0.5):
                _scene_event(finished.best)
    assert tracker.tracked <= 4
    for finished in tracker.flush():
        _scene_event(finished.best)


def _scene_event(reading: onvif.ScenePlate) -> None:
    event = onvif.scene_to_plate_event(
        reading, "fuzz", NOW, plate_image=reading.image, resolution=Resolution(640, 480)
    )
    _strict_json(event.to_json_dict("lpr"))
    if event.box is not None:
        assert 0 <= event.box.x1 <= event.box.x2 <= 640 and 0 <= event.box.y1 <= event.box.y2 <= 480


TARGETS: dict[str, Callable[[bytes], None]] = {
    "tcp-stream": tcp_stream,
    "tcp-result": tcp_result,
    "http-body": http_body_target,
    "rtsp-stream": rtsp_stream,
    "rtsp-client": rtsp_client,
    "rtp": rtp_packets,
    "onvif": onvif_document,
}
