"""实时喊话 Live broadcast: speak from the browser (static/js/live.js: microphone, WebCodecs Opus, the
WebSocket /ws/v1/live of county/server/routes_live.py), targets picked on W3's region tree (targets.js)."""

from county.web.pages import N_, Page

PAGES = [
    Page("/live", "live", "live.html", N_("Live broadcast"), "live", "broadcast.create", "live.js"),
]
