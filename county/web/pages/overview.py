"""总览 Overview: the region tree with a health line per village (static/js/overview.js)."""

from county.web.pages import N_, Page

PAGES = [Page("/", "overview", "overview.html", N_("Overview"), "overview", "boxes.read", "overview.js")]
