"""JWS compact EdDSA: round trip and every way a token must be refused, each with its typed error."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol import jws
from agent.protocol.jws import (
    BadSignature,
    JwsError,
    MalformedToken,
    TokenTooLarge,
    UnknownKey,
    UnsupportedAlgorithm,
    b64url_decode,
    b64url_encode,
)

PAYLOAD = {"v": 1, "id": "c-1", "kind": "broadcast.play", "iat": 1763900000, "exp": 1763986400,
           "to": ["group:town-menglou"], "data": {"class": "daily", "text": "明天上午9点停水"}}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(key: Ed25519PrivateKey) -> dict:
    return {"county-2026": key.public_key()}


def _forge(header: dict, payload: dict, key: Ed25519PrivateKey | None = None, sig: bytes | None = None) -> str:
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(payload).encode())
    if sig is None:
        sig = key.sign(f"{h}.{p}".encode()) if key else b""
    return f"{h}.{p}.{b64url_encode(sig) if sig else ''}"


def test_round_trip(key, keys) -> None:
    token = jws.sign(PAYLOAD, key, "county-2026")
    header, payload = jws.verify(token, keys)
    assert header == {"alg": "EdDSA", "kid": "county-2026"}
    assert payload == PAYLOAD
    # bytes in (as MQTT delivers them) verify the same
    assert jws.verify(token.encode(), keys)[1] == PAYLOAD
    # the protected header on the wire is exactly alg + kid
    assert json.loads(b64url_decode(token.split(".")[0])) == {"alg": "EdDSA", "kid": "county-2026"}


def test_tampered_payload(key, keys) -> None:
    h, _p, s = jws.sign(PAYLOAD, key, "county-2026").split(".")
    evil = b64url_encode(json.dumps({**PAYLOAD, "to": ["group:everyone"]}).encode())
    with pytest.raises(BadSignature) as err:
        jws.verify(f"{h}.{evil}.{s}", keys)
    assert err.value.reason == "bad_signature"


def test_tampered_header(key, keys) -> None:
    _h, p, s = jws.sign(PAYLOAD, key, "county-2026").split(".")
    h2 = b64url_encode(json.dumps({"kid": "county-2026", "alg": "EdDSA"}).encode())  # same meaning, new bytes
    with pytest.raises(BadSignature):
        jws.verify(f"{h2}.{p}.{s}", keys)


def test_wrong_key(keys) -> None:
    token = jws.sign(PAYLOAD, Ed25519PrivateKey.generate(), "county-2026")
    with pytest.raises(BadSignature):
        jws.verify(token, keys)


def test_unknown_kid(key, keys) -> None:
    with pytest.raises(UnknownKey) as err:
        jws.verify(jws.sign(PAYLOAD, key, "county-2025"), keys)
    assert err.value.reason == "unknown_kid"


def test_alg_none(keys) -> None:
    token = _forge({"alg": "none", "kid": "county-2026"}, PAYLOAD, sig=b"")
    with pytest.raises(UnsupportedAlgorithm) as err:
        jws.verify(token, keys)
    assert err.value.reason == "alg_not_allowed"


def test_alg_hs256_with_public_key_as_secret(key, keys) -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    secret = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = b64url_encode(json.dumps({"alg": "HS256", "kid": "county-2026"}).encode())
    p = b64url_encode(json.dumps(PAYLOAD).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    with pytest.raises(UnsupportedAlgorithm):
        jws.verify(f"{h}.{p}.{b64url_encode(sig)}", keys)


@pytest.mark.parametrize("extra", [{"crit": ["exp"]}, {"jwk": {"kty": "OKP"}}, {"jku": "https://evil"},
                                   {"x5u": "https://evil"}, {"b64": False}, {"zip": "DEF"}])
def test_extra_header_fields_refused(key, keys, extra) -> None:
    token = _forge({"alg": "EdDSA", "kid": "county-2026", **extra}, PAYLOAD, key)
    with pytest.raises(UnsupportedAlgorithm):
        jws.verify(token, keys)


def test_typ_is_allowed(key, keys) -> None:
    token = _forge({"alg": "EdDSA", "kid": "county-2026", "typ": "JWT"}, PAYLOAD, key)
    assert jws.verify(token, keys)[1] == PAYLOAD


@pytest.mark.parametrize("cut", [1, 10, -1, -10])
def test_truncated_token(key, keys, cut) -> None:
    token = jws.sign(PAYLOAD, key, "county-2026")
    with pytest.raises(JwsError):
        jws.verify(token[:cut], keys)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "....", "!!.??.**", "eyJhbGciOiJFZERTQSJ9..",
                                   "bm90IGpzb24.e30.AAAA", "WzFd.e30.AAAA", b"\xff\xfe.x.y"])
def test_malformed(keys, token) -> None:
    with pytest.raises(MalformedToken) as err:
        jws.verify(token, keys)
    assert err.value.reason == "malformed"


def test_padding_is_refused(key, keys) -> None:
    h, p, s = jws.sign(PAYLOAD, key, "county-2026").split(".")
    with pytest.raises(MalformedToken):
        jws.verify(f"{h}.{p}.{s}==", keys)


def test_huge_token(keys) -> None:
    huge = "A" * (jws.MAX_TOKEN_BYTES + 1)
    with pytest.raises(TokenTooLarge) as err:
        jws.verify(f"{huge}.e30.AAAA", keys)
    assert isinstance(err.value, MalformedToken) and err.value.reason == "too_large"
    with pytest.raises(TokenTooLarge):
        jws.verify(f"{huge}.e30.AAAA".encode(), keys)


def test_sign_refuses_oversize(key) -> None:
    with pytest.raises(ValueError):
        jws.sign({"blob": "x" * jws.MAX_TOKEN_BYTES}, key, "k")


def test_payload_must_be_object(key, keys) -> None:
    h = b64url_encode(json.dumps({"alg": "EdDSA", "kid": "county-2026"}).encode())
    p = b64url_encode(b"[1,2,3]")
    token = f"{h}.{p}.{b64url_encode(key.sign(f'{h}.{p}'.encode()))}"
    with pytest.raises(MalformedToken):
        jws.verify(token, keys)


def test_unverified_payload(key) -> None:
    assert jws.unverified_payload(jws.sign(PAYLOAD, key, "k"))["id"] == "c-1"
    assert jws.unverified_payload("garbage") is None
