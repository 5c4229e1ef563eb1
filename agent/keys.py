"""Ed25519 key files: `village keys new NAME [--dir D]` and the loaders the box and the console use.

The private key is written PKCS#8 PEM, mode 0600, opened with O_CREAT|O_EXCL so an existing key is never
overwritten (losing a county signing key means re-provisioning every box). The public half is plain
SubjectPublicKeyInfo PEM: that file is what goes into a box's `[trust.keys]`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import i18n, words
from agent.i18n import _

# the loaders live with the JWS code (agent.protocol) so the county console shares them; re-exported here
from agent.protocol.jws import (  # noqa: F401
    MAX_PEM_BYTES,
    KeyExists,
    KeyFileError,
    KeysError,
    load_private_key,
    load_public_key,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" also matches before a final "\n"


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def new_keypair(name: str, directory: Path | str) -> tuple[Path, Path]:
    """Write `D/NAME.key` (0600) and `D/NAME.pub` (0644). Never overwrites either file."""
    if not NAME_RE.match(name):
        raise KeyFileError(name, "key name must be [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise KeyExists(p)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_exclusive(key_path, private_pem, 0o600)
    except FileExistsError:
        raise KeyExists(key_path) from None
    try:
        _write_exclusive(pub_path, public_pem, 0o644)
    except FileExistsError:
        key_path.unlink()  # ours, just written: don't leave half a pair behind
        raise KeyExists(pub_path) from None
    return key_path, pub_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="village keys", description=_("Ed25519 signing keys for county commands"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser("new", help=_("write NAME.key (private, 0600) and NAME.pub (public) into --dir"))
    new.add_argument("name")
    new.add_argument("--dir", default=".", type=Path, help=_("directory for the pair (default: current)"))
    return parser


def _keys_error(exc: KeysError, name: str) -> str:
    """The two errors `keys new` meets, in words; anything else as the library says it."""
    if isinstance(exc, KeyExists):
        return _("{file} already exists; refusing to overwrite a key").format(file=exc.path)
    if "key name must be" in str(exc):
        return _("key name must be [A-Za-z0-9][A-Za-z0-9_.-]{0,63}") + f" ({name!r})"
    return words.config_error(exc)


def main(argv: list[str] | None = None) -> int:
    try:
        argv = i18n.setup(sys.argv[1:] if argv is None else argv)
    except i18n.LangError as exc:
        print(f"village keys: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        key_path, pub_path = new_keypair(args.name, args.dir)
    except KeysError as exc:
        print(f"village keys: {_keys_error(exc, args.name)}", file=sys.stderr)
        return 1
    except OSError as exc:
        error = words.problem(str(exc.strerror))
        print("village keys: " + _("cannot write in {dir}: {error}").format(dir=args.dir, error=error), file=sys.stderr)
        return 1
    print(_("private key: {file} (mode 0600; keep it on the county signing host only)").format(file=key_path))
    print(_("public key:  {file} (install on boxes under [trust.keys] {name} = \"...\")").format(file=pub_path,
                                                                                              name=args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
