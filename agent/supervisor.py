"""One TaskGroup owns every service (trio's nurseries): a crash anywhere stops everything, loudly.

- each service runs as task `<name>.run`; READY=1 goes to systemd once all of them called `ready()`;
- WATCHDOG=1 is sent from a task on this event loop, so a hung loop stops petting and systemd restarts us;
- SIGTERM/SIGINT cancel the group; services clean up in `finally` (relay off, outbox flushed) within
  `shutdown_budget_s`, after which the process leaves anyway (exit 0 if the stop was clean);
- a service that raises is logged with its traceback and the process exits 1 (systemd restarts it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Sequence

from agent import sdnotify
from agent.service import Service

log = logging.getLogger("agent.supervisor")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_STOP_OVERRAN = 3


class _Stop(Exception):
    """Raised inside the group to cancel it when a stop signal arrives."""


class Supervisor:
    def __init__(self, services: Sequence[Service], *, shutdown_budget_s: float = 10.0,
                 board: sdnotify.StatusBoard | None = None) -> None:
        self.services = list(services)
        self.board = board  # READY=1 carries its STATUS= line (the agent's state so far)
        self.shutdown_budget_s = shutdown_budget_s
        self._stop = asyncio.Event()
        self._waiting: set[str] = set()
        self.all_ready = asyncio.Event()
        self._overrun: threading.Timer | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._waiting = {s.name for s in self.services}
        code = EXIT_OK  # also when every service returned on its own
        try:
            async with asyncio.TaskGroup() as tg:
                for service in self.services:
                    tg.create_task(service.run(self._ready_cb(service.name)), name=f"{service.name}.run")
                tg.create_task(self._watchdog(), name="supervisor.watchdog")
                tg.create_task(self._wait_stop(), name="supervisor.stop")
        except* _Stop:
            log.info("supervisor: stopped cleanly")
        except* Exception as group:
            for exc in group.exceptions:
                log.critical("supervisor: a service crashed; exiting so systemd restarts the agent",
                             exc_info=(type(exc), exc, exc.__traceback__))
            code = EXIT_CRASH
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._overrun is not None:
                self._overrun.cancel()
        return code

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            return
        log.info("supervisor: %s received, stopping (budget %.0f s)", sig.name, self.shutdown_budget_s)
        sdnotify.notify("STOPPING=1")
        self._overrun = _exit_if_stop_overruns(self.shutdown_budget_s)
        self._stop.set()

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stop

    def _ready_cb(self, name: str):
        def ready() -> None:
            if name in self._waiting:
                self._waiting.discard(name)
                log.debug("supervisor: %s ready", name)
                if not self._waiting:
                    self.all_ready.set()
                    log.info("supervisor: all %d services ready", len(self.services))
                    line = self.board.line() if self.board is not None else ""
                    sdnotify.notify("READY=1\nSTATUS=" + (line or "running"))
        return ready

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)


def _exit_if_stop_overruns(budget_s: float) -> threading.Timer:
    """A cleanup that hangs must not keep the process alive forever: leave after the budget.

    A thread, not the event loop: the loop may be the thing that hangs.
    """
    def leave() -> None:
        logging.getLogger("agent.supervisor").error("supervisor: cleanup overran %.0f s; exiting now", budget_s)
        logging.shutdown()
        os._exit(EXIT_STOP_OVERRAN)

    timer = threading.Timer(budget_s, leave)
    timer.daemon = True
    timer.start()
    return timer
