"""HTTP Basic and Digest authentication, shared by RTSP and the picture fetch (http_auth.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.http_auth import (
    AuthChallenge,
    Authenticator,
    AuthVerdict,
    basic_authorization,
    choose_challenge,
    digest_authorization,
    parse_www_authenticate,
    split_url_credentials,
)

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_digest_rfc2617_worked_example() -> None:
    (challenge,) = parse_www_authenticate([RFC2617_CHALLENGE])
    value = digest_authorization(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
        nonce_count=1,
    )
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )


def test_digest_without_qop() -> None:
    challenge = AuthChallenge(
        "digest", {"realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093"}
    )
    value = digest_authorization(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="unused",
    )
    assert 'response="670fd8c2df070c60b045671b8b24ff02"' in value
    assert "qop" not in value and "cnonce" not in value and "nc=" not in value


def test_basic() -> None:
    # RFC 7617 section 2's example.
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['Basic realm="cam"'], [("basic", {"realm": "cam"})]),
        (
            ['Digest realm="a b", nonce="n,1", stale=TRUE, algorithm=MD5'],
            [("digest", {"realm": "a b", "nonce": "n,1", "stale": "TRUE", "algorithm": "MD5"})],
        ),
        (
            ['Basic realm="x", Digest realm="y", nonce="z"'],
            [("basic", {"realm": "x"}), ("digest", {"realm": "y", "nonce": "z"})],
        ),
        (
            ['Digest realm="y", nonce="z"', 'Basic realm="x"'],
            [("digest", {"realm": "y", "nonce": "z"}), ("basic", {"realm": "x"})],
        ),
        (['Digest realm="q\\"uote", nonce=abc'], [("digest", {"realm": 'q"uote', "nonce": "abc"})]),
        (["Negotiate abc123==, Basic realm=r"], [("negotiate", {}), ("basic", {"realm": "r"})]),
        ([""], []),
    ],
)
def test_parse_www_authenticate(
    values: list[str], expected: list[tuple[str, dict[str, str]]]
) -> None:
    got = parse_www_authenticate(values)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_choose_challenge_prefers_digest_and_skips_unsupported() -> None:
    challenges = parse_www_authenticate(
        [
            'Basic realm="x"',
            'Digest realm="y", nonce="n"',
            'Digest realm="z", nonce="n", qop="auth-int"',
        ]
    )
    chosen = choose_challenge(challenges)
    assert chosen is not None and chosen.scheme == "digest" and chosen.realm == "y"
    assert choose_challenge(parse_www_authenticate(['Digest realm="y", algorithm=XYZ'])) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_www_authenticate_never_raises(value: str) -> None:
    choose_challenge(parse_www_authenticate([value]))


def test_authenticator_verdicts() -> None:
    counter = itertools.count(1)
    auth = Authenticator("admin", "secret", lambda: f"c{next(counter)}")
    assert auth.authorization("DESCRIBE", "rtsp://cam/") is None
    digest = 'Digest realm="cam", nonce="n1", qop="auth"'
    assert auth.on_unauthorized([digest]) is AuthVerdict.RETRY
    first = auth.authorization("DESCRIBE", "rtsp://cam/")
    second = auth.authorization("SETUP", "rtsp://cam/t")
    assert first is not None and "nc=00000001" in first and 'cnonce="c1"' in first
    assert second is not None and "nc=00000002" in second
    # Refused after our answer: a configuration problem.
    assert auth.on_unauthorized([digest], first) is AuthVerdict.REJECTED
    # A stale nonce earns exactly one retry until a success.
    stale = 'Digest realm="cam", nonce="n2", qop="auth", stale=true'
    assert auth.on_unauthorized([stale], second) is AuthVerdict.RETRY
    third = auth.authorization("PLAY", "rtsp://cam/")
    assert third is not None and "nc=00000001" in third and 'nonce="n2"' in third
    # A concurrent request answered with the replaced nonce n1 may simply retry.
    assert auth.on_unauthorized([stale], first) is AuthVerdict.RETRY
    assert auth.on_unauthorized([stale], third) is AuthVerdict.REJECTED
    auth.on_success()
    assert auth.on_unauthorized([stale.replace("n2", "n3")], third) is AuthVerdict.RETRY
    # A request that carried no credentials (sent before the first challenge) retries.
    assert auth.on_unauthorized([digest], None) is AuthVerdict.RETRY


def test_authenticator_without_credentials_or_support() -> None:
    assert Authenticator(None, None, str).on_unauthorized(['Basic realm="x"']) is (
        AuthVerdict.NO_CREDENTIALS
    )
    auth = Authenticator("u", "p", str)
    assert auth.on_unauthorized(["Bearer realm=x"]) is AuthVerdict.UNSUPPORTED
    assert auth.on_unauthorized(['Basic realm="x"']) is AuthVerdict.RETRY
    sent = auth.authorization("GET", "/")
    assert sent == basic_authorization("u", "p")
    assert auth.on_unauthorized(['Basic realm="x"'], sent) is AuthVerdict.REJECTED


def test_split_url_credentials() -> None:
    assert split_url_credentials("rtsp://a%40b:p%3Ass@cam:8554/main?x=1") == (
        "rtsp://cam:8554/main?x=1",
        "a@b",
        "p:ss",
    )
    assert split_url_credentials("rtsp://cam/main") == ("rtsp://cam/main", None, None)
