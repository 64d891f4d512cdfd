"""A simulated TCP-type LPR camera: listens, checks the login, pushes recognition frames.

Used by `lpr-gateway simulate tcp`, the demo, the tests and the benchmark. It
speaks the protocol through the same codec as the gateway and can misbehave on
purpose (garbage between frames, frames split across writes, drops mid-frame).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import random
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.codecs.tcp import (
    NEED_DATA,
    SIG,
    Command,
    EndOfStream,
    Flavour,
    Frame,
    FrameDecoder,
    RecognitionMetadata,
    StreamBroken,
    encode_login_reply,
    encode_recognition_frame,
    parse_login_request,
)
from gateway.errors import CameraProtocolError
from gateway.simulate.common import (
    PLATE_HEIGHT,
    PLATE_WIDTH,
    SCENE_HEIGHT,
    SCENE_WIDTH,
    PlateGenerator,
    SimulatedRead,
)

log = logging.getLogger(__name__)

LOGIN_TIMEOUT_SECONDS = 10.0
_REGIONS = ("KR", "DE", "FR", "NL")


class Fault(enum.Enum):
    NONE = "none"
    GARBAGE = "garbage"  # random bytes (never a frame start) before frames
    SPLIT = "split"  # each frame written in several pieces with pauses
    DROP = "drop"  # write part of a frame, then close the connection


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    peer: str
    logged_in: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TcpCameraSimulator:
    """A camera on 127.0.0.1 (port 0: any free port) that the gateway connects to.

    `rate` reads per second are pushed to logged-in sessions (0: as fast as the
    connection takes them; None: only on `push()`). `fault_every` applies the
    fault to every n-th frame (1: every frame).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "admin",
        password: str = "1234",
        login_status: int = 200,
        reply_as_number: bool = False,
        rate: float | None = None,
        flavour: Flavour = Flavour.ALL,
        fault: Fault = Fault.NONE,
        fault_every: int = 1,
        count: int | None = None,
        seed: int | None = None,
        camera: str = "sim",
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.login_status = login_status
        self.reply_as_number = reply_as_number
        self.rate = rate
        self.flavour = flavour
        self.fault = fault
        self.fault_every = max(1, fault_every)
        self.count = count
        self.camera = camera
        self.device_id = uuid.UUID(int=random.Random(seed).getrandbits(128), version=4)
        self._generator = PlateGenerator(seed)
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        # The connections' tasks, so that stop() ends them: one still running when
        # the loop closes is cancelled there, and Python 3.11's start_server
        # callback logs the cancel as an error (a traceback per camera at exit).
        self._serving: set[asyncio.Task[None]] = set()
        self._pusher: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.done = asyncio.Event()  # set once `count` reads were sent
        # What happened, for tests and the CLI.
        self.connections = 0
        self.logins = 0
        self.login_failures = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.garbage_bytes_sent = 0
        self.sent_reads: list[tuple[str, bytes, bytes]] = []
        self.dropped_reads: list[tuple[str, bytes, bytes]] = []
        self.sent_times: list[float] = []

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.rate is not None:
            self._pusher = asyncio.create_task(self._push_at_rate(), name="sim-tcp-pusher")
        log.info("simulated TCP camera %s listening on %s:%d", self.camera, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.writer.close()
        if self._serving:
            # Each ends on its closed connection (or a login still waiting times out).
            await asyncio.wait(set(self._serving), timeout=LOGIN_TIMEOUT_SECONDS)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpCameraSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def logged_in_sessions(self) -> int:
        return sum(1 for s in self._sessions if s.logged_in and not s.writer.is_closing())

    async def wait_logged_in(self, wait_seconds: float = 10.0, sessions: int = 1) -> None:
        async with asyncio.timeout(wait_seconds), self._changed:
            await self._changed.wait_for(lambda: self.logged_in_sessions >= sessions)

    async def disconnect_all(self) -> None:
        """Close every session (the camera rebooting, say)."""
        for session in list(self._sessions):
            session.writer.close()

    async def send_raw(self, data: bytes, wait_seconds: float = 10.0) -> None:
        """Send any bytes (a test's hostile stream) to every logged-in session, between
        frames; waits for a session if there is none."""
        await self.wait_logged_in(wait_seconds)
        for session in [s for s in self._sessions if s.logged_in and not s.writer.is_closing()]:
            async with session.lock:
                with contextlib.suppress(ConnectionError, OSError):
                    session.writer.write(data)
                    await session.writer.drain()

    # -- pushing reads -------------------------------------------------------

    async def push(
        self, n: int = 1, *, fault: Fault | None = None, wait_seconds: float = 10.0
    ) -> None:
        """Send n reads to every logged-in session, waiting for one if there is none."""
        for _ in range(n):
            while True:
                await self.wait_logged_in(wait_seconds)
                if await self._send_read(fault):
                    break

    def next_metadata(self, read: SimulatedRead) -> RecognitionMetadata:
        r = self._random
        return RecognitionMetadata(
            device_id=self.device_id,
            time_ms=int(time.time() * 1000),
            car_number=read.plate,
            car_color=r.randint(0, 8),
            plate_color=r.randint(0, 8),
            speed=r.randint(0, 80),
            image_count=2,
            direction=r.choice((1, 2)),
            region=r.choice(_REGIONS),
            roi=r.randint(1, 4),
            license_plate=read.plate,
            vehicle_type=r.randint(1, 5),
            confidence=round(r.uniform(0.6, 1.0), 2),
            plate_type=r.randint(0, 3),
            distance=0,
            azimuth=0.0,
            vehicle_count=read.sequence,
            width=SCENE_WIDTH,
            height=SCENE_HEIGHT,
            x1=(x1 := r.randint(0, SCENE_WIDTH - PLATE_WIDTH)),
            y1=(y1 := r.randint(0, SCENE_HEIGHT - PLATE_HEIGHT)),
            x2=x1 + PLATE_WIDTH,
            y2=y1 + PLATE_HEIGHT,
        )

    async def _send_read(self, fault: Fault | None) -> bool:
        """Whether the read went out (or was cut on purpose) to some session."""
        read = self._generator.read(self.camera)
        frame = encode_recognition_frame(
            self.next_metadata(read), [read.plate_jpeg, read.scene_jpeg], flavour=self.flavour
        )
        if fault is None:
            nth = self.frames_sent + self.frames_dropped + 1
            fault = self.fault if nth % self.fault_every == 0 else Fault.NONE
        entry = (read.plate, read.plate_jpeg, read.scene_jpeg)
        sessions = [s for s in self._sessions if s.logged_in and not s.writer.is_closing()]
        if not sessions:
            return False
        sent = False
        for session in sessions:
            with contextlib.suppress(ConnectionError, OSError):
                sent |= await self._write_frame(session, frame, fault)
        if fault is Fault.DROP:
            self.frames_dropped += 1
            self.dropped_reads.append(entry)
        elif sent:
            self.frames_sent += 1
            self.sent_reads.append(entry)
            self.sent_times.append(time.time())
            if self.count is not None and self.frames_sent >= self.count:
                self.done.set()
        return sent or fault is Fault.DROP

    async def _write_frame(self, session: _Session, frame: bytes, fault: Fault) -> bool:
        writer = session.writer
        async with session.lock:
            if writer.is_closing():
                return False
            if fault is Fault.GARBAGE:
                garbage = self._garbage()
                self.garbage_bytes_sent += len(garbage)
                writer.write(garbage)
            if fault is Fault.DROP:
                session.logged_in = False
                writer.write(frame[: self._random.randint(1, len(frame) - 1)])
                await writer.drain()
                writer.close()
                return False
            if fault is Fault.SPLIT:
                cuts = sorted(self._random.sample(range(1, len(frame)), k=min(6, len(frame) - 1)))
                for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True):
                    writer.write(frame[a:b])
                    await writer.drain()
                    await asyncio.sleep(0.001)
                return True
            writer.write(frame)
            await writer.drain()
            return True

    def _garbage(self) -> bytes:
        garbage = bytes(self._random.randrange(256) for _ in range(self._random.randint(1, 64)))
        # Never a frame start, and never a CC that a following frame's CC FF could pair with.
        return garbage.replace(SIG, b"\x00\x00").replace(b"\xcc", b"\x00")

    async def _push_at_rate(self) -> None:
        assert self.rate is not None
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        await self.wait_logged_in(wait_seconds=1e9)
        # Cameras are not in lockstep: start at a random point of the first interval.
        await asyncio.sleep(self._random.uniform(0, interval))
        next_at = time.monotonic()
        while self.count is None or self.frames_sent < self.count:
            await self.wait_logged_in(wait_seconds=1e9)
            await self._send_read(None)
            if interval:
                next_at = max(next_at + interval, time.monotonic() - interval)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            else:
                await asyncio.sleep(0)

    # -- one connection ----------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        peer = str(writer.get_extra_info("peername"))
        session = _Session(writer, peer)
        self.connections += 1
        self._sessions.add(session)
        try:
            await self._login(session, reader)
            # The camera ignores what the gateway sends after the login; reading
            # lets it notice the gateway closing.
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError, TimeoutError, CameraProtocolError) as exc:
            log.info("simulated camera %s: session %s ended: %s", self.camera, peer, exc)
        finally:
            self._sessions.discard(session)
            writer.close()
            async with self._changed:
                self._changed.notify_all()

    async def _login(self, session: _Session, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(max_data_size=65536)
        async with asyncio.timeout(LOGIN_TIMEOUT_SECONDS):
            while True:
                event = decoder.next_event()
                if event is NEED_DATA:
                    data = await reader.read(65536)
                    decoder.receive_data(data)
                    continue
                if isinstance(event, EndOfStream | StreamBroken):
                    raise ConnectionError("connection closed before login")
                if isinstance(event, Frame) and event.command == Command.LOGIN_REQ:
                    break
        request = parse_login_request(event.data)
        ok = (request.user, request.password) == (self.user, self.password)
        status = self.login_status if ok else 401
        session.writer.write(encode_login_reply(status, as_number=self.reply_as_number))
        await session.writer.drain()
        if status != 200:
            self.login_failures += 1
            log.info("simulated camera %s: refused login of %r", self.camera, request.user)
            raise ConnectionError(f"login refused with {status}")
        self.logins += 1
        session.logged_in = True
        async with self._changed:
            self._changed.notify_all()


# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpr-gateway simulate tcp",
        description="A TCP-type LPR camera: the gateway connects to it and receives reads.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (0: any)")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="reads per second (0: as fast as possible)"
    )
    parser.add_argument("--count", type=int, default=None, help="stop after this many reads")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="1234")
    parser.add_argument(
        "--login-status",
        type=int,
        default=200,
        help="status to answer a correct login with (e.g. 401 to test refusal)",
    )
    parser.add_argument(
        "--flavour", choices=[f.value for f in Flavour], default="all", help="firmware fields"
    )
    parser.add_argument("--fault", choices=[f.value for f in Fault], default="none")
    parser.add_argument(
        "--fault-every", type=int, default=5, help="apply the fault to every n-th frame"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--camera", default="sim", help="name tagged into the images")
    return parser


async def _run(args: argparse.Namespace) -> int:
    simulator = TcpCameraSimulator(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        login_status=args.login_status,
        rate=args.rate,
        flavour=Flavour(args.flavour),
        fault=Fault(args.fault),
        fault_every=args.fault_every,
        count=args.count,
        seed=args.seed,
        camera=args.camera,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    port = await simulator.start()
    print(f"simulated TCP camera listening on {args.host}:{port}", flush=True)
    try:
        stopper = asyncio.create_task(stop.wait())
        done = asyncio.create_task(simulator.done.wait())
        reported = 0
        while not stop.is_set() and not simulator.done.is_set():
            await asyncio.wait({stopper, done}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for plate, *_ in simulator.sent_reads[reported:]:
                print(f"sent {plate}", flush=True)
            reported = len(simulator.sent_reads)
        stopper.cancel()
        done.cancel()
    finally:
        await simulator.stop()
    print(
        f"sent {simulator.frames_sent} reads, dropped {simulator.frames_dropped}, "
        f"{simulator.logins} logins, {simulator.login_failures} refused",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}")
        return 1
