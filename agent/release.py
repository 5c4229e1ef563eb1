"""Release bundles: what `village release build` makes and what a box checks before it installs anything.

A bundle is a directory (docs/updates.md):

    manifest.jws          the manifest, a JWS compact token signed with a *release* key
    wheels/*.whl          the project's wheel and, when available, its dependencies' wheels

The manifest payload (format 1):

    {"type": "village-release", "format": 1, "name": "village-edge", "version": "0.2.0",
     "python": "cp311", "arch": "x86_64", "min_from": "0.1.0", "created": 1764590000,
     "deps_bundled": true, "wheels": [{"file": "...whl", "sha256": "<hex>", "size": 123, "project": true}],
     "schemas": {"outbox": 3, "replay": 2, "broadcast": 4, "wearables": 1}}

The release key is not the command key: a box trusts it under `[trust] release_keys` (kid -> .pub file),
and `[trust.keys]` can never sign a release nor a release key a command (the two sets are looked up
separately; `type` is checked too, so no token of one kind passes for the other).

Versions are plain dotted integers (`1.4.2`): compared as tuples, no PEP 440 pre-releases, so a box needs no
version library to decide whether an update is a downgrade.

Dependency wheels come from, in this order: `--wheelhouse DIR` (wheels for the box's architecture, e.g.
fetched once with `pip download --platform ...`), resolved offline by pip; or `--deps-from-env`, which
repacks the dependencies installed in the interpreter running the build (only right when the build host
has the box's architecture and Python); else the bundle holds only the project's wheel (`deps_bundled:
false`) and the box installs it against the dependency wheels it already has from an earlier release, or
refuses with the missing one named.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.i18n import N_
from agent.protocol import jws

MANIFEST_TYPE = "village-release"
MANIFEST_FORMAT = 1
MANIFEST_FILE = "manifest.jws"
WHEELS_DIR = "wheels"
MAX_MANIFEST_BYTES = 256 * 1024
MAX_WHEELS = 200
PROJECT = "village-edge"
VERSION_RE = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){0,3}\Z")
WHEEL_FILE_RE = re.compile(r"[A-Za-z0-9_.+-]{1,200}\.whl\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
ARCH_RE = re.compile(r"[a-z0-9_]{1,32}\Z")
PY_RE = re.compile(r"cp[0-9]{2,3}\Z")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: a repacked wheel is byte-identical build after build
# The box's SQLite stores in [box] state_dir, shared by every release: name -> the module whose MIGRATIONS
# give its schema version (PRAGMA user_version). A store refuses a file newer than it knows (SchemaTooNew),
# so a release that migrates one could never be rolled back: the box refuses it (check_applicable).
STATE_STORES = {"outbox": "agent.outbox_schema", "replay": "agent.replay", "broadcast": "agent.broadcast.store",
                "wearables": "agent.wearables.store"}


class ManifestError(Exception):
    """A manifest the box will not use. `reason` is the receipt word, `str()` says why in words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class BuildError(Exception):
    pass


def parse_version(text: str) -> tuple[int, ...]:
    if not isinstance(text, str) or not VERSION_RE.fullmatch(text):
        raise ValueError(N_("version {text!r} is not dotted integers (1.4.2)", text=text))
    return tuple(int(p) for p in text.split("."))


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def machine() -> str:
    return platform.machine().lower() or "unknown"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class WheelEntry:
    file: str
    sha256: str
    size: int
    project: bool = False


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    python: str
    arch: str
    min_from: str
    created: int
    deps_bundled: bool
    wheels: tuple[WheelEntry, ...] = field(default=())
    schemas: tuple[tuple[str, int], ...] = ()  # (store, schema version) the release writes; () = not recorded

    def payload(self) -> dict[str, Any]:
        return {"type": MANIFEST_TYPE, "format": MANIFEST_FORMAT, "name": self.name, "version": self.version,
                "python": self.python, "arch": self.arch, "min_from": self.min_from, "created": self.created,
                "deps_bundled": self.deps_bundled,
                "wheels": [{"file": w.file, "sha256": w.sha256, "size": w.size, "project": w.project}
                           for w in self.wheels],
                **({"schemas": dict(self.schemas)} if self.schemas else {})}

    @property
    def project_wheel(self) -> WheelEntry:
        return next(w for w in self.wheels if w.project)


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey, kid: str) -> str:
    return jws.sign(manifest.payload(), key, kid)


def _field(payload: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ManifestError("bad_manifest", N_("manifest field {name!r} is missing or not valid", name=name))
    return value


def parse_manifest(payload: Mapping[str, Any]) -> Manifest:
    if payload.get("type") != MANIFEST_TYPE or payload.get("format") != MANIFEST_FORMAT:
        raise ManifestError("bad_manifest", N_("not a {manifest_type} manifest of format {manifest_format}",
                                               manifest_type=MANIFEST_TYPE, manifest_format=MANIFEST_FORMAT))
    name = payload.get("name")
    if name != PROJECT:
        raise ManifestError("bad_manifest", N_("manifest is for {name!r}, not {project}",
                                               name=str(name)[:40], project=PROJECT))
    version = _field(payload, "version", VERSION_RE)
    min_from = _field(payload, "min_from", VERSION_RE)
    py = _field(payload, "python", PY_RE)
    arch = _field(payload, "arch", ARCH_RE)
    created = payload.get("created")
    if isinstance(created, bool) or not isinstance(created, int):
        raise ManifestError("bad_manifest", N_("manifest field 'created' is not an integer"))
    wheels_raw = payload.get("wheels")
    if not isinstance(wheels_raw, list) or not 0 < len(wheels_raw) <= MAX_WHEELS:
        raise ManifestError("bad_manifest", N_("manifest must list 1..{max_wheels} wheels", max_wheels=MAX_WHEELS))
    wheels: list[WheelEntry] = []
    seen: set[str] = set()
    for w in wheels_raw:
        if not isinstance(w, dict):
            raise ManifestError("bad_manifest", N_("a wheel entry is not an object"))
        file, digest, size = w.get("file"), w.get("sha256"), w.get("size")
        if not isinstance(file, str) or not WHEEL_FILE_RE.fullmatch(file) or file in seen:
            raise ManifestError("bad_manifest", N_("a wheel file name is not valid or is listed twice"))
        if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
            raise ManifestError("bad_manifest", N_("wheel {file}: sha256 is not 64 lower-case hex digits", file=file))
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 1 << 30:
            raise ManifestError("bad_manifest", N_("wheel {file}: size is not valid", file=file))
        seen.add(file)
        wheels.append(WheelEntry(file, digest, size, w.get("project") is True))
    if sum(w.project for w in wheels) != 1:
        raise ManifestError("bad_manifest", N_("manifest must mark exactly one wheel as the project's"))
    schemas_raw = payload.get("schemas", {})
    if not isinstance(schemas_raw, dict) or len(schemas_raw) > 32 or not all(
            isinstance(k, str) and ARCH_RE.fullmatch(k) and isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v < 10_000 for k, v in schemas_raw.items()):
        raise ManifestError("bad_manifest", N_("manifest field 'schemas' must map store names to versions"))
    return Manifest(PROJECT, version, py, arch, min_from, created, payload.get("deps_bundled") is True,
                    tuple(wheels), tuple(sorted(schemas_raw.items())))


def verify_manifest(token: bytes, keys: Mapping[str, Ed25519PublicKey]) -> Manifest:
    """The signed manifest file -> Manifest, with the release keys only. ManifestError('bad_signature'...)."""
    if len(token) > MAX_MANIFEST_BYTES:
        raise ManifestError("bad_manifest", N_("manifest is {token} bytes, over {limit}",
                                               token=len(token), limit=MAX_MANIFEST_BYTES))
    if not keys:
        raise ManifestError("bad_signature", N_("no [trust] release_keys configured: no release can be trusted"))
    try:
        _header, payload = jws.verify(token, keys)
    except jws.BadSignature as exc:
        raise ManifestError("bad_signature", N_("manifest signature: {detail}", detail=exc.detail)) from None
    except jws.UnknownKey as exc:
        raise ManifestError("bad_signature", N_("manifest not signed by a release key: {detail}",
                                                detail=exc.detail)) from None
    except jws.JwsError as exc:
        raise ManifestError("bad_manifest", N_("manifest token: {detail}", detail=exc.detail)) from None
    return parse_manifest(payload)


def schema_versions() -> dict[str, int]:
    """The schema version of each state store as the running code knows it."""
    import importlib

    return {name: len(importlib.import_module(mod).MIGRATIONS) for name, mod in STATE_STORES.items()}


def tree_schema_versions(tree: Path) -> dict[str, int]:
    """The same for a source tree (read by its own code in a child interpreter)."""
    code = ("import json, importlib; print(json.dumps({n: len(importlib.import_module(m).MIGRATIONS) "
            f"for n, m in {STATE_STORES!r}.items()}}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"})
    if proc.returncode != 0:
        raise BuildError(N_("cannot read the state stores' schema versions: {error}",
                            error=(proc.stderr.strip().splitlines() or ["?"])[-1]))
    return {str(k): int(v) for k, v in json.loads(proc.stdout).items()}


def check_applicable(manifest: Manifest, running: str, *, arch: str | None = None, py: str | None = None,
                     schemas: Mapping[str, int] | None = None) -> None:
    """May a box running `running` on this machine install `manifest`? ManifestError with the reason.

    `schemas`: the running code's store versions (schema_versions()); a release that would migrate a store
    past them is refused, because this version could not open that store again after a rollback."""
    arch, py = arch or machine(), py or python_tag()
    if manifest.arch not in (arch, "any"):
        raise ManifestError("wrong_arch", N_("release is for {arch}, this box is {box_arch}",
                                             arch=manifest.arch, box_arch=arch))
    if manifest.python != py:
        raise ManifestError("wrong_python", N_("release is for {python}, this box runs {py}",
                                               python=manifest.python, py=py))
    if parse_version(running) < parse_version(manifest.min_from):
        raise ManifestError("below_min_version", N_("release {version} updates from {min_from} or later; this box "
                                                    "runs {running}", version=manifest.version,
                                                    min_from=manifest.min_from, running=running))
    if parse_version(manifest.version) == parse_version(running):
        raise ManifestError("same_version", N_("this box already runs {running}", running=running))
    for store, version in manifest.schemas:
        have = (schemas or {}).get(store)
        if have is not None and version > have:
            raise ManifestError("schema_not_forward_compatible",
                                N_("release {version} migrates the {store} store to schema {schema}; {running} "
                                   "reads up to {have} and could not open it after a rollback",
                                   version=manifest.version, store=store, schema=version, running=running, have=have))


# ------------------------------------------------------------------------------------------- building
def _set_version(tree: Path, version: str) -> None:
    py = tree / "pyproject.toml"
    text, n = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', py.read_text(), count=1)
    if n != 1:
        raise BuildError(N_("pyproject.toml has no [project] version line to set"))
    py.write_text(text)
    init = tree / "agent" / "__init__.py"
    text, n = re.subn(r'(?m)^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(), count=1)
    if n != 1:
        raise BuildError(N_("agent/__init__.py has no __version__ line to set"))
    init.write_text(text)


def project_version(source: Path) -> str:
    m = re.search(r'(?m)^version = "([^"]*)"$', (source / "pyproject.toml").read_text())
    if not m:
        raise BuildError(N_("{source}/pyproject.toml has no version", source=source))
    return m.group(1)


SOURCE_PARTS = ("pyproject.toml", "README.md", "agent", "drivers", "sim", "county", "firmware_cfg")


def build_project_wheel(source: Path, out: Path, version: str | None = None) -> Path:
    """The project's wheel, built by pip from a copy of the tree (the tree itself is never written)."""
    with tempfile.TemporaryDirectory(prefix="village-release-") as tmp:
        tree = Path(tmp) / "src"
        tree.mkdir()
        for part in SOURCE_PARTS:
            src = source / part
            if src.is_dir():
                shutil.copytree(src, tree / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.exists():
                shutil.copy2(src, tree / part)
        if version is not None:
            _set_version(tree, version)
        built = Path(tmp) / "out"
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PIP_NO_INPUT": "1"}
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-index", "-q", "-w", str(built), str(tree)],
                              capture_output=True, text=True, env=env)
        wheels = list(built.glob("*.whl")) if built.exists() else []
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise BuildError(N_("pip wheel failed: {output}", output=" / ".join(tail)))
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], out / wheels[0].name))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(root: str = PROJECT) -> list[importlib.metadata.Distribution]:
    """The installed distributions `root` needs at run time (base requirements, markers for this
    interpreter), found through the installed metadata. Build-host side only (needs `packaging`)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [Requirement(r) for r in (importlib.metadata.requires(root) or [])]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = _norm(req.name)
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(N_("dependency {name} is not installed here (--deps-from-env)", name=req.name)) from None
        found[key] = dist
        todo += [Requirement(r) for r in (dist.requires or [])]
    return [found[k] for k in sorted(found)]


def _compressed_tag(tags: list[str]) -> str:
    """`Tag: py2-none-any` + `Tag: py3-none-any` -> `py2.py3-none-any` (the wheel file name's tag set)."""
    split = [t.split("-") for t in tags]
    return "-".join(".".join(sorted({s[i] for s in split})) for i in range(3))


def repack_distribution(dist: importlib.metadata.Distribution, out: Path) -> Path:
    """An installed distribution back into a wheel, byte-identical each time (fixed timestamps, sorted).

    Hand-written (pip has no "wheel from installed"): the files its RECORD lists under site-packages, the
    dist-info minus the installer's own files, and a new RECORD. Scripts outside site-packages are left
    out: pip makes console scripts again from entry_points.txt."""
    meta = dist.metadata
    name, version = meta["Name"], meta["Version"]
    wheel_text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise BuildError(N_("{name}: installed metadata has no WHEEL tag (not installed from a wheel)", name=name))
    files = sorted((f for f in (dist.files or []) if not str(f).startswith("..")), key=str)
    base = Path(str(dist.locate_file("")))
    skip_info = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    fname = f"{re.sub(r'[-.]+', '_', name)}-{version}-{_compressed_tag(tags)}.whl"
    out.mkdir(parents=True, exist_ok=True)
    path = out / fname
    record: list[str] = []
    info_dir = None
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            rel = str(f)
            if "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            parts = rel.split("/")
            if parts[0].endswith(".dist-info"):
                info_dir = parts[0]
                if parts[-1] in skip_info and len(parts) == 2:
                    continue
            data = (base / rel).read_bytes()
            zi = zipfile.ZipInfo(rel, ZIP_EPOCH)
            zi.external_attr = ((base / rel).stat().st_mode & 0o777 | 0o100000) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        if info_dir is None:
            raise BuildError(N_("{name}: no .dist-info among its installed files", name=name))
        record.append(f"{info_dir}/RECORD,,")
        zi = zipfile.ZipInfo(f"{info_dir}/RECORD", ZIP_EPOCH)
        zi.external_attr = 0o100644 << 16
        z.writestr(zi, "\n".join(record) + "\n")
    return path


def dependency_wheels(out: Path, *, wheelhouse: Path | None, from_env: bool, project_wheel: Path) -> list[Path]:
    """Dependency wheels into `out`, or [] when neither source was asked for."""
    if wheelhouse is not None:
        tmp = out / ".deps"
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-index", "--find-links", str(wheelhouse),
                               "--find-links", str(project_wheel.parent), "-q", "-w", str(tmp), str(project_wheel)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            raise BuildError(N_("dependencies not all in {wheelhouse}: {output}", wheelhouse=wheelhouse,
                                output=" / ".join(tail)))
        moved = []
        for w in sorted(tmp.glob("*.whl")):
            if w.name != project_wheel.name:
                moved.append(Path(shutil.move(str(w), out / w.name)))
        shutil.rmtree(tmp, ignore_errors=True)
        return moved
    if from_env:
        return [repack_distribution(d, out) for d in dependency_closure()]
    return []


def _wheel_arch(files: list[Path]) -> str:
    """`any` when every wheel is pure Python, else this machine (a platform wheel was built here)."""
    return "any" if all(f.name.endswith("-none-any.whl") for f in files) else machine()


def build_bundle(source: Path, out: Path, key: Ed25519PrivateKey, kid: str, *, version: str | None = None,
                 min_from: str | None = None, wheelhouse: Path | None = None, deps_from_env: bool = False,
                 arch: str | None = None) -> tuple[Path, Manifest]:
    """Build `out/manifest.jws` and `out/wheels/`; returns (manifest path, manifest)."""
    version = version or project_version(source)
    parse_version(version)
    min_from = min_from or "0"
    parse_version(min_from)
    if out.exists() and any(out.iterdir()):
        raise BuildError(N_("{out} exists and is not empty", out=out))
    wheels_dir = out / WHEELS_DIR
    project = build_project_wheel(source, wheels_dir, version)
    deps = dependency_wheels(wheels_dir, wheelhouse=wheelhouse, from_env=deps_from_env, project_wheel=project)
    entries = [WheelEntry(p.name, sha256_file(p), p.stat().st_size, p == project) for p in [project, *deps]]
    schemas = tuple(sorted(tree_schema_versions(source).items()))
    manifest = Manifest(PROJECT, version, python_tag(), arch or _wheel_arch([project, *deps]), min_from,
                        int(time.time()), bool(deps), tuple(entries), schemas)
    path = out / MANIFEST_FILE
    path.write_text(sign_manifest(manifest, key, kid))
    return path, manifest


def manifest_digest(path: Path) -> str:
    return sha256_file(path)


def build_parser() -> argparse.ArgumentParser:
    from agent.i18n import _

    parser = argparse.ArgumentParser(prog="village release", description=_("signed release bundles for box updates"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help=_("build a signed bundle (manifest.jws + wheels/) from the project tree"))
    b.add_argument("--source", type=Path, default=Path("."), help=_("the project tree (default: current directory)"))
    b.add_argument("--out", type=Path, required=True, help=_("an empty or new directory for the bundle"))
    b.add_argument("--key", type=Path, required=True, help=_("the RELEASE private key (village keys new NAME)"))
    b.add_argument("--kid", required=True, help=_("its name, as boxes list it under [trust] release_keys"))
    b.add_argument("--version", help=_("version to build (default: the one in pyproject.toml)"))
    b.add_argument("--min-from", help=_("oldest running version this release may update (default: any)"))
    b.add_argument("--wheelhouse", type=Path, help=_("directory of dependency wheels for the box (offline)"))
    b.add_argument("--deps-from-env", action="store_true",
                   help=_("repack the dependencies installed here (build host = box architecture only)"))
    b.add_argument("--arch", help=_("override the architecture recorded (default: any or this machine)"))
    s = sub.add_parser("show", help=_("verify a manifest with a release public key and print it"))
    s.add_argument("manifest", type=Path, help=_("the bundle's manifest.jws"))
    s.add_argument("--pub", type=Path, required=True, help=_("the release public key (.pub)"))
    s.add_argument("--kid", required=True, help=_("its name, as boxes list it under [trust] release_keys"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from agent import words
    from agent.i18n import _
    from agent.keys import KeysError, load_private_key

    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "show":
            from agent.keys import load_public_key

            m = verify_manifest(args.manifest.read_bytes(), {args.kid: load_public_key(args.pub)})
            print(json.dumps({"sha256": manifest_digest(args.manifest), **m.payload()}, indent=2))
            return 0
        key = load_private_key(args.key)
        path, manifest = build_bundle(args.source, args.out, key, args.kid, version=args.version,
                                      min_from=args.min_from, wheelhouse=args.wheelhouse,
                                      deps_from_env=args.deps_from_env, arch=args.arch)
    except (BuildError, KeysError, ManifestError, ValueError, OSError) as exc:
        print(f"village release: {words.config_error(exc)}", file=sys.stderr)
        return 1
    print(_("manifest: {path} (sha256 {digest})").format(path=path, digest=manifest_digest(path)))
    print(_("version {version} for {python}/{arch}, updates from {min_from}; {n} wheel(s), {size} bytes").format(
        version=manifest.version, python=manifest.python, arch=manifest.arch, min_from=manifest.min_from,
        n=len(manifest.wheels), size=sum(w.size for w in manifest.wheels)))
    if not manifest.deps_bundled:
        print(_("note: dependency wheels NOT bundled (no --wheelhouse or --deps-from-env): boxes install this "
                "release only against dependency wheels they already hold"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
