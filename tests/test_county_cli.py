"""`village county ...` against a real mosquitto, with fake boxes written here that verify and answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.keys import load_public_key, new_keypair
from agent.protocol.envelope import Envelope, MsgClass
from agent.protocol.topics import Topics
from county.cap import broadcast_id
from county.cli import EXIT_ERROR, EXIT_OK, EXIT_UNANSWERED, EXIT_UNHEARD, EXIT_USAGE, main
from county.console import ReceiptBoard
from county.push import MAX_TTL_S
from tests.support import Collector, Mosquitto, TwinBox, wait_until

REPO = Path(__file__).resolve().parent.parent
T = Topics()


class FakeBox(TwinBox):
    """Subscribes to its cmd topics, verifies like a box would (signature, `to`), answers with receipts."""

    def __init__(self, url: str, box: str, groups: list[str], pub_key: Path, *, answer: tuple[str, ...] = (
            "received", "scheduled")) -> None:
        self.answer = answer
        self.got: list[tuple[str, dict[str, Any], bool]] = []  # (topic, payload, retained)
        super().__init__(url, box, groups, {"county-2026": load_public_key(pub_key)}, client_id=f"fake-{box}")

    def on_command(self, topic: str, payload: dict[str, Any], retained: bool) -> None:
        with self._lock:
            self.got.append((topic, payload, retained))
        if not self.addressed(payload):
            return
        for state in self.answer:
            self.receipt(payload["id"], state, **({"reason": "expired"} if state == "rejected" else {}))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return new_keypair("county-2026", tmp_path / "keys")


@pytest.fixture
def village(broker: Mosquitto, keys: tuple[Path, Path], collector: Collector) -> Any:
    boxes = [FakeBox(broker.url, "box-a", ["town-menglou"], keys[1]),
             FakeBox(broker.url, "box-b", ["town-menglou", "zone-2"], keys[1])]
    # a box of the town that is known (retained state) but does not answer
    collector.publish(T.state("box-c"), json.dumps({"state": "offline", "ts": 0, "groups": ["town-menglou"]}),
                      retain=True)
    yield boxes
    for b in boxes:
        b.stop()


def base(broker: Mosquitto, keys: tuple[Path, Path], *to: str) -> list[str]:
    args = ["--broker", broker.url, "--key", str(keys[0]), "--kid", "county-2026"]
    for t in to:
        args += ["--to", t]
    return args


def test_push_text_wait_table(broker: Mosquitto, keys: Any, village: list[FakeBox],
                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "group:town-menglou", "box:box-lonely"), "--text", "明天上午9点停水",
               "--at", "+1h", "--volume", "60", "--id", "notice-1", "--wait", "3", "--force"])
    out = capsys.readouterr()
    assert rc == EXIT_UNANSWERED  # box-c and box-lonely never answered
    # box-lonely has no retained state: no known box answers to it, sent only because of --force
    assert "--force: sending although no known box answers to box:box-lonely" in out.err
    lines = out.out.splitlines()
    assert lines[0].split() == ["BOX", "STATE", "REASON", "AT"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["box-a"][0] == "scheduled" and rows["box-b"][0] == "scheduled"
    assert rows["box-c"] == ["no", "answer"] and rows["box-lonely"] == ["no", "answer"]
    assert set(rows) == {"box-a", "box-b", "box-c", "box-lonely"}
    assert "published broadcast.play notice-1" in out.err
    topic, payload, retained = village[0].got[0]
    assert topic == T.group_cmd("town-menglou") and not retained
    assert payload["kind"] == "broadcast.play" and payload["to"] == ["group:town-menglou", "box:box-lonely"]
    assert payload["exp"] - payload["iat"] == 86400
    data = payload["data"]
    assert data["text"] == "明天上午9点停水" and data["class"] == "daily" and data["level"] == 3
    assert data["volume"] == 60 and data["audio"] is None and data["start"] >= payload["iat"] + 3599


def test_push_json_rows(broker: Mosquitto, keys: Any, village: list[FakeBox],
                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "box:box-a"), "--text", "hi", "--class", "emergency",
               "--json", "--wait", "2", "--id", "e-1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == EXIT_OK
    assert rows == [{"box": "box-a", "cmd": "e-1", "state": "scheduled", "reason": None, "ts": 1_763_900_000_002}]
    assert village[0].got[0][1]["data"]["level"] == 1  # emergency default


def test_push_without_wait_prints_the_command(broker: Mosquitto, keys: Any, village: list[FakeBox],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["push", *base(broker, keys, "box:box-b"), "--text", "hi", "--json"]) == EXIT_OK
    line = json.loads(capsys.readouterr().out)
    assert line["kind"] == "broadcast.play" and line["topics"] == [T.box_cmd("box-b")]
    wait_until(lambda: village[1].got)
    assert village[1].got[0][1]["id"] == line["cmd"]


def test_push_audio_inline(broker: Mosquitto, keys: Any, village: list[FakeBox], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    import base64
    import hashlib

    wav = tmp_path / "notice.wav"
    wav.write_bytes(b"RIFF" + os.urandom(2000))
    assert main(["push", *base(broker, keys, "box:box-a"), "--audio", str(wav)]) == EXIT_OK
    wait_until(lambda: village[0].got)
    audio = village[0].got[0][1]["data"]["audio"]
    assert audio["mime"] == "audio/wav"
    assert audio["sha256"] == hashlib.sha256(wav.read_bytes()).hexdigest()
    assert base64.b64decode(audio["b64"]) == wav.read_bytes()
    assert village[0].got[0][1]["data"]["title"] == "notice"


def test_push_cap_update_cancels_then_plays(broker: Mosquitto, keys: Any, village: list[FakeBox], peers: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "box:box-a"), "--cap", str(peers / "cap-1.2-A3-update.xml"),
               "--wait", "2", "--json"])
    assert rc == EXIT_OK
    got = [p for _t, p, _r in village[0].got]
    assert [p["kind"] for p in got] == ["broadcast.cancel", "broadcast.play"]
    assert got[0]["data"] == {"broadcast": broadcast_id("trinet@caltech.edu", "TRI13970876.1")}
    assert got[1]["id"] == broadcast_id("trinet@caltech.edu", "TRI13970876.2")
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["cmd"] == got[1]["id"] and rows[0]["state"] == "scheduled"


def test_push_expired_cap_is_refused(broker: Mosquitto, keys: Any, peers: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "box:box-a"), "--cap", str(peers / "cap-1.2-A2-alert.xml")])
    assert rc == EXIT_ERROR
    assert "expired already" in capsys.readouterr().err


def test_cancel_all_and_rejections(broker: Mosquitto, keys: Any, capsys: pytest.CaptureFixture[str]) -> None:
    box = FakeBox(broker.url, "box-r", [], keys[1], answer=("rejected",))
    try:
        rc = main(["cancel", *base(broker, keys, "box:box-r"), "--all", "--wait", "2"])
    finally:
        box.stop()
    assert rc == EXIT_UNANSWERED
    assert box.got[0][1]["kind"] == "broadcast.cancel" and box.got[0][1]["data"] == {"all": True}
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ["box-r", "rejected", "expired"]


def test_errors_are_one_line_and_mask_the_password(keys: Any, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    from tests.support import free_port

    url = f"mqtt://admin:s3cr3t-pw@127.0.0.1:{free_port()}"
    rc = main(["push", "--broker", url, "--key", str(keys[0]), "--kid", "k", "--to", "box:x", "--text", "t"])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR and "s3cr3t-pw" not in err and "admin:***@" in err
    assert len(err.strip().splitlines()) == 1
    # a public key given as --key
    rc = main(["push", "--broker", url, "--key", str(keys[1]), "--kid", "k", "--to", "box:x", "--text", "t"])
    assert rc == EXIT_ERROR and "not a PEM private key" in capsys.readouterr().err
    # usage errors: exit 2 and one line (argparse's usage block is not printed)
    for bad in (["--to", "town:x"], ["--to", "box:x\n"], ["--to", "box:x", "--ttl", str(MAX_TTL_S + 1)],
                ["--to", "box:x", "--ttl", "soon"], ["--to", "box:x", "--wait", "-1"],
                ["--to", "box:x", "--tz", "Mars/Olympus"]):
        with pytest.raises(SystemExit) as exit_:
            main(["push", "--broker", url, "--key", str(keys[0]), "--kid", "k", "--text", "t", *bad])
        err = capsys.readouterr().err
        assert exit_.value.code == EXIT_USAGE and len(err.strip().splitlines()) == 1, (bad, err)
        assert err.startswith("village county push: ")
    assert "--ttl" in err or "Mars/Olympus" in err
    for bad in (["--volume", "101"], ["--at", "tomorrow"], ["--at", "+2h", "--until", "+1h"]):
        rc = main(["push", "--broker", url, "--key", str(keys[0]), "--kid", "k", "--to", "box:x", "--text", "t",
                   *bad])
        err = capsys.readouterr().err
        assert rc == EXIT_USAGE and len(err.strip().splitlines()) == 1, (bad, err)
    big = tmp_path / "big.mp3"
    big.write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    rc = main(["push", "--broker", url, "--key", str(keys[0]), "--kid", "k", "--to", "box:x", "--audio", str(big)])
    assert rc == EXIT_ERROR and "limit" in capsys.readouterr().err


def test_ttl_limit_matches_the_box() -> None:
    from agent.commands import MAX_LIFETIME_S

    assert MAX_TTL_S == MAX_LIFETIME_S


def test_board_keeps_the_real_state_over_a_duplicate_replay() -> None:
    from county.console import Message

    board = ReceiptBoard("c1", ["group:g", "box:a"], T)

    def receipt(seq: int, state: str, reason: str | None = None) -> Message:
        data = {"cmd": "c1", "state": state, **({"reason": reason} if reason else {})}
        return Message(T.up("a", MsgClass.RECEIPT, "cmd"),
                       Envelope("a", seq, 1000 + seq, MsgClass.RECEIPT, "cmd", data).encode(), False)

    board.feed(receipt(1, "received"))
    board.feed(receipt(2, "rejected", "replay"))  # the same command via the group topic
    board.feed(receipt(3, "scheduled"))
    assert (board.rows["a"].state, board.rows["a"].reason) == ("scheduled", None)
    board.feed(receipt(4, "started"))
    board.feed(receipt(3, "scheduled"))  # an at-least-once resend of an older receipt changes nothing
    assert board.rows["a"].state == "started"
    assert board.all_good


def test_watch_json_prints_envelopes_verbatim(broker: Mosquitto, collector: Collector) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "county", "watch", "--json", "--count", "3",
                             "--broker", broker.url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"watching" in proc.stderr.readline()  # subscribed
        sent = [
            Envelope("box-a", 1, 1_763_900_000_123, MsgClass.ALARM, "sos",
                     {"wearer": "W1", "device": "8800000015", "pos": None, "pos_stale": True, "raw": "[3G*...]"}
                     ).encode(),
            # not compact, with unicode: still printed byte for byte
            '{"v": 1, "id": "box-b:7", "box": "box-b", "seq": 7, "ts": 1, "class": "event", "kind": "camera", '
            '"data": {"note": "摄像头离线"}}'.encode(),
            b'not even json',
        ]
        collector.publish(T.state("box-a"), b'{"state":"online"}', retain=True)  # not an up message: not shown
        for i, payload in enumerate(sent):
            collector.publish(T.up("box-a", MsgClass.EVENT, f"k{i}"), payload)
        out, _err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out == b"".join(p + b"\n" for p in sent)


def test_watch_human(broker: Mosquitto, collector: Collector) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "county", "watch", "--count", "1",
                             "--broker", broker.url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"watching" in proc.stderr.readline()
        env = Envelope("box-a", 42, 1_763_900_000_123, MsgClass.ALARM, "sos", {"wearer": "W1"})
        collector.publish(T.up("box-a", MsgClass.ALARM, "sos"), env.encode())
        out, _err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = out.decode().strip()
    assert "box-a  alarm/sos  #42" in line and '{"wearer":"W1"}' in line


def test_status_and_fences_are_wired(capsys: pytest.CaptureFixture[str]) -> None:
    from county.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["status", "--broker", "mqtt://h:1"]).cmd == "status"
    assert parser.parse_args(["fences", "--broker", "mqtt://h:1", "--key", "k", "--kid", "k", "--to", "box:a",
                              "--file", "f.geojson", "--assign", "W1=f1,f2"]).cmd == "fences"


def test_watch_json_with_state_wraps_state_lines(broker: Mosquitto, collector: Collector) -> None:
    """--json stays one JSON document per line: envelopes byte for byte, state payloads wrapped (not envelopes)."""
    online = b'{"state":"online","ts":1763900000,"version":"1.0","groups":["town-menglou"]}'
    collector.publish(T.state("box-a"), online, retain=True)
    collector.publish(T.state("box-z"), b"\xffnot json", retain=True)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "county", "watch", "--json", "--state",
                             "--count", "3", "--broker", broker.url], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"watching" in proc.stderr.readline()
        env = Envelope("box-a", 1, 1_763_900_000_123, MsgClass.ALARM, "sos", {"wearer": "W1"}).encode()
        collector.publish(T.up("box-a", MsgClass.ALARM, "sos"), env)
        out, _err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    lines = out.splitlines()
    assert env in lines  # the envelope exactly as received
    states = sorted((json.loads(line) for line in lines if line != env), key=lambda d: d["state_topic"])
    assert states == [
        {"state_topic": T.state("box-a"), "state": json.loads(online)},
        {"state_topic": T.state("box-z"), "state": None, "raw": "\ufffdnot json"},
    ]


class GatedStdout:
    """A stdout whose writes block until the test opens the gate: a terminal that stopped reading."""

    def __init__(self) -> None:
        self.buffer = self
        self.data = bytearray()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, b: bytes) -> int:
        self.entered.set()
        assert self.gate.wait(20)
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("as_json", [False, True])
def test_watch_counts_and_reports_what_a_full_queue_drops(broker: Mosquitto, collector: Collector, as_json: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from county import cli
    from county.console import CountyClient

    clients: list[CountyClient] = []

    class TinyQueueClient(CountyClient):  # the real client, holding 2 messages instead of 100,000
        def __init__(self, spec: Any, **kw: Any) -> None:
            super().__init__(spec, max_queued=2, **kw)
            clients.append(self)

    monkeypatch.setattr(cli, "CountyClient", TinyQueueClient)
    out, err = GatedStdout(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    rc: list[int] = []
    argv = ["watch", "--count", "3", "--broker", broker.url] + (["--json"] if as_json else [])
    watcher = threading.Thread(target=lambda: rc.append(main(argv)), name="county.watch")
    watcher.start()
    try:
        wait_until(lambda: "watching" in err.getvalue())
        envs = [Envelope("box-a", i, 1_763_900_000_000 + i, MsgClass.EVENT, "k", {"i": i}).encode()
                for i in range(1, 11)]
        collector.publish(T.up("box-a", MsgClass.EVENT, "k"), envs[0])
        assert out.entered.wait(10)  # the watcher is stuck writing message 1
        for payload in envs[1:]:
            collector.publish(T.up("box-a", MsgClass.EVENT, "k"), payload)
        wait_until(lambda: clients[0].dropped == 7)  # 2 and 3 are held, 4..10 are dropped (one publisher: in order)
    finally:
        out.gate.set()
        watcher.join(20)
    assert not watcher.is_alive() and rc == [EXIT_OK]
    lines = bytes(out.data).splitlines()
    if as_json:  # stdout stays envelopes only
        assert lines == envs[:3]
    else:
        assert [b"#1 " in lines[0], b"#2 " in lines[2], b"#3 " in lines[3]] == [True, True, True]
        assert lines[1].startswith(b"(console: 7 message(s) dropped")
        assert len(lines) == 4
    assert "7 message(s) dropped in all (the queue holds 2)" in err.getvalue()


# ------------------------------------------------------------------------------------- times and the county's zone
def _tomorrow_1800(zone: str) -> tuple[str, int]:
    import datetime as dt
    from zoneinfo import ZoneInfo

    day = dt.datetime.now(ZoneInfo(zone)).date() + dt.timedelta(days=1)
    return f"{day}T18:00", int(dt.datetime(day.year, day.month, day.day, 18, 0, tzinfo=ZoneInfo(zone)).timestamp())


def _county(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "county", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_at_without_offset_is_beijing_time_on_a_utc_machine(broker: Mosquitto, keys: Any,
                                                            village: list[FakeBox]) -> None:
    """The console machine says TZ=UTC; `--at 18:00` still means 18:00 in the villages (Asia/Shanghai)."""
    env = {k: v for k, v in os.environ.items() if k != "VILLAGE_TZ"} | {"TZ": "UTC"}
    at, expected = _tomorrow_1800("Asia/Shanghai")
    done = _county("push", *base(broker, keys, "box:box-a"), "--text", "开会", "--at", at, "--until", f"{at}:30+08:00",
                   env=env)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: village[0].got)
    data = village[0].got[0][1]["data"]
    assert data["start"] == expected and data["end"] == expected + 30
    # what it resolved to, before sending: local (the county's) and UTC
    day = at[:10]
    assert f"start {day} 18:00:00 CST (Asia/Shanghai) = {day} 10:00:00 UTC" in done.stderr
    assert f"end   {day} 18:00:30 CST (Asia/Shanghai) = {day} 10:00:30 UTC" in done.stderr
    # --tz, then $VILLAGE_TZ, name another county's zone
    at_b, expected_b = _tomorrow_1800("Europe/Berlin")
    done = _county("push", *base(broker, keys, "box:box-b"), "--text", "x", "--at", at_b, "--tz", "Europe/Berlin",
                   env=env)
    assert done.returncode == 0, done.stderr
    done = _county("push", *base(broker, keys, "box:box-b"), "--text", "x", "--at", at_b,
                   env=env | {"VILLAGE_TZ": "Europe/Berlin"})
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(village[1].got) == 2)
    assert [g[1]["data"]["start"] for g in village[1].got] == [expected_b, expected_b]


def test_parse_time_reads_naive_times_in_the_given_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    from county import push

    sh = ZoneInfo("Asia/Shanghai")
    ten_utc = int(dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC).timestamp())
    assert push.parse_time("2026-12-01T18:00", 0, sh) == ten_utc
    assert push.parse_time("2026-12-01 18:00:00", 0, sh) == ten_utc
    assert push.parse_time("2026-12-01T18:00Z", 0, sh) == ten_utc + 8 * 3600
    assert push.parse_time("2026-12-01T18:00+01:00", 0, sh) == ten_utc + 7 * 3600
    assert push.parse_time("+30m", 1000.0, sh) == 2800 and push.parse_time("now", 1000.5, sh) == 1000
    monkeypatch.delenv("VILLAGE_TZ", raising=False)
    assert push.zone().key == "Asia/Shanghai"
    monkeypatch.setenv("VILLAGE_TZ", "UTC")
    assert push.zone().key == "UTC" and push.zone("Asia/Shanghai").key == "Asia/Shanghai"
    assert [push.parse_duration(t) for t in ("90", "90s", "30m", "+2h", "1d", "1.5h")] == [
        90, 90, 1800, 7200, 86400, 5400]


def test_a_start_already_past_is_refused_unless_forced(broker: Mosquitto, keys: Any, village: list[FakeBox],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "box:box-a"), "--text", "t", "--at", "2026-01-05T08:00"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_USAGE and len(err) == 1
    assert "--at 2026-01-05T08:00 is 2026-01-05 08:00:00 CST (Asia/Shanghai) = 2026-01-05 00:00:00 UTC" in err[0]
    assert "ago; nothing sent (--force sends it anyway)" in err[0]
    rc = main(["push", *base(broker, keys, "box:box-a"), "--text", "t", "--until", "2026-01-05T08:00"])
    assert rc == EXIT_USAGE and "--until 2026-01-05T08:00 is" in capsys.readouterr().err
    rc = main(["push", *base(broker, keys, "box:box-a"), "--text", "late", "--at", "2026-01-05T08:00", "--force"])
    assert rc == EXIT_OK
    assert "(past: --force)" in capsys.readouterr().err
    wait_until(lambda: village[0].got)
    assert [(g[1]["data"]["text"], g[1]["data"]["start"]) for g in village[0].got] == [("late", 1_767_571_200)]


def test_ttl_takes_durations(broker: Mosquitto, keys: Any, village: list[FakeBox]) -> None:
    for ttl, seconds in (("30m", 1800), ("1d", 86400), ("+2h", 7200), ("600", 600)):
        assert main(["push", *base(broker, keys, "box:box-a"), "--text", ttl, "--ttl", ttl]) == EXIT_OK
        wait_until(lambda: any(g[1]["data"]["text"] == ttl for g in village[0].got))  # noqa: B023
        payload = next(g[1] for g in village[0].got if g[1]["data"]["text"] == ttl)
        assert payload["exp"] - payload["iat"] == seconds


# ------------------------------------------------------------------------------------- who will hear it
def test_a_push_no_box_will_hear_is_refused(broker: Mosquitto, keys: Any, village: list[FakeBox],
                                            collector: Collector, capsys: pytest.CaptureFixture[str]) -> None:
    sniff = Collector(broker.url, topics=["vc/v1/group/+/cmd", "vc/v1/box/+/cmd"]).start()
    try:
        for to, says in ((["group:twon-menglou"], "no known box answers to group:twon-menglou"),
                         (["group:town-menglou", "box:box-x"], "no known box answers to box:box-x")):
            rc = main(["push", *base(broker, keys, *to), "--text", "t", "--wait", "5"])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == EXIT_UNHEARD and len(err) == 1, err
            assert says in err[0] and "town-menglou, zone-2" in err[0] and "nothing sent" in err[0]
        rc = main(["cancel", *base(broker, keys, "group:nobody"), "--all"])
        assert rc == EXIT_UNHEARD and "group:nobody" in capsys.readouterr().err
        # nothing reached a cmd topic: a marker sent after the refusals is the first thing there
        collector.publish(T.group_cmd("twon-menglou"), b"marker")
        sniff.wait_for(lambda msgs: msgs)
        assert [m.payload for m in sniff.snapshot()] == [b"marker"]
    finally:
        sniff.stop()
    assert all(not b.got for b in village)


def test_no_box_known_at_all(broker: Mosquitto, keys: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["push", *base(broker, keys, "group:town-menglou"), "--text", "t"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EXIT_UNHEARD and len(err) == 1
    assert "no box is known on this broker" in err[0] and "--prefix" in err[0]


def test_wait_returns_when_every_box_is_final_and_shows_progress(broker: Mosquitto, keys: Any, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    boxes = [FakeBox(broker.url, "box-f1", ["town-f"], keys[1], answer=("received", "started", "finished")),
             FakeBox(broker.url, "box-f2", ["town-f"], keys[1], answer=("received", "rejected"))]
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(main(
        ["push", *base(broker, keys, "group:town-f"), "--text", "t", "--id", "f-1", "--wait", "600"])))
    try:
        t.start()
        t.join(60)  # a bound for a broken build only: the answer comes at once, not after 600 s
        assert not t.is_alive()
    finally:
        for b in boxes:
            b.stop()
    out = capsys.readouterr()
    assert rc == [EXIT_UNANSWERED]  # one box rejected
    rows = {line.split()[0]: line.split()[1:3] for line in out.out.splitlines()[1:]}
    assert rows["box-f1"][0] == "finished" and rows["box-f2"] == ["rejected", "expired"] and len(rows) == 2
    err = out.err.splitlines()
    assert "village county push: waiting up to 600 s for 2 box(es): box-f1, box-f2" in err
    assert any(line.startswith("village county push: box-f1 playing: ") for line in err)  # states in words
    assert any("box-f2 rejected: expired (expired): " in line for line in err)
    assert err[-1] == "village county push: every box reached a final state: 2 of 2 box(es) answered, 2 final"


def test_board_knows_boxes_from_retained_states() -> None:
    from county.console import Message

    board = ReceiptBoard("c1", ["group:g", "box:a", "box:z"], T)
    assert board.unheard() == ["group:g", "box:a", "box:z"]
    board.feed(Message(T.state("a"), b'{"state":"offline","groups":["g"]}', True))
    board.feed(Message(T.state("b"), b'{"state":"online","groups":["g","h"]}', True))
    assert board.unheard() == ["box:z"] and set(board.rows) == {"a", "b", "z"}
    board.feed(Message(T.state("a"), b"", True))  # its retained state was cleared: gone
    assert board.unheard() == ["box:a", "box:z"]
    assert not board.all_final
