"""Coverage-guided fuzzing of one codec with atheris (libFuzzer), seeded from the simulators.

    .venv/bin/pip install atheris       # optional; hypothesis covers the suite without it
    .venv/bin/python -m tests.fuzz.run_atheris tcp-stream -max_total_time=60
    .venv/bin/python -m tests.fuzz.run_atheris --all -max_total_time=60

Targets: tcp-stream, tcp-result, http-body, rtsp-stream, rtp, onvif. The seed
corpus is written to .fuzz-corpus/<target>/ (grown by libFuzzer as it finds new
paths); a crash is saved by libFuzzer as crash-<sha1> in the working directory:
turn it into a case of tests/fuzz/test_regressions.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _corpus(target: str) -> Path:
    from tests.fuzz.seeds import seeds

    directory = Path(".fuzz-corpus") / target
    directory.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(seeds(target)):
        (directory / f"seed-{n}").write_bytes(data)
    return directory


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    if argv[0] == "--all":
        from tests.fuzz.targets import TARGETS

        failed = 0
        for name in TARGETS:
            print(f"== {name}", flush=True)
            failed |= subprocess.call([sys.executable, "-m", __spec__.name, name, *argv[1:]])
        return failed
    target_name, libfuzzer_args = argv[0], argv[1:]
    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

    # Instrument before anything imports the codecs (the seeds do).
    with atheris.instrument_imports(include=["gateway"]):
        from tests.fuzz.targets import TARGETS
    corpus = _corpus(target_name)

    target = TARGETS[target_name]

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args, str(corpus)], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
