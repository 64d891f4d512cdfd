"""The codecs stay sans-IO: no sockets, event loop, clock, randomness or logging."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CODECS = sorted((Path(__file__).resolve().parents[2] / "gateway" / "codecs").glob("*.py"))
FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "logging",
    "time",
    "random",
    "secrets",
    "threading",
    "aiohttp",
    "paho",
    "sqlite3",
    "subprocess",
    "selectors",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "urandom"}


@pytest.mark.parametrize("path", CODECS, ids=lambda p: p.name)
def test_codec_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", CODECS, ids=lambda p: p.name)
def test_codec_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in FORBIDDEN_CALLS, (
                f"{path.name}:{node.lineno} calls .{node.func.attr}()"
            )


def test_every_codec_is_checked() -> None:
    assert {p.name for p in CODECS} >= {
        "tcp.py",
        "http_body.py",
        "rtsp.py",
        "rtp.py",
        "onvif.py",
        "assumed.py",
    }
