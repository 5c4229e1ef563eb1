"""摄像头 Cameras: online rates per region for a day or month, offline cameras, the assessment sheet."""

from county.web.pages import N_, Page

PAGES = [Page("/cameras", "cameras", "cameras.html", N_("Cameras"), "cameras", "reports.read", "cameras.js")]
