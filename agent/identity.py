"""The box's TLS identity: a private key that never leaves the box and a CSR for the county CA.

`village agent identity [--dir D] (--box-id ID | -c CONFIG) [--algo ecdsa-p256|ed25519]`

- the key is made once and kept: running again (every install-box run does) reuses it and only rewrites
  the CSR when it is missing or names another box;
- ECDSA P-256 by default: every broker and CA toolchain takes it; Ed25519 client certificates need
  OpenSSL 1.1.1+ on both ends, which some county brokers still lack;
- CSR subject CN = box id, with key usage for TLS client authentication;
- files: `box.key` (PKCS#8 PEM, mode 0600, written atomically), `box.csr` (PEM, 0644); the county
  returns `box.crt`, which the config names as `mqtt.cert` with `mqtt.key` = box.key.

Exit codes: 0 done, 2 bad arguments or config, 1 the files cannot be written or read.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent import words
from agent.fsutil import write_atomic
from agent.i18n import N_, _
from agent.protocol.topics import BOX_ID_RE

DEFAULT_DIR = Path("/etc/village-agent/identity")
KEY_NAME = "box.key"
CSR_NAME = "box.csr"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class IdentityError(Exception):
    """Files that cannot be made or read (exit 1), or bad input (exit 2); `str()` is the line shown."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def new_key(algo: str) -> PrivateKey:
    if algo == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: PrivateKey, box_id: str) -> x509.CertificateSigningRequest:
    digital_sig_only = isinstance(key, ed25519.Ed25519PrivateKey)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=not digital_sig_only, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    algorithm = None if digital_sig_only else hashes.SHA256()
    return builder.sign(key, algorithm)


def fingerprint(key: PrivateKey) -> str:
    """SHA-256 of the public key (SubjectPublicKeyInfo DER): what a technician reads out to the county."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    try:
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        raise IdentityError(N_("{path}: cannot write: {error}", path=path, error=exc.strerror or exc)) from None


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise IdentityError(N_("{path}: cannot read: {error}", path=path, error=exc.strerror or exc)) from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(N_("{path}: not a usable PEM private key: {exc}", path=path, exc=exc)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise IdentityError(N_("{path}: key type {name} is not ECDSA or Ed25519", path=path, name=type(key).__name__))
    return key


def _csr_names(path: Path, box_id: str, key: PrivateKey) -> bool:
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except (OSError, ValueError):
        return False
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    same_key = fingerprint_public(csr.public_key()) == fingerprint(key)
    return same_key and [a.value for a in cns] == [box_id]


def fingerprint_public(public: object) -> str:
    der = public.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def ensure_identity(directory: Path, box_id: str, algo: str = "ecdsa-p256") -> tuple[Path, Path, bool]:
    """Make the key if absent and the CSR if absent or stale. Returns (key, csr, key_was_created)."""
    if not BOX_ID_RE.match(box_id):
        raise IdentityError(N_("box id {box_id!r} is not [A-Za-z0-9_-]{{1,64}}", box_id=box_id), exit_code=2)
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(N_("{directory}: cannot create: {error}",
                               directory=directory, error=exc.strerror or exc)) from None
    key_path, csr_path = directory / KEY_NAME, directory / CSR_NAME
    created = not key_path.exists()
    if created:
        key = new_key(algo)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_atomic(key_path, pem, 0o600)
    else:
        key = _load_key(key_path)
    if created or not _csr_names(csr_path, box_id, key):
        _write_atomic(csr_path, make_csr(key, box_id).public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, csr_path, created


def _box_id_from_config(path: str) -> str:
    from agent.config import ConfigError, load_config  # only this path needs the whole config

    try:
        return load_config(path).box.id
    except ConfigError as exc:
        raise IdentityError(words.config_error(exc), exit_code=2) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="village agent identity",
                                     description=_("make the box's key pair (once) and a CSR for the county CA"))
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--box-id", help=_("the box id (CN of the CSR)"))
    who.add_argument("-c", "--config", help=_("take the box id from this agent config"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=_("where box.key/box.csr live ({dir})").format(dir=DEFAULT_DIR))
    parser.add_argument("--algo", choices=("ecdsa-p256", "ed25519"), default="ecdsa-p256",
                        help=_("the key type (default ecdsa-p256; ed25519 where the county CA takes it)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        box_id = args.box_id if args.box_id is not None else _box_id_from_config(args.config)
        key_path, csr_path, created = ensure_identity(args.dir, box_id, args.algo)
        fp = fingerprint(_load_key(key_path))
    except IdentityError as exc:
        print(f"village agent identity: {words.problem(str(exc))}", file=sys.stderr)
        return exc.exit_code
    print((_("created the key {path}") if created else _("kept the key {path}")).format(path=key_path))
    print(_("certificate request (CSR) for {box}: {path}").format(box=box_id, path=csr_path))
    print(_("public key sha256: {fingerprint}").format(fingerprint=fp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
