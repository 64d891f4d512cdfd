"""Who may use the web page, and what its responses promise the browser.

- HTTP Basic against `ui.username`/`ui.password`, compared in constant time.
- CSRF: a state-changing request must be a POST carrying a token bound to the
  browser's CSRF cookie and to the credentials it sent, and must not come
  from another site (Origin / Sec-Fetch-Site). Basic credentials and cookies
  go with cross-site requests; the token and the Origin check are what a
  forged form cannot supply.
- On loopback without a login, the Host header must name the loopback too:
  a DNS-rebinding page on another site cannot read or drive it.
- Every response: a CSP without inline script, nosniff, no framing, no referrer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import yarl
from aiohttp import web

from gateway.config import UiConfig, is_loopback_host

CSRF_COOKIE = "lpr_ui_csrf"
CSRF_FIELD = "csrf"
REALM = "lpr-gateway"
# The form token of this request, for the pages to put in their forms.
CSRF_TOKEN = web.RequestKey("csrf_token", str)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null`
    # on the page's own form posts, which the CSRF check must refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Wrong logins a source may make in LOGIN_FAILURE_WINDOW_SECONDS; past them its
# requests get 429 without a look at the password, until the window has
# moved on: guessing the password over the network is slowed to this pace.
MAX_LOGIN_FAILURES = 10
LOGIN_FAILURE_WINDOW_SECONDS = 60.0
# Sources remembered at once (the oldest forgotten first): bounded memory
# whatever a scan of many addresses sends.
MAX_SOURCES_REMEMBERED = 10_000


class LoginFailures:
    """Recent wrong logins per source address."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str) -> deque[float] | None:
        times = self._failures.get(source)
        if times is None:
            return None
        horizon = self._clock() - LOGIN_FAILURE_WINDOW_SECONDS
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times

    def blocked(self, source: str) -> bool:
        times = self._recent(source)
        return times is not None and len(times) >= MAX_LOGIN_FAILURES

    def failed(self, source: str) -> None:
        times = self._recent(source)
        if times is None:
            times = self._failures[source] = deque()
        self._failures.move_to_end(source)
        times.append(self._clock())
        while len(self._failures) > MAX_SOURCES_REMEMBERED:
            self._failures.popitem(last=False)


class Access:
    """The checks of one web page instance (its CSRF key lives as long as the process)."""

    def __init__(self, config: UiConfig) -> None:
        self.username = config.username
        self.password = config.password or ""
        self.loopback_only = not config.username and is_loopback_host(config.host)
        self._csrf_key = secrets.token_bytes(32)
        self.login_failures = LoginFailures()
        # Told of each refused login attempt (a metric).
        self.on_login_refused: Callable[[], None] = lambda: None

    # -- login -------------------------------------------------------------------------

    def credentials_accepted(self, authorization: str | None) -> bool:
        if self.username is None:
            return True
        user, password = _basic_credentials(authorization)
        # Both compared every time, in constant time: the reply's timing says
        # nothing about which half was wrong, or how much of it.
        user_ok = hmac.compare_digest(user.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok and password_ok

    def host_accepted(self, host: str | None) -> bool:
        if not self.loopback_only:
            return True
        try:
            name = yarl.URL.build(scheme="http", authority=host or "").host
        except ValueError:
            return False
        return name is not None and is_loopback_host(name)

    # -- CSRF ----------------------------------------------------------------------------

    def csrf_token(self, cookie: str, authorization: str | None) -> str:
        message = f"{cookie}\n{authorization or ''}".encode()
        return hmac.new(self._csrf_key, message, hashlib.sha256).hexdigest()

    def csrf_problem(self, request: web.Request, token: str | None) -> str | None:
        """Why a state-changing request is refused (None: it may go ahead)."""
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site != "same-origin":
            return f"request from another site (Sec-Fetch-Site: {fetch_site})"
        origin = request.headers.get("Origin")
        if origin is not None and not _same_host(origin, request.host):
            return "request from another origin"
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not token:
            return "form token missing (reload the page)"
        expected = self.csrf_token(cookie, request.headers.get("Authorization"))
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return "form token does not match (reload the page)"
        return None

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        source = request.remote or ""
        authorization = request.headers.get("Authorization")
        if not self.host_accepted(request.headers.get("Host")):
            response: web.StreamResponse = web.Response(status=421, text="wrong host name\n")
        elif self.username is not None and self.login_failures.blocked(source):
            response = web.Response(
                status=429,
                text="too many wrong logins from this address: try again in a minute\n",
                headers={"Retry-After": str(int(LOGIN_FAILURE_WINDOW_SECONDS))},
            )
        elif not self.credentials_accepted(authorization):
            if authorization is not None:  # a guess; no header is the browser asking
                self.login_failures.failed(source)
                self.on_login_refused()
            response = web.Response(
                status=401,
                text="login required\n",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        else:
            cookie = request.cookies.get(CSRF_COOKIE)
            new_cookie = None
            if not cookie:
                cookie = new_cookie = secrets.token_urlsafe(32)
            request[CSRF_TOKEN] = self.csrf_token(cookie, request.headers.get("Authorization"))
            response = await handler(request)
            # Not on a stream (already sent): the pages with forms are plain responses.
            if new_cookie is not None and not response.prepared:
                response.set_cookie(
                    CSRF_COOKIE, new_cookie, httponly=True, samesite="Strict", path="/"
                )
        return response

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers every response carries, streams (SSE) and errors included."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def _same_host(origin: str, host: str) -> bool:
    """Whether an Origin names the host (and port) the request was sent to. The
    scheme is not compared: behind a TLS proxy the page is https to the
    browser and http here (the proxy must pass the Host header on)."""
    try:
        url = yarl.URL(origin)
    except ValueError:
        return False
    return url.is_absolute() and url.authority.lower() == host.lower()


def _basic_credentials(authorization: str | None) -> tuple[str, str]:
    """(user, password) of a Basic Authorization header; ("", "") if none or bad."""
    if not authorization or not authorization.lower().startswith("basic "):
        return "", ""
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else ("", "")
