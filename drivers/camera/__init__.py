"""Surveillance cameras: RTSP probe (sans-I/O codec + asyncio prober), ONVIF, frame grab, redaction."""
