"""A real RTSP server for tests and demos: GStreamer's gst-rtsp-server serving videotestsrc.

Run with Debian's own python3 (python3-gi and gir1.2-gst-rtsp-server-1.0), not the project venv:

    /usr/bin/python3 sim/gst_rtsp.py --port 8554 --mount /Streaming/Channels/102=ball \
        --mount /black=black --mount /still=smpte --user admin --password-file FILE [--auth digest|basic|none]

Each mount serves a videotestsrc pattern: `ball` moves (animated on the wall clock, so two grabs a
few seconds apart differ), `black` is a black picture, `smpte` is a still test card (a frozen camera).

The H.264 encoder is the first one installed of ENCODERS: x264enc (Debian: gstreamer1.0-plugins-ugly) or
openh264enc (gstreamer1.0-plugins-bad); `--encoder NAME` picks one. `--check` prints the elements a
server would need that are missing (one per line, with the Debian package that has them) and exits 1 if
any is, 0 if none: the tests skip with that text instead of failing against a server that cannot stream.

Prints "READY <port>" on stdout once listening, then serves until SIGTERM. The password is read from
a file so it never appears in a process listing. Stand-alone on purpose: it imports nothing from the
project, so it runs under any python3 that has GObject introspection.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

# H.264 encoders in order of preference, with their low-latency settings (one key frame a second at 10 fps)
ENCODERS = {
    "x264enc": ("gstreamer1.0-plugins-ugly", "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10"),
    "openh264enc": ("gstreamer1.0-plugins-bad", "openh264enc complexity=low gop-size=10"),
}
# the other elements every mount uses, with the Debian package that has them
ELEMENTS = {"videotestsrc": "gstreamer1.0-plugins-base", "rtph264pay": "gstreamer1.0-plugins-good"}


def missing_elements(gst: Any, encoder: str | None) -> tuple[list[str], str | None]:
    """(what is missing as "element (package)", the encoder to use) for an initialised Gst module."""
    find = gst.ElementFactory.find
    missing = [f"{name} ({pkg})" for name, pkg in ELEMENTS.items() if find(name) is None]
    candidates = [encoder] if encoder else list(ENCODERS)
    chosen = next((name for name in candidates if find(name) is not None), None)
    if chosen is None:
        missing.append(" or ".join(f"{name} ({ENCODERS.get(name, ('?',))[0]})" for name in candidates))
    return missing, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", action="append", default=[], metavar="PATH=PATTERN",
                    help="serve videotestsrc PATTERN at PATH (repeatable; default /stream=ball)")
    ap.add_argument("--user", default="")
    ap.add_argument("--password-file", default="")
    ap.add_argument("--auth", choices=("digest", "basic", "none"), default="digest")
    ap.add_argument("--encoder", choices=tuple(ENCODERS), help="the H.264 encoder (default: the first installed)")
    ap.add_argument("--check", action="store_true", help="print the missing elements and exit (1 if any)")
    args = ap.parse_args(argv)

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    missing, encoder = missing_elements(Gst, args.encoder)
    if args.check or missing:
        for line in missing:
            print(f"missing GStreamer element: {line}", file=sys.stdout if args.check else sys.stderr)
        return 1 if missing else 0
    assert encoder is not None
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    auth = None
    perms = None
    if args.auth != "none" and args.user:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.read().strip()
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if args.auth == "digest":
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(args.user, password, token)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        perms.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)

    for mount in args.mount or ["/stream=ball"]:
        path, _, pattern = mount.partition("=")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f"( videotestsrc is-live=true animation-mode=wall-time pattern={pattern or 'ball'} "
            "! video/x-raw,width=320,height=180,framerate=10/1 "
            f"! {ENCODERS[encoder][1]} ! rtph264pay name=pay0 pt=96 )"
        )
        factory.set_shared(True)
        if perms is not None:
            factory.set_permissions(perms)
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
