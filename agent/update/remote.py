"""Remote configuration (`config.set`, `config.set_mqtt`): a signed TOML fragment over the box's own file.

The box's file (/etc/village-agent/agent.toml) is never rewritten. What the county sets lives in an
overlay, ROOT/update/remote.json (ROOT: `[update] root`), merged over the file every time the config is
loaded (agent.config.load_config), so `village agent check` shows and judges the result the agent runs.

Merging: a table in the fragment updates the file's table key by key (`[broadcast] quiet_hours = ...`
changes that key only); an array of tables (`[[wearer]]`, `[[camera]]`) replaces the whole list.

What may change remotely (REMOTE_SECTIONS): broadcast, wearables, wearer, cameras, camera, log. Never
`[trust]`, `[update]` or `[box]`; `[mqtt] url` only through its own kind `config.set_mqtt`, and only on a
box whose own file says `[update] allow_remote_mqtt = true`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

REMOTE_SECTIONS = frozenset({"broadcast", "wearables", "wearer", "cameras", "camera", "log"})
MQTT_KEYS = frozenset({"url"})
MAX_FRAGMENT_BYTES = 64 * 1024
DEFAULT_ROOT = "/opt/village-agent"
OVERLAY = "update/remote.json"


class FragmentError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def overlay_path(raw: dict[str, Any]) -> Path:
    update = raw.get("update")
    root = update.get("root", DEFAULT_ROOT) if isinstance(update, dict) else DEFAULT_ROOT
    return Path(str(root)) / OVERLAY


def read_overlay(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged overlay is ignored: the box's own file still runs the box
    return data if isinstance(data, dict) else {}


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = {**out[name], **value}
        else:
            out[name] = value
    return out


def with_overlay(raw: dict[str, Any]) -> dict[str, Any]:
    """The file's raw TOML with the remote overlay merged over it (what load_config builds from)."""
    overlay = read_overlay(overlay_path(raw))
    return merge(raw, overlay) if overlay else raw


def parse_fragment(text: Any, kind: str, *, allow_mqtt: bool) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        raise FragmentError("malformed", "data.toml must be a non-empty TOML string")
    if len(text.encode("utf-8", "replace")) > MAX_FRAGMENT_BYTES:
        raise FragmentError("malformed", f"data.toml is over {MAX_FRAGMENT_BYTES} bytes")
    try:
        fragment = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FragmentError("invalid_config", f"not valid TOML: {exc}") from None
    if not fragment:
        raise FragmentError("invalid_config", "the fragment sets nothing")
    if kind == "config.set_mqtt":
        if not allow_mqtt:
            raise FragmentError("not_allowed", "this box does not take [mqtt] remotely ([update] allow_remote_mqtt)")
        mqtt = fragment.get("mqtt")
        if set(fragment) != {"mqtt"} or not isinstance(mqtt, dict) or not set(mqtt) <= MQTT_KEYS or not mqtt:
            raise FragmentError("not_allowed", "config.set_mqtt sets [mqtt] url and nothing else")
        return fragment
    refused = sorted(set(fragment) - REMOTE_SECTIONS)
    if refused:
        raise FragmentError("not_allowed", f"[{refused[0]}] may not be set remotely (allowed: "
                            f"{', '.join(sorted(REMOTE_SECTIONS))})")
    return fragment
