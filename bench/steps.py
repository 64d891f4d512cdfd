"""`python -m bench.steps`: what each step of one read costs on its own.

The spine's ratio to the raw paho loop (bench `pipeline`) is bounded by the
work a read needs besides publishing. This measures each of those steps in
isolation, in this process, on the same read the spine benchmarks use (a
20 KB plate crop, a 300 KB scene, ~1 KB of fields), CPU time per read:

- render: the event JSON and its messages (`render_messages`), the SHA-256
  of both pictures included, and the SHA-256 alone;
- store: `Outbox.append_batch` (blob log write + SQLite commit), one read per
  transaction and 16 per transaction (the spine batches what is queued);
- acknowledge: `Outbox.acknowledge` of a read's messages (rows deleted);
- publish: what the raw loop does per read (paho, QoS 1, 4 messages, PUBACKs),
  against a private mosquitto.

The sum of render + store + acknowledge is what a read costs on top of the
raw loop whatever the design: it is the durability and the event JSON the
contract asks for.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import cpu_seconds, inject_read, publish_read, wait_published
from gateway.broker import MosquittoProcess
from gateway.config import OutboxSync
from gateway.outbox import EventDraft, Outbox, StoredMessage
from gateway.pipeline import render_messages
from gateway.simulate.common import plate_jpeg, scene_jpeg
from gateway.topics import Topics

WINDOW = 32


def per_read_ms(work: Callable[[int], None], reads: int) -> float:
    """CPU ms per read of `work(n)` for n in range(reads)."""
    work(0)  # warm up
    start = cpu_seconds()
    for n in range(1, reads + 1):
        work(n)
    return 1000 * (cpu_seconds() - start) / reads


def measure(reads: int) -> list[tuple[str, float]]:
    plate, scene = plate_jpeg(), scene_jpeg()
    topics = Topics("lpr")
    results: list[tuple[str, float]] = []

    results.append(("sha256 of both pictures", per_read_ms(lambda n: _hash(plate, scene), reads)))

    def render(n: int) -> None:
        # A fresh event each time: an Image caches nothing between reads.
        render_messages(inject_read("c", n, plate, scene), topics)

    results.append(("render (event JSON with the hashes, 4 messages)", per_read_ms(render, reads)))

    drafts = [
        EventDraft(
            event_id=str(uuid.uuid4()),
            camera="c",
            messages=render_messages(inject_read("c", n, plate, scene), topics),
            accepted_at=time.time(),
        )
        for n in range(reads + 1)
    ]
    with tempfile.TemporaryDirectory(prefix="lpr-bench-steps-") as tmp:
        for batch in (1, 16):
            outbox = Outbox(Path(tmp) / f"outbox-{batch}.sqlite3", 10**10, OutboxSync.NORMAL)
            outbox.open()
            stored: list[StoredMessage] = []

            def store(
                n: int,
                outbox: Outbox = outbox,
                batch: int = batch,
                into: list[StoredMessage] = stored,
            ) -> None:
                if n % batch == 0:
                    into.extend(outbox.append_batch(drafts[n : n + batch])[1])

            name = f"store, {batch} read(s) per transaction"
            results.append((name, per_read_ms(store, reads)))
            if batch == 16:
                per_read = len(drafts[0].messages)
                group = 16 * per_read
                start = cpu_seconds()
                for i in range(0, len(stored), group):
                    outbox.acknowledge(stored[i : i + group])
                acknowledged = len(stored) / per_read
                name = "acknowledge (rows deleted), 16 reads at a time"
                results.append((name, 1000 * (cpu_seconds() - start) / acknowledged))
            outbox.close()

        broker = MosquittoProcess()
        broker.start()
        try:
            results.append(
                ("publish: the raw paho loop's work", _publish(broker, plate, scene, reads))
            )
        finally:
            broker.stop()
    return results


def _hash(plate: bytes, scene: bytes) -> None:
    hashlib.sha256(plate).hexdigest()
    hashlib.sha256(scene).hexdigest()


def _publish(broker: MosquittoProcess, plate: bytes, scene: bytes, reads: int) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"steps-{uuid.uuid4()}")
    client.max_inflight_messages_set(WINDOW)
    client.connect(broker.host, broker.port)
    client.loop_start()
    outstanding: deque[mqtt.MQTTMessageInfo] = deque()
    event = b'{"schema": 1, "padding": "' + b"x" * 900 + b'"}'
    start = cpu_seconds()
    for _ in range(reads):
        publish_read(client, outstanding, "steps", plate, scene, event, WINDOW)
    wait_published(outstanding)
    cpu = cpu_seconds() - start
    client.loop_stop()
    client.disconnect()
    return 1000 * cpu / reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 500 reads write ~165 MB of blob segments that nothing acknowledges
    # meanwhile: many more and the kernel's dirty-page throttling is billed
    # to the store step (a gateway deletes its segments long before that).
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    rows = measure(args.reads)
    print("| step | CPU ms per read |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
