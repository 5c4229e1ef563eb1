"""The soak checker's relay verdict reads the relay from the agent's STATUS= line, never from log wording.

A relay-on is authorized when, in the same agent run, a valid command was accepted (or a schedule resumed)
before it. The switches come from STATUS= lines placed in the log by the byte offset at which each arrived
(bench/soak/faults.SoakAgent); a log line saying "amplifier relay on" (forgeable, and no interface) counts
for nothing.
"""

from __future__ import annotations

from bench.soak.checker import Inputs, check
from bench.soak.load import SentCommand
from bench.soak.proxy import Ledger

BOX = "soak-box-001"
RELAY_CHECK = "relay never on without a valid command"


def inputs(log: str, relay: list[tuple[int, str]], commands: list[SentCommand]) -> Inputs:
    return Inputs(box=BOX, envelopes=[], arrivals=[], ledger=Ledger(), outbox_seen={}, outbox_left=set(),
                  counters={}, presses=[], acked_devices=set(), commands=commands, agent_log=log,
                  relay_statuses=relay, faults=[], skipped={}, rss_runs=[], agent_crashes=0, seconds=1.0)


def command(cid: str, valid: bool = True) -> SentCommand:
    return SentCommand(cid, valid, "valid" if valid else "bad_signature", 0.0, "token")


def accepted(cid: str) -> str:
    return f"2026-12-01 10:00:00 INFO agent.commands: commands: broadcast.play {cid} accepted (kid k, from t)\n"


def relay_check(i: Inputs) -> tuple[bool, str, int]:
    v = check(i)
    c = next(c for c in v.checks if c.name == RELAY_CHECK)
    return c.ok, c.detail, v.figures["commands"]["relay_on"]


def offset_after(log: str, line: str) -> int:
    """The log's size in bytes just after `line` was written."""
    text = log.encode()
    return text.index(line.encode()) + len(line.encode())


def test_a_relay_switched_on_before_any_accepted_command_is_a_violation() -> None:
    run = "--- run 1 ---\n"
    log = run + "2026-12-01 10:00:00 INFO agent: agent: box soak-box-001 starting\n" + accepted("c1")
    # on after the start line, before the command line: the STATUS= arrived before the command was accepted
    before = offset_after(log, "starting\n")
    ok, detail, relay_on = relay_check(inputs(log, [(len(run), "off"), (before, "on"), (len(log), "off")],
                                              [command("c1")]))
    assert not ok and relay_on == 1, detail
    assert "starting" in detail  # names where it happened


def test_a_relay_switched_on_after_a_valid_command_is_fine_and_counted() -> None:
    log = "--- run 1 ---\n" + accepted("c1") + "2026-12-01 10:00:01 INFO agent.broadcast: playing\n"
    ok, detail, relay_on = relay_check(inputs(log, [(14, "off"), (offset_after(log, accepted("c1")), "on"),
                                                    (len(log), "off")], [command("c1")]))
    assert ok and relay_on == 1, detail


def test_log_wording_about_the_relay_counts_for_nothing() -> None:
    # a forged (or merely reworded) line: no STATUS= said the relay went on, so nothing switched
    log = "--- run 1 ---\n2026-12-01 10:00:00 INFO agent.broadcast: amplifier relay on\n"
    ok, detail, relay_on = relay_check(inputs(log, [(14, "off")], []))
    assert ok and relay_on == 0, detail


def test_authorization_does_not_outlive_the_agent_run() -> None:
    run1 = "--- run 1 ---\n" + accepted("c1")
    log = run1 + "--- run 2 ---\n2026-12-01 10:05:00 INFO agent: agent: box soak-box-001 starting\n"
    statuses = [(offset_after(log, accepted("c1")), "on"),  # run 1, authorized
                (len(log), "on")]  # run 2 starts with the relay off: switched on again, by nothing
    ok, detail, relay_on = relay_check(inputs(log, statuses, [command("c1")]))
    assert not ok and relay_on == 2, detail


def test_repeated_status_lines_while_on_are_one_switch() -> None:
    log = "--- run 1 ---\n" + accepted("c1")
    at = offset_after(log, accepted("c1"))
    ok, detail, relay_on = relay_check(inputs(log, [(at, "on"), (at, "on"), (at, "on"), (at, "off")],
                                              [command("c1")]))
    assert ok and relay_on == 1, detail
