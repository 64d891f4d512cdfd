"""The web page's endpoints on a real gateway (real mosquitto, free ports):
access, CSRF, escaping, pictures, cameras, known plates, history, live stream."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import PIL.Image
import pytest

import gateway.ui.live
from gateway.app import Gateway
from gateway.broker import MosquittoProcess
from gateway.event import CameraEvent, Image, PlateEvent, Source, utc_now
from gateway.history import HistoryQuery
from gateway.simulate.common import plate_jpeg, scene_jpeg
from gateway.ui.security import (
    CONTENT_SECURITY_POLICY,
    LOGIN_FAILURE_WINDOW_SECONDS,
    MAX_LOGIN_FAILURES,
    LoginFailures,
)
from tests.helpers import (
    eventually,
    free_port,
    gateway_config,
    http_camera_entry,
    sample,
    tcp_simulator_entry,
)

USER, PASSWORD = "installer", "s3cret-pass"


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header (aiohttp's BasicAuth is deprecated)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic(USER, PASSWORD)
HOSTILE_PLATE = "<img src=x onerror=alert(1)>"
HOSTILE_KNOWN = "<script>alert('k')</script>"


def read(camera: str, plate: str, images: bool = True, **fields: Any) -> PlateEvent:
    return PlateEvent(
        camera=camera,
        source=Source.INJECT,
        plate=plate,
        received=utc_now(),
        confidence=0.91,
        plate_image=Image(plate_jpeg()) if images else None,
        scene_image=Image(scene_jpeg()) if images else None,
        **fields,
    )


@pytest.fixture
async def gw(mqtt_broker: MosquittoProcess, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[
            http_camera_entry("gate", "cam", "campass"),
            http_camera_entry("yard", "cam", "campass"),
        ],
        ui={"listen": f"127.0.0.1:{free_port()}", "username": USER, "password": PASSWORD},
        history={"enabled": True, "images": "plate"},
        known_plates={HOSTILE_KNOWN: ["HK 1"]},
    )
    async with Gateway(config) as gateway:
        yield gateway


def url(gw: Gateway, path: str) -> str:
    assert gw.ui is not None
    return f"http://127.0.0.1:{gw.ui.port}{path}"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: keep cookies of an IP-address host (127.0.0.1), as a browser does
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(headers=AUTH, cookie_jar=jar) as session:
        yield session


async def csrf_token(client: aiohttp.ClientSession, gw: Gateway, page: str = "/cameras") -> str:
    async with client.get(url(gw, page)) as reply:
        text = await reply.text()
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', text)
    assert found, text[:2000]
    return found.group(1)


async def in_history(gw: Gateway, count: int) -> None:
    assert gw.history is not None
    store = gw.history.store
    await eventually(
        lambda: store.count(HistoryQuery()) >= count, 20, f"{count} reads in the history"
    )


# -- access ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_wrong_logins_from_one_address_are_slowed_to_ten_a_minute(gw: Gateway) -> None:
    assert gw.ui is not None
    clock = FakeClock()
    gw.ui.access.login_failures = LoginFailures(clock)
    wrong = basic(USER, PASSWORD + "x")
    async with aiohttp.ClientSession() as session:
        for _ in range(MAX_LOGIN_FAILURES):
            async with session.get(url(gw, "/"), headers=wrong) as reply:
                assert reply.status == 401
        # past the limit: refused without a look at the password, the right one too
        for auth in (wrong, AUTH):
            async with session.get(url(gw, "/"), headers=auth) as reply:
                assert reply.status == 429
                assert reply.headers["Retry-After"] == str(int(LOGIN_FAILURE_WINDOW_SECONDS))
        async with session.get(url(gw, "/")) as reply:  # no header: not a guess, still 429
            assert reply.status == 429
        clock.now += LOGIN_FAILURE_WINDOW_SECONDS + 1
        async with session.get(url(gw, "/"), headers=AUTH) as reply:
            assert reply.status == 200
    assert sample(gw.metrics, "lpr_ui_logins_refused_total") == MAX_LOGIN_FAILURES


def test_login_failures_are_per_address_and_bounded() -> None:
    clock = FakeClock()
    failures = LoginFailures(clock)
    for _ in range(MAX_LOGIN_FAILURES):
        failures.failed("10.0.0.1")
    assert failures.blocked("10.0.0.1")
    assert not failures.blocked("10.0.0.2")
    clock.now += LOGIN_FAILURE_WINDOW_SECONDS / 2
    failures.failed("10.0.0.2")
    clock.now += LOGIN_FAILURE_WINDOW_SECONDS / 2 + 0.1
    assert not failures.blocked("10.0.0.1")  # its failures aged out
    for n in range(20_000):  # a scan of many addresses: memory stays bounded
        failures.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(failures._failures) <= 10_000


async def test_login_is_required_and_checked(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(url(gw, "/")) as reply:
            assert reply.status == 401
            assert reply.headers["WWW-Authenticate"].startswith("Basic ")
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
            assert "lpr-gateway" not in (await reply.text()).lower()  # nothing of the page
        wrong = basic(USER, PASSWORD + "x")
        for auth in (wrong, basic("other", PASSWORD), {"Authorization": "Basic !!"}):
            async with anonymous.get(url(gw, "/history"), headers=auth) as reply:
                assert reply.status == 401
        async with anonymous.get(url(gw, "/image/x/plate")) as reply:
            assert reply.status == 401
        async with anonymous.get(url(gw, "/"), headers=AUTH) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert "script-src 'self'" in CONTENT_SECURITY_POLICY
            assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert reply.content_type == "text/html"


async def test_loopback_page_without_login_wants_a_loopback_host_name(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """DNS rebinding: another site's name pointing at 127.0.0.1 gets nothing."""
    config = gateway_config(mqtt_broker.url, tmp_path, ui={"listen": f"127.0.0.1:{free_port()}"})
    async with Gateway(config) as gateway, aiohttp.ClientSession() as session:
        async with session.get(url(gateway, "/health")) as reply:
            assert reply.status == 200
        headers = {"Host": f"evil.example:{gateway.ui.port if gateway.ui else 0}"}
        async with session.get(url(gateway, "/health"), headers=headers) as reply:
            assert reply.status == 421


async def test_static_files_have_their_types(gw: Gateway, client: aiohttp.ClientSession) -> None:
    for name, kind in (("ui.css", "text/css"), ("ui.js", "text/javascript")):
        async with client.get(url(gw, f"/static/{name}")) as reply:
            assert reply.status == 200
            assert reply.content_type == kind
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
    async with client.get(url(gw, "/static/..%2Fserver.py")) as reply:
        assert reply.status == 404
    js = (Path(gateway.ui.__file__).parent / "static" / "ui.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


# -- CSRF --------------------------------------------------------------------------------


async def test_state_changes_need_the_token_and_the_same_origin(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    target = url(gw, "/cameras/gate/disable")
    own_origin = url(gw, "")
    token = await csrf_token(client, gw)
    refused = [
        ({}, {}),  # no token
        ({"csrf": "0" * 64}, {}),  # a wrong one
        ({"csrf": token}, {"Origin": "http://evil.example"}),
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf": token}, {"Origin": "null"}),
    ]
    for form, headers in refused:
        async with client.post(target, data=form, headers=headers, allow_redirects=False) as r:
            assert r.status == 403, (form, headers)
    # A token is bound to the browser's cookie: another browser's token is refused.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(headers=AUTH, cookie_jar=jar) as other:
        other_token = await csrf_token(other, gw)
    async with client.post(target, data={"csrf": other_token}, allow_redirects=False) as r:
        assert r.status == 403
    async with client.get(target) as r:
        assert r.status == 405  # POST only
    assert not gw.switches.is_disabled("gate")
    assert sample(gw.metrics, "lpr_ui_csrf_refused_total") == len(refused) + 1

    headers = {"Origin": own_origin, "Sec-Fetch-Site": "same-origin"}
    async with client.post(
        target, data={"csrf": token}, headers=headers, allow_redirects=False
    ) as r:
        assert r.status == 303
        assert r.headers["Location"].startswith("/cameras?")
    assert gw.switches.is_disabled("gate")
    # Behind a TLS proxy that passes the Host on: https to the browser, http here.
    proxied = {"Origin": own_origin.replace("http://", "https://")}
    enable = url(gw, "/cameras/gate/enable")
    async with client.post(enable, data={"csrf": token}, headers=proxied) as r:
        assert r.status == 200
    assert not gw.switches.is_disabled("gate")


# -- cameras -----------------------------------------------------------------------------


async def test_camera_enable_disable_goes_through_runtime_control(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    token = await csrf_token(client, gw)
    async with client.post(url(gw, "/cameras/yard/disable"), data={"csrf": token}) as reply:
        page = await reply.text()
    assert gw.switches.is_disabled("yard")
    assert gw.publisher is not None and gw.publisher.state.camera_state("yard") == "disabled"
    # The runtime store has it: it survives a restart like a bridge request's switch.
    store = gw.runtime_store
    disabled = await asyncio.get_running_loop().run_in_executor(
        gw._runtime_executor, store.disabled_cameras
    )
    assert "yard" in disabled
    assert "camera yard disabled" in page
    assert re.search(r'id="camera-yard".*?class="state disabled"', page, re.S)
    async with client.post(url(gw, "/cameras/yard/enable"), data={"csrf": token}) as reply:
        assert reply.status == 200
    assert not gw.switches.is_disabled("yard")
    async with client.post(url(gw, "/cameras/nosuch/enable"), data={"csrf": token}) as reply:
        assert reply.status == 400
        assert "no camera" in await reply.text()


async def test_camera_page_shows_reads_and_a_refused_login(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    for n in range(3):
        assert (await gw.submit(read("gate", f"GT {n}"))).taken
    assert gw.config.http.listen is not None
    camera_url = f"http://127.0.0.1:{gw.config.http.port}/lpr/yard"
    async with aiohttp.ClientSession() as camera:
        bad = basic("cam", "wrong")
        async with camera.post(camera_url, data=b'{"plate": "X"}', headers=bad) as reply:
            assert reply.status == 401
    async with client.get(url(gw, "/cameras")) as reply:
        page = await reply.text()
    gate = page.split('id="camera-gate"')[1].split("</section>")[0]
    assert "<dt>reads/min</dt><dd>3</dd>" in gate
    assert "s ago" in gate
    assert "POST /lpr/gate" in gate
    yard = page.split('id="camera-yard"')[1].split("</section>")[0]
    assert 'class="state login-refused"' in yard


# -- known plates ------------------------------------------------------------------------


async def test_known_plates_add_and_remove_through_runtime_control(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    token = await csrf_token(client, gw, "/known")
    form = {"csrf": token, "name": "Alice's car", "plates": "AB 123 CD, XY 9", "cameras": "gate"}
    async with client.post(url(gw, "/known/add"), data=form) as reply:
        page = await reply.text()
    assert reply.status == 200
    assert gw.runtime is not None
    runtime = [i for i in gw.runtime.list_known_plates() if i["source"] == "runtime"]
    assert runtime == [
        {
            "name": "Alice's car",
            "source": "runtime",
            "plates": ["AB 123 CD", "XY 9"],
            "cameras": ["gate"],
            "valid_until": None,
        }
    ]
    assert "Alice&#x27;s car" in page and "AB 123 CD" in page
    # The config's list is shown read-only, escaped: no remove form for it.
    assert "&lt;script&gt;alert(&#x27;k&#x27;)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    # A read of the plate is matched at once (the pipeline's table changed).
    assert (await gw.submit(read("gate", "AB123CD"))).taken
    assert gw.ui is not None and gw.ui.live.items[-1].summary["known"] == "Alice's car"

    refused = {"csrf": token, "name": HOSTILE_KNOWN, "plates": "Z 1"}
    async with client.post(url(gw, "/known/add"), data=refused) as reply:
        assert reply.status == 400  # a config name: the runtime controller says no
        assert "defined in the config file" in await reply.text()

    remove = {"csrf": token, "name": "Alice's car", "plate": "XY 9"}
    async with client.post(url(gw, "/known/remove"), data=remove) as reply:
        assert reply.status == 200
    remaining = [i for i in gw.runtime.list_known_plates() if i["source"] == "runtime"]
    assert remaining[0]["plates"] == ["AB 123 CD"]
    async with client.post(
        url(gw, "/known/remove"), data={"csrf": token, "name": "Alice's car"}
    ) as reply:
        assert reply.status == 200
    assert [i for i in gw.runtime.list_known_plates() if i["source"] == "runtime"] == []


# -- escaping and pictures -----------------------------------------------------------------


async def test_hostile_plates_show_as_text_everywhere(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    event = CameraEvent(
        camera="gate", source=Source.INJECT, kind="<b>counting</b>", received=utc_now()
    )
    assert (await gw.submit(read("gate", HOSTILE_PLATE))).taken
    assert (await gw.submit(read("gate", "HK 1"))).taken  # known as HOSTILE_KNOWN
    assert (await gw.submit(event)).taken
    await in_history(gw, 2)
    for page in ("/", f"/history?plate={HOSTILE_PLATE}"):
        async with client.get(url(gw, page)) as reply:
            text = await reply.text()
        assert "&lt;img src=x onerror=alert(1)&gt;" in text, page
        assert "<img src=x" not in text and "onerror=alert(1)>" not in text
        assert "<script>alert" not in text
    async with client.get(url(gw, "/")) as reply:
        text = await reply.text()
    assert "&lt;b&gt;counting&lt;/b&gt;" in text and "<b>counting" not in text
    assert "<script>" not in text.replace('<script src="/static/ui.js" defer></script>', "")


async def test_pictures_have_their_type_and_no_sniffing(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    sent = read("gate", "PIC 1")
    not_a_picture = PlateEvent(
        camera="gate",
        source=Source.INJECT,
        plate="PIC 2",
        received=utc_now(),
        plate_image=Image(b"<html><script>alert(1)</script></html>"),
    )
    assert (await gw.submit(sent)).taken
    assert (await gw.submit(not_a_picture)).taken
    async with client.get(url(gw, f"/image/{sent.id}/plate")) as reply:
        assert reply.status == 200
        assert reply.content_type == "image/jpeg"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert await reply.read() == plate_jpeg()
    async with client.get(url(gw, f"/image/{sent.id}/scene")) as reply:
        assert reply.content_type == "image/jpeg"
        assert await reply.read() == scene_jpeg()
    # The live list's scene thumbnail: the scene scaled down (Pillow, the test extra).
    async with client.get(url(gw, f"/image/{sent.id}/thumb")) as reply:
        assert reply.content_type == "image/jpeg"
        thumbnail = await reply.read()
    with PIL.Image.open(io.BytesIO(thumbnail)) as picture:
        assert picture.width == gateway.ui.server.THUMBNAIL_WIDTH
    assert len(thumbnail) < len(scene_jpeg()) / 5
    async with client.get(url(gw, f"/image/{not_a_picture.id}/plate")) as reply:
        assert reply.content_type == "application/octet-stream"
        assert reply.headers["Content-Disposition"] == "attachment"
    for path in (f"/image/{sent.id}/evidence0", "/image/nosuch/plate"):
        async with client.get(url(gw, path)) as reply:
            assert reply.status == 404


async def test_pictures_gone_from_memory_come_from_the_history(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    first = read("gate", "OLD 1")
    assert (await gw.submit(first)).taken
    assert gw.ui is not None
    for n in range(gateway.ui.live.LIVE_ITEMS):
        assert (await gw.submit(read("yard", f"NEW {n}", images=False))).taken
    assert gw.ui.live.image(first.id, "plate") is None
    await in_history(gw, gateway.ui.live.LIVE_ITEMS + 1)
    async with client.get(url(gw, f"/image/{first.id}/plate")) as reply:
        assert reply.status == 200
        assert await reply.read() == plate_jpeg()
    async with client.get(url(gw, f"/image/{first.id}/scene")) as reply:
        assert reply.status == 404  # history.images: plate


# -- history -------------------------------------------------------------------------------


async def test_history_search_pages_and_csv(gw: Gateway, client: aiohttp.ClientSession) -> None:
    for n in range(60):
        camera = "gate" if n % 2 else "yard"
        assert (await gw.submit(read(camera, f"HS {n:03d}", images=False))).taken
    assert (await gw.submit(read("gate", "=HYPERLINK(1)", images=False))).taken
    await in_history(gw, 61)
    async with client.get(url(gw, "/history?plate=hs&camera=yard")) as reply:
        page = await reply.text()
    assert "page 1 of 1 · 30 reads" in page
    async with client.get(url(gw, "/history?plate=HS")) as reply:
        page = await reply.text()
    assert "page 1 of 2 · 60 reads" in page
    assert page.index("HS 059") < page.index("HS 058")  # newest first
    assert "HS 009" not in page
    async with client.get(url(gw, "/history?plate=HS&page=2")) as reply:
        page2 = await reply.text()
    assert "HS 009" in page2 and "HS 059" not in page2 and "← newer" in page2
    async with client.get(url(gw, "/history?plate=HS+05O")) as reply:
        assert "No reads match." in await reply.text()
    async with client.get(url(gw, "/history?plate=HS+05O&fuzzy=1")) as reply:
        fuzzy = await reply.text()
    assert "HS 050" in fuzzy and "HS 049" not in fuzzy
    # A time range that ends before the reads: none.
    async with client.get(url(gw, "/history?until=2000-01-01T00:00")) as reply:
        assert "No reads match." in await reply.text()
    async with client.get(url(gw, "/history?since=yesterday")) as reply:
        assert "from: not a date and time" in await reply.text()

    async with client.get(url(gw, "/history.csv?camera=gate")) as reply:
        assert reply.content_type == "text/csv"
        assert "attachment" in reply.headers["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(await reply.text())))
    assert rows[0][:3] == ["time", "camera", "plate"]
    plates = [row[2] for row in rows[1:]]
    assert len(plates) == 31
    assert plates[0] == "'=HYPERLINK(1)"  # a formula kept as text
    assert "HS 001" in plates and "HS 002" not in plates


async def test_history_off_is_said(mqtt_broker: MosquittoProcess, tmp_path: Path) -> None:
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        ui={"listen": f"127.0.0.1:{free_port()}", "username": USER, "password": PASSWORD},
    )
    async with Gateway(config) as gw, aiohttp.ClientSession(headers=AUTH) as client:
        async with client.get(url(gw, "/history")) as reply:
            assert "The read history is off" in await reply.text()
        async with client.get(url(gw, "/history.csv")) as reply:
            assert reply.status == 404


# -- health ----------------------------------------------------------------------------------


async def test_health_page_gives_the_healthz_reasons(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    async with client.get(url(gw, "/health")) as reply:
        page = await reply.text()
    assert 'class="state healthy"' in page
    assert "<dt>broker</dt><dd>connected</dd>" in page
    assert "<dt>outbox events</dt>" in page and "<dt>oldest waiting</dt>" in page
    gw.task_crashes["adapter-x"] = (time.time(), "crashed: <b>boom</b>")
    async with client.get(url(gw, "/health")) as reply:
        page = await reply.text()
    assert 'class="state degraded"' in page
    assert "adapter-x: restarted after it crashed: &lt;b&gt;boom&lt;/b&gt;" in page


# -- live ------------------------------------------------------------------------------------


async def next_sse_data(reply: aiohttp.ClientResponse, timeout: float = 10.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            line = (await reply.content.readline()).decode()
            if line.startswith("data: "):
                return line[6:].strip()


async def test_live_stream_delivers_a_read_and_replays_what_was_missed(
    gw: Gateway, client: aiohttp.ClientSession
) -> None:
    import json

    async with client.get(url(gw, "/live/events")) as reply:
        assert reply.content_type == "text/event-stream"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        await eventually(lambda: gw.ui is not None and len(gw.ui.live.watchers) == 1)
        sent = read("gate", "HK1")
        assert (await gw.submit(sent)).taken
        item = json.loads(await next_sse_data(reply))
    assert item["id"] == sent.id and item["plate"] == "HK1"
    assert item["known"] == HOSTILE_KNOWN and item["match"] == "exact" and item["plate_image"]
    assert gw.ui is not None
    seq = gw.ui.live.items[-1].seq
    later = read("yard", "LATER 1", images=False)
    assert (await gw.submit(later)).taken
    # A page that reconnects says the last id it saw and gets what came since.
    async with client.get(url(gw, "/live/events"), headers={"Last-Event-ID": str(seq)}) as reply:
        assert json.loads(await next_sse_data(reply))["id"] == later.id
    # A page's first connection starts after the newest item it was rendered with.
    async with client.get(url(gw, "/")) as reply:
        assert f'data-after="{seq + 1}"' in await reply.text()
    async with client.get(url(gw, f"/live/events?after={seq}")) as reply:
        assert json.loads(await next_sse_data(reply))["id"] == later.id
    await eventually(lambda: gw.ui is not None and not gw.ui.live.watchers)
    assert sample(gw.metrics, "lpr_ui_live_watchers") == 0


async def test_a_live_page_that_does_not_read_holds_nothing_up(
    mqtt_broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher whose socket is full: reads go on being taken and published;
    its queue stays bounded, what it misses is counted, and it is let go."""
    monkeypatch.setattr(gateway.ui.live, "WATCHER_QUEUE", 5)
    monkeypatch.setattr(gateway.ui.server, "WATCHER_WRITE_SECONDS", 1.0)
    # No known plates: matching a 16 KB plate against them is costly (not what is tested).
    config = gateway_config(
        mqtt_broker.url,
        tmp_path,
        cameras=[http_camera_entry("gate", "cam", "campass")],
        ui={"listen": f"127.0.0.1:{free_port()}", "username": USER, "password": PASSWORD},
    )
    async with Gateway(config) as gw:
        await _stall_a_live_page(gw)


async def _stall_a_live_page(gw: Gateway) -> None:
    assert gw.ui is not None and gw.ui.port is not None
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", gw.ui.port))
    login = AUTH["Authorization"]
    stalled.sendall(
        f"GET /live/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {login}\r\n\r\n".encode()
    )
    try:
        await eventually(lambda: gw.ui is not None and len(gw.ui.live.watchers) == 1)
        watcher = next(iter(gw.ui.live.watchers))
        started = time.monotonic()
        # ~16 KB a message: 400 of them are more than the kernel and aiohttp buffer
        long_plate = "P" * 16_000
        for n in range(400):
            assert (await gw.submit(read("gate", f"{long_plate}{n}", images=False))).taken
            assert len(watcher.queue) <= 5
        submitting = time.monotonic() - started
        # Bounded, never a claim about speed: 400 reads do not wait on the page.
        assert submitting < 60
        await eventually(
            lambda: (
                sample(gw.metrics, "lpr_ui_live_watchers_dropped_total") == 1 or watcher.dropped > 0
            ),
            30,
            "the stalled page loses items or is disconnected",
        )
        await eventually(lambda: sample(gw.metrics, "lpr_events_published_total", camera="gate")
                         >= 400, 60, "every read published")  # fmt: skip
        await eventually(
            lambda: sample(gw.metrics, "lpr_ui_live_watchers_dropped_total") == 1,
            30,
            "the stalled page disconnected",
        )
        assert gw.ui is not None and not gw.ui.live.watchers
    finally:
        stalled.close()


async def test_too_many_live_pages_are_refused(
    gw: Gateway, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.ui.server, "MAX_WATCHERS", 1)
    async with client.get(url(gw, "/live/events")) as first:
        assert first.status == 200
        await eventually(lambda: gw.ui is not None and len(gw.ui.live.watchers) == 1)
        async with client.get(url(gw, "/live/events")) as second:
            assert second.status == 503
    assert sample(gw.metrics, "lpr_ui_live_watchers_refused_total") == 1


async def test_a_tcp_camera_that_refuses_the_login_shows_so(
    mqtt_broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The simulated camera refuses the gateway's password: offline, and the
    page says why ("login refused"), not just "offline"."""
    from gateway.simulate.tcp import TcpCameraSimulator

    async with TcpCameraSimulator(camera="door", password="right") as camera:
        entry = {**tcp_simulator_entry("door", camera.port), "password": "wrong"}
        config = gateway_config(
            mqtt_broker.url,
            tmp_path,
            cameras=[entry],
            ui={"listen": f"127.0.0.1:{free_port()}"},
        )
        async with Gateway(config) as gw, aiohttp.ClientSession() as client:
            await eventually(lambda: camera.login_failures > 0, 20, "a refused login")
            await eventually(
                lambda: sample(gw.metrics, "lpr_camera_auth_failures_total", camera="door") > 0
            )
            async with client.get(url(gw, "/cameras")) as reply:
                page = await reply.text()
            assert 'class="state login-refused">login refused<' in page
