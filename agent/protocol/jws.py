"""JWS compact serialization (RFC 7515) with EdDSA over Ed25519 (RFC 8037): the signed downlink commands.

Written by hand on purpose: it is ~60 lines over `cryptography`, and this way the protected header is exactly
`{"alg":"EdDSA","kid":...}` and nothing a JOSE library might honour (`jwk`, `jku`, `x5u`, `crit`, `b64`,
other algorithms) can ever reach the verifier. Verification is allow-list only: alg must be EdDSA, the header may
hold only alg, kid and typ, the key is looked up by kid in the box's pinned trust keys.

Every error carries a short machine `reason` that the box puts into its `rejected` receipt.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.i18n import N_
from agent.protocol.text import escape, quoted

ALG = "EdDSA"
ALLOWED_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
# A command may carry its audio inline (2 MiB raw, base64 twice: ~1.8x); 4 MiB leaves room for the JSON around it.
MAX_TOKEN_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 1024
MAX_KID_CHARS = 128
MAX_PEM_BYTES = 16 * 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwsError(Exception):
    """A token the box will not act on. `reason` is the machine word for the receipt."""

    reason = "malformed"

    def __init__(self, detail: str) -> None:
        detail = escape(detail)  # details quote untrusted header text; bounded and printable, always
        super().__init__(detail)
        self.detail = detail


class MalformedToken(JwsError):
    reason = "malformed"


class TokenTooLarge(MalformedToken):
    reason = "too_large"


class UnsupportedAlgorithm(JwsError):
    reason = "alg_not_allowed"


class UnknownKey(JwsError):
    reason = "unknown_kid"


class BadSignature(JwsError):
    reason = "bad_signature"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Canonical base64url only (RFC 7515 section 2): the URL-safe alphabet, no padding, and zero trailing
    bits, so that one token has exactly one encoding. (The standard alphabet's `+` `/`, padding, and a
    last character with stray low bits all decode to the same bytes elsewhere: refused here.)"""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise MalformedToken(N_("bad base64url segment (only A-Z a-z 0-9 - _, no padding)"))
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken(N_("bad base64url segment")) from None
    tail = len(data) % 3  # bytes in the last, partial group (its last character carries spare bits)
    if tail and b64url_encode(data[-tail:])[-1] != text[-1]:
        raise MalformedToken(N_("bad base64url segment (not canonical: non-zero trailing bits)"))
    return data


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedToken(N_("{what} is not UTF-8 JSON", what=what)) from None
    except RecursionError:  # "[[[[..." past the recursion limit: decoded before the signature is checked
        raise MalformedToken(N_("{what} JSON is nested too deeply", what=what)) from None
    if not isinstance(obj, dict):
        raise MalformedToken(N_("{what} is not a JSON object", what=what))
    return obj


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(payload: dict[str, Any], key: Ed25519PrivateKey, kid: str) -> str:
    if not kid or len(kid) > MAX_KID_CHARS:
        raise ValueError(N_("kid must be 1..{max_kid_chars} characters", max_kid_chars=MAX_KID_CHARS))
    signing_input = f"{b64url_encode(_compact({'alg': ALG, 'kid': kid}))}.{b64url_encode(_compact(payload))}"
    token = f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(N_("signed token is {token} bytes, over the {limit} byte limit",
                            token=len(token), limit=MAX_TOKEN_BYTES))
    return token


def split(token: str | bytes) -> tuple[dict[str, Any], str, str, str]:
    """Decode only the header: (header, header b64, payload b64, signature b64). Raises MalformedToken.

    The header is judged before anything else is decoded, so `alg: none` with an empty signature is
    refused as the algorithm it is, not as a formatting slip."""
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenTooLarge(N_("token is {token} bytes, limit {limit}", token=len(token), limit=MAX_TOKEN_BYTES))
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedToken(N_("token is not ASCII")) from None
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenTooLarge(N_("token is {token} bytes, limit {limit}", token=len(token), limit=MAX_TOKEN_BYTES))
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken(N_("expected 3 dot-separated parts, got {parts}", parts=len(parts)))
    h64, p64, s64 = parts
    if len(h64) > MAX_HEADER_BYTES:
        raise MalformedToken(N_("header too large"))
    return _json(b64url_decode(h64), "header"), h64, p64, s64


def unverified_payload(token: str | bytes) -> dict[str, Any] | None:
    """The payload object of a token that may not verify (for naming the command in a receipt), else None."""
    try:
        _h, _h64, p64, _s = split(token)
        return _json(b64url_decode(p64), "payload")
    except JwsError:
        return None


def verify(token: str | bytes, keys: Mapping[str, Ed25519PublicKey]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify `token` against the pinned `keys` (kid -> public key); returns (header, payload)."""
    header, h64, p64, s64 = split(token)
    extra = set(header) - ALLOWED_HEADER_KEYS
    if extra:
        shown = ", ".join(quoted(name, 32) for name in sorted(extra)[:8])
        raise UnsupportedAlgorithm(N_("header field(s) not allowed: {shown}{more}",
                                      shown=shown, more=" ..." if len(extra) > 8 else ''))
    alg = header.get("alg")
    if alg != ALG:
        raise UnsupportedAlgorithm(N_("alg {alg} is not allowed (only {allowed})", alg=quoted(alg, 32), allowed=ALG))
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MalformedToken(N_("header has no kid"))
    if "typ" in header and not isinstance(header["typ"], str):
        raise MalformedToken(N_("typ is not a string"))
    key = keys.get(kid)
    if key is None:
        raise UnknownKey(N_("kid {kid} is not a trusted key", kid=quoted(kid, MAX_KID_CHARS)))
    signature = b64url_decode(s64)
    payload = b64url_decode(p64)
    if len(signature) != 64:
        raise BadSignature(N_("signature is not 64 bytes"))
    try:
        key.verify(signature, f"{h64}.{p64}".encode("ascii"))
    except InvalidSignature:
        raise BadSignature(N_("signature does not verify with key {kid}", kid=quoted(kid, MAX_KID_CHARS))) from None
    return header, _json(payload, "payload")


# ------------------------------------------------------------------------------ key files (PEM)
class KeysError(Exception):
    """Base for key file problems; `str()` names the file and what is wrong."""


class KeyFileError(KeysError):
    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(N_("{file}: {problem}", file=str(path), problem=problem))
        self.path, self.problem = str(path), problem


class KeyExists(KeysError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; refusing to overwrite a key")
        self.path = str(path)


def _read_pem(path: Path | str) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PEM_BYTES:
            raise KeyFileError(path, N_("{size} bytes is too large for a PEM key", size=size))
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(path, N_("file does not exist")) from None
    except PermissionError:
        raise KeyFileError(path, N_("file is not readable")) from None
    except IsADirectoryError:
        raise KeyFileError(path, N_("is a directory, not a key file")) from None
    except OSError as exc:
        raise KeyFileError(path, N_("cannot read: {strerror}", strerror=exc.strerror)) from None


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    data = _read_pem(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        if b"PRIVATE KEY" in data:
            raise KeyFileError(path, N_("holds a PRIVATE key; a box must only be given the .pub file")) from None
        raise KeyFileError(path, N_("not a PEM public key")) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd key types; keep it one error type
        raise KeyFileError(path, N_("not a usable PEM public key ({name})", name=type(exc).__name__)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(path, N_("is a {kind}, not an Ed25519 public key", kind=type(key).__name__.lstrip('_')))
    return key


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    data = _read_pem(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(path, N_("is encrypted; village keys are unencrypted PKCS#8 (protect the file)")) from None
    except ValueError:
        raise KeyFileError(path, N_("not a PEM private key")) from None
    except Exception as exc:  # see load_public_key
        raise KeyFileError(path, N_("not a usable PEM private key ({name})", name=type(exc).__name__)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, N_("is not an Ed25519 private key"))
    return key


