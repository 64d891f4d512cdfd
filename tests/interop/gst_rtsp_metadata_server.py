"""A GStreamer RTSP server (gst-rtsp-server) with an audio and an ONVIF metadata track, Digest on.

Run under the system python3 (PyGObject), not the project's venv: it is an
RTSP implementation this project did not write, for the interoperability test
of the gateway's RTSP client. The metadata document is read from a file and
sent every `--interval` seconds, split over several RTP packets by this script
(GStreamer 1.22 has no ONVIF metadata payloader); the RTSP side, SDP, Digest
and interleaving are GStreamer's. Prints `READY <port>` once listening.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

PAYLOAD_TYPE = 107
CLOCK_RATE = 90_000
METADATA_CAPS = (
    "application/x-rtp,media=application,encoding-name=VND.ONVIF.METADATA,"
    f"clock-rate={CLOCK_RATE},payload={PAYLOAD_TYPE}"
)


class MetadataSource:
    """Feeds RTP packets of the document into the appsrc of each configured media."""

    def __init__(self, document: bytes, interval: float, chunk: int) -> None:
        self.document = document
        self.interval = interval
        self.chunk = chunk
        self.sources: list[Gst.Element] = []
        self.sequence = 1000
        self.timestamp = 0
        self.sent = 0

    def on_media_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        source = media.get_element().get_child_by_name("src")
        self.sources.append(source)

    def tick(self) -> bool:
        parts = [
            self.document[i : i + self.chunk] for i in range(0, len(self.document), self.chunk)
        ]
        for index, part in enumerate(parts):
            marker = 0x80 if index == len(parts) - 1 else 0
            header = struct.pack(
                ">BBHII",
                0x80,
                marker | PAYLOAD_TYPE,
                self.sequence & 0xFFFF,
                self.timestamp,
                0x5EED,
            )
            self.sequence += 1
            for source in list(self.sources):
                buffer = Gst.Buffer.new_wrapped(header + part)
                if source.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
                    self.sources.remove(source)
        self.timestamp = (self.timestamp + int(self.interval * CLOCK_RATE)) & 0xFFFFFFFF
        self.sent += 1
        return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/lpr")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--document", required=True, help="file with one tt:MetadataStream")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--chunk", type=int, default=300, help="RTP payload bytes per packet")
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args()

    Gst.init(None)
    with open(args.document, "rb") as handle:
        document = handle.read()
    metadata = MetadataSource(document, args.interval, args.chunk)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    auth = GstRtspServer.RTSPAuth()
    auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    auth.add_digest(args.user, args.password, token)
    server.set_auth(auth)

    factory = GstRtspServer.RTSPMediaFactory()
    # An audio track beside the metadata one, so that the client must pick its track.
    # (A JPEG video track keeps gst-rtsp-server 1.22 from ever finishing its preroll.)
    audio = "audiotestsrc is-live=true wave=silence ! mulawenc ! rtppcmupay name=pay0 pt=0"
    factory.set_launch(
        f'( appsrc name=src is-live=true format=time do-timestamp=true caps="{METADATA_CAPS}"'
        f" ! identity name=pay{0 if args.no_audio else 1} {'' if args.no_audio else audio} )"
    )
    factory.set_shared(True)
    factory.add_role_from_structure(
        Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
    )
    factory.connect("media-configure", metadata.on_media_configure)
    server.get_mount_points().add_factory(args.path, factory)

    if server.attach(None) == 0:
        print("could not listen", file=sys.stderr)
        return 1
    print(f"READY {server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    GLib.timeout_add(int(args.interval * 1000), metadata.tick)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
