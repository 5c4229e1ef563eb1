"""`python -m bench.soak --minutes N --seed S [--short] [--workdir D] [--json FILE]`: the chaos soak.

Prints the invariants (ok/FAIL) and the figures; exit 0 when every invariant holds, 1 when one is violated,
2 when the soak itself could not run. `--short` is the CI version: every fault kind at least once in about
100 s of faults, 150 wearers, a shorter drain; it ignores --minutes. Needs root for the tmpfs state dir
(else the disk_full fault is skipped and says so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from bench.soak.checker import render
from bench.soak.faults import SoakError
from bench.soak.run import Options, soak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the fault phase (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--short", action="store_true", help="the CI version (about 2.5 min wall)")
    ap.add_argument("--wearers", type=int, default=None, help="bands on the gateway twin (300; 150 with --short)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs and databases here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the verdict as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="village-soak-")
        workdir = Path(tmp)
    opts = Options(seconds=100.0 if args.short else args.minutes * 60, seed=args.seed, short=args.short,
                   workdir=workdir.resolve(), wearers=args.wearers or (150 if args.short else 300),
                   drain_s=60.0 if args.short else 120.0)
    try:
        verdict = asyncio.run(soak(opts))
    except SoakError as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None and not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(verdict))
    if args.json:
        args.json.write_text(json.dumps(verdict.as_json(), indent=2, ensure_ascii=False))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
