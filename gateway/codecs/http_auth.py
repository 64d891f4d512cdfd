"""HTTP authentication (RFC 7617 Basic, RFC 2617/7616 Digest), sans-IO.

Shared by RTSP (`RtspClient`) and the HTTP picture fetch: both answer the same
`WWW-Authenticate` challenges. The Digest cnonce comes from the caller.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from gateway.errors import CodecMisuseError

_AUTH_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_AUTH_SCHEME_RE = re.compile(rf"\s*({_AUTH_TOKEN})")
_AUTH_PARAM_RE = re.compile(rf'\s*({_AUTH_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*')
_AUTH_TOKEN68_RE = re.compile(r"\s+[A-Za-z0-9._~+/-]+=*\s*(?:,|$)")
_DIGEST_HASHES: Mapping[str, Callable[[bytes], str]] = {
    "md5": lambda data: hashlib.md5(data).hexdigest(),
    "sha-256": lambda data: hashlib.sha256(data).hexdigest(),
}


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    scheme: str  # lower case: "basic", "digest", ...
    params: Mapping[str, str] = field(default_factory=dict)  # names lower case

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def nonce(self) -> str:
        return self.params.get("nonce", "")

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "").lower() == "true"

    @property
    def algorithm(self) -> str:
        return self.params.get("algorithm", "MD5")

    @property
    def qop_options(self) -> tuple[str, ...]:
        raw = self.params.get("qop")
        if raw is None:
            return ()
        return tuple(q.strip().lower() for q in raw.split(",") if q.strip())

    @property
    def supported(self) -> bool:
        if self.scheme == "basic":
            return True
        if self.scheme != "digest" or not self.nonce:
            return False
        algorithm = self.algorithm.lower().removesuffix("-sess")
        if algorithm not in _DIGEST_HASHES:
            return False
        return not self.qop_options or "auth" in self.qop_options


def parse_www_authenticate(values: Iterable[str]) -> list[AuthChallenge]:
    """Every challenge in every `WWW-Authenticate` value (one value may hold several)."""
    challenges: list[AuthChallenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            while pos < len(value) and value[pos] in " \t,":
                pos += 1
            scheme_match = _AUTH_SCHEME_RE.match(value, pos)
            if scheme_match is None:
                break
            scheme = scheme_match.group(1).lower()
            pos = scheme_match.end()
            params: dict[str, str] = {}
            token68 = _AUTH_TOKEN68_RE.match(value, pos)
            if token68 is not None:
                # e.g. `Negotiate abc123==`: a blob, not parameters
                challenges.append(AuthChallenge(scheme, {}))
                pos = token68.end()
                continue
            while True:
                param = _AUTH_PARAM_RE.match(value, pos)
                if param is None:
                    break
                name, raw = param.group(1).lower(), param.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params[name] = raw
                pos = param.end()
                if pos < len(value) and value[pos] == ",":
                    pos += 1
                    continue
                break
            challenges.append(AuthChallenge(scheme, params))
    return challenges


def choose_challenge(challenges: Sequence[AuthChallenge]) -> AuthChallenge | None:
    """The strongest challenge we can answer: Digest SHA-256, Digest MD5, then Basic."""

    def rank(challenge: AuthChallenge) -> int:
        if challenge.scheme == "digest":
            return 3 if challenge.algorithm.lower().startswith("sha-256") else 2
        return 1

    usable = [c for c in challenges if c.supported]
    return max(usable, key=rank) if usable else None


def basic_authorization(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_authorization(
    challenge: AuthChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nonce_count: int = 1,
) -> str:
    """The `Authorization: Digest ...` value answering `challenge` (qop=auth or none)."""
    algorithm = challenge.algorithm
    digest = _DIGEST_HASHES.get(algorithm.lower().removesuffix("-sess"))
    if digest is None:
        raise CodecMisuseError(f"unsupported Digest algorithm {algorithm!r}")
    realm, nonce = challenge.realm, challenge.nonce
    ha1 = digest(f"{username}:{realm}:{password}".encode())
    if algorithm.lower().endswith("-sess"):
        ha1 = digest(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = digest(f"{method}:{uri}".encode())
    use_qop = "auth" in challenge.qop_options
    nc = f"{nonce_count:08x}"
    if use_qop:
        response = digest(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode())
    else:
        response = digest(f"{ha1}:{nonce}:{ha2}".encode())
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
    ]
    if use_qop:
        parts += ["qop=auth", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
    parts.append(f"response={_quote(response)}")
    if "opaque" in challenge.params:
        parts.append(f"opaque={_quote(challenge.params['opaque'])}")
    if "algorithm" in challenge.params:
        parts.append(f"algorithm={algorithm}")
    return "Digest " + ", ".join(parts)


class AuthVerdict(enum.Enum):
    RETRY = "retry"  # resend the request with `authorization(...)`
    NO_CREDENTIALS = "no_credentials"  # the server wants credentials and none are configured
    REJECTED = "rejected"  # the configured credentials were tried and refused
    UNSUPPORTED = "unsupported"  # no challenge we can answer


class Authenticator:
    """Answers challenges for one server; usable for RTSP and for HTTP.

    The first 401 is expected (we do not know the scheme yet) and gives RETRY;
    a 401 after our answer is REJECTED unless the server says the nonce was
    stale, which earns one more RETRY until a request succeeds again.
    """

    def __init__(
        self, username: str | None, password: str | None, cnonce: Callable[[], str]
    ) -> None:
        self._username = username
        self._password = password or ""
        self._cnonce = cnonce
        self._challenge: AuthChallenge | None = None
        self._nonce_count = 0
        self._stale_retry_used = False

    @property
    def has_credentials(self) -> bool:
        return self._username is not None

    @property
    def scheme(self) -> str | None:
        return self._challenge.scheme if self._challenge else None

    def authorization(self, method: str, uri: str) -> str | None:
        """The Authorization value for a request, or None before any challenge."""
        challenge = self._challenge
        if challenge is None or self._username is None:
            return None
        if challenge.scheme == "basic":
            return basic_authorization(self._username, self._password)
        self._nonce_count += 1
        return digest_authorization(
            challenge,
            username=self._username,
            password=self._password,
            method=method,
            uri=uri,
            cnonce=self._cnonce(),
            nonce_count=self._nonce_count,
        )

    def on_unauthorized(
        self, www_authenticate: Iterable[str], sent: str | None = None
    ) -> AuthVerdict:
        """Judge a 401. `sent` is the Authorization the refused request carried.

        A request that carried none, or an answer to a challenge we have since
        replaced (concurrent requests), is not a refusal of the credentials.
        """
        challenge = choose_challenge(parse_www_authenticate(www_authenticate))
        if not self.has_credentials:
            return AuthVerdict.NO_CREDENTIALS
        if challenge is None:
            return AuthVerdict.UNSUPPORTED
        previous = self._challenge
        if previous is None or sent is None:
            self._adopt(challenge)
            return AuthVerdict.RETRY
        if _answered_nonce(sent) != previous.nonce and not sent.lower().startswith("basic"):
            return AuthVerdict.RETRY
        if challenge.scheme == "digest" and challenge.stale and not self._stale_retry_used:
            self._stale_retry_used = True
            self._adopt(challenge)
            return AuthVerdict.RETRY
        return AuthVerdict.REJECTED

    def on_success(self) -> None:
        self._stale_retry_used = False

    def reset(self) -> None:
        """Forget the challenge (a new connection starts over)."""
        self._challenge = None
        self._nonce_count = 0
        self._stale_retry_used = False

    def _adopt(self, challenge: AuthChallenge) -> None:
        if self._challenge is None or challenge.nonce != self._challenge.nonce:
            self._nonce_count = 0
        self._challenge = challenge


def _answered_nonce(authorization: str) -> str:
    # An Authorization value has the same auth-param syntax as a challenge.
    parsed = parse_www_authenticate([authorization])
    return parsed[0].nonce if parsed else ""


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`rtsp://user:pass@host/path` → (`rtsp://host/path`, user, pass)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    password = unquote(parts.password) if parts.password is not None else None
    return clean, unquote(parts.username or ""), password
