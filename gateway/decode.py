"""`lpr-gateway decode FILE`: a raw capture of a TCP camera's stream, as JSON lines.

(`--rtsp`: an RTSP camera's metadata track instead, see `decode_metadata.py`.)

For field debugging: feed it the camera→gateway bytes (tcpdump/tshark "follow
stream" saved raw, `nc host port > file`, or a file the gateway saved in a
camera's `capture_dir`). Each frame is printed with its decoded fields, each
corrupt region with its offset; `--images DIR` writes the JPEGs out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from gateway.codecs import assumed
from gateway.codecs.tcp import (
    DEFAULT_MAX_DATA_SIZE,
    NEED_DATA,
    Command,
    CorruptFrame,
    EndOfStream,
    Frame,
    FrameDecoder,
    GarbageSkipped,
    RecognitionResult,
    StreamBroken,
    UnknownCommand,
    command_name,
    jpeg_dimensions,
    parse_login_reply,
    parse_login_request,
    parse_recognition_result,
)
from gateway.errors import CameraProtocolError
from gateway.event import format_time

READ_CHUNK = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpr-gateway decode",
        description="Decode a raw capture of a TCP camera's stream (or, with --rtsp, of an "
        "RTSP camera's metadata track) into JSON lines.",
    )
    parser.add_argument("file", type=Path, help="raw bytes of the camera→gateway stream")
    parser.add_argument("--images", type=Path, help="write each frame's images into this folder")
    parser.add_argument(
        "--rtsp",
        action="store_true",
        help="FILE is an RTSP camera's stream (RTSP answers and interleaved RTP) or its "
        "tt:MetadataStream XML: print plate notifications, scene frames and the reads the "
        "gateway would publish from them",
    )
    parser.add_argument("--track-end-seconds", type=float, default=1.0, help="with --rtsp")
    parser.add_argument("--track-max-seconds", type=float, default=10.0, help="with --rtsp")
    parser.add_argument(
        "--max-data-size",
        type=int,
        default=DEFAULT_MAX_DATA_SIZE,
        help="largest DATA_SIZE taken as a frame (default %(default)s)",
    )
    return parser


class _Printer:
    def __init__(self, out: TextIO, images: Path | None) -> None:
        self.out = out
        self.images = images
        self.frames = 0
        self.problems = 0

    def emit(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def frame(self, frame: Frame) -> None:
        self.frames += 1
        record: dict[str, Any] = {
            "type": "frame",
            "offset": frame.offset,
            "size": frame.size,
            "command": f"0x{frame.command:04x}",
            "name": command_name(frame.command),
        }
        try:
            if frame.command == Command.LOGIN_REQ:
                request = parse_login_request(frame.data)
                record["login_request"] = {"id": request.user, "password": "***"}
            elif frame.command == Command.LOGIN_REPLY:
                reply = parse_login_reply(frame.data)
                record["login_reply"] = {"status": reply.status, "ok": reply.ok}
            elif frame.command == Command.RECOG_POST:
                result = parse_recognition_result(frame.data)
                record["recognition"] = self.recognition(result, frame.offset)
                if result.issues:
                    self.problems += 1
                    record["issues"] = [{"kind": i.kind, "detail": i.detail} for i in result.issues]
            else:
                self.problems += 1
                record["data"] = frame.data[:64].hex(" ")
        except CameraProtocolError as exc:
            self.problems += 1
            record["error"] = {"kind": exc.kind, "detail": exc.detail}
        self.emit(record)

    def unknown(self, event: UnknownCommand) -> None:
        # A whole frame the spec does not name: printed as a frame, skipped whole.
        self.frames += 1
        self.problems += 1
        self.emit(
            {
                "type": "frame",
                "offset": event.offset,
                "size": event.length,
                "command": f"0x{event.command:04x}",
                "name": command_name(event.command),
                "data": event.head.hex(" "),
            }
        )

    def recognition(self, result: RecognitionResult, offset: int) -> dict[str, Any]:
        meta = result.metadata
        fields: dict[str, Any] = {
            "device_id": str(meta.device_id),
            "time_ms": meta.time_ms,
            "time": format_time(meta.time),
            "plate": meta.plate,
        }
        for name in (
            "car_number",
            "car_color",
            "plate_color",
            "speed",
            "image_count",
            "direction",
            "region",
            "roi",
            "plate_length",
            "license_plate",
            "vehicle_type",
            "confidence",
            "plate_type",
            "distance",
            "azimuth",
            "vehicle_count",
            "width",
            "height",
            "x1",
            "y1",
            "x2",
            "y2",
        ):
            value = getattr(meta, name)
            if value is not None:
                fields[name] = value
        for name, value in meta.extra.items():
            fields[name] = value.hex() if isinstance(value, bytes) else value
        images = []
        # The images beyond plate and scene are the evidence pictures the event gets.
        evidence = {
            id(image): kind
            for kind, image in zip(assumed.TCP_EXTRA_IMAGE_KINDS, result.extras, strict=False)
        }
        for index, image in enumerate(result.images):
            kind = (
                "plate"
                if image is result.plate_jpeg
                else "scene"
                if image is result.scene_jpeg
                else evidence.get(id(image), "extra")
            )
            dimensions = jpeg_dimensions(image)
            entry: dict[str, Any] = {
                "index": index,
                "kind": kind,
                "bytes": len(image),
                "width": dimensions[0] if dimensions else None,
                "height": dimensions[1] if dimensions else None,
            }
            if self.images is not None:
                path = self.images / f"{offset:010d}-{index}-{kind}.jpg"
                path.write_bytes(image)
                entry["file"] = str(path)
            images.append(entry)
        fields["images"] = images
        fields["classified_by"] = result.classified_by
        return fields


def decode_stream(
    source: BinaryIO, out: TextIO, images: Path | None, max_data_size: int
) -> tuple[int, int]:
    """Decode a binary file object; returns (frames, problems)."""
    printer = _Printer(out, images)
    decoder = FrameDecoder(max_data_size)
    eof = False
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            chunk = b"" if eof else source.read(READ_CHUNK)
            eof = eof or not chunk
            decoder.receive_data(chunk)
            continue
        if isinstance(event, Frame):
            printer.frame(event)
        elif isinstance(event, UnknownCommand):
            printer.unknown(event)
        elif isinstance(event, GarbageSkipped):
            printer.problems += 1
            printer.emit({"type": "garbage", "offset": event.offset, "count": event.count})
        elif isinstance(event, CorruptFrame):
            printer.problems += 1
            printer.emit(
                {
                    "type": "corrupt",
                    "offset": event.offset,
                    "command": f"0x{event.command:04x}",
                    "data_size": event.data_size,
                    "reason": event.reason,
                }
            )
        elif isinstance(event, StreamBroken):
            # A live connection would be dropped here; a capture can be read on:
            # carry on scanning right after the offending SIG.
            printer.problems += 1
            printer.emit(
                {
                    "type": "fatal",
                    "offset": event.offset,
                    "kind": event.kind,
                    "detail": event.detail,
                }
            )
            source.seek(event.offset + 2)
            decoder = FrameDecoder(max_data_size, start_offset=event.offset + 2, synced=False)
            eof = False
        elif isinstance(event, EndOfStream):
            printer.emit(
                {
                    "type": "end",
                    "offset": event.offset,
                    "frames": printer.frames,
                    "problems": printer.problems,
                }
            )
            return printer.frames, printer.problems


def main(argv: list[str] | None = None) -> int:
    """Exit 0 for a clean capture, 1 when it holds corrupt regions or bad frames, 2 on errors."""
    args = build_parser().parse_args(argv)
    if args.images is not None:  # both forms save pictures there
        try:
            args.images.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"lpr-gateway decode: cannot create {args.images}: {exc}", file=sys.stderr)
            return 2
    if args.rtsp:
        from gateway import decode_metadata

        return decode_metadata.main(args)
    try:
        with args.file.open("rb") as source:
            frames, problems = decode_stream(source, sys.stdout, args.images, args.max_data_size)
    except OSError as exc:
        print(f"lpr-gateway decode: {exc}", file=sys.stderr)
        return 2
    print(f"{frames} frames, {problems} problems", file=sys.stderr)
    return 1 if problems else 0
