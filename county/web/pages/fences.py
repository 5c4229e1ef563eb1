"""电子围栏 Geofences: draw polygons and circles on the map, name them, assign them to wearers, push them to
the boxes and watch each box answer (static/js/fences.js)."""

from county.web.pages import N_, Page

PAGES = [Page("/fences", "fences", "fences.html", N_("Geofences"), "fences", "fences.read", "fences.js")]
