"""A real RTSP server for tests and demos: GStreamer's gst-rtsp-server serving videotestsrc.

Run with Debian's own python3 (python3-gi and gir1.2-gst-rtsp-server-1.0), not the project venv:

    /usr/bin/python3 sim/gst_rtsp.py --port 8554 --mount /Streaming/Channels/102=ball \
        --mount /black=black --mount /still=smpte --user admin --password-file FILE [--auth digest|basic|none]

Each mount serves a videotestsrc pattern: `ball` moves (animated on the wall clock, so two grabs a
few seconds apart differ), `black` is a black picture, `smpte` is a still test card (a frozen camera).

Prints "READY <port>" on stdout once listening, then serves until SIGTERM. The password is read from
a file so it never appears in a process listing. Stand-alone on purpose: it imports nothing from the
project, so it runs under any python3 that has GObject introspection.
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", action="append", default=[], metavar="PATH=PATTERN",
                    help="serve videotestsrc PATTERN at PATH (repeatable; default /stream=ball)")
    ap.add_argument("--user", default="")
    ap.add_argument("--password-file", default="")
    ap.add_argument("--auth", choices=("digest", "basic", "none"), default="digest")
    args = ap.parse_args(argv)

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
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
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
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
