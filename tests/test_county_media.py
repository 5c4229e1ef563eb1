"""The compose page's server side (county/server/routes_media.py, county/media.py, county/targets.py) through
the real app on SQLite and PostgreSQL, with the real espeak-ng, ffprobe and ffmpeg: the spoken preview, an
upload checked by probing and re-encoded to fit the box limit (then broadcast and verified at the box side),
refusals of what is not audio, CAP 1.2 drafts, the target picker agreeing with the signer, `repeat` carried
into the signed command (also through review), and a receipt's `at` on the board."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.protocol import jws
from county import media, push
from county.store.tables import messages
from tests.conftest import in_ci
from tests.county_api import (  # noqa: F401 - the `env` and `review_env` fixtures
    KID,
    NOW_MS,
    Env,
    box_side,
    env_fixture,
    review_env_fixture,
    wait_messages,
)

TOOLS = ("espeak-ng", "ffmpeg", "ffprobe")
# the media routes store nothing: their tests run on SQLite only (the session is the only row they read)
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        why = f"{', '.join(missing)} not installed (./scripts/test installs them)"
        if in_ci():
            pytest.fail(f"{why}; CI=true needs it", pytrace=False)
        pytest.skip(why)


def tone(path: Path, seconds: float, *args: str) -> bytes:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", *args, str(path)], check=True, timeout=60)
    return path.read_bytes()


def ffprobe(data: bytes, tmp: Path) -> dict[str, Any]:
    f = tmp / "probe.bin"
    f.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(f)],
                         capture_output=True, check=True, timeout=30).stdout
    return dict(json.loads(out))


# ------------------------------------------------------------------------------------------ preview
@SQLITE_ONLY
async def test_preview_is_spoken_mandarin_as_ogg_opus(env: Env, tmp_path: Path) -> None:
    r = await env.post("operator", "/api/v1/media/tts-preview", {"text": "明天上午九点停水，请提前储水。"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/ogg" and r.headers["cache-control"] == "no-store"
    info = ffprobe(r.content, tmp_path)
    assert info["streams"][0]["codec_name"] == "opus"
    assert float(info["format"]["duration"]) > 1.0  # fourteen characters are spoken, not a blip
    for body, status in (({"text": ""}, 400), ({"text": 5}, 400), ({"text": "长" * 2001}, 413)):
        r = await env.post("operator", "/api/v1/media/tts-preview", body)
        assert r.status_code == status, (body, r.text)
    r = await env.post("viewer", "/api/v1/media/tts-preview", {"text": "你好"})
    assert r.status_code == 403


# ------------------------------------------------------------------------------------------ upload
@SQLITE_ONLY
async def test_small_upload_is_kept_and_broadcast_as_is(env: Env, tmp_path: Path) -> None:
    wav = tone(tmp_path / "a.wav", 1.0, "-ac", "1", "-ar", "16000")
    r = await env.client.post("/api/v1/media/audio", content=wav,
                              headers={**env.auth("operator"), "Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["audio_mime"], out["reencoded"], out["bytes"]) == ("audio/wav", False, len(wav))
    assert base64.b64decode(out["audio_b64"]) == wav and out["sha256"] == hashlib.sha256(wav).hexdigest()
    assert abs(out["duration_s"] - 1.0) < 0.05 and out["source"]["format"] == "wav"
    box = box_side(env.broker)
    try:
        r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "audio_b64": out["audio_b64"],
                                                              "audio_mime": out["audio_mime"], "title": "铃声"})
        assert r.status_code == 201, r.text
        got = await wait_messages(box, 1)
    finally:
        box.stop()
    _h, cmd = jws.verify(got[0].payload, {KID: env.public_key})
    assert cmd["data"]["audio"]["sha256"] == out["sha256"]


@SQLITE_ONLY
async def test_large_upload_is_reencoded_to_fit_the_box_limit(env: Env, tmp_path: Path) -> None:
    huge = b"RIFF\x24\x00\x00\x00WAVE" + bytes(media.MAX_UPLOAD_BYTES)
    r = await env.client.post("/api/v1/media/audio", content=huge, headers={**env.auth("operator"),
                                                                           "Content-Type": "audio/wav"})
    assert r.status_code == 413 and "upload" in r.json()["detail"]
    mp3 = tone(tmp_path / "big.mp3", 60.0, "-ac", "2", "-b:a", "320k")  # 1 min, ~2.4 MB
    assert len(mp3) > push.MAX_AUDIO_BYTES
    r = await env.client.post("/api/v1/media/audio", content=mp3,
                              headers={**env.auth("operator"), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    out = r.json()
    data = base64.b64decode(out["audio_b64"])
    assert out["reencoded"] is True and out["audio_mime"] == "audio/ogg" and len(data) == out["bytes"]
    assert len(data) <= push.MAX_AUDIO_BYTES == out["limit_bytes"]
    info = ffprobe(data, tmp_path)
    assert info["streams"][0]["codec_name"] == "opus" and info["streams"][0]["channels"] == 1
    assert abs(float(info["format"]["duration"]) - 60) < 1 and abs(out["duration_s"] - 60) < 1
    assert out["source"]["format"] == "mp3" and abs(out["source"]["duration_s"] - 60) < 2
    assert out["kbps"] == media.MAX_KBPS  # a minute fits at the best bitrate
    # the JSON form takes a file too
    wav = tone(tmp_path / "s.wav", 0.5, "-ac", "1")
    r = await env.post("operator", "/api/v1/media/audio", {"audio_b64": base64.b64encode(wav).decode()})
    assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(wav).hexdigest()


@SQLITE_ONLY
async def test_audio_too_long_for_any_bitrate_says_how_much_fits(env: Env, tmp_path: Path) -> None:
    long = tone(tmp_path / "long.mp3", 2400.0, "-ac", "1", "-ar", "8000", "-b:a", "8k")  # 40 min
    r = await env.client.post("/api/v1/media/audio", content=long, headers={**env.auth("operator"),
                                                                           "Content-Type": "audio/mpeg"})
    assert r.status_code == 413, r.text
    assert r.json()["reason"] == "too_long" and "40.0 min" in r.json()["detail"] and "min fits" in r.json()["detail"]


@SQLITE_ONLY
async def test_what_is_not_audio_is_refused_before_and_by_probing(env: Env, tmp_path: Path) -> None:
    cases = {
        "text": b"just some words, not audio at all",
        "playlist": b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/x.mp3\n",  # never opened: refused on magic
        "fake wav": b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunkjunk" + bytes(64),
        "empty": b"",
    }
    for name, data in cases.items():
        r = await env.client.post("/api/v1/media/audio", content=data,
                                  headers={**env.auth("operator"), "Content-Type": "audio/wav"})
        assert r.status_code in (400, 415), (name, r.text)
        assert "\n" not in r.json()["detail"]
    r = await env.post("operator", "/api/v1/media/audio", {"audio_b64": "%%%"})
    assert r.status_code == 400
    r = await env.client.post("/api/v1/media/audio", content=b"x", headers={**env.auth("viewer"),
                                                                          "Content-Type": "audio/wav"})
    assert r.status_code == 403


# ------------------------------------------------------------------------------------------ CAP
CAP = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{ident}</identifier><sender>weather@menghai.gov.cn</sender>
  <sent>2026-12-01T15:00:00+08:00</sent><status>Actual</status><msgType>{kind}</msgType><scope>Public</scope>
  {refs}
  <info><language>zh-CN</language><event>暴雨</event><urgency>Immediate</urgency><severity>Severe</severity>
    <certainty>Likely</certainty><effective>2026-12-01T18:00:00+08:00</effective>
    <expires>2026-12-01T23:00:00+08:00</expires>
    <headline>暴雨橙色预警</headline><description>今晚有大暴雨。</description><instruction>请远离河道。</instruction>
  </info>
</alert>"""


async def test_cap_import_gives_the_compose_fields_in_local_time(env: Env) -> None:
    xml = CAP.format(ident="w-1", kind="Alert", refs="")
    r = await env.client.post("/api/v1/media/cap", content=xml.encode(),
                              headers={**env.auth("operator"), "Content-Type": "application/xml"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["class"], d["level"], d["title"]) == ("emergency", 2, "暴雨橙色预警")
    assert d["text"] == "暴雨橙色预警\n今晚有大暴雨。\n请远离河道。"
    assert (d["start"], d["end"], d["end_past"]) == ("2026-12-01T18:00", "2026-12-01T23:00", False)
    assert d["broadcast_id"].startswith("cap-") and d["cancels"] == []
    cancel = CAP.format(ident="w-2", kind="Cancel",
                        refs="<references>weather@menghai.gov.cn,w-1,2026-12-01T15:00:00+08:00</references>")
    r = await env.post("operator", "/api/v1/media/cap", {"xml": cancel})
    assert r.status_code == 200 and r.json()["cancels"] == [d["broadcast_id"]] and "text" not in r.json()
    evil = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><alert/>'
    r = await env.client.post("/api/v1/media/cap", content=evil.encode(),
                              headers={**env.auth("operator"), "Content-Type": "application/xml"})
    assert r.status_code == 422 and r.json()["reason"] == "bad_cap" and "DOCTYPE" in r.json()["detail"]
    # the web console asks in its own language (Accept-Language): the same refusal, its detail in words
    for lang, detail in (("zh-CN", "CAP：CAP 文档带有 DOCTYPE，已拒绝（不接受 DTD 和实体）"),
                         ("en", "CAP: CAP document has a DOCTYPE; refused (no DTDs or entities)")):
        r = await env.client.post("/api/v1/media/cap", content=evil.encode(),
                                  headers={**env.auth("operator"), "Content-Type": "application/xml",
                                           "Accept-Language": lang})
        assert r.status_code == 422 and r.json()["reason"] == "bad_cap" and r.json()["detail"] == detail, r.text
    r = await env.post("viewer", "/api/v1/media/cap", {"xml": xml})
    assert r.status_code == 403


# ------------------------------------------------------------------------------------------ targets
async def test_target_tree_is_the_users_scope_with_names_and_states(env: Env) -> None:
    r = await env.get("operator", "/api/v1/broadcast-targets")
    assert r.status_code == 200
    t = r.json()
    assert (t["id"], t["name"], t["kind"], t["boxes"]) == ("menghai", "勐海县", "county", 3)
    assert [c["name"] for c in t["children"]] == ["甲镇", "乙镇"]
    a1 = t["children"][0]["children"][0]["children"][0]
    assert a1 == {"id": "a1", "name": "甲一村委会", "kind": "box", "state": "online"}
    assert [b["id"] for b in t["unregistered"]] == ["stray-9"]
    r = await env.get("op-a", "/api/v1/broadcast-targets")
    assert r.json()["id"] == "town-a" and "unregistered" not in r.json()


async def test_picked_regions_resolve_to_the_boxes_the_signer_uses(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcast-targets", {"regions": ["town-a"], "boxes": ["b1"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["to"] == ["group:town-a", "box:b1"]  # the township's group reaches exactly its boxes
    assert [(b["box"], b["name"], b["township"]) for b in out["boxes"]] == [
        ("a1", "甲一村委会", "甲镇"), ("a2", "甲二村委会", "甲镇"), ("b1", "乙一村委会", "乙镇")]
    r = await env.post("operator", "/api/v1/broadcast-targets", {"regions": ["va1"]})
    assert r.json()["to"] == ["box:a1"]  # no group reaches only 甲一村
    created = await env.post("operator", "/api/v1/broadcasts", {"to": out["to"], "text": "通知"})
    assert created.status_code == 201 and created.json()["boxes"] == [b["box"] for b in out["boxes"]]
    r = await env.post("op-a", "/api/v1/broadcast-targets", {"regions": ["town-b"]})
    assert r.status_code == 403 and r.json()["outside_scope"] == ["b1"]
    for body in ({"regions": ["nowhere"]}, {"regions": []}, {"boxes": ["bad id!"]}, {"regions": "town-a"},
                 {"to": ["box:a1"]}):
        r = await env.post("operator", "/api/v1/broadcast-targets", body)
        assert r.status_code in (400, 422), (body, r.text)


# ------------------------------------------------------------------------------------------ repeat, board
async def test_repeat_is_checked_signed_in_the_county_zone_and_kept_through_review(review_env: Env) -> None:
    env = review_env
    box = box_side(env.broker)
    try:
        weekly = {"days": ["mon", "thu"], "at": "07:30", "from": "2026-12-01", "until": "2026-12-31"}
        r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "每周广播体操",
                                                              "repeat": weekly})
        assert r.status_code == 201 and r.json()["state"] == "awaiting_review", r.text
        bid = r.json()["id"]
        assert (await env.post("reviewer", f"/api/v1/broadcasts/{bid}/approve")).status_code == 200
        got = await wait_messages(box, 1)
    finally:
        box.stop()
    _h, cmd = jws.verify(got[0].payload, {KID: env.public_key})
    assert cmd["data"]["repeat"] == {**weekly, "tz": "Asia/Shanghai"}
    shown = (await env.get("operator", f"/api/v1/broadcasts/{bid}")).json()
    assert shown["repeat"] == {**weekly, "tz": "Asia/Shanghai"}
    for bad in ({"at": "25:00"}, {"days": ["someday"], "at": "07:00"}, {"at": "07:00", "colour": "red"}, "daily"):
        r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x", "repeat": bad})
        assert r.status_code == 400 and r.json()["detail"].startswith("repeat"), (bad, r.text)
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["box:a1"], "text": "x", "class": "emergency",
                                                          "repeat": {"at": "07:00"}})
    assert r.status_code == 400 and "emergency" in r.json()["detail"]


async def test_the_board_shows_what_the_latest_receipt_said(env: Env) -> None:
    r = await env.post("operator", "/api/v1/broadcasts", {"to": ["group:town-a"], "text": "通知",
                                                          "start": "2026-12-01T20:00"})
    bid = r.json()["id"]
    at = 1764590400  # 2026-12-01 20:00 in Asia/Shanghai
    for box, seq, data in (("a1", 7, {"cmd": bid, "state": "scheduled", "at": at}),
                           ("a2", 3, {"cmd": bid, "state": "rejected", "reason": "bad_data",
                                      "detail": "text\\nforged"})):
        env_id = f"{box}:{seq}"
        raw = json.dumps({"v": 1, "id": env_id, "box": box, "seq": seq, "ts": NOW_MS, "class": "receipt",
                          "kind": "cmd", "data": data})
        await env.insert(messages, {"id": env_id, "box": box, "seq": seq, "ts": NOW_MS, "class": "receipt",
                                    "kind": "cmd", "received": NOW_MS, "raw": raw})
        await _receipt(env, bid, box, data, env_id)
    board = {r["box"]: r for r in (await env.get("operator", f"/api/v1/broadcasts/{bid}")).json()["receipts"]}
    assert board["a1"]["state"] == "scheduled" and board["a1"]["extra"] == {"at": at}
    assert board["a2"]["reason"] == "bad_data" and board["a2"]["extra"] == {"detail": "text\\nforged"}


async def _receipt(env: Env, bid: str, box: str, data: dict[str, Any], env_id: str) -> None:
    from county.store.tables import receipts

    await env.insert(receipts, {"cmd": bid, "box": box, "state": data["state"], "reason": data.get("reason"),
                                "ts": NOW_MS, "envelope": env_id})



# ------------------------------------------------------------------------------------------ children
async def test_a_childs_output_reaches_a_log_line_escaped() -> None:
    rc, out, err = await media.run_child(["sh", "-c", "printf 'ok'; printf 'bad\\nINFO forged line\\033[31m' >&2; "
                                          "exit 3"])
    assert (rc, out) == (3, b"ok")
    assert "\n" not in err and "\x1b" not in err and "\\n" in err and "\\x1b" in err


async def test_a_child_past_its_limit_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(media.MediaError) as got:
        await media.run_child(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], limit_s=0.5)
    assert got.value.reason == "timeout" and got.value.status == 503
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped when the limit passed, not left running


# ------------------------------------------------------------------------------------------ described
def _matches(schema: dict[str, Any], real: dict[str, Any], name: str) -> None:
    props = set(schema["properties"])
    assert set(schema["required"]) <= set(real) <= props, (name, set(real) ^ props)


async def test_the_answers_are_as_openapi_describes_them(env: Env, tmp_path: Path) -> None:
    from county.server import openapi

    schemas = openapi.document()["components"]["schemas"]
    wav = tone(tmp_path / "d.wav", 0.3, "-ac", "1")
    r = await env.post("operator", "/api/v1/media/audio", {"audio_b64": base64.b64encode(wav).decode()})
    _matches(schemas["AudioFitted"], r.json(), "AudioFitted")
    _matches(schemas["AudioFitted"]["properties"]["source"], r.json()["source"], "source")
    r = await env.post("operator", "/api/v1/media/cap", {"xml": CAP.format(ident="d-1", kind="Alert", refs="")})
    _matches(schemas["CapDraft"], r.json(), "CapDraft")
    r = await env.post("operator", "/api/v1/broadcast-targets", {"regions": ["town-a"]})
    _matches(schemas["TargetsResolved"], r.json(), "TargetsResolved")
    tree = (await env.get("operator", "/api/v1/broadcast-targets")).json()
    node = schemas["TargetNode"]
    for n in (tree, tree["children"][0], tree["children"][0]["children"][0]["children"][0]):
        assert set(node["required"]) <= set(n) <= set(node["properties"]), n
