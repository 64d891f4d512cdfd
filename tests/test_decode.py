"""`lpr-gateway decode`: a raw TCP capture in, JSON lines out."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.codecs.tcp import (
    Command,
    Flavour,
    encode_frame,
    encode_login_reply,
    encode_login_request,
    encode_recognition_frame,
)
from gateway.decode import main
from tests.tcp_samples import BASE, FULL, PLATE, SCENE


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_clean_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    login = encode_login_request("admin", "s3cret")
    reply = encode_login_reply(200)
    read = encode_recognition_frame(FULL, [SCENE, PLATE])
    capture = tmp_path / "cap.bin"
    capture.write_bytes(login + reply + read)
    code, records = run(capsys, str(capture))
    assert code == 0
    assert [r["type"] for r in records] == ["frame", "frame", "frame", "end"]
    assert records[0]["login_request"] == {"id": "admin", "password": "***"}
    assert "s3cret" not in json.dumps(records)
    assert records[1]["login_reply"] == {"status": 200, "ok": True}
    recog = records[2]
    assert recog["offset"] == len(login + reply) and recog["name"] == "COMM_RECOG_POST"
    fields = recog["recognition"]
    assert fields["device_id"] == "bb12f904-94ce-4065-89af-e83cd88f70be"
    assert fields["time"] == "2018-05-09T12:11:30.000Z"
    assert fields["plate"] == fields["license_plate"] == "부산02가1234"
    assert (fields["width"], fields["height"], fields["x2"]) == (1920, 1080, 110)
    assert fields["classified_by"] == "resolution"
    assert [(i["kind"], i["bytes"], i["width"]) for i in fields["images"]] == [
        ("scene", len(SCENE), 1920),
        ("plate", len(PLATE), 480),
    ]
    assert records[-1] == {
        "type": "end",
        "offset": len(login + reply + read),
        "frames": 3,
        "problems": 0,
    }


def test_corrupt_regions_are_reported_with_offsets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = encode_recognition_frame(BASE, [PLATE, SCENE], flavour=Flavour.BASE)
    bad_end = encode_login_reply(200)[:-2] + b"\x00\x00"
    oversize = b"\xcc\xff\x01\x88" + struct.pack("<I", 1 << 31)
    unknown = encode_frame(0x4242, b"\x01\x02")
    lying = encode_recognition_frame(replace(BASE, image_count=3), [PLATE], flavour=Flavour.BASE)
    stream = good + bad_end + good + b"garbage!" + good + oversize + good + unknown + lying
    stream += good[:100]
    capture = tmp_path / "cap.bin"
    capture.write_bytes(stream)
    code, records = run(capsys, str(capture))
    assert code == 1
    kinds = [(r["type"], r.get("reason") or r.get("kind") or r.get("name")) for r in records]
    assert kinds == [
        ("frame", "COMM_RECOG_POST"),
        ("corrupt", "bad_sig_end"),
        ("garbage", None),  # the rest of the corrupt frame
        ("frame", "COMM_RECOG_POST"),
        ("garbage", None),
        ("frame", "COMM_RECOG_POST"),
        ("fatal", "oversize_frame"),
        ("garbage", None),
        ("frame", "COMM_RECOG_POST"),
        ("frame", "0x4242"),
        ("frame", "COMM_RECOG_POST"),
        ("corrupt", "truncated"),
        ("garbage", None),
        ("end", None),
    ]
    g, b = len(good), len(bad_end)
    assert records[1]["offset"] == g and records[1]["data_size"] == b - 8
    assert records[2] == {"type": "garbage", "offset": g + 2, "count": b - 2}
    assert records[3]["offset"] == g + b
    assert records[4] == {"type": "garbage", "offset": 2 * g + b, "count": 8}
    assert records[6]["offset"] == 3 * g + b + 8
    assert records[7] == {"type": "garbage", "offset": 3 * g + b + 10, "count": 6}
    assert records[9]["data"] == "01 02"
    assert records[10]["issues"] == [
        {"kind": "image_count_mismatch", "detail": "metadata says 3 images, 1 present"}
    ]
    assert records[11]["offset"] == len(stream) - 100
    assert records[12] == {"type": "garbage", "offset": len(stream) - 98, "count": 98}
    assert records[-1] == {
        "type": "end",
        "offset": len(stream),
        "frames": 6,
        "problems": 9,
    }


def test_unreadable_recognition_frame(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "cap.bin"
    capture.write_bytes(encode_frame(Command.RECOG_POST, b"\x22\xff\x00\x00\x00\x00\x00\x00"))
    code, records = run(capsys, str(capture))
    assert code == 1
    assert records[0]["error"]["kind"] == "no_metadata"


def test_images_are_written_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "cap.bin"
    capture.write_bytes(encode_recognition_frame(FULL, [PLATE, SCENE]) * 2)
    out_dir = tmp_path / "images"
    code, records = run(capsys, str(capture), "--images", str(out_dir))
    assert code == 0
    files = sorted(out_dir.iterdir())
    assert len(files) == 4
    for record in records[:2]:
        for image in record["recognition"]["images"]:
            data = Path(image["file"]).read_bytes()
            assert data == (PLATE if image["kind"] == "plate" else SCENE)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.bin")]) == 2
    assert "nope.bin" in capsys.readouterr().err


def test_decodes_a_capture_dir_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # what the adapter saves is a whole frame, readable by decode
    capture = tmp_path / "cam-x-no_metadata.bin"
    capture.write_bytes(encode_frame(Command.RECOG_POST, b"x" * 10))
    code, records = run(capsys, str(capture))
    assert code == 1 and records[0]["type"] == "frame" and "error" in records[0]


async def test_decodes_a_capture_recorded_from_the_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `nc camera 5000 > capture.bin` would record, faults included."""
    import asyncio

    from gateway.simulate.tcp import Fault, TcpCameraSimulator

    async with TcpCameraSimulator(seed=31, fault=Fault.GARBAGE) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(encode_login_request("admin", "1234"))
        await writer.drain()
        await sim.push(3)
        await sim.push(1, fault=Fault.DROP)
        async with asyncio.timeout(5):
            recorded = await reader.read()  # until the camera hangs up mid-frame
        writer.close()
    capture = tmp_path / "capture.bin"
    capture.write_bytes(recorded)
    code, records = run(capsys, str(capture))
    assert code == 1
    frames = [r for r in records if r["type"] == "frame"]
    assert frames[0]["login_reply"] == {"status": 200, "ok": True}
    assert [f["recognition"]["plate"] for f in frames[1:]] == [p for p, _, _ in sim.sent_reads]
    corrupt = [r for r in records if r["type"] == "corrupt"]
    assert [c["reason"] for c in corrupt] == ["truncated"]
    cut = corrupt[0]["offset"]
    garbage = [r for r in records if r["type"] == "garbage"]
    # the garbage the camera put before its frames, then the cut frame after its SIG
    assert sum(r["count"] for r in garbage if r["offset"] < cut) == sim.garbage_bytes_sent > 0
    assert sum(r["count"] for r in garbage if r["offset"] > cut) == len(recorded) - cut - 2
    assert records[-1]["offset"] == len(recorded)


def test_images_beyond_plate_and_scene_are_named_as_the_event_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [SCENE, PLATE, b"\xff\xd8 a", b"\xff\xd8 b", b"\xff\xd8 c"]
    capture = tmp_path / "cap.bin"
    capture.write_bytes(encode_recognition_frame(replace(FULL, image_count=5), images))
    code, records = run(capsys, str(capture))
    assert code == 0
    kinds = [image["kind"] for image in records[0]["recognition"]["images"]]
    assert kinds == ["scene", "plate", "evidence0", "evidence1", "extra"]
