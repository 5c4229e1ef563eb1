"""`agent.update`, `config.set`, `config.set_mqtt`, and the health watch that keeps or undoes them.

An update, step by step (each step's receipt in brackets, docs/updates.md):

1. the router has checked the command like every other (signature with [trust.keys], freshness, replay,
   addressing, not retained) [received]; the handler checks `data` and returns [started step=downloading]
2. the manifest is fetched and its sha256 compared with the one the signed command named, then its own
   signature checked with [trust] release_keys, then architecture, Python and minimum version; the disk
   must hold the missing wheels plus [update] min_free_mb. Any refusal: [rejected reason=...]
3. each wheel the box does not hold yet is fetched (Range-resumed, capped at max_rate_bytes_s) and its
   sha256 checked [started step=downloaded]; nothing is installed before all of them verified
4. releases/<V> is installed offline and `village agent check` passes under V [started step=installed]
5. the trial file is written, then `previous` and `current` switched [started step=switching], and the
   agent stops so systemd starts V through the launcher
6. V connects to the broker within health_timeout_s and stays connected healthy_after_s: healthy
   [finished step=healthy]. Otherwise V (if it runs at all) or the launcher (if V cannot start) switches
   back, and the old version reports [failed reason=rolled_back detail=why].

Remote config: the fragment is validated against the schema merged over the box's file; invalid ->
[rejected reason=invalid_config detail=the schema's message]; valid -> the overlay is replaced (the one
before kept), the agent restarts on trial the same way, and [applied] once healthy, else rolled back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

from agent import __version__
from agent.commands import CommandFailed, load_trust_keys
from agent.config import Config, ConfigError, parse_config
from agent.context import AgentContext
from agent.fsutil import write_atomic
from agent.keys import KeyFileError, load_public_key
from agent.outbox import OutboxError
from agent.protocol.commands import Command
from agent.protocol.text import escape
from agent.release import (
    MAX_MANIFEST_BYTES,
    SHA256_RE,
    VERSION_RE,
    Manifest,
    ManifestError,
    check_applicable,
    schema_versions,
    verify_manifest,
)
from agent.schema import SchemaError, read_toml
from agent.service import Service
from agent.update import remote
from agent.update.fetch import FetchError, RateLimit, Stats, fetch_bytes, fetch_file, tls_context
from agent.update.install import InstallError, install_slot
from agent.update.layout import Layout, Outcome, Trial

log = logging.getLogger("agent.update")

CONFIG_ENV = "VILLAGE_AGENT_CONFIG"  # set by `village agent run` (agent/cli.py): the file a slot is checked with
POLL_S = 0.25
URL_RE = re.compile(r"https://[\x21-\x7e]{1,500}\Z")


class Refused(Exception):
    def __init__(self, state: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.state, self.reason, self.detail = state, reason, detail


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV, "/etc/village-agent/agent.toml"))


def load_release_keys(config: Config) -> dict[str, Any]:
    keys = {}
    for kid, path in config.trust.release_keys.items():
        try:
            keys[kid] = load_public_key(path)
        except KeyFileError as exc:
            raise ConfigError(path, f"trust.release_keys.{kid}", exc.problem) from None
    return keys


class UpdateService(Service):
    name = "update"

    def __init__(self, ctx: AgentContext, *, version: str = __version__) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.settings = ctx.config.update
        self.layout = Layout(self.settings.root)
        self.version = version
        self.release_keys = load_release_keys(ctx.config)  # a bad key file: a config error at start
        self._busy: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._started = self.ctx.clock.time()
        self.stats = Stats()
        self.trial: Trial | None = None

    # -------------------------------------------------------------------------------- service
    async def run(self, ready: Any) -> None:
        await self._report_outcome()  # nothing is created under the release root until a command needs it
        self.trial = self.layout.read_trial()
        if self.trial is not None and self.trial.kind == "release" and self.trial.to_version != self.version:
            # the switch never happened (power cut after the trial was written): nothing to undo
            await self._rolled_back(self.trial, f"interrupted before switching to {self.trial.to_version}")
            self.trial = None
        elif self.trial is not None and self.trial.kind == "config" and self.trial.to_version != self._overlay_tag():
            await self._rolled_back(self.trial, "interrupted before the new configuration was written")
            self.trial = None
        ready()
        try:
            if self.trial is not None:
                await self._watch(self.trial)
            await self._keep_previous()
            await asyncio.Event().wait()  # the handlers need the service (and its stop event) alive
        finally:
            self._stop.set()
            if self._busy is not None:
                self._busy.cancel()

    async def _report_outcome(self) -> None:
        outcome = self.layout.read_outcome()
        if outcome is None:
            return
        log.warning("update: the %s trial of %s was rolled back: %s", outcome.kind, escape(outcome.version),
                    escape(outcome.reason))
        if await self._receipt(outcome.cmd_id, "failed", reason="rolled_back", detail=outcome.reason,
                               version=self.version, step="rolled_back"):
            self.layout.clear_outcome()

    async def _rolled_back(self, trial: Trial, reason: str) -> None:
        self.layout.clear_trial()
        await self._receipt(trial.cmd_id, "failed", reason="rolled_back", detail=reason, version=self.version,
                            step="rolled_back")

    def _overlay_tag(self) -> str:
        try:
            data = self.layout.overlay.read_bytes()
        except OSError:
            data = b"{}"
        return "cfg-" + hashlib.sha256(data).hexdigest()[:16]

    def _connected_since(self) -> float | None:
        try:
            data = json.loads((self.config.box.state_dir / "link.json").read_text())
        except (OSError, ValueError):
            return None
        ts = data.get("ts") if isinstance(data, dict) else None
        if data.get("state") == "connected" and isinstance(ts, (int, float)) and ts >= self._started - 1:
            return float(ts)
        return None

    async def _watch(self, trial: Trial) -> None:
        """Healthy: connected to the broker since this start for healthy_after_s, before the deadline."""
        clock = self.ctx.clock
        # the deadline is kept as wall time (the launcher reads it across restarts); here it becomes a monotonic
        # one, so a clock that steps while the trial runs (1970 -> NTP on a box) cannot roll a healthy one back
        left = min(max(0.0, trial.deadline - clock.time()), self.settings.health_timeout_s)
        deadline = clock.monotonic() + left
        log.info("update: %s trial of %s: healthy within %.0f s or rolled back", trial.kind, trial.to_version, left)
        while True:
            since = self._connected_since()
            if since is not None and clock.time() - since >= self.settings.healthy_after_s:
                await self._healthy(trial)
                return
            if clock.monotonic() >= deadline:
                await self._roll_back_self(trial, f"no broker connection within {self.settings.health_timeout_s:.0f} s")
                return
            await asyncio.sleep(POLL_S)

    async def _healthy(self, trial: Trial) -> None:
        if trial.kind == "release":
            self.layout.write_healthy(self.version, self.ctx.clock.time())
            log.info("update: release %s is healthy (was %s)", self.version, trial.from_version)
            sent = await self._receipt(trial.cmd_id, "finished", step="healthy", version=self.version)
        else:
            log.info("update: remote configuration %s is healthy", trial.to_version)
            sent = await self._receipt(trial.cmd_id, "applied", step="healthy", version=self.version)
        if sent:
            self.layout.clear_trial()
            self.trial = None

    async def _roll_back_self(self, trial: Trial, reason: str) -> None:
        log.error("update: %s trial of %s is not healthy: %s; rolling back", trial.kind, trial.to_version, reason)
        if trial.kind == "release":
            self.layout.switch(trial.from_version, None)
        elif self.layout.overlay_prev.exists():
            os.replace(self.layout.overlay_prev, self.layout.overlay)
        self.layout.write_outcome(Outcome("rolled_back", trial.kind, trial.to_version, trial.cmd_id, reason))
        self.layout.clear_trial()
        os.kill(os.getpid(), signal.SIGTERM)  # systemd (Restart=always) starts the previous one

    async def _keep_previous(self) -> None:
        """Once healthy a day, the previous slot goes (and any other leftover slot)."""
        while True:
            healthy = self.layout.read_healthy()
            if healthy is not None and healthy[0] == self.version:
                left = healthy[1] + self.settings.keep_previous_s - self.ctx.clock.time()
                if left <= 0 and self.layout.trial_file.exists() is False:
                    keep = {self.version}
                    gone = await asyncio.to_thread(self.layout.prune, keep)
                    self.layout.previous.unlink(missing_ok=True)
                    if gone:
                        log.info("update: %s healthy for %.0f s; removed %s", self.version,
                                 self.settings.keep_previous_s, ", ".join(gone))
                    return
                await asyncio.sleep(min(max(left, 1.0), 3600.0))
            else:
                return

    async def _receipt(self, cmd_id: str, state: str, **extra: Any) -> bool:
        try:
            await self.ctx.receipts.send(cmd_id, state, **extra)
            return True
        except OutboxError as exc:
            log.error("update: cannot queue the %s receipt for %s: %s", state, cmd_id, exc)
            return False

    def _check_idle(self) -> None:
        if self._busy is not None and not self._busy.done():
            raise CommandFailed("busy", "an update or configuration change is already in progress")
        if self.layout.read_trial() is not None:
            raise CommandFailed("busy", "a release or configuration is still on trial")

    # -------------------------------------------------------------------------------- agent.update
    async def on_update(self, cmd: Command) -> None:
        data = cmd.data
        version, digest, url = data.get("version"), data.get("manifest_sha256"), data.get("url")
        if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
            raise CommandFailed("malformed", "data.version must be a dotted-integer version")
        if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
            raise CommandFailed("malformed", "data.manifest_sha256 must be 64 lower-case hex digits")
        if not isinstance(url, str) or not URL_RE.fullmatch(url):
            raise CommandFailed("malformed", "data.url must be an https:// URL")
        if self.settings.server is None:
            raise CommandFailed("not_configured", "[update] server is not set on this box")
        if not url.startswith(self.settings.server) or "/../" in url or "?" in url or "#" in url:
            raise CommandFailed("not_allowed", "data.url is not under this box's [update] server")
        self._check_idle()
        try:
            self.layout.ensure()
        except OSError as exc:
            raise CommandFailed("not_configured", f"release root {self.layout.root}: {exc.strerror}") from None
        self._busy = asyncio.create_task(self._update(cmd, version, digest, url), name="update.release")

    async def _update(self, cmd: Command, version: str, digest: str, url: str) -> None:
        try:
            await self._receipt(cmd.id, "started", step="downloading", version=version)
            manifest = await self._fetch_and_verify(version, digest, url)
            await self._receipt(cmd.id, "started", step="downloaded", version=version,
                                bytes=self.stats.bytes)
            try:
                await install_slot(self.layout, manifest, self.settings.python, config_path())
            except InstallError as exc:
                raise Refused("failed", exc.reason, exc.detail) from None
            await self._receipt(cmd.id, "started", step="installed", version=version)
            trial = Trial(0, self.settings.max_boots, int(self.ctx.clock.time() + self.settings.health_timeout_s),
                          "release",
                          self.version, version, cmd.id)
            self.layout.write_trial(trial)
            self.layout.switch(version, self.version)
            log.warning("update: switched to %s (from %s); restarting", version, self.version)
            await self._receipt(cmd.id, "started", step="switching", version=version)
            os.kill(os.getpid(), signal.SIGTERM)
        except Refused as exc:
            log.warning("update: %s %s %s: %s", cmd.id, exc.state, exc.reason, escape(exc.detail))
            await self._receipt(cmd.id, exc.state, reason=exc.reason, detail=exc.detail, version=self.version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not take the agent down; the old version keeps running
            log.exception("update: %s failed", cmd.id)
            await self._receipt(cmd.id, "failed", reason="update_error", detail=type(exc).__name__)

    async def _fetch_and_verify(self, version: str, digest: str, url: str) -> Manifest:
        mqtt = self.config.mqtt
        try:
            ctx = tls_context(self.settings.ca or mqtt.ca, mqtt.cert, mqtt.key)
        except (OSError, ValueError) as exc:
            raise Refused("failed", "download_failed", f"TLS setup: {exc}") from None
        rate = RateLimit(self.settings.max_rate_bytes_s)
        try:
            token = await asyncio.to_thread(fetch_bytes, url, ctx, MAX_MANIFEST_BYTES, self.stats)
        except FetchError as exc:
            raise Refused("failed", exc.reason, exc.detail) from None
        got = hashlib.sha256(token).hexdigest()
        if got != digest:
            raise Refused("rejected", "hash_mismatch", f"manifest sha256 {got[:16]}... is not the command's "
                          f"{digest[:16]}...")
        try:
            manifest = verify_manifest(token, self.release_keys)
            if manifest.version != version:
                raise ManifestError("bad_manifest", f"manifest is {manifest.version}, the command said {version}")
            check_applicable(manifest, self.version, schemas=schema_versions())
        except ManifestError as exc:
            raise Refused("rejected", exc.reason, exc.detail) from None
        missing = [w for w in manifest.wheels if not self.layout.wheel(w.sha256).exists()]
        need = sum(w.size for w in missing)
        try:
            st = os.statvfs(self.layout.root)
        except OSError as exc:
            raise Refused("failed", "download_failed", f"release root: {exc.strerror}") from None
        free = st.f_bavail * st.f_frsize
        if free < need + self.settings.min_free_mb * 1024 * 1024:
            raise Refused("rejected", "disk_full", f"{need} bytes to download and {self.settings.min_free_mb} MB "
                          f"to keep free, {free // (1024 * 1024)} MB free")
        base = url.rsplit("/", 1)[0] + "/wheels/"
        for w in missing:
            dest = self.layout.downloads / f"{w.sha256}.whl"
            try:
                await asyncio.to_thread(fetch_file, base + w.file, dest, size=w.size, sha256=w.sha256, ctx=ctx,
                                        rate=rate, stop=self._stop, stats=self.stats)
                os.replace(dest, self.layout.wheel(w.sha256))
            except FetchError as exc:
                state = "rejected" if exc.reason == "hash_mismatch" else "failed"
                raise Refused(state, exc.reason, exc.detail) from None
            except OSError as exc:
                raise Refused("failed", "download_failed", f"{w.file}: {exc.strerror}") from None
        return manifest

    # -------------------------------------------------------------------------------- config.set
    async def on_config(self, cmd: Command) -> None:
        try:
            fragment = remote.parse_fragment(cmd.data.get("toml"), cmd.kind,
                                             allow_mqtt=self.settings.allow_remote_mqtt)
        except remote.FragmentError as exc:
            await self._receipt(cmd.id, "rejected", reason=exc.reason, detail=exc.detail)
            return
        self._check_idle()
        path = config_path()
        try:
            base = read_toml(path)
        except SchemaError as exc:
            raise CommandFailed("config_unreadable", f"{exc.key}: {exc.problem}") from None
        old = remote.read_overlay(self.layout.overlay)
        new = remote.merge(old, fragment)
        try:
            candidate = parse_config(remote.merge(base, new), "remote configuration")
            load_trust_keys(candidate)
        except ConfigError as exc:
            detail = f"{exc.key}: {exc.problem}" if exc.key else exc.problem
            log.warning("update: config.set %s rejected: %s", cmd.id, escape(detail))
            await self._receipt(cmd.id, "rejected", reason="invalid_config", detail=detail)
            return
        if candidate == self.config:
            await self._receipt(cmd.id, "applied", step="unchanged", version=self.version)
            return
        self.layout.ensure()
        body = json.dumps(new, ensure_ascii=False, sort_keys=True).encode("utf-8")
        # prev, trial, overlay: a power cut anywhere leaves either the old overlay (the trial, naming the new
        # one's digest, is then found interrupted) or the new one on trial
        write_atomic(self.layout.overlay_prev, json.dumps(old).encode())
        trial = Trial(0, self.settings.max_boots, int(self.ctx.clock.time() + self.settings.health_timeout_s),
                      "config", "-",
                      "cfg-" + hashlib.sha256(body).hexdigest()[:16], cmd.id)
        self.layout.write_trial(trial)
        write_atomic(self.layout.overlay, body)
        log.warning("update: remote configuration %s written (%s); restarting on trial", cmd.id,
                    ", ".join(sorted(fragment)))
        await self._receipt(cmd.id, "started", step="restarting")
        os.kill(os.getpid(), signal.SIGTERM)


def make_services(ctx: AgentContext) -> list[Service]:
    svc = UpdateService(ctx)
    ctx.commands.register("agent.update", svc.on_update)
    ctx.commands.register("config.set", svc.on_config)
    ctx.commands.register("config.set_mqtt", svc.on_config)
    return [svc]
