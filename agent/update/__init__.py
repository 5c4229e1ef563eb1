"""Signed agent updates and signed remote configuration (docs/updates.md).

- settings.py  the `[update]` table
- layout.py    the release root on disk: releases/<version>, the `current` and `previous` links, the trial file
- fetch.py     HTTPS download with the box's client certificate: Range-resumable, bandwidth-capped
- install.py   a venv slot installed offline from verified wheels, checked, then switched to
- remote.py    the remote configuration overlay (`config.set`)
- service.py   the command handlers and the health watch that keeps or rolls back a new version/config

The launcher (systemd/village-launch, a POSIX shell script) counts boots of a trial and switches back
when the new version cannot even start; it never imports Python code of the slot it judges.
"""
