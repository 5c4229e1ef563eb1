"""The compose page's target picker: the region tree a user may broadcast to, and the picked regions and boxes
as the broadcast's `to` list.

The page never builds `to` itself: it sends the picked region ids and box ids, and `targets_for` answers the
targets and, through `Regions.resolve` (the same call `reach_boxes` makes when the broadcast is created and
signed), the exact boxes they reach. So the list the page shows before sending is the list the signer uses.

A region becomes `group:NAME` when one group reaches exactly its boxes (every box of the region answers to
it in the regions file or in the groups it reported, and no other box does): one target, and a box the
region gains later under that group still hears it. Otherwise each of its boxes becomes `box:ID`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from county.regions import Regions

Reported = dict[str, list[str]]


def tree(regions: Regions, scope: str | None, reported: Reported, state: dict[str, str] | None = None,
         ) -> dict[str, Any]:
    """{"id","name","kind","boxes":n,"children":[...]} of the county (or the user's scope), boxes as leaves
    (`{"id","name","kind":"box","state"}`), names from the regions file."""
    state = state or {}

    def box_node(b: str) -> dict[str, Any]:
        place = regions.place(b)
        return {"id": b, "name": place.name or b, "kind": "box", "state": state.get(b, "unknown")}

    def node(rid: str) -> dict[str, Any]:
        region = regions.region(rid)
        if region.kind == "village":
            children = [box_node(b) for b in sorted(region.boxes)]
        else:
            kids = [r for r in regions.scopes() if r.parent == rid]
            children = [node(r.id) for r in kids]
        return {"id": rid, "name": region.name or rid, "kind": region.kind, "boxes": len(region.boxes),
                "children": children}

    root = scope if scope is not None and regions.has_scope(scope) else regions.county_id
    out = node(root)
    if root == regions.county_id:  # boxes that report but the file does not name: the whole county sees them
        stray = sorted(set(reported) - regions.registered())
        if stray:
            out["unregistered"] = [box_node(b) for b in stray]
    return out


def covering_group(regions: Regions, boxes: frozenset[str], reported: Reported) -> str | None:
    """A group whose members are exactly `boxes`, or None."""
    if not boxes:
        return None
    common: set[str] | None = None
    for b in boxes:
        groups = set(regions.place(b).groups) | set(reported.get(b) or [])
        common = groups if common is None else common & groups
        if not common:
            return None
    for g in sorted(common or ()):
        if regions.group_members(g, reported) == boxes:
            return g
    return None


class TargetError(ValueError):
    pass


def targets_for(regions: Regions, reported: Reported, region_ids: Iterable[str], box_ids: Iterable[str],
                ) -> tuple[list[str], list[str]]:
    """(targets, boxes sorted): the picked regions and boxes as `to`, and every box that `to` reaches."""
    targets: list[str] = []
    for rid in dict.fromkeys(region_ids):
        if not regions.has_scope(rid):
            raise TargetError(f"no region {rid!r} in the regions file")
        members = regions.boxes_in(rid)
        if not members:
            raise TargetError(f"region {rid!r} has no boxes")
        group = covering_group(regions, members, reported)
        targets += [f"group:{group}"] if group else [f"box:{b}" for b in sorted(members)]
    targets += [f"box:{b}" for b in box_ids]
    targets = list(dict.fromkeys(targets))
    reach = regions.resolve(targets, reported)
    return targets, sorted(set().union(*reach.values())) if reach else []
