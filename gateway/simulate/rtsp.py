"""A simulated RTSP-type LPR camera: RTSP server with an ONVIF metadata track, picture endpoint.

The RTSP side (asyncio) answers OPTIONS/DESCRIBE/SETUP/PLAY/GET_PARAMETER/
TEARDOWN behind Basic or Digest, announces video + audio + metadata tracks and
streams `tt:MetadataStream` documents over RTP interleaved in the RTSP
connection, each split over several packets. The HTTP side (aiohttp) serves
the plate pictures the notifications name, keeping only the 10 latest, as the
vendor note says. With `profile_m` it streams ONVIF scene descriptions
instead (Profile M `tt:Frame` objects: several vehicles at once, their plate
likelihoods improving frame by frame, crops inline or by `ImageRef`, objects
ending by absence or by the object tree's `Delete`). Its request parser and
Digest check are its own, written from the RFCs, so that it checks the
gateway's client rather than mirroring it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import enum
import hashlib
import hmac
import itertools
import logging
import random
import re
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from gateway.codecs import onvif
from gateway.codecs.rtp import packetize
from gateway.simulate.common import PlateGenerator, plate_jpeg, tagged_jpeg

log = logging.getLogger(__name__)

METADATA_PAYLOAD_TYPE = 107
METADATA_TRACK = 3  # trackID of the metadata media in the SDP
RTP_CLOCK_HZ = 90_000
DEFAULT_REALM = "LPR Camera"
DEFAULT_STREAM_PATH = "/main"
PICTURES_KEPT = 10  # "Only 10 latest images are available for download."
# Small enough that a plate document (~1.2 KB) always spans several packets.
DEFAULT_MAX_PAYLOAD = 400
MAX_REQUEST_HEADER_BYTES = 16 * 1024
MAX_REQUEST_BODY_BYTES = 64 * 1024
# sent_reads history: each entry holds its ~20 KB picture, so keep it short
# (100 simulated cameras in a benchmark must not grow without bound).
DEFAULT_SENT_READS_KEPT = 256
MAX_NONCES = 1024
SERVER_NAME = "lpr-gateway RTSP camera simulator"

_SDP_TEMPLATE = """v=0
o=- {session_version} 1 IN {address_type} {address}
s=LPR Camera
i=Simulated Milesight-family LPR camera
c=IN IP4 0.0.0.0
t=0 0
a=control:*
a=range:npt=now-
m=video 0 RTP/AVP 96
b=AS:4096
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=640028;sprop-parameter-sets={sprop}
a=framerate:25
a=control:trackID=1
m=audio 0 RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=control:trackID=2
m=application 0 RTP/AVP {pt}
a=rtpmap:{pt} vnd.onvif.metadata/{clock}
a=control:trackID={metadata_track}
"""


# SPS/PPS of a 1080p H.264 stream, so that SDP-reading clients see a plausible video track.
_SPROP = "Z2QAKKwbGoB4AiflwFuAgICgAAB9AAAOph0MAHz4AAjJdd5caGAD58AARkuu8uFA,aO44MAA="


class AuthMode(enum.Enum):
    DIGEST = "digest"
    BASIC = "basic"
    NONE = "none"


class Fault(enum.Enum):
    """What goes wrong on every `fault_every`-th read."""

    DROP = "drop"  # half the document's packets, then the connection is cut
    GARBAGE = "garbage"  # raw bytes that are neither a message nor a '$' frame
    BAD_DOCUMENT = "bad-document"  # a well-framed RTP document that is not XML
    LOSE_PACKET = "lose-packet"  # one packet of the document never sent
    SLOW_PICTURE = "slow-picture"  # the picture endpoint answers after `slow_picture_seconds`
    MISSING_PICTURE = "missing-picture"  # the notification names a picture never stored


@dataclass(frozen=True, slots=True)
class SentRead:
    """One plate notification the simulator produced, as a test expects to see it."""

    sequence: int
    plate: str
    time: datetime  # as written in the document (whole seconds or milliseconds)
    picture_path: str
    picture: bytes  # the JPEG served at picture_path (until 10 newer reads push it out)
    document: bytes
    speed_kmh: int
    direction_code: int
    faults: frozenset[Fault]
    sessions: int  # playing sessions it was sent to


@dataclass(frozen=True, slots=True)
class SceneVehicle:
    """One vehicle the simulator drove through its scene description, as a test
    expects the gateway to publish it: once, with its best reading."""

    object_id: int
    plate: str  # the best (last) reading; earlier frames misread it
    likelihood: float  # of the best reading
    picture: bytes  # the best reading's crop: inline in its frame, or served at picture_ref
    picture_ref: str | None  # the ImageRef path (None: the crop is inline)
    ended_by: str  # "absence" or "delete"
    frames: int  # frames the object appeared in
    time: datetime  # UtcTime of the frame of the best reading (milliseconds)


@dataclass(slots=True)
class SimulatorStats:
    connections: int = 0
    sessions_started: int = 0  # PLAY answered
    sessions_timed_out: int = 0
    keepalives: int = 0  # GET_PARAMETER / OPTIONS / SET_PARAMETER inside a session
    teardowns: int = 0
    auth_failures: int = 0  # wrong credentials (a first request without any is not counted)
    stale_nonces: int = 0
    picture_requests: int = 0
    pictures_served: int = 0
    documents_sent: int = 0
    packets_sent: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, uri), bounded


# --------------------------------------------------------------------------
# Server-side RTSP request parsing (the client codec in gateway/codecs is client-side)


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True, slots=True)
class _ClientFrame:
    channel: int
    payload: bytes


class _BadRequest(Exception):
    pass


_REQUEST_LINE = re.compile(r"^([A-Z_]+) (\S+) RTSP/1\.0$")


class _RequestParser:
    """Bytes from a client in, requests and the client's `$` frames (RTCP) out. Bounded."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[_Request | _ClientFrame]:
        self._buffer += data
        out: list[_Request | _ClientFrame] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def _next(self) -> _Request | _ClientFrame | None:
        buf = self._buffer
        while buf[:2] == b"\r\n":
            del buf[:2]
        if not buf:
            return None
        if buf[0] == 0x24:  # '$': interleaved data from the client (RTCP receiver reports)
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from(">H", buf, 2)
            if len(buf) < 4 + length:
                return None
            frame = _ClientFrame(buf[1], bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            return frame
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_REQUEST_HEADER_BYTES:
                raise _BadRequest("request headers too large")
            return None
        try:
            lines = bytes(buf[:end]).decode("utf-8").split("\r\n")
        except UnicodeDecodeError:
            raise _BadRequest("request head is not UTF-8") from None
        match = _REQUEST_LINE.match(lines[0])
        if match is None:
            raise _BadRequest(f"bad request line {lines[0][:80]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise _BadRequest(f"bad header line {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        request = _Request(match.group(1), match.group(2), tuple(headers), b"")
        length_text = request.header("Content-Length") or "0"
        try:
            length = int(length_text)
        except ValueError:
            raise _BadRequest(f"Content-Length {length_text!r}") from None
        if not 0 <= length <= MAX_REQUEST_BODY_BYTES:
            raise _BadRequest(f"Content-Length {length}")
        if len(buf) < end + 4 + length:
            return None
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        return _Request(request.method, request.uri, request.headers, body)


def _response(
    status: int,
    reason: str,
    cseq: str | None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    lines = [f"RTSP/1.0 {status} {reason}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines.append(f"Server: {SERVER_NAME}")
    lines.append("Date: " + datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"))
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _garbage(rng: random.Random) -> bytes:
    """Bytes that are neither a '$' frame nor a message ('R' of "RTSP/1.0" and '$' left out,
    so that a test can tell where they end; a real client cannot, and must reconnect)."""
    noise = bytes(b for b in rng.randbytes(48) if b not in (0x24, 0x52))
    return b"\x00\x17garbage\xff\xfe" + noise


def _interleaved(channel: int, packet: bytes) -> bytes:
    return b"$" + bytes([channel]) + struct.pack(">H", len(packet)) + packet


# --------------------------------------------------------------------------
# Basic and Digest (RFC 2617 / RFC 7616, MD5) verification, shared by RTSP and HTTP


class _AuthResult(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    BAD = "bad"
    STALE = "stale"


_AUTH_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _parse_auth_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(text):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
    return params


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


class _Credentials:
    def __init__(
        self,
        mode: AuthMode,
        username: str,
        password: str,
        realm: str,
        qop: bool,
        nonce_lifetime: float,
    ) -> None:
        self.mode = mode
        self.username = username
        self.password = password
        self.realm = realm
        self.qop = qop
        self.nonce_lifetime = nonce_lifetime
        self._nonces: collections.OrderedDict[str, float] = collections.OrderedDict()

    def challenge(self, stale: bool = False) -> str:
        if self.mode is AuthMode.BASIC:
            return f'Basic realm="{self.realm}"'
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = time.monotonic()
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)
        parts = [f'realm="{self.realm}"', f'nonce="{nonce}"', "algorithm=MD5"]
        if self.qop:
            parts.append('qop="auth"')
        if stale:
            parts.append("stale=TRUE")
        return "Digest " + ", ".join(parts)

    def verify(self, method: str, uri: str, authorization: str | None) -> _AuthResult:
        if self.mode is AuthMode.NONE:
            return _AuthResult.OK
        if not authorization:
            return _AuthResult.MISSING
        scheme, _, rest = authorization.strip().partition(" ")
        if self.mode is AuthMode.BASIC:
            if scheme.lower() != "basic":
                return _AuthResult.BAD
            try:
                decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return _AuthResult.BAD
            expected = f"{self.username}:{self.password}"
            return _AuthResult.OK if hmac.compare_digest(decoded, expected) else _AuthResult.BAD
        if scheme.lower() != "digest":
            return _AuthResult.BAD
        params = _parse_auth_params(rest)
        if (
            params.get("username") != self.username
            or params.get("realm") != self.realm
            or params.get("algorithm", "MD5").upper() != "MD5"
            or not _same_uri(params.get("uri", ""), uri)
        ):
            return _AuthResult.BAD
        nonce = params.get("nonce", "")
        ha1 = _md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = _md5(f"{method}:{params['uri']}")
        qop = params.get("qop")
        if qop is not None:
            if qop.lower() != "auth" or "nc" not in params or "cnonce" not in params:
                return _AuthResult.BAD
            expected = _md5(f"{ha1}:{nonce}:{params['nc']}:{params['cnonce']}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        if not hmac.compare_digest(params.get("response", "").lower(), expected):
            return _AuthResult.BAD
        issued = self._nonces.get(nonce)
        if issued is None or time.monotonic() - issued > self.nonce_lifetime:
            # The right password with a nonce we no longer honour: stale, not wrong.
            return _AuthResult.STALE
        return _AuthResult.OK


def _same_uri(digest_uri: str, request_uri: str) -> bool:
    if digest_uri == request_uri:
        return True
    # Some clients put only the path in the digest uri of an absolute request URL.
    path = re.sub(r"^[a-z]+://[^/]*", "", request_uri)
    return digest_uri in (path, path or "/")


# --------------------------------------------------------------------------
# RTSP sessions and connections


@dataclass(slots=True)
class _Session:
    id: str
    timeout: int
    ssrc: int
    sequence: int
    channels: dict[int, int] = field(default_factory=dict)  # trackID → RTP channel
    playing: bool = False
    last_activity: float = field(default_factory=time.monotonic)

    @property
    def metadata_channel(self) -> int | None:
        return self.channels.get(METADATA_TRACK)


class _Connection:
    def __init__(
        self,
        simulator: RtspCameraSimulator,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.simulator = simulator
        self.reader = reader
        self.writer = writer
        self.parser = _RequestParser()
        self.session: _Session | None = None
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sockname = writer.get_extra_info("sockname")
        host = sockname[0] if sockname else simulator.host
        # The address the client reached us on, for Content-Base and RTP-Info URLs.
        self.local_address = host
        self.local_host = f"[{host}]" if ":" in host else host

    @property
    def playing(self) -> bool:
        return not self.closed and self.session is not None and self.session.playing

    def write(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def abort(self) -> None:
        self.closed = True
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class RtspCameraSimulator:
    """One simulated camera. `await start()` → (rtsp_port, http_port) on `host`.

    With `rate` > 0 it produces that many plate reads per second while at least
    one session is playing; `push(n)` produces reads at once (tests).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        rtsp_port: int = 0,
        http_port: int = 0,
        username: str = "admin",
        password: str = "admin",
        auth: AuthMode = AuthMode.DIGEST,
        digest_qop: bool = True,
        realm: str = DEFAULT_REALM,
        nonce_lifetime_seconds: float = 300.0,
        rate: float = 1.0,
        motion_every: int = 3,
        session_timeout: int = 60,
        enforce_session_timeout: bool = True,
        advertise_get_parameter: bool = True,
        stream_path: str = DEFAULT_STREAM_PATH,
        faults: Iterable[Fault] = (),
        fault_every: int = 5,
        slow_picture_seconds: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        pictures_kept: int = PICTURES_KEPT,
        initialized_repeats_last_read: bool = True,
        sent_reads_kept: int = DEFAULT_SENT_READS_KEPT,
        seed: int | None = None,
        camera: str = "sim-rtsp",
        profile_m: bool = False,
        scene_fps: float = 10.0,
    ) -> None:
        self.host = host
        self.rtsp_port = rtsp_port
        self.http_port = http_port
        self.credentials = _Credentials(
            auth, username, password, realm, digest_qop, nonce_lifetime_seconds
        )
        self.rate = rate
        # Stop producing reads but keep sessions and pictures: lets a test end a
        # run without cutting off the gateway's fetch of the last pictures.
        self.paused = False
        self.motion_every = motion_every
        self.session_timeout = session_timeout
        self.enforce_session_timeout = enforce_session_timeout
        self.advertise_get_parameter = advertise_get_parameter
        self.stream_path = "/" + stream_path.strip("/")
        self.faults = frozenset(faults)
        self.fault_every = max(1, fault_every)
        self.slow_picture_seconds = slow_picture_seconds
        self.max_payload = max_payload
        self.pictures_kept = pictures_kept
        self.initialized_repeats_last_read = initialized_repeats_last_read
        self.camera = camera
        self.profile_m = profile_m
        self.scene_fps = scene_fps
        self.scene_vehicles: collections.deque[SceneVehicle] = collections.deque(
            maxlen=sent_reads_kept
        )
        self._object_ids = itertools.count(1)
        # A test may make the PLAY answer's RTP-Info `seq=` any text (hostile
        # numbers: "²", 5,000 digits); None: the real sequence number.
        self.rtp_info_seq_text: str | None = None
        self.stats = SimulatorStats()
        self.sent_reads: collections.deque[SentRead] = collections.deque(maxlen=sent_reads_kept)
        self._random = random.Random(seed)
        self._generator = PlateGenerator(seed)
        self._pictures: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._slow_pictures: set[str] = set()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._producer: asyncio.Task[None] | None = None
        self._playing_changed = asyncio.Event()
        self._read_sent = asyncio.Event()
        self._session_ids = itertools.count(self._random.randrange(10_000_000, 90_000_000))

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> tuple[int, int]:
        self._server = await asyncio.start_server(self._serve, self.host, self.rtsp_port)
        self.rtsp_port = self._server.sockets[0].getsockname()[1]
        app = web.Application()
        app.router.add_get("/LPR/{name}", self._picture)
        # A short shutdown timeout: a slow-picture handler must not hold up stop().
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.http_port))
        self.http_port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        if self.rate > 0:
            self._producer = asyncio.create_task(self._produce(), name="rtsp-sim-producer")
        log.info(
            "simulated RTSP camera on rtsp://%s:%d%s, pictures on http://%s:%d/LPR/ (%s auth)",
            self.host,
            self.rtsp_port,
            self.stream_path,
            self.host,
            self.http_port,
            self.credentials.mode.value,
        )
        return self.rtsp_port, self.http_port

    async def stop(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        # Aborted transports end each connection task on its own; cancelling them
        # instead makes asyncio's start_server callback log the CancelledError.
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RtspCameraSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.rtsp_port}{self.stream_path}"

    # -- test API ----------------------------------------------------------

    @property
    def playing_sessions(self) -> int:
        return sum(1 for connection in self._connections if connection.playing)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def wait_playing(self, count: int = 1) -> None:
        """Until at least `count` sessions are playing (bound it with asyncio.timeout)."""
        while self.playing_sessions < count:
            self._playing_changed.clear()
            await self._playing_changed.wait()

    async def wait_connections(self, count: int) -> None:
        """Until exactly `count` connections are open (e.g. 0 after a session timeout)."""
        while len(self._connections) != count:
            self._playing_changed.clear()
            await self._playing_changed.wait()

    async def wait_reads(self, count: int) -> None:
        """Until `count` reads went to a playing session (bound it with asyncio.timeout)."""
        while sum(1 for read in self.sent_reads if read.sessions) < count:
            self._read_sent.clear()
            await self._read_sent.wait()

    def push(
        self, n: int = 1, *, faults: Iterable[Fault] | None = None, plate: str | None = None
    ) -> list[SentRead]:
        """Produce `n` plate reads now and send them to every playing session.

        `faults` overrides the configured faults for these reads (applied to each);
        `plate` forces the plate text (a car waiting at the gate, read twice).
        """
        return [self._emit_read(faults, plate) for _ in range(n)]

    def push_motion(self, is_motion: bool = True) -> None:
        document = onvif.build_motion_document(datetime.now(UTC).replace(microsecond=0), is_motion)
        for connection in list(self._connections):
            if connection.playing:
                self._send_document(connection, document)

    def push_document(self, document: bytes) -> None:
        """Send any metadata document (a test's hostile one) to every playing session."""
        for connection in list(self._connections):
            if connection.playing:
                self._send_document(connection, document)

    def drop_connections(self) -> None:
        """Cut every RTSP connection at once (a camera reboot, a cable pulled)."""
        for connection in list(self._connections):
            connection.abort()

    def picture_paths(self) -> list[str]:
        """The paths currently served, oldest first."""
        return list(self._pictures)

    # -- reads -------------------------------------------------------------

    async def drive_scene(
        self,
        vehicles: int = 3,
        frames: int = 6,
        *,
        interval: float | None = None,
        stagger: int = 1,
    ) -> list[SceneVehicle]:
        """Drive `vehicles` through the scene description, `frames` frames each,
        vehicle n entering `n * stagger` frames after the first (so several are
        in the scene at once). Each reading is more likely than the one before;
        the first misreads a character. Even vehicles carry their crop inline
        and leave by absence; odd ones name it by ImageRef (served on the
        picture port) and are ended by the object tree's Delete."""
        interval = 1.0 / self.scene_fps if interval is None else interval
        plans = []
        for index in range(vehicles):
            read = self._generator.read(self.camera)
            plans.append((index, next(self._object_ids), read.plate))
        total = (vehicles - 1) * stagger + frames + 1
        last: dict[int, tuple[str, float, bytes, datetime]] = {}
        for step in range(total):
            now = datetime.now(UTC)
            moment = now.replace(microsecond=now.microsecond // 1000 * 1000)
            objects: list[onvif.SceneObjectSpec] = []
            deleted: list[int] = []
            for index, object_id, plate in plans:
                k = step - index * stagger
                by_reference = index % 2 == 1
                if k == frames and by_reference:
                    deleted.append(object_id)
                if not 0 <= k < frames:
                    continue
                likelihood = round(0.5 + 0.45 * k / max(1, frames - 1), 3)
                text = plate if k > 0 else _misread(plate)
                crop = tagged_jpeg(plate_jpeg(), f"{self.camera} object {object_id} reading {k}")
                reference = f"/LPR/object-{object_id}.jpg" if by_reference else None
                if reference is not None:
                    self._store_picture(reference, crop)
                objects.append(
                    onvif.SceneObjectSpec(
                        object_id,
                        [(text, likelihood)],
                        country_code="KR" if not plate.isascii() else "FR",
                        vehicle=("Car", "Hyundai", "Ioniq"),
                        color_ycbcr=(235.0, 128.0, 128.0),
                        box=(-0.4 + 0.1 * index, -0.2, -0.1 + 0.1 * index, -0.3),
                        image=None if by_reference else crop,
                        image_ref=reference,
                    )
                )
                last[object_id] = (text, likelihood, crop, moment)
            if objects or deleted:
                self.push_document(
                    onvif.build_scene_document(
                        [onvif.SceneFrameSpec(moment, objects, deleted=deleted)]
                    )
                )
                await self._drain_all()
            await asyncio.sleep(interval)
        driven = []
        for index, object_id, _plate in plans:
            text, likelihood, crop, moment = last[object_id]
            by_reference = index % 2 == 1
            vehicle = SceneVehicle(
                object_id=object_id,
                plate=text,
                likelihood=likelihood,
                picture=crop,
                picture_ref=f"/LPR/object-{object_id}.jpg" if by_reference else None,
                ended_by="delete" if by_reference else "absence",
                frames=frames,
                time=moment,
            )
            self.scene_vehicles.append(vehicle)
            driven.append(vehicle)
        return driven

    async def _produce(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst to catch up
                await asyncio.sleep(0)
            if self.playing_sessions and not self.paused:
                if self.profile_m:
                    await self.drive_scene(
                        vehicles=self._random.randint(1, 3), frames=self._random.randint(5, 15)
                    )
                    next_at = time.monotonic()
                    continue
                self._emit_read(None)
                await self._drain_all()

    async def _drain_all(self) -> None:
        for connection in list(self._connections):
            if connection.closed:
                continue
            try:
                await connection.writer.drain()
            except (ConnectionError, RuntimeError):
                connection.abort()

    def _emit_read(self, faults: Iterable[Fault] | None, plate: str | None = None) -> SentRead:
        read = self._generator.read(self.camera)
        if plate is not None:
            read = dataclasses.replace(read, plate=plate)
        if faults is None:
            active = self.faults if read.sequence % self.fault_every == 0 else frozenset()
        else:
            active = frozenset(faults)
        with_fraction = read.sequence % 2 == 0  # both UtcTime forms of the spec
        now = datetime.now(UTC)
        moment = (
            now.replace(microsecond=now.microsecond // 1000 * 1000)
            if with_fraction
            else now.replace(microsecond=0)
        )
        picture_path = f"/LPR/{moment:%Y%m%d%H%M%S}{read.sequence:02d}.jpg"
        if Fault.MISSING_PICTURE not in active:
            self._store_picture(picture_path, read.plate_jpeg)
        if Fault.SLOW_PICTURE in active:
            self._slow_pictures.add(picture_path)
        speed = self._random.randint(5, 90)
        direction_code = (1, 2, 0)[read.sequence % 3]
        document = onvif.build_plate_document(
            read.plate,
            moment,
            picture_path,
            speed=f"{speed}km/h",
            direction=str(direction_code),
            fraction=with_fraction,
        )
        playing = [c for c in self._connections if c.playing]
        motion = self.motion_every > 0 and read.sequence % self.motion_every == 0
        for connection in playing:
            if motion:
                self._send_document(
                    connection, onvif.build_motion_document(moment.replace(microsecond=0), True)
                )
            self._send_read(connection, document, active)
        sent = SentRead(
            sequence=read.sequence,
            plate=read.plate,
            time=moment,
            picture_path=picture_path,
            picture=read.plate_jpeg,
            document=document,
            speed_kmh=speed,
            direction_code=direction_code,
            faults=active,
            sessions=len(playing),
        )
        self.sent_reads.append(sent)
        self._read_sent.set()
        log.debug("read %d %s sent to %d sessions", read.sequence, read.plate, len(playing))
        return sent

    def _store_picture(self, path: str, jpeg: bytes) -> None:
        self._pictures[path] = jpeg
        self._pictures.move_to_end(path)  # replaced (an object's ImageRef): now the newest
        while len(self._pictures) > self.pictures_kept:
            old, _ = self._pictures.popitem(last=False)
            self._slow_pictures.discard(old)

    def _send_read(
        self, connection: _Connection, document: bytes, faults: frozenset[Fault]
    ) -> None:
        if Fault.GARBAGE in faults:
            connection.write(_garbage(self._random))
        if Fault.BAD_DOCUMENT in faults:
            self._send_document(connection, b"\x00\x01 this is not XML <<<" + b"\xff" * 600)
        lose = Fault.LOSE_PACKET in faults
        drop = Fault.DROP in faults
        self._send_document(connection, document, lose_packet=lose, drop=drop)

    def _send_document(
        self,
        connection: _Connection,
        document: bytes,
        *,
        lose_packet: bool = False,
        drop: bool = False,
    ) -> None:
        session = connection.session
        if session is None or session.metadata_channel is None or connection.closed:
            return
        timestamp = int(time.monotonic() * RTP_CLOCK_HZ) & 0xFFFFFFFF
        packets = packetize(
            document,
            session.ssrc,
            session.sequence,
            timestamp,
            METADATA_PAYLOAD_TYPE,
            self.max_payload,
        )
        session.sequence = (session.sequence + len(packets)) % 65536
        if drop:
            packets = packets[: max(1, len(packets) // 2)]
        lost = len(packets) // 2 if lose_packet else -1
        channel = session.metadata_channel
        frames = [_interleaved(channel, p) for i, p in enumerate(packets) if i != lost]
        connection.write(b"".join(frames))
        self.stats.packets_sent += len(frames)
        if drop:
            # close(), not abort(): the half document written above must go out first.
            log.info("fault: dropping the connection of %s mid-document", connection.peer)
            connection.closed = True
            connection.writer.close()
            return
        self.stats.documents_sent += 1

    # -- RTSP --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(self, reader, writer)
        self._connections.add(connection)
        self.stats.connections += 1
        self._playing_changed.set()
        watchdog = asyncio.create_task(self._watch(connection))
        try:
            while not connection.closed:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    items = connection.parser.feed(data)
                except _BadRequest as exc:
                    log.info("bad request from %s: %s", connection.peer, exc)
                    connection.write(_response(400, "Bad Request", None))
                    break
                for item in items:
                    if isinstance(item, _Request):
                        self._handle(connection, item)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("RTSP connection from %s failed", connection.peer)
        finally:
            watchdog.cancel()
            connection.closed = True
            self._connections.discard(connection)
            self._playing_changed.set()
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)

    async def _watch(self, connection: _Connection) -> None:
        """Close a session nobody kept alive, as a camera does after its timeout."""
        while not connection.closed:
            session = connection.session
            period = max(0.1, min(1.0, self.session_timeout / 4))
            await asyncio.sleep(period)
            if not self.enforce_session_timeout or session is None:
                continue
            idle = time.monotonic() - session.last_activity
            if idle > self.session_timeout:
                log.info(
                    "session %s of %s timed out after %.1f s without keep-alive",
                    session.id,
                    connection.peer,
                    idle,
                )
                self.stats.sessions_timed_out += 1
                connection.abort()
                self._playing_changed.set()
                return

    def _handle(self, connection: _Connection, request: _Request) -> None:
        stats = self.stats
        stats.requests.append((request.method, request.uri))
        del stats.requests[:-1000]
        cseq = request.header("CSeq")
        if cseq is None:
            connection.write(_response(400, "Bad Request", None))
            return
        session = connection.session
        session_header = request.header("Session")
        if session_header is not None and session is not None:
            if session_header.split(";")[0].strip() != session.id:
                connection.write(_response(454, "Session Not Found", cseq))
                return
            session.last_activity = time.monotonic()

        method = request.method
        if method != "OPTIONS":
            verdict = self.credentials.verify(method, request.uri, request.header("Authorization"))
            if verdict is not _AuthResult.OK:
                if verdict is _AuthResult.BAD:
                    stats.auth_failures += 1
                if verdict is _AuthResult.STALE:
                    stats.stale_nonces += 1
                challenge = self.credentials.challenge(stale=verdict is _AuthResult.STALE)
                connection.write(
                    _response(401, "Unauthorized", cseq, [("WWW-Authenticate", challenge)])
                )
                return

        handler = {
            "OPTIONS": self._options,
            "DESCRIBE": self._describe,
            "SETUP": self._setup,
            "PLAY": self._play,
            "GET_PARAMETER": self._keepalive,
            "SET_PARAMETER": self._keepalive,
            "TEARDOWN": self._teardown,
            "PAUSE": self._pause,
        }.get(method)
        if handler is None:
            connection.write(_response(501, "Not Implemented", cseq))
            return
        handler(connection, request, cseq)

    def _public(self) -> str:
        methods = ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN"]
        if self.advertise_get_parameter:
            methods += ["GET_PARAMETER", "SET_PARAMETER"]
        return ", ".join(methods)

    def _session_headers(self, session: _Session) -> list[tuple[str, str]]:
        return [("Session", f"{session.id};timeout={session.timeout}")]

    def _options(self, connection: _Connection, request: _Request, cseq: str) -> None:
        headers = [("Public", self._public())]
        if connection.session is not None and request.header("Session") is not None:
            self.stats.keepalives += 1
            headers += self._session_headers(connection.session)
        connection.write(_response(200, "OK", cseq, headers))

    def _path_ok(self, uri: str) -> bool:
        path = re.sub(r"^rtsp://[^/]*", "", uri).split("?")[0].rstrip("/")
        return path == self.stream_path or path.startswith(self.stream_path + "/")

    def _describe(self, connection: _Connection, request: _Request, cseq: str) -> None:
        if not self._path_ok(request.uri):
            connection.write(_response(404, "Not Found", cseq))
            return
        sdp = _SDP_TEMPLATE.format(
            session_version=int(time.time()),
            address_type="IP6" if ":" in connection.local_address else "IP4",
            address=connection.local_address,
            pt=METADATA_PAYLOAD_TYPE,
            clock=RTP_CLOCK_HZ,
            metadata_track=METADATA_TRACK,
            sprop=_SPROP,
        ).replace("\n", "\r\n")
        base = f"rtsp://{connection.local_host}:{self.rtsp_port}{self.stream_path}/"
        connection.write(
            _response(
                200,
                "OK",
                cseq,
                [("Content-Base", base), ("Content-Type", "application/sdp")],
                sdp.encode("utf-8"),
            )
        )

    def _setup(self, connection: _Connection, request: _Request, cseq: str) -> None:
        track_match = re.search(r"trackID=(\d+)", request.uri)
        if track_match is None or int(track_match.group(1)) not in (1, 2, METADATA_TRACK):
            connection.write(_response(404, "Not Found", cseq))
            return
        track = int(track_match.group(1))
        transport = request.header("Transport") or ""
        chosen = next(
            (
                spec.strip()
                for spec in transport.split(",")
                if spec.strip().upper().startswith("RTP/AVP/TCP")
            ),
            None,
        )
        if chosen is None:
            # Only interleaved TCP: what the gateway asks for, and firewall-friendly.
            connection.write(_response(461, "Unsupported Transport", cseq))
            return
        session = connection.session
        if session is None:
            session = _Session(
                id=str(next(self._session_ids)),
                timeout=self.session_timeout,
                ssrc=self._random.getrandbits(32),
                sequence=self._random.randrange(65536),
            )
            connection.session = session
        elif request.header("Session") is None:
            connection.write(_response(459, "Aggregate Operation Not Allowed", cseq))
            return
        interleaved = re.search(r"interleaved=(\d+)(?:-(\d+))?", chosen)
        channel = int(interleaved.group(1)) if interleaved else 2 * len(session.channels)
        session.channels[track] = channel
        session.last_activity = time.monotonic()
        reply_transport = (
            f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1};"
            f'ssrc={session.ssrc:08X};mode="PLAY"'
        )
        connection.write(
            _response(
                200,
                "OK",
                cseq,
                [("Transport", reply_transport), *self._session_headers(session)],
            )
        )

    def _play(self, connection: _Connection, request: _Request, cseq: str) -> None:
        session = connection.session
        if session is None or request.header("Session") is None:
            connection.write(_response(454, "Session Not Found", cseq))
            return
        if not session.channels:
            connection.write(_response(455, "Method Not Valid in This State", cseq))
            return
        base = f"rtsp://{connection.local_host}:{self.rtsp_port}{self.stream_path}/"
        seq = session.sequence if self.rtp_info_seq_text is None else self.rtp_info_seq_text
        rtp_info = ",".join(
            f"url={base}trackID={track};seq={seq};rtptime=0" for track in sorted(session.channels)
        )
        connection.write(
            _response(
                200,
                "OK",
                cseq,
                [("Range", "npt=0.000-"), ("RTP-Info", rtp_info), *self._session_headers(session)],
            )
        )
        if not session.playing:
            session.playing = True
            self.stats.sessions_started += 1
            self._playing_changed.set()
            # The state at stream start, as a camera re-announces it: never a new read.
            last = self.sent_reads[-1] if self.sent_reads else None
            repeat = last is not None and self.initialized_repeats_last_read
            document = onvif.build_initialized_document(
                datetime.now(UTC).replace(microsecond=0),
                last.plate if repeat and last else None,
                last.picture_path if repeat and last else None,
            )
            self._send_document(connection, document)

    def _pause(self, connection: _Connection, request: _Request, cseq: str) -> None:
        session = connection.session
        if session is None:
            connection.write(_response(454, "Session Not Found", cseq))
            return
        session.playing = False
        self._playing_changed.set()
        connection.write(_response(200, "OK", cseq, self._session_headers(session)))

    def _keepalive(self, connection: _Connection, request: _Request, cseq: str) -> None:
        session = connection.session
        headers: list[tuple[str, str]] = []
        if session is not None and request.header("Session") is not None:
            self.stats.keepalives += 1
            headers = self._session_headers(session)
        connection.write(_response(200, "OK", cseq, headers))

    def _teardown(self, connection: _Connection, request: _Request, cseq: str) -> None:
        session = connection.session
        if session is None or request.header("Session") is None:
            connection.write(_response(454, "Session Not Found", cseq))
            return
        self.stats.teardowns += 1
        connection.session = None
        self._playing_changed.set()
        connection.write(_response(200, "OK", cseq))

    # -- pictures ----------------------------------------------------------

    async def _picture(self, request: web.Request) -> web.StreamResponse:
        self.stats.picture_requests += 1
        verdict = self.credentials.verify(
            request.method, request.raw_path, request.headers.get("Authorization")
        )
        if verdict is not _AuthResult.OK:
            if verdict is _AuthResult.BAD:
                self.stats.auth_failures += 1
            challenge = self.credentials.challenge(stale=verdict is _AuthResult.STALE)
            return web.Response(
                status=401, text="401 Unauthorized", headers={"WWW-Authenticate": challenge}
            )
        path = request.path
        jpeg = self._pictures.get(path)
        if jpeg is None:
            return web.Response(status=404, text="404 Not Found")
        if path in self._slow_pictures:
            await asyncio.sleep(self.slow_picture_seconds)
        self.stats.pictures_served += 1
        return web.Response(body=jpeg, content_type="image/jpeg")


def _misread(plate: str) -> str:
    """The plate with its last digit read one off: what a first, blurry frame gives."""
    for index in range(len(plate) - 1, -1, -1):
        if plate[index].isdigit():
            return plate[:index] + str((int(plate[index]) + 1) % 10) + plate[index + 1 :]
    return plate + "?"


# --------------------------------------------------------------------------
# Command line: lpr-gateway simulate rtsp ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpr-gateway simulate rtsp",
        description="A simulated RTSP-type LPR camera: ONVIF metadata over RTSP, "
        "plate pictures over HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8554, help="RTSP port (0: any free port)")
    parser.add_argument("--http-port", type=int, default=8081, help="picture HTTP port")
    parser.add_argument("--rate", type=float, default=1.0, help="plate reads per second")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--auth", choices=[m.value for m in AuthMode], default="digest")
    parser.add_argument("--no-qop", action="store_true", help="Digest challenges without qop")
    parser.add_argument("--path", default=DEFAULT_STREAM_PATH, help="stream path")
    parser.add_argument("--session-timeout", type=int, default=60, help="seconds")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=[f.value for f in Fault],
        help="fault on every --fault-every-th read (repeatable)",
    )
    parser.add_argument("--fault-every", type=int, default=5)
    parser.add_argument("--slow-picture-seconds", type=float, default=5.0)
    parser.add_argument("--motion-every", type=int, default=3, help="0: no motion events")
    parser.add_argument(
        "--profile-m",
        action="store_true",
        help="stream ONVIF scene descriptions (tt:Frame objects with plates) instead of "
        "plate notifications; --rate is then vehicle groups per second at most",
    )
    parser.add_argument(
        "--scene-fps", type=float, default=10.0, help="scene frames per second (--profile-m)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def _run(arguments: argparse.Namespace) -> None:
    simulator = RtspCameraSimulator(
        host=arguments.host,
        rtsp_port=arguments.port,
        http_port=arguments.http_port,
        username=arguments.user,
        password=arguments.password,
        auth=AuthMode(arguments.auth),
        digest_qop=not arguments.no_qop,
        rate=arguments.rate,
        motion_every=arguments.motion_every,
        session_timeout=arguments.session_timeout,
        stream_path=arguments.path,
        faults=[Fault(f) for f in arguments.fault],
        fault_every=arguments.fault_every,
        slow_picture_seconds=arguments.slow_picture_seconds,
        seed=arguments.seed,
        profile_m=arguments.profile_m,
        scene_fps=arguments.scene_fps,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    rtsp_port, http_port = await simulator.start()
    print(
        f"RTSP camera simulator: {simulator.url} (pictures on "
        f"http://{arguments.host}:{http_port}/LPR/, {arguments.auth} auth, "
        + (
            f"Profile M scene descriptions at {arguments.scene_fps:g} frames/s"
            if arguments.profile_m
            else f"{arguments.rate} reads/s"
        )
        + f"); RTSP port {rtsp_port} HTTP port {http_port}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await simulator.stop()
        print(
            f"stopped after {simulator.stats.sessions_started} sessions, "
            f"{len(simulator.sent_reads)} reads",
            flush=True,
        )


def main(argv: Sequence[str]) -> int:
    arguments = _parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(_run(arguments))
    except OSError as exc:
        print(f"cannot start the simulator: {exc}", file=sys.stderr)
        return 1
    return 0
