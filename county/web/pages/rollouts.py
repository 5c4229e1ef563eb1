"""升级 Rollouts: signed agent updates as they reach the boxes (docs/updates.md; admin, `release.manage`)."""

from county.web.pages import N_, Page

PAGES = [
    Page("/rollouts", "rollouts", "rollouts.html", N_("Rollouts"), "rollouts", "release.manage", "rollout.js"),
]
