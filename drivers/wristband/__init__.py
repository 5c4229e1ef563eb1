"""Wristband gateways: the watch protocol, Ingics-style BLE gateways, NMEA, and their transports."""
