"""MQTT topic names (contract section 3). Every topic string in the project is built here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.protocol.envelope import MsgClass

DEFAULT_PREFIX = "vc/v1"
BOX_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z, not $: "$" also matches before a trailing newline


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def state(self, box: str) -> str:
        return f"{self.prefix}/box/{box}/state"

    def up(self, box: str, cls: MsgClass, kind: str) -> str:
        return f"{self.prefix}/box/{box}/up/{cls.wire}/{kind}"

    def box_cmd(self, box: str) -> str:
        return f"{self.prefix}/box/{box}/cmd"

    def group_cmd(self, group: str) -> str:
        return f"{self.prefix}/group/{group}/cmd"

    # wildcards for the county side
    def all_up(self) -> str:
        return f"{self.prefix}/box/+/up/#"

    def all_state(self) -> str:
        return f"{self.prefix}/box/+/state"

    def parse_up(self, topic: str) -> tuple[str, MsgClass, str] | None:
        """`P/box/{box}/up/{class}/{kind}` -> (box, class, kind); None for any other topic."""
        head = f"{self.prefix}/box/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 4 or parts[1] != "up":
            return None
        try:
            return parts[0], MsgClass.parse(parts[2]), parts[3]
        except ValueError:
            return None

    def parse_state(self, topic: str) -> str | None:
        head, tail = f"{self.prefix}/box/", "/state"
        if topic.startswith(head) and topic.endswith(tail):
            box = topic[len(head):-len(tail)]
            return box if "/" not in box else None
        return None
