"""`lpr-gateway decode --rtsp FILE`: what an RTSP camera sends on its metadata track, as JSON lines.

For checking a camera before (or instead of) pointing the gateway at it:
which form it uses for plates (event notifications, the Profile M scene
description, both), what each read would look like, and what the gateway
would publish (one read per scene object, through the same `SceneTracker`).

FILE is either the camera→gateway bytes of the RTSP connection (RTSP answers
and `$`-interleaved RTP, e.g. saved with `tshark -qz follow,tcp,raw,<n>` and
converted from hex) or one or more `tt:MetadataStream` XML documents as
saved from the stream. The capture has no arrival times: the scene tracker
runs on the frames' own UtcTime.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.codecs import onvif
from gateway.codecs.rtp import NEED_DATA as NO_DOCUMENT
from gateway.codecs.rtp import RtpDocument, RtpDocumentDropped, RtpPacketRejected, RtpReassembler
from gateway.codecs.rtsp_messages import InterleavedFrame, RtspReader, RtspResponse, Signal
from gateway.codecs.scene_tracker import FinishedTrack, SceneTracker
from gateway.errors import CameraProtocolError, CodecMisuseError
from gateway.event import format_time, utc_now

# A capture that is XML: one or more documents, one after the other.
_DOCUMENT_START = re.compile(rb"(?:<\?xml[^>]*\?>\s*)?<(?:[A-Za-z_][\w.-]*:)?MetadataStream\b")
# A frame without a readable UtcTime is taken to come this long after the previous one.
_FALLBACK_FRAME_SECONDS = 0.04


class MetadataPrinter:
    """Turns documents into records; counts what it saw."""

    def __init__(
        self, out: TextIO, camera: str, tracker: SceneTracker, images: Path | None
    ) -> None:
        self.out = out
        self.camera = camera
        self.tracker = tracker
        self.images = images
        self.counts = {
            "documents": 0,
            "plate_notifications": 0,
            "other_notifications": 0,
            "scene_frames": 0,
            "scene_reads": 0,
            "problems": 0,
        }
        self._clock = 0.0
        self._first: datetime | None = None

    def emit(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def problem(self, kind: str, detail: str, **extra: Any) -> None:
        self.counts["problems"] += 1
        self.emit({"type": "problem", "kind": kind, "detail": detail, **extra})

    def document(self, data: bytes, where: dict[str, Any]) -> None:
        self.counts["documents"] += 1
        index = self.counts["documents"]
        try:
            results = onvif.parse_metadata(data)
        except CameraProtocolError as exc:
            self.problem(exc.kind, exc.detail, document=index, **where)
            return
        received = utc_now()  # not printed: a capture has no arrival times
        for result in results:
            if isinstance(result, onvif.OnvifProblem):
                self.problem(result.kind, result.detail, document=index)
            elif isinstance(result, onvif.OnvifPlateRead):
                self.counts["plate_notifications"] += 1
                event = onvif.to_plate_event(result, self.camera, received)
                record = _without_arrival(event.to_json_dict("lpr"))
                self.emit({"type": "plate_notification", "document": index, "event": record})
                if not result.initialized:
                    self.tracker.notification(event.plate_normalized, self._clock)
            elif isinstance(result, onvif.OnvifNotification):
                self.counts["other_notifications"] += 1
                self.emit(
                    {
                        "type": "notification",
                        "document": index,
                        "topic": result.topic.text,
                        "time": format_time(result.time),
                        "data": dict(result.data_items),
                    }
                )
            else:
                self.scene_frame(result, index)

    def scene_frame(self, frame: onvif.OnvifSceneFrame, index: int) -> None:
        self.counts["scene_frames"] += 1
        if frame.time is not None:
            self._first = self._first or frame.time
            self._clock = max(self._clock, (frame.time - self._first).total_seconds())
        else:
            self._clock += _FALLBACK_FRAME_SECONDS
        self.emit(
            {
                "type": "scene_frame",
                "document": index,
                "time": format_time(frame.time),
                "objects": [
                    {
                        "object_id": p.object_id,
                        "plate": p.plate,
                        "likelihood": p.confidence,
                        "inline_image": None if p.image is None else (p.image.data is not None),
                        "image_ref": p.image_ref,
                    }
                    for p in frame.plates
                ],
                "ended": list(frame.ended),
            }
        )
        self.finished(self.tracker.observe(frame, self._clock))

    def finished(self, tracks: list[FinishedTrack]) -> None:
        for track in tracks:
            if track.merged:
                self.emit(
                    {
                        "type": "scene_merged",
                        "object_id": track.object_id,
                        "plate": track.best.plate,
                        "detail": "a plate notification stands for this vehicle",
                    }
                )
                continue
            self.counts["scene_reads"] += 1
            event = onvif.scene_to_plate_event(
                track.best,
                self.camera,
                utc_now(),
                plate_image=track.best.image,
                scene_image=track.best.scene_image,
                readings=track.readings,
            )
            record = _without_arrival(event.to_json_dict("lpr"))
            record["raw"]["track_end"] = track.end.value
            if self.images is not None and track.best.image and track.best.image.data:
                path = self.images / f"scene-{self.counts['scene_reads']:04d}-{track.object_id}.jpg"
                path.write_bytes(track.best.image.data)
                record["images"]["plate"]["file"] = str(path)
            self.emit({"type": "scene_read", "event": record})

    def end(self) -> None:
        self.finished(self.tracker.expire(self._clock + 86400.0))
        self.finished(self.tracker.flush())
        self.emit({"type": "end", **self.counts})


def _without_arrival(record: dict[str, Any]) -> dict[str, Any]:
    """The event JSON without what only a live gateway knows (its id, when it arrived)."""
    return {key: value for key, value in record.items() if key not in ("id", "received")}


def decode_xml(data: bytes, printer: MetadataPrinter) -> None:
    # The first document takes everything before it too (a DOCTYPE must reach the parser).
    found = [match.start() for match in _DOCUMENT_START.finditer(data)]
    starts = [0, *found[1:]]
    for start, end in zip(starts, [*starts[1:], len(data)], strict=True):
        printer.document(data[start:end].strip(), {"offset": start})


def decode_rtsp_stream(data: bytes, printer: MetadataPrinter) -> None:
    reader = RtspReader()
    reader.receive_data(data)
    reader.receive_data(b"")
    reassemblers: dict[int, RtpReassembler] = {}
    while True:
        try:
            event = reader.next_event()
        except CameraProtocolError as exc:
            printer.problem(exc.kind, exc.detail, where="rtsp")
            return
        if event is Signal.NEED_DATA or event is Signal.CLOSED:
            return
        if isinstance(event, RtspResponse):
            printer.emit(
                {
                    "type": "rtsp_response",
                    "status": event.status,
                    "reason": event.reason,
                    "content_type": event.headers.get("content-type"),
                }
            )
        elif isinstance(event, InterleavedFrame):
            if event.channel % 2:
                continue  # RTCP: nothing about plates
            reassembler = reassemblers.setdefault(
                event.channel, RtpReassembler(max_document_bytes=onvif.MAX_DOCUMENT_BYTES)
            )
            reassembler.receive_data(event.payload)
            while (result := reassembler.next_event()) is not NO_DOCUMENT:
                if isinstance(result, RtpDocument):
                    if result.data.lstrip()[:1] == b"<":
                        printer.document(result.data, {"channel": event.channel})
                elif isinstance(result, RtpDocumentDropped):
                    printer.problem(f"rtp_{result.reason.value}", result.detail)
                elif isinstance(result, RtpPacketRejected):
                    printer.problem(result.kind, result.detail)


def main(args: argparse.Namespace) -> int:
    """Exit 0 for a clean capture, 1 when something in it could not be read, 2 on errors.

    `args.images`, when given, was created by `decode.main`."""
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"lpr-gateway decode: {exc}", file=sys.stderr)
        return 2
    try:
        tracker = SceneTracker(
            end_seconds=args.track_end_seconds, max_seconds=args.track_max_seconds
        )
    except CodecMisuseError:
        print("lpr-gateway decode: the track durations must be positive", file=sys.stderr)
        return 2
    printer = MetadataPrinter(sys.stdout, "capture", tracker, args.images)
    if data.lstrip()[:1] == b"<":
        decode_xml(data, printer)
    else:
        decode_rtsp_stream(data, printer)
    printer.end()
    counts = printer.counts
    print(
        f"{counts['documents']} documents: {counts['plate_notifications']} plate notifications, "
        f"{counts['scene_frames']} scene frames giving {counts['scene_reads']} reads, "
        f"{counts['problems']} problems",
        file=sys.stderr,
    )
    return 1 if counts["problems"] else 0
