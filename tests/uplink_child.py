"""A child process holding the box's real outbox and link (issue 14 tests): kill -9 it with a batch half built.

    python -m tests.uplink_child CONFIG.toml

stdin, one command a line: `send N` (N telemetry positions; each `acked <id> <envelope>` once its send()
returned, i.e. it is committed), `building` (`building <rows in the batch being filled>`).
"""

from __future__ import annotations

import asyncio
import sys

from agent.config import load_config
from agent.link import Link
from agent.outbox import Outbox
from agent.protocol.envelope import MsgClass
from agent.service import InboundCommand


class _Sink:
    async def on_command(self, msg: InboundCommand) -> None:
        pass


async def main(path: str) -> None:
    config = load_config(path)
    outbox = Outbox(config.outbox_path, config.box.id, max_bytes=config.outbox.max_bytes,
                    telemetry_ttl_s=config.outbox.telemetry_ttl_s, commit_interval_s=0.01)
    link = Link(config, outbox, _Sink())
    async with asyncio.TaskGroup() as tg:
        tg.create_task(outbox.run(lambda: None))
        tg.create_task(link.run(lambda: None))
        await outbox.wait_open()
        print("ready", flush=True)
        n = 0
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = line.split()
            if cmd[:1] == ["send"]:
                for _ in range(int(cmd[1])):
                    n += 1
                    env = await outbox.send(MsgClass.TELEMETRY, "position", {"wearer": f"w-{n % 5}", "n": n})
                    print(f"acked {env.id} {env.encode().decode()}", flush=True)
            elif cmd[:1] == ["building"]:
                conn = link.current
                rows = sum(len(b.rows) for b in conn.building.values()) if conn is not None else -1
                print(f"building {rows} {'connected' if conn is not None else 'down'}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
