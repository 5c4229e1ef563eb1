"""告警 Alarms: the live list (static/js/alarms.js), one alarm with its map, raw frame and actions
(static/js/alarm.js), and the 网格员's phone view of the alarms assigned to them (static/js/grid.js)."""

from county.web.pages import N_, Page

PAGES = [
    Page("/alarms", "alarms", "alarms.html", N_("Alarms"), "alarms", "alarms.read", "alarms.js"),
    Page("/alarms/{id}", "alarm", "alarm.html", N_("Alarm"), "alarms", "alarms.read", "alarm.js"),
    Page("/grid", "grid", "grid.html", N_("My alarms"), "alarms", "alarms.read", "grid.js"),
]
