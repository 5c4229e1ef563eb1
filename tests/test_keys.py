"""`village keys new`: file modes, PEM formats, never overwriting; loaders with clear errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import keys
from agent.keys import KeyExists, KeyFileError, load_private_key, load_public_key, main, new_keypair
from agent.protocol import jws


def test_new_writes_a_working_pair(tmp_path: Path) -> None:
    old = os.umask(0o000)  # a careless umask must not make the private key readable
    try:
        assert main(["new", "county-2026", "--dir", str(tmp_path / "k")]) == 0
    finally:
        os.umask(old)
    key_path, pub_path = tmp_path / "k" / "county-2026.key", tmp_path / "k" / "county-2026.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(key_path), load_public_key(pub_path)
    assert isinstance(private, Ed25519PrivateKey) and isinstance(public, Ed25519PublicKey)
    token = jws.sign({"v": 1}, private, "county-2026")
    assert jws.verify(token, {"county-2026": public})[1] == {"v": 1}


def test_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new_keypair("a", tmp_path)
    before = (tmp_path / "a.key").read_bytes(), (tmp_path / "a.pub").read_bytes()
    with pytest.raises(KeyExists):
        new_keypair("a", tmp_path)
    assert main(["new", "a", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert ((tmp_path / "a.key").read_bytes(), (tmp_path / "a.pub").read_bytes()) == before


def test_existing_pub_alone_blocks_and_leaves_no_half_pair(tmp_path: Path) -> None:
    (tmp_path / "b.pub").write_text("someone else's")
    with pytest.raises(KeyExists):
        new_keypair("b", tmp_path)
    assert not (tmp_path / "b.key").exists()
    assert (tmp_path / "b.pub").read_text() == "someone else's"


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "c.key").symlink_to(target)
    with pytest.raises(KeyExists):
        new_keypair("c", tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "spa ce"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError):
        new_keypair(name, tmp_path)


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    new_keypair("d", tmp_path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(KeyFileError, match="PRIVATE key"):
        load_public_key(tmp_path / "d.key")
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError, match=r"junk\.pub: not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(tmp_path / "d.pub")
    with pytest.raises(KeyFileError, match="directory"):
        load_public_key(tmp_path)


def test_rsa_public_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "rsa.pub").write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "rsa.pub")


def test_oversize_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.pub").write_bytes(b"x" * (keys.MAX_PEM_BYTES + 1))
    with pytest.raises(KeyFileError, match="too large"):
        load_public_key(tmp_path / "big.pub")


def test_console_script_dispatch(tmp_path: Path) -> None:
    """`village keys new` through the real console entry point, in a subprocess."""
    out = subprocess.run([sys.executable, "-m", "agent.cli", "keys", "new", "e", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "e.key").exists() and (tmp_path / "e.pub").exists()
    assert "BEGIN" not in out.stdout  # the key itself is never printed
