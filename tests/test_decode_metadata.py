"""`lpr-gateway decode --rtsp`: an RTSP camera's metadata track (or its XML) in, JSON lines out."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.codecs import onvif, rtp
from gateway.decode import main
from gateway.simulate.common import plate_jpeg

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CROP = plate_jpeg()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(list(argv))
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def scene_documents() -> list[bytes]:
    """Two objects over 5 frames at 10 fps: 1 improving then absent, 2 deleted; and a
    plate notification of a third vehicle."""
    documents = []
    for step in range(5):
        objects = []
        if step < 3:
            objects.append(onvif.SceneObjectSpec(1, [("AB123", 0.5 + step / 10)], image=CROP))
        if step < 4:
            objects.append(onvif.SceneObjectSpec(2, [("XY987", 0.9)], image_ref="/p/2.jpg"))
        deleted = [2] if step == 4 else []
        frame = onvif.SceneFrameSpec(T0 + timedelta(seconds=step / 10), objects, deleted=deleted)
        documents.append(onvif.build_scene_document([frame]))
    documents.append(onvif.build_plate_document("43거6510", T0, "/LPR/1.jpg"))
    return documents


def interleaved(documents: list[bytes]) -> bytes:
    stream = b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nSession: 1234\r\n\r\n"
    sequence = 100
    for document in documents:
        for packet in rtp.packetize(document, 0x5EED, sequence, 0, 107, max_payload=500):
            stream += b"$\x00" + struct.pack(">H", len(packet)) + packet
            sequence += 1
        stream += b"$\x01\x00\x04rtcp"  # an RTCP report on the odd channel: ignored
    return stream


def check_records(records: list[dict[str, Any]]) -> None:
    kinds = [r["type"] for r in records]
    assert kinds.count("scene_frame") == 5
    reads = [r["event"] for r in records if r["type"] == "scene_read"]
    # One read per object: the best reading of 1 (absent), 2 (deleted).
    assert [(e["plate"], e["confidence"], e["raw"]["track_end"]) for e in reads] == [
        ("XY987", 0.9, "deleted"),
        ("AB123", 0.7, "absent"),
    ]
    [notification] = [r["event"] for r in records if r["type"] == "plate_notification"]
    assert notification["plate"] == "43거6510"
    assert records[-1]["type"] == "end"
    assert records[-1]["scene_reads"] == 2 and records[-1]["plate_notifications"] == 1


def test_an_rtsp_stream_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "camera.bin"
    capture.write_bytes(interleaved(scene_documents()))
    images = tmp_path / "images"
    code, records = run(capsys, "--rtsp", str(capture), "--images", str(images))
    assert code == 0
    assert records[0] == {
        "type": "rtsp_response",
        "status": 200,
        "reason": "OK",
        "content_type": None,
    }
    check_records(records)
    [with_file] = [
        r["event"]["images"]["plate"]
        for r in records
        if r["type"] == "scene_read" and r["event"]["images"]["plate"]
    ]
    assert Path(with_file["file"]).read_bytes() == CROP


def test_xml_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "metadata.xml"
    capture.write_bytes(b"\n".join(scene_documents()))
    code, records = run(capsys, "--rtsp", str(capture))
    assert code == 0
    check_records(records)


def test_problems_are_reported_and_set_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "metadata.xml"
    hostile = b'<!DOCTYPE x [<!ENTITY e "x">]><tt:MetadataStream xmlns:tt="x"/>'
    capture.write_bytes(scene_documents()[0] + b"\n" + b"<tt:MetadataStream>broken")
    code, records = run(capsys, "--rtsp", str(capture))
    assert code == 1
    assert [r["kind"] for r in records if r["type"] == "problem"] == ["xml_syntax"]
    capture.write_bytes(hostile)
    code, records = run(capsys, "--rtsp", str(capture))
    assert code == 1 and records[0]["kind"] == "xml_doctype"


def test_a_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rtsp", str(tmp_path / "nope.bin")]) == 2
