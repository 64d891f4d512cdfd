#!/usr/bin/env bash
# System packages for the RTSP interoperability tests: GStreamer's RTSP server
# and client (rtspsrc) with their Python bindings, run under the system python3.
# Idempotent; a machine without apt (or without network) just skips those tests.
set -euo pipefail

have_gst() {
    /usr/bin/python3 - <<'PY' >/dev/null 2>&1
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer  # noqa: F401
Gst.init(None)
assert Gst.ElementFactory.find("rtspsrc") and Gst.ElementFactory.find("rtppcmupay")
PY
}

if have_gst; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get; the GStreamer interop tests will be skipped" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
echo "installing GStreamer RTSP server/client packages (apt-get)"
$SUDO apt-get update -qq || true
if ! $SUDO apt-get install -y -qq --no-install-recommends \
        python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 \
        gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
        gstreamer1.0-tools >/dev/null; then
    echo "install-deps: apt-get failed; the GStreamer interop tests will be skipped" >&2
fi
exit 0
