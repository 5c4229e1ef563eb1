"""设备 Boxes: the fleet list and one box's page with its recent timeline (static/js/boxes.js, box.js)."""

from county.web.pages import N_, Page

PAGES = [
    Page("/boxes", "boxes", "boxes.html", N_("Boxes"), "boxes", "boxes.read", "boxes.js"),
    Page("/boxes/{id}", "box", "box.html", N_("Box"), "boxes", "boxes.read", "box.js"),
]
