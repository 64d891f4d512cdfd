"""Long fuzzing, bounded: a million mutated inputs per codec, and it stops by itself.

    .venv/bin/python -m tests.fuzz.long --codec tcp-stream               # 10^6 inputs
    .venv/bin/python -m tests.fuzz.long --codec all --inputs 1000000
    .venv/bin/python -m tests.fuzz.long --codec onvif --max-seconds 900  # whichever ends first

Not part of `make test`. The targets are those of tests/fuzz/targets.py (the
hypothesis suite and atheris drive the same ones); this runner mutates the
simulators' real output with a plain PRNG, which is some hundred times cheaper
per input than hypothesis, so 10^6 inputs take minutes. Every input that makes
a target raise anything but its refusal (CameraProtocolError, caught inside the
target) is a crash: saved as .fuzz-crashes/<codec>-<sha1>.bin, deduplicated by
exception type and place, and printed at the end. Turn each into a regression
test in tests/codecs/ or tests/fuzz/test_regressions.py.

One line per codec: inputs, seconds, inputs/s, unique crashes. Exit 1 if any.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.seeds import seeds
from tests.fuzz.targets import TARGETS

# Aliases for the codecs the issue names.
CODECS: dict[str, tuple[str, ...]] = {
    "tcp": ("tcp-stream", "tcp-result"),
    "http": ("http-body",),
    "rtsp": ("rtsp-stream", "rtsp-client"),
    "rtp": ("rtp",),
    "onvif": ("onvif",),
}

# Values that break parsers: bounds, separators, numbers isdigit() likes and
# int() does not, non-finite floats, XML and RTSP structure.
INTERESTING: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\xc0\x7f",  # float32 NaN (little-endian)
    b"\x00\x00\x80\x7f",  # float32 +inf
    b"\xcc\xff",  # TCP frame start
    b"\xff\xdd",  # TCP frame end
    b"\xcc\xff\x01\x88\x02\x00\x00\x00",  # a plausible header with DATA_SIZE 2
    b"\x11\xff\x00\x00",  # metadata chunk id
    b"\x22\xff\x00\x00",  # image chunk id
    b"$",  # RTSP interleaved frame
    b"\r\n\r\n",
    b"\r",
    b"Content-Length: 99999999\r\n",
    b"CSeq: \xc2\xb2\r\n",
    b"seq=",
    b"timeout=",
    b'"',
    b"\\u0000",
    b"\\ud800",
    b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
    b"]]>",
    b"\xef\xbb\xbf",
    b"\xc2\xb2",  # superscript two: isdigit() is True
    b"\xef\xbc\x95",  # fullwidth five
    b"\xd9\xa5",  # Arabic-Indic five
    b"-0x1",
    b"+99:00",
    b"9" * 5000,
    b"NaN",
    b"nan",
    b"inf",
    b"1e999",
    b"-1",
)


def mutate(rng: random.Random, samples: Sequence[bytes]) -> bytes:
    """One input: raw random bytes (1 in 10), or a sample with 1-6 mutations."""
    if rng.randrange(10) == 0:
        return rng.randbytes(rng.randrange(2049))
    data = bytearray(rng.choice(samples))
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(8)
        at = rng.randint(0, len(data))
        if op == 0 and data:  # flip a bit
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:  # delete a run
            del data[at : at + rng.randint(1, 64)]
        elif op == 3:  # duplicate a run
            data[at:at] = data[at : at + rng.randint(1, 256)]
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # splice another sample in
            other = rng.choice(samples)
            data[at:] = other[rng.randint(0, len(other)) :]
        elif op == 6:  # overwrite with an interesting value
            value = rng.choice(INTERESTING)
            data[at : at + len(value)] = value
        elif data:  # set one byte
            data[min(at, len(data) - 1)] = rng.randrange(256)
    return bytes(data)


@dataclass
class Outcome:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: dict[str, Path] = field(default_factory=dict)  # signature → saved input

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


def fuzz(
    name: str,
    target: Callable[[bytes], None],
    samples: Sequence[bytes],
    *,
    inputs: int,
    max_seconds: float,
    seed: int,
    crash_dir: Path,
) -> Outcome:
    rng = random.Random(f"{seed}-{name}")
    outcome = Outcome(name)
    started = time.monotonic()
    deadline = started + max_seconds
    while outcome.inputs < inputs:
        data = mutate(rng, samples)
        try:
            target(data)
        except Exception as exc:  # any escape is the finding
            signature = _signature(exc)
            if signature not in outcome.crashes:
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"{name}-{hashlib.sha1(data).hexdigest()}.bin"
                path.write_bytes(data)
                outcome.crashes[signature] = path
                print(f"  crash in {name}: {signature}: {exc!r:.200} -> {path}", flush=True)
        outcome.inputs += 1
        if outcome.inputs % 4096 == 0 and time.monotonic() >= deadline:
            break
    outcome.seconds = time.monotonic() - started
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.long", description=__doc__)
    names = sorted(TARGETS)
    parser.add_argument(
        "--codec",
        default="all",
        help=f"one of {', '.join([*names, *CODECS])}, or all (default)",
    )
    parser.add_argument("--inputs", type=int, default=1_000_000, help="per target")
    parser.add_argument(
        "--max-seconds", type=float, default=1800.0, help="per target, a bound on the run"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crash-dir", type=Path, default=Path(".fuzz-crashes"))
    args = parser.parse_args(argv)
    if args.codec == "all":
        chosen: tuple[str, ...] = tuple(names)
    elif args.codec in CODECS:
        chosen = CODECS[args.codec]
    elif args.codec in TARGETS:
        chosen = (args.codec,)
    else:
        parser.error(f"unknown codec {args.codec!r}")
    total_crashes = 0
    for name in chosen:
        outcome = fuzz(
            name,
            TARGETS[name],
            seeds(name),
            inputs=args.inputs,
            max_seconds=args.max_seconds,
            seed=args.seed,
            crash_dir=args.crash_dir,
        )
        total_crashes += len(outcome.crashes)
        stopped = "" if outcome.inputs >= args.inputs else " (stopped by --max-seconds)"
        print(
            f"{name}: {outcome.inputs} inputs in {outcome.seconds:.1f} s "
            f"({outcome.rate:.0f}/s), {len(outcome.crashes)} crashes{stopped}",
            flush=True,
        )
        for signature, path in outcome.crashes.items():
            print(f"  {signature}: {path}", flush=True)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
