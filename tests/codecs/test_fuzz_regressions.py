"""Inputs the long fuzzer (`python -m tests.fuzz.long`) found crashing a codec.

Each case feeds the minimal form of the saved input to its fuzz target, which
checks every promise of the codec (only CameraProtocolError escapes, bounded
buffers, events that are valid UTF-8 JSON without NaN).
"""

from __future__ import annotations

import pytest

from gateway.codecs import http_body
from gateway.errors import CameraProtocolError
from tests.fuzz.targets import TARGETS

# http-body, found in the 10^6 run of 2026-12-02: an encoded surrogate
# (ED A0 80) in a UTF-8 body. json.loads() decodes bytes with "surrogatepass",
# so the plate held a lone U+D800 that no UTF-8 encoder (outbox, MQTT, log)
# accepts. The body must be refused as invalid_text (a 400), never stored.
ENCODED_SURROGATE_BODY = b'{"plate": "\xea\xb4\x91\xec\xa3\xbc33\xed\xa0\x801585"}'


def test_http_body_with_an_encoded_surrogate_is_refused() -> None:
    with pytest.raises(CameraProtocolError) as info:
        http_body.parse_json_body(ENCODED_SURROGATE_BODY)
    assert info.value.kind == "invalid_text"
    TARGETS["http-body"](ENCODED_SURROGATE_BODY)
