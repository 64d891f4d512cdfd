"""Hypothesis fuzzing of every codec, seeded with the simulators' real output.

Each case takes a real sample and mutates it (flip, insert, delete, duplicate,
truncate, splice with another sample, overwrite with "interesting" values),
or generates raw bytes. In the normal suite each target runs a short bounded
number of cases; `LPR_FUZZ_SECONDS=60` runs each target for that long instead
(see bench/RESULTS.md). atheris drives the same targets: tests/fuzz/run_atheris.py.

Any crash found becomes a case in tests/fuzz/test_regressions.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs import http_body, onvif, rtsp, tcp
from tests.fuzz import seeds as seed_module
from tests.fuzz.seeds import seeds
from tests.fuzz.targets import TARGETS

FUZZ_SECONDS = float(os.environ.get("LPR_FUZZ_SECONDS", "0"))
EXAMPLES = int(os.environ.get("LPR_FUZZ_EXAMPLES", "150"))

INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\xcc\xff",  # TCP frame start
    b"$",  # RTSP interleaved frame
    b"\r\n\r\n",
    b"Content-Length: 99999999\r\n",
    b'"',
    b"\\u0000",
    b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
    b"]]>",
    b"\xef\xbb\xbf",
    b"NaN",
    b"1e999",
    b"-1",
]


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 7))
        at = draw(st.integers(0, len(data))) if data else 0
        if op == 0 and data:  # flip bits
            data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:  # insert random bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == 2:  # delete a run
            del data[at : at + draw(st.integers(1, 64))]
        elif op == 3:  # duplicate a run
            run = data[at : at + draw(st.integers(1, 256))]
            data[at:at] = run
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # splice another sample in
            other = draw(st.sampled_from(samples))
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:]
        elif op == 6:  # overwrite with an interesting value
            value = draw(st.sampled_from(INTERESTING))
            data[at : at + len(value)] = value
        else:  # set one byte
            if data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


def run_target(name: str) -> None:
    target = TARGETS[name]
    samples = seeds(name)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated(samples))
    def fuzz(data: bytes) -> None:
        target(data)

    if FUZZ_SECONDS <= 0:
        fuzz()
        return
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while time.monotonic() < deadline:
        fuzz()  # fresh random cases each round (no database, not derandomised)
        rounds += 1
    print(f"fuzz {name}: {rounds} rounds of {EXAMPLES} cases in {FUZZ_SECONDS:g} s")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz(name: str) -> None:
    run_target(name)


# The seeds must reach the codecs' success paths, or the fuzzing mutates noise.


def test_seeds_decode_to_reads() -> None:
    decoder = tcp.FrameDecoder()
    decoder.receive_data(b"".join(seed_module.tcp_frames()))
    frames = []
    while isinstance(event := decoder.next_event(), tcp.Frame):
        frames.append(event)
    assert len(frames) == len(seed_module.tcp_frames())
    for data in seeds("tcp-result"):
        assert tcp.parse_recognition_result(data).metadata.plate
    parsed = [http_body.parse_json_body(body) for body in seeds("http-body")]
    assert sum(isinstance(p, http_body.HttpPlateRead) for p in parsed) >= 7
    documents = seeds("onvif")
    assert all(onvif.parse_metadata(d) for d in documents)
    reader = rtsp.RtspReader()
    reader.receive_data(seeds("rtsp-stream")[0][1:])
    kinds: list[Any] = []
    while (reply := reader.next_event()) is not rtsp.NEED_DATA:
        kinds.append(type(reply))
    assert kinds.count(rtsp.RtspResponse) == 4
    assert kinds.count(rtsp.InterleavedFrame) >= 4
