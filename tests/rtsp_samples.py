"""Sample RTSP/SDP data shared by the RTSP codec test modules (a data module:
test modules import from here, never from each other)."""

from __future__ import annotations

# A camera's DESCRIBE answer: video, audio and the ONVIF metadata track (3).
SDP_CAMERA = b"""v=0\r
o=- 1 1 IN IP4 192.168.1.52\r
s=Media Presentation\r
c=IN IP4 0.0.0.0\r
t=0 0\r
a=control:*\r
m=video 0 RTP/AVP 96\r
a=rtpmap:96 H264/90000\r
a=control:trackID=1\r
m=audio 0 RTP/AVP 0\r
a=rtpmap:0 PCMU/8000\r
a=control:trackID=2\r
m=application 0 RTP/AVP 107\r
a=rtpmap:107 vnd.onvif.metadata/90000\r
a=control:trackID=3\r
"""

# Numbers a hostile camera may send where digits are expected.
HOSTILE_NUMBERS = ["x", "\u00b2", "\uff15", "\u0665", "-0x1", "-1", "+5", "1_0", "9" * 5000]
