"""A camera in HTTP mode: posts plate reads (or GETs) to the gateway's URL.

Realistic bodies: camera-local time in each format seen (`time_msec` as the
milliseconds or as the whole time, `:mmm`, `.mmm`), both direction words,
numbers as numbers and as strings, base64 JPEGs with and without a `data:`
prefix, optionally the evidence cameras' pictures, and now and then another
event kind (the field names public integrations of these cameras read:
`"region name"`, `"All-Car"`, a base64 `snapshot`...). Everything sent and
every reply is recorded for tests (`sent`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import sys
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import aiohttp
import pybase64
import yarl

from gateway.simulate.common import (
    PLATE_HEIGHT,
    PLATE_WIDTH,
    SCENE_HEIGHT,
    SCENE_WIDTH,
    PlateGenerator,
    SimulatedRead,
    plate_jpeg,
    tagged_jpeg,
)

TIME_FORMATS = ("time_msec", "colon", "dot")
DIRECTION_WORDS = ("Approach", "Away")
LIST_TYPES = ("White", "Black", "Visitor")
# Other event kinds newer firmware posts to the same URL, with the field names
# public integrations of these cameras read (the vendor documents no schema).
# A `snapshot` is added to the counting event (the plate crop JPEG).
OTHER_EVENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "Vehicle Counting",
        {"region": 1, "region name": "Entrance", "All-Car": 3, "All-Motorcycle": 1, "Car": 3},
    ),
    ("List Event", {"plate": "AB123CD", "list_type": "Black", "match_status": "Matched"}),
    ("Attributes", {"vehicle_type": "Car", "vehicle_color": "White", "Vehicle Brand": "Kia"}),
    ("Violation", {"plate": "AB123CD", "violation_type": "Wrong Way", "region_name": "Exit"}),
    ("Parking Detection", {"region": 3, "region_name": "Space 12", "status": "Occupied"}),
)
SNAPSHOT_EVENTS = frozenset({"Vehicle Counting"})


def evidence_jpegs(read: SimulatedRead) -> tuple[bytes, bytes]:
    """The two evidence pictures of a read (deterministic, so a test can rebuild them)."""
    tag = f"evidence {read.sequence} {read.plate}"
    return (tagged_jpeg(read.scene_jpeg, f"{tag} 0"), tagged_jpeg(read.plate_jpeg, f"{tag} 1"))


@dataclass(slots=True)
class SentRequest:
    """One request the simulator made and what came back."""

    method: str
    kind: str  # "plate" or the other event's name
    plate: str | None = None
    read: SimulatedRead | None = None  # the images sent, for byte-exact checks
    time: datetime | None = None  # the read time the body carries, in UTC (ms precision)
    direction: str | None = None  # the word sent
    data_uri: bool = False
    fields: dict[str, Any] = field(default_factory=dict)  # the body without image text
    evidence: tuple[bytes, ...] = ()  # evidence_image0/1 sent, for byte-exact checks
    snapshot: bytes | None = None  # a camera event's picture sent
    status: int | None = None  # None: no reply (connection error)
    reply: Any = None
    error: str | None = None
    seconds: float = 0.0


class HttpCameraSimulator:
    """Use as `async with HttpCameraSimulator(url, user=..., password=...) as cam:`."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        camera: str = "sim",
        seed: int = 0,
        get_mode: bool = False,
        other_event_every: int = 0,
        tz: tzinfo = UTC,
        images: bool = True,
        evidence: bool = False,
        device: str = "Network Camera",
        timeout: float = 30.0,
    ) -> None:
        """`evidence`: reads carry evidence_image0/1 too (a linked evidence camera);
        `device`: the name the camera says in its `device` field."""
        self.url = url
        self.headers: dict[str, str] = {}
        if user is not None:
            token = pybase64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.camera = camera
        self.get_mode = get_mode
        self.other_event_every = other_event_every
        self.tz = tz
        self.images = images
        self.evidence = evidence
        self.device = device
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.generator = PlateGenerator(seed)
        self.sent: list[SentRequest] = []
        self._counter = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpCameraSimulator:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, headers={**self.headers, "Content-Type": "application/json"}
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the simulator as `async with`")
        return self._session

    def status_counts(self) -> collections.Counter[int | None]:
        return collections.Counter(request.status for request in self.sent)

    # -- what a camera sends ----------------------------------------------

    def build_read(self, index: int, moment: datetime | None = None) -> tuple[SentRequest, bytes]:
        """The `index`-th plate read as a POST body; formats rotate with `index`."""
        read = self.generator.read(self.camera)
        moment = moment or datetime.now(UTC)
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        local = moment.astimezone(self.tz)
        base = local.strftime("%Y-%m-%d %H:%M:%S")
        millis = local.microsecond // 1000
        fields: dict[str, Any] = {"device": self.device, "plate": read.plate}
        time_format = TIME_FORMATS[index % len(TIME_FORMATS)]
        if time_format == "time_msec":
            fields["time"] = base
            # Seen both ways: the milliseconds alone, or the whole time with them.
            whole = f"{base}.{millis:03d}"
            fields["time_msec"] = (millis, str(millis), whole)[(index // 3) % 3]
        elif time_format == "colon":
            fields["time"] = f"{base}:{millis:03d}"
        else:
            fields["time"] = f"{base}.{millis:03d}"
        direction = DIRECTION_WORDS[index % 2]
        brand_key = ("vehicle_brand", "Vehicle Brand", "Vehicle_Brand")[index % 3]
        fields.update(
            {
                "type": LIST_TYPES[index % 3],
                "speed": ("-", 25, "40")[index % 3],
                "direction": direction,
                "detection_region": str(1 + index % 4),
                "region": "KR",
                "resolution_width": SCENE_WIDTH if index % 2 else str(SCENE_WIDTH),
                "resolution_height": SCENE_HEIGHT,
                "coordinate_x1": 700,
                "coordinate_y1": "800",
                "coordinate_x2": 700 + PLATE_WIDTH // 4,
                "coordinate_y2": 800 + PLATE_HEIGHT // 4,
                "confidence": "93" if index % 2 else 0.93,
                "plate_color": "White",
                "vehicle_type": "Car",
                "vehicle_color": "Gray",
                brand_key: "Hyundai",
            }
        )
        data_uri = index % 2 == 1
        sent = SentRequest(
            method="POST",
            kind="plate",
            plate=read.plate,
            read=read if self.images else None,
            time=moment,
            direction=direction,
            data_uri=data_uri,
            fields=dict(fields),
            evidence=evidence_jpegs(read) if self.images and self.evidence else (),
        )
        head = json.dumps(fields, ensure_ascii=False).encode("utf-8")
        if not self.images:
            return sent, head
        prefix = b"data:image/jpeg;base64," if data_uri else b""
        # Spliced rather than json.dumps'd: base64 needs no escaping, and the
        # simulator must not be the bottleneck of a benchmark.
        parts = [
            head[:-1],
            b', "plate_image": "',
            prefix,
            pybase64.b64encode(read.plate_jpeg),
            b'", "full_image": "',
            prefix,
            pybase64.b64encode(read.scene_jpeg),
        ]
        # The evidence cameras' pictures: the scene and plate pictures again,
        # tagged apart so that every picture of a read has its own bytes.
        for number, jpeg in enumerate(sent.evidence):
            parts += [f'", "evidence_image{number}": "'.encode(), pybase64.b64encode(jpeg)]
        parts.append(b'"}')
        return sent, b"".join(parts)

    def build_other_event(self, index: int) -> tuple[SentRequest, bytes]:
        name, extra = OTHER_EVENTS[index % len(OTHER_EVENTS)]
        local = datetime.now(UTC).astimezone(self.tz)
        fields: dict[str, Any] = {
            "event": name,
            "device": self.device,
            "time": local.strftime("%Y-%m-%d %H:%M:%S"),
            **extra,
        }
        sent = SentRequest(method="POST", kind=name, fields=dict(fields))
        if name in SNAPSHOT_EVENTS and self.images:
            snapshot = tagged_jpeg(plate_jpeg(), f"{self.camera} snapshot {index}")
            sent.snapshot = snapshot
            fields["snapshot"] = pybase64.b64encode(snapshot).decode("ascii")
        return sent, json.dumps(fields).encode()

    # -- sending -------------------------------------------------------------

    async def send_read(self) -> SentRequest:
        index = next(self._counter)
        if self.other_event_every and index % self.other_event_every == self.other_event_every - 1:
            sent, body = self.build_other_event(index // self.other_event_every)
            return await self._post(sent, body)
        if self.get_mode:
            plate = self.generator.plate()
            sent = SentRequest(method="GET", kind="plate", plate=plate)
            sent.fields = {"Caption": "LPR", "description": plate}
            return await self._request(sent, "GET", params=sent.fields)
        sent, body = self.build_read(index)
        return await self._post(sent, body)

    async def post_body(self, body: bytes, kind: str = "raw") -> SentRequest:
        """Send any bytes as a POST (for tests of what a broken camera sends)."""
        return await self._post(SentRequest(method="POST", kind=kind), body)

    async def get_query(self, query: str, kind: str = "raw") -> SentRequest:
        """Send a query string as it would appear on the request line (already encoded)."""
        sent = SentRequest(method="GET", kind=kind)
        url = yarl.URL(f"{self.url}?{query}", encoded=True)
        return await self._request(sent, "GET", url=url)

    async def _post(self, sent: SentRequest, body: bytes) -> SentRequest:
        return await self._request(sent, "POST", data=body)

    async def _request(
        self, sent: SentRequest, method: str, url: str | yarl.URL | None = None, **kwargs: Any
    ) -> SentRequest:
        started = time.perf_counter()
        try:
            async with self.session.request(method, url or self.url, **kwargs) as reply:
                sent.status = reply.status
                text = await reply.read()
                try:
                    sent.reply = json.loads(text)
                except ValueError:
                    sent.reply = text.decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            sent.error = f"{type(exc).__name__}: {exc}"
        sent.seconds = time.perf_counter() - started
        self.sent.append(sent)
        return sent

    async def run(
        self,
        count: int | None,
        rate: float,
        on_sent: Callable[[int, SentRequest], None] | None = None,
    ) -> list[SentRequest]:
        """Send `count` reads (None: until cancelled) at `rate` per second."""
        interval = 1.0 / rate if rate > 0 else 0.0
        start = time.monotonic()
        sent: list[SentRequest] = []
        for index in itertools.count():
            if count is not None and index >= count:
                break
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            request = await self.send_read()
            sent.append(request)
            if on_sent is not None:
                on_sent(index, request)
        return sent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpr-gateway simulate http",
        description="Act as an LPR camera in HTTP mode: send reads to a URL.",
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/lpr/gate_out")
    parser.add_argument("--rate", type=float, default=1.0, help="reads per second (default 1)")
    parser.add_argument("--count", type=int, default=None, help="stop after N (default: never)")
    parser.add_argument("--user", default=None, help="HTTP Basic user")
    parser.add_argument("--password", default=None, help="HTTP Basic password")
    parser.add_argument("--get", action="store_true", help="GET ?Caption=LPR&description=...")
    parser.add_argument(
        "--device", default="Network Camera", help="the camera's `device` field (for match)"
    )
    parser.add_argument("--evidence", action="store_true", help="reads carry evidence_image0/1 too")
    parser.add_argument(
        "--other-every", type=int, default=0, help="every Nth request is another event kind"
    )
    parser.add_argument("--timezone", default="UTC", help="the camera's local time zone")
    parser.add_argument("--seed", type=int, default=0)
    return parser


async def _main(args: argparse.Namespace, counts: collections.Counter[int | None]) -> None:
    async with HttpCameraSimulator(
        args.url,
        user=args.user,
        password=args.password,
        seed=args.seed,
        get_mode=args.get,
        other_event_every=args.other_every,
        tz=zoneinfo.ZoneInfo(args.timezone),
        evidence=args.evidence,
        device=args.device,
    ) as camera:

        def report(index: int, sent: SentRequest) -> None:
            counts[sent.status] += 1
            outcome = sent.status if sent.status is not None else sent.error
            print(
                f"{index + 1} {sent.method} {sent.kind} {sent.plate or ''} -> {outcome} "
                f"({sent.seconds * 1000:.0f} ms)",
                flush=True,
            )

        await camera.run(args.count, args.rate, report)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.rate <= 0:
        print("--rate must be above 0", file=sys.stderr)
        return 2
    try:
        zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        print(f"unknown time zone {args.timezone!r}", file=sys.stderr)
        return 2
    counts: collections.Counter[int | None] = collections.Counter()
    interrupted = False
    try:
        asyncio.run(_main(args, counts))
    except KeyboardInterrupt:
        interrupted = True
    summary = ", ".join(
        f"{status if status is not None else 'no reply'}: {n}"
        for status, n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    )
    print(f"status codes: {summary or 'none sent'}")
    if interrupted:
        return 130
    return 0 if counts and set(counts) == {200} else 1
