"""The simulated TCP camera, driven by a plain client speaking the protocol through the codec."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from gateway.codecs.tcp import (
    NEED_DATA,
    Command,
    CorruptFrame,
    DecoderEvent,
    EndOfStream,
    Flavour,
    Frame,
    FrameDecoder,
    GarbageSkipped,
    encode_login_request,
    parse_login_reply,
    parse_recognition_result,
)
from gateway.simulate.tcp import Fault, TcpCameraSimulator, main


class Client:
    """The gateway's side of the wire, minimal: log in, collect decoder events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.events: list[DecoderEvent] = []
        self.ended = False

    @classmethod
    async def connect(cls, port: int, user: str = "admin", password: str = "1234") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_login_request(user, password))
        await writer.drain()
        return cls(reader, writer)

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        async with asyncio.timeout(5):
            while True:
                event = self.decoder.next_event()
                if event is NEED_DATA:
                    self.decoder.receive_data(await self.reader.read(65536))
                    continue
                if isinstance(event, EndOfStream):
                    self.ended = True
                    return None
                self.events.append(event)
                if isinstance(event, Frame):
                    return event

    def close(self) -> None:
        self.writer.close()


async def test_login_then_reads_with_all_fields() -> None:
    async with TcpCameraSimulator(seed=1) as sim:
        client = await Client.connect(sim.port)
        reply = await client.next_frame()
        assert reply is not None and reply.command == Command.LOGIN_REPLY
        assert parse_login_reply(reply.data).ok
        await sim.wait_logged_in()
        await sim.push(3)
        for plate, plate_jpeg, scene_jpeg in sim.sent_reads:
            frame = await client.next_frame()
            assert frame is not None and frame.command == Command.RECOG_POST
            result = parse_recognition_result(frame.data)
            assert result.issues == ()
            assert result.metadata.plate == plate
            assert result.metadata.license_plate == plate
            assert result.metadata.device_id == sim.device_id
            assert (result.plate_jpeg, result.scene_jpeg) == (plate_jpeg, scene_jpeg)
            assert result.classified_by == "resolution"
        assert sim.frames_sent == 3 and sim.logins == 1
        client.close()


async def test_base_flavour_and_numeric_login_reply() -> None:
    async with TcpCameraSimulator(seed=2, flavour=Flavour.BASE, reply_as_number=True) as sim:
        client = await Client.connect(sim.port)
        reply = await client.next_frame()
        assert reply is not None and b'"result": 200' in reply.data
        await sim.push(1)
        frame = await client.next_frame()
        assert frame is not None
        result = parse_recognition_result(frame.data)
        assert result.metadata.license_plate is None and result.metadata.width is None
        assert result.metadata.car_number == sim.sent_reads[0][0][: len(result.metadata.car_number)]
        assert result.classified_by == "order"
        client.close()


@pytest.mark.parametrize(
    ("user", "password", "login_status"),
    [("admin", "wrong", 200), ("root", "1234", 200), ("admin", "1234", 401)],
)
async def test_login_refused(user: str, password: str, login_status: int) -> None:
    async with TcpCameraSimulator(login_status=login_status) as sim:
        client = await Client.connect(sim.port, user, password)
        reply = await client.next_frame()
        assert reply is not None and parse_login_reply(reply.data).status == 401
        assert await client.next_frame() is None  # the camera hangs up
        assert sim.login_failures == 1 and sim.logins == 0
        client.close()


async def test_garbage_fault_never_costs_a_frame() -> None:
    async with TcpCameraSimulator(seed=3, fault=Fault.GARBAGE) as sim:
        client = await Client.connect(sim.port)
        await client.next_frame()
        await sim.push(5)
        plates = []
        for _ in range(5):
            frame = await client.next_frame()
            assert frame is not None
            plates.append(parse_recognition_result(frame.data).metadata.plate)
        assert plates == [plate for plate, _, _ in sim.sent_reads]
        skipped = sum(e.count for e in client.events if isinstance(e, GarbageSkipped))
        assert skipped == sim.garbage_bytes_sent > 0
        client.close()


async def test_split_fault_delivers_whole_frames() -> None:
    async with TcpCameraSimulator(seed=4, fault=Fault.SPLIT) as sim:
        client = await Client.connect(sim.port)
        await client.next_frame()
        await sim.push(3)
        for plate, _, _ in sim.sent_reads:
            frame = await client.next_frame()
            assert frame is not None
            assert parse_recognition_result(frame.data).metadata.plate == plate
        client.close()


async def test_drop_fault_cuts_a_frame_and_closes() -> None:
    async with TcpCameraSimulator(seed=5) as sim:
        client = await Client.connect(sim.port)
        await client.next_frame()
        await sim.push(1)
        await sim.push(1, fault=Fault.DROP)
        assert (sim.frames_sent, sim.frames_dropped) == (1, 1)
        assert await client.next_frame() is not None
        assert await client.next_frame() is None
        assert any(isinstance(e, CorruptFrame) and e.reason == "truncated" for e in client.events)
        client.close()
        # the camera takes the next connection as usual
        again = await Client.connect(sim.port)
        await again.next_frame()
        await sim.push(1)
        frame = await again.next_frame()
        assert frame is not None
        assert parse_recognition_result(frame.data).metadata.plate == sim.sent_reads[-1][0]
        again.close()


async def test_rate_pushes_on_its_own_and_stops_at_count() -> None:
    async with TcpCameraSimulator(seed=6, rate=0, count=4) as sim:
        client = await Client.connect(sim.port)
        await client.next_frame()
        async with asyncio.timeout(5):
            await sim.done.wait()
        frames = [await client.next_frame() for _ in range(4)]
        assert all(f is not None and f.command == Command.RECOG_POST for f in frames)
        assert sim.frames_sent == 4
        client.close()


async def test_push_waits_for_a_login() -> None:
    async with TcpCameraSimulator(seed=7) as sim:
        with pytest.raises(TimeoutError):
            await sim.push(1, wait_seconds=0.05)
        assert sim.frames_sent == 0


async def test_stop_closes_sessions() -> None:
    sim = TcpCameraSimulator(seed=8)
    port = await sim.start()
    client = await Client.connect(port)
    await client.next_frame()
    await sim.stop()
    assert await client.next_frame() is None
    client.close()
    with pytest.raises(OSError):
        await Client.connect(port)


async def test_stop_ends_every_connection_task() -> None:
    # A connection task left running is cancelled when the loop closes, and
    # Python 3.11's start_server callback logs that cancel with a traceback.
    sim = TcpCameraSimulator(seed=9)
    port = await sim.start()
    logged_in = await Client.connect(port)
    await logged_in.next_frame()
    _, silent = await asyncio.open_connection("127.0.0.1", port)  # never logs in
    await asyncio.sleep(0.05)
    await sim.stop()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    logged_in.close()
    silent.close()


def test_main_runs_until_count(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.broker import free_port

    port = free_port()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            main(["--port", str(port), "--rate", "0", "--count", "2", "--fault", "garbage"])
        )
    )
    thread.start()
    frames: list[Frame] = []

    async def consume() -> None:
        for _ in range(100):
            with contextlib.suppress(OSError):
                client = await Client.connect(port)
                break
            await asyncio.sleep(0.05)
        await client.next_frame()
        while (frame := await client.next_frame()) is not None:
            frames.append(frame)
        client.close()

    started = time.monotonic()
    asyncio.run(consume())
    thread.join(10)
    assert not thread.is_alive() and result == [0]
    assert len(frames) >= 2 and time.monotonic() - started < 10
    out = capsys.readouterr().out
    assert f"listening on 127.0.0.1:{port}" in out and "sent 2 reads" in out
