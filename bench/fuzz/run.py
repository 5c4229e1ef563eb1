"""Coverage-guided fuzzing with atheris (libFuzzer), bounded: a complement to the hypothesis tests.

    .venv/bin/pip install atheris            # optional: the `fuzz` extra in pyproject.toml
    .venv/bin/python -m bench.fuzz.run jws -runs=200000
    .venv/bin/python -m bench.fuzz.run all -max_total_time=60   # every target in turn, 60 s each

Each target feeds raw bytes to one parser of untrusted input. The parser's own typed error is a normal
answer; any other exception is a finding and stops the run with the input that caused it (libFuzzer
writes it as $TMPDIR/village-fuzz/crash-<target>-<sha1>). Run from the repository root. Seeds: the peer
CAP alerts, a signed command, an envelope, a fence, a config; the corpus grows in $TMPDIR/village-fuzz/<target>.
The hypothesis tests (tests/test_fuzz_*.py) run in CI; this harness is for a longer look by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands import CommandRejected, parse_command
from agent.config import ConfigError, parse_config
from agent.protocol import jws
from agent.protocol.envelope import Envelope, EnvelopeError
from agent.wearables.fences import FenceError, load_fences
from county.cap import CapError, parse_cap, plan

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYS = {"county-2026": KEY.public_key()}
PEERS = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "peers"


def _jws(data: bytes) -> None:
    try:
        _header, payload = jws.verify(data, KEYS)
    except jws.JwsError:
        return
    try:
        parse_command(payload, "county-2026")
    except CommandRejected:
        pass


def _envelope(data: bytes) -> None:
    try:
        Envelope.decode(data)
    except EnvelopeError:
        pass


def _cap(data: bytes) -> None:
    try:
        plan(parse_cap(data), 1_763_900_000.0)
    except CapError:
        pass


def _fences(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # the JSON layer is the JWS/command layer's; here the GeoJSON loader is under test
    try:
        load_fences(doc)
    except FenceError:
        pass


def _config(data: bytes) -> None:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return  # load_config turns these into ConfigError; tests/test_fuzz_config.py covers that path
    try:
        parse_config(raw)
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "jws": _jws, "envelope": _envelope, "cap": _cap, "fences": _fences, "config": _config,
}


def seeds(target: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    payload = {"v": 1, "id": "seed", "kind": "broadcast.play", "iat": 1_763_900_000, "exp": 1_763_903_600,
               "to": ["group:town-a"], "data": {"class": "daily", "level": 3, "text": "hi"}}
    samples = {
        "jws": [jws.sign(payload, KEY, "county-2026").encode()],
        "envelope": [Envelope("box-1", 1, 1, *_alarm(), {"wearer": "W1"}).encode()],
        "cap": [p.read_bytes() for p in sorted(PEERS.glob("cap-*.xml"))],
        "fences": [json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "id": "f", "properties": {
            "radius_m": 50}, "geometry": {"type": "Point", "coordinates": [116.4, 39.9]}}]}).encode()],
        "config": [b'[box]\nid = "box-1"\nprofile = "sim"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'],
    }[target]
    for i, sample in enumerate(samples):
        (corpus / f"seed-{i}").write_bytes(sample)


def _alarm() -> tuple[object, str]:
    from agent.protocol.envelope import MsgClass

    return MsgClass.ALARM, "sos"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*TARGETS, "all"):
        print(f"usage: python -m bench.fuzz.run {{{'|'.join(TARGETS)}|all}} [libFuzzer flags]", file=sys.stderr)
        return 2
    target, flags = argv[0], argv[1:]
    if target == "all":  # one process per target: libFuzzer runs one target per process
        for name in TARGETS:
            rc = subprocess.call([sys.executable, "-m", "bench.fuzz.run", name, *flags])
            if rc != 0:
                return rc
        return 0
    import atheris  # optional dependency, imported only when fuzzing

    work = Path(tempfile.gettempdir()) / "village-fuzz"
    corpus = work / target  # grows as libFuzzer learns; kept out of the repo, like the crash files
    seeds(target, corpus)
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags = [f"-artifact_prefix={work}/crash-{target}-", *flags]
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *flags, str(corpus)], TARGETS[target])
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
