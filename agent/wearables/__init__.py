"""Wristband signals: gateways, wearer registry, geofences, alarm episodes."""
