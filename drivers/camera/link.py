"""Is the box's own LAN up? Read from the kernel: the route towards the cameras and its carrier.

A box whose cable is out or whose switch is off must not report every camera offline; the camera
feature turns "LAN down" into `unknown`. This check covers the box's own link (the interface the
kernel would use to reach the cameras, which on a 4G box is not the default route); a dead switch
further away shows up instead as "every camera unreachable at once" (agent/cameras/health.py).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from pathlib import Path


def _le_ip(hex8: str) -> int:
    """/proc/net/route prints addresses as little-endian hex."""
    return struct.unpack("!I", struct.pack("<I", int(hex8, 16)))[0]


class SysfsLinkCheck:
    """Satisfies drivers.camera.base.LinkCheck by reading /proc/net/route and /sys/class/net."""

    def __init__(self, proc_route: Path = Path("/proc/net/route"), sys_net: Path = Path("/sys/class/net")) -> None:
        self.proc_route = proc_route
        self.sys_net = sys_net

    def routes(self) -> list[tuple[str, int, int]] | None:
        """(interface, destination, mask) per IPv4 route; None when the table cannot be read."""
        try:
            lines = self.proc_route.read_text().splitlines()[1:]
        except OSError:
            return None
        out = []
        for line in lines:
            cols = line.split()
            if len(cols) >= 8:
                try:
                    out.append((cols[0], _le_ip(cols[1]), _le_ip(cols[7])))
                except ValueError:
                    continue
        return out

    def interface_for(self, host: str, routes: list[tuple[str, int, int]]) -> str | None:
        try:
            ip = int(ipaddress.IPv4Address(host))
        except ValueError:
            return None
        best: tuple[int, str] | None = None
        for iface, dest, mask in routes:
            if ip & mask == dest & mask:
                bits = bin(mask).count("1")
                if best is None or bits > best[0]:
                    best = (bits, iface)
        return best[1] if best else None

    def carrier(self, iface: str) -> bool:
        if iface == "lo":
            return True
        try:
            return (self.sys_net / iface / "carrier").read_text().strip() == "1"
        except OSError:
            return True  # virtual interfaces may have no carrier file; the route exists

    def lan_up(self, hosts: Sequence[str]) -> bool | None:
        routes = self.routes()
        if routes is None:
            return None
        ifaces: set[str] = set()
        judged = 0  # hosts given as IPv4 addresses outside loopback: the only ones we can route here
        for host in hosts:
            try:
                addr = ipaddress.IPv4Address(host)
            except ValueError:
                continue  # a name: resolving it would block; say nothing about it
            if addr.is_loopback:
                continue
            judged += 1
            iface = self.interface_for(host, routes)
            if iface is not None:
                ifaces.add(iface)
        if not judged:
            return None
        if not ifaces:
            return False  # no route towards any camera: the LAN (or DHCP) is down
        return any(self.carrier(i) for i in ifaces)
