"""The release root on disk, and the two small files the launcher shares with the agent (docs/updates.md).

    ROOT/releases/<version>/     one venv per installed release (a "slot")
    ROOT/releases/.<v>.partial   a slot being installed (removed at the next attempt when left by a power cut)
    ROOT/current -> releases/<v> what systemd starts (through ROOT/bin/village-launch); switched atomically
    ROOT/previous -> releases/<v> the slot to go back to; kept until the new one has been healthy a day
    ROOT/wheels/<sha256>.whl     verified wheels, by content: a later release downloads only what changed
    ROOT/downloads/<sha256>.part a download in progress (resumed with a Range request)
    ROOT/update/trial            one line while a new release or config is on trial (format below)
    ROOT/update/outcome          one line left for the next start to report (a rollback and its reason)
    ROOT/update/healthy          "<version> <epoch s>": since when the running release has been healthy
    ROOT/update/remote.json      the remote configuration overlay (config.set); remote.json.prev the one before

trial:   "<boots> <max_boots> <deadline epoch s> <kind> <from> <to> <cmd id>\\n", kind "release" or "config"
outcome: "rolled_back <kind> <version> <cmd id> <reason in words>\\n"

Both are written whole (tmp + rename + fsync) by either side; the launcher is a POSIX shell script, so the
fields are space-free words: versions are dotted integers, command ids printable ASCII without spaces.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import write_atomic
from agent.release import VERSION_RE

TRIAL_KINDS = ("release", "config")
_WORD = re.compile(r"[\x21-\x7e]{1,128}\Z")


@dataclass(frozen=True, slots=True)
class Trial:
    boots: int
    max_boots: int
    deadline: int
    kind: str
    from_version: str  # "-" for a config trial
    to_version: str
    cmd_id: str

    def line(self) -> str:
        return (f"{self.boots} {self.max_boots} {self.deadline} {self.kind} {self.from_version} "
                f"{self.to_version} {self.cmd_id}\n")


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str
    kind: str
    version: str
    cmd_id: str
    reason: str


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self.wheels = self.root / "wheels"
        self.downloads = self.root / "downloads"
        self.update = self.root / "update"
        self.trial_file = self.update / "trial"
        self.outcome_file = self.update / "outcome"
        self.healthy_file = self.update / "healthy"
        self.overlay = self.update / "remote.json"
        self.overlay_prev = self.update / "remote.json.prev"

    def ensure(self) -> None:
        for d in (self.releases, self.wheels, self.downloads, self.update):
            d.mkdir(parents=True, exist_ok=True)

    def slot(self, version: str) -> Path:
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"not a release version: {version!r}")
        return self.releases / version

    def partial(self, version: str) -> Path:
        return self.releases / f".{version}.partial"

    def wheel(self, sha256: str) -> Path:
        return self.wheels / f"{sha256}.whl"

    @staticmethod
    def _target(link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except OSError:
            return None
        name = Path(target).name
        return name if VERSION_RE.fullmatch(name) else None

    def current_version(self) -> str | None:
        return self._target(self.current)

    def previous_version(self) -> str | None:
        return self._target(self.previous)

    def _link(self, link: Path, version: str) -> None:
        tmp = link.with_name(f".{link.name}.new")
        tmp.unlink(missing_ok=True)
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, link)  # rename(2) over the old link: atomic, there is never no `current`
        _fsync_dir(self.root)

    def switch(self, to_version: str, from_version: str | None) -> None:
        """`previous` first, then `current`: a power cut between the two leaves the old release current."""
        if from_version is not None:
            self._link(self.previous, from_version)
        self._link(self.current, to_version)

    # trial / outcome / healthy -------------------------------------------------------------
    def read_trial(self) -> Trial | None:
        try:
            parts = self.trial_file.read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            return None
        if len(parts) != 7 or not all(p.isdigit() for p in parts[:3]) or parts[3] not in TRIAL_KINDS \
                or not all(_WORD.fullmatch(p) for p in parts[4:]):
            return None
        return Trial(int(parts[0]), int(parts[1]), int(parts[2]), parts[3], parts[4], parts[5], parts[6])

    def write_trial(self, trial: Trial) -> None:
        write_atomic(self.trial_file, trial.line().encode("ascii"))

    def clear_trial(self) -> None:
        self.trial_file.unlink(missing_ok=True)
        _fsync_dir(self.update)

    def write_outcome(self, outcome: Outcome) -> None:
        reason = " ".join(outcome.reason.split())[:300] or "-"
        line = f"{outcome.state} {outcome.kind} {outcome.version} {outcome.cmd_id} {reason}\n"
        write_atomic(self.outcome_file, line.encode("utf-8", "replace"))

    def read_outcome(self) -> Outcome | None:
        try:
            parts = self.outcome_file.read_text(encoding="utf-8", errors="replace").split(maxsplit=4)
        except OSError:
            return None
        if len(parts) < 4:
            return None
        return Outcome(parts[0], parts[1], parts[2], parts[3], parts[4].strip() if len(parts) > 4 else "")

    def clear_outcome(self) -> None:
        self.outcome_file.unlink(missing_ok=True)

    def read_healthy(self) -> tuple[str, float] | None:
        try:
            version, since = self.healthy_file.read_text().split()
            return version, float(since)
        except (OSError, ValueError):
            return None

    def write_healthy(self, version: str, since: float) -> None:
        write_atomic(self.healthy_file, f"{version} {since:.0f}\n".encode())

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every slot, partial slot and leftover download not in `keep`; returns what went."""
        gone = []
        if self.releases.is_dir():
            for entry in self.releases.iterdir():
                if entry.name.lstrip(".").removesuffix(".partial") in keep and not entry.name.startswith("."):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                gone.append(entry.name)
        return gone


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
