"""The outbox's blob log: large payloads (images) in append-only segment files.

SQLite stored each image twice (once in its WAL, again when the checkpoint
copied it into the database file) and then freed its pages again after the
PUBACK: 1.2-2.0 CPU ms per read of the gateway's ~3 (bench/RESULTS.md). Here
an image is one `write` into a segment file, and a segment nobody refers to
any more is deleted whole.

Or rather, up to `SPARE_SEGMENTS` of them are kept as spares and written over
from their start as later segments, so that images are copied into page-cache
pages the kernel already has. Copying into freshly allocated pages was the
costliest step of a TCP read on this project's VMs (perf: 17 % of the
gateway's CPU flat out, where sending the same bytes to the broker was 2 %;
109 against 37 µs per 320 KB write in isolation, bench/RESULTS.md).

The outbox's rows say where each payload is (segment, offset, size) and are
the only source of truth: a segment is kept while a row of the outbox refers
to it. Bytes past what the rows refer to (a batch whose commit failed, what a
spare held before) are garbage, never read and written over or removed with
the segment. The blob is written before the row that refers to it is
committed, and with `sync` it is on disk (fdatasync) before that commit.

Used by one thread only (the outbox's).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

# A segment is closed for appending once it holds this much.
SEGMENT_BYTES = 32 * 1024 * 1024
# writev takes at most IOV_MAX (1024 on Linux) buffers per call.
_IOV_CHUNK = 512
# Removed segments kept (renamed) to be written over as new ones: two cover a
# segment being compacted while another fills. Costs their disk space.
SPARE_SEGMENTS = 2
_SEGMENT_NAME = re.compile(r"(\d{8})\.blob")
_SPARE_NAME = re.compile(r"spare-(\d{8})\.blob")


class BlobUnreadableError(Exception):
    """A payload's bytes are not where its row says (a segment lost or cut short)."""


class BlobLog:
    """Append-only segment files in one directory, named by increasing number.

    The segment being appended to is written at `current_size` (not with
    O_APPEND): a spare taken over, or a segment cut back, is written over.
    """

    def __init__(self, directory: Path, *, sync: bool) -> None:
        self.directory = directory
        self.sync = sync
        self.current = 0  # the segment appended to
        self.current_size = 0
        self._append_fd: int | None = None
        self._read_fds: dict[int, int] = {}
        self._spares: list[Path] = []  # files of removed segments, to be written over

    def open(self) -> list[int]:
        """Create the directory if needed and start a new segment after the
        existing ones (which the caller collects); the numbers of those."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._spares = []
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            if _SPARE_NAME.fullmatch(entry.name):  # an earlier run's spares
                self._keep_or_delete(Path(entry.path))
        existing = self.segments()
        self._start_segment((existing[-1] + 1) if existing else 1)
        return existing

    def close(self) -> None:
        self._close_segment()
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

    def segments(self) -> list[int]:
        """Numbers of the segment files present, in order."""
        numbers = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def size_of(self, segment: int) -> int:
        try:
            return self._path(segment).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Write the payloads one after the other; (segment, offset of the first).

        Starts a new segment first when these would take the current one past
        `SEGMENT_BYTES`. On an error nothing of them is left behind (the
        segment is cut back) and the `OSError` is raised.
        """
        total = sum(len(p) for p in payloads)
        if self.current_size and self.current_size + total > SEGMENT_BYTES:
            self._start_segment(self.current + 1)
        fd = self._append_fd
        assert fd is not None, "blob log is not open"
        start = self.current_size
        try:
            offset = start
            for i in range(0, len(payloads), _IOV_CHUNK):
                offset = _write_all(fd, payloads[i : i + _IOV_CHUNK], offset)
            if self.sync:
                os.fdatasync(fd)
        except OSError:
            self.cut_back(start)
            raise
        self.current_size = start + total
        return self.current, start

    def cut_back(self, size: int) -> None:
        """Forget what was appended to the current segment past `size` (a batch
        that was not committed, or all of it once nothing refers to it): the next
        append writes over it. The file is cut to size when the segment closes."""
        if self._append_fd is None:
            return
        self.current_size = size

    def read(self, segment: int, offset: int, size: int) -> bytes:
        try:
            fd = self._read_fds.get(segment)
            if fd is None:
                fd = os.open(self._path(segment), os.O_RDONLY | os.O_CLOEXEC)
                self._read_fds[segment] = fd
            data = os.pread(fd, size, offset)
        except OSError as exc:
            raise BlobUnreadableError(
                f"segment {self._path(segment)} cannot be read: {exc.strerror or exc}"
            ) from exc
        if len(data) != size:
            raise BlobUnreadableError(
                f"segment {self._path(segment)} holds {len(data)} of the {size} bytes"
                f" at offset {offset}"
            )
        return data

    def remove(self, segment: int) -> None:
        """Delete a segment no row refers to (never the current one), or keep
        its file as a spare."""
        if segment == self.current:
            raise ValueError("the current segment is never removed")
        fd = self._read_fds.pop(segment, None)
        if fd is not None:
            os.close(fd)
        self._keep_or_delete(self._path(segment))

    def _keep_or_delete(self, path: Path) -> None:
        try:
            if len(self._spares) < SPARE_SEGMENTS:
                spare = path
                if not _SPARE_NAME.fullmatch(path.name):
                    spare = path.with_name(f"spare-{path.name}")
                    path.rename(spare)
                self._spares.append(spare)
            else:
                path.unlink()
        except FileNotFoundError:
            pass

    def _start_segment(self, number: int) -> None:
        self._close_segment()
        path = self._path(number)
        reused = False
        while self._spares and not reused:
            with contextlib.suppress(FileNotFoundError):
                self._spares.pop(0).rename(path)
                reused = True
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._append_fd = fd
        self.current = number
        # A spare's old bytes are garbage: written over from the start.
        self.current_size = 0 if reused else os.fstat(fd).st_size
        if self.sync:  # the new file's name must survive a power loss too
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _close_segment(self) -> None:
        if self._append_fd is None:
            return
        # A closed segment's size is what its rows may refer to (the
        # compaction weighs live bytes against it): drop garbage past it.
        with contextlib.suppress(OSError):
            os.ftruncate(self._append_fd, self.current_size)
        os.close(self._append_fd)
        self._append_fd = None

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}.blob"


def _write_all(fd: int, buffers: Sequence[bytes], offset: int) -> int:
    """pwritev until every byte is written (a regular file may take less per call)."""
    views = [memoryview(b) for b in buffers if b]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]
    return offset
