"""用户与审计 Users and audit: user management for admins, the audit log with its chain check."""

from county.web.pages import N_, Page

PAGES = [
    Page("/users", "users", "users.html", N_("Users"), "users", "users.read", "users.js"),
    Page("/audit", "audit", "audit.html", N_("Audit log"), "users", "audit.read", "audit.js"),
]
