"""`village sim run` in a real terminal (tmux panes: real ptys) in Chinese and English, at 80x24 and 160x48.

Four runs of one short scenario at once, each in its own tmux pane of the given size. Every screen captured
while they run (and the final one) is checked: nothing left untranslated (no English words in the Chinese
run beyond ids, codes in parentheses and units; no Chinese and no raw snake_case codes in the English one),
no field running into the next, no line wider than the terminal. After the run the final frame (kept on
screen above the summary) and the summary agree on every camera's and broadcast's state, and the summary
names cameras and broadcasts by their scenario names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import i18n
from tests.conftest import REPO, in_ci

pytestmark = pytest.mark.timeout(240)

NAMES = {
    "zh": {"box": "小村村委会", "w1": "在家的奶奶", "w2": "放牛的大爷", "cam1": "村口", "cam2": "学校",
           "title": "早间广播", "desc": "小村演练"},
    "en": {"box": "Hill hamlet office", "w1": "grandma at home", "w2": "the herdsman", "cam1": "village gate",
           "cam2": "school", "title": "Morning news", "desc": "Hill hamlet rehearsal"},
}
CAM1, CAM2 = "42068200001320000011", "42068200001320000012"
IDS = ("box-pty-1", "W1", "W2", CAM1, CAM2, "bc-morning", "fence-1")


def scenario(lang: str) -> str:
    n = NAMES[lang]
    return f'''
[scenario]
name = "pty-{lang}"
description = "{n['desc']}"
seed = 5
duration_s = 90
speed = 15
tick_s = 10
drain_s = 30

[box]
id = "box-pty-1"
name = "{n['box']}"
heartbeat_s = 30
camera_interval_s = 10

[[fence]]
id = "fence-1"
center = [21.95, 101.25]
radius_m = 300

[[wearer]]
id = "W1"
device = "8800000001"
label = "{n['w1']}"
path = [[21.9500, 101.2500]]
speed_m_s = 0.0
fences = ["fence-1"]

[[wearer]]
id = "W2"
device = "8800000002"
label = "{n['w2']}"
path = [[21.9500, 101.2500], [21.9501, 101.2502]]
speed_m_s = 0.2
battery_pct = 30
fences = ["fence-1"]

[[camera]]
id = "{CAM1}"
name = "{n['cam1']}"

[[camera]]
id = "{CAM2}"
name = "{n['cam2']}"

[[at]]
t_s = 10
do = "broadcast"
id = "bc-morning"
title = "{n['title']}"
text = "各位村民早上好。"

[[at]]
t_s = 20
do = "sos"
wearer = "W1"

[[at]]
t_s = 30
do = "camera"
camera = "{CAM2}"
mode = "unreachable"

[[expect]]
kind = "sos"
wearer = "W1"
count = 1
'''


CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
# labels of the dashboard's fields: each must start a line or follow a space/border, never run into a value
LABELS = {"zh": ("4G 链路", "积压", "功放", "代理程序", "县里收到", "佩戴者", "发生了什么"),
          "en": ("4G link", "backlog", "amplifier", "agent ", "county received", "wearers", "what happened")}
BORDER = " │┃|║─═╭╮╰╯┏┓┗┛(（[«「"


class Tmux:
    def __init__(self, tmp: Path) -> None:
        self.sock = str(tmp / "tmux.sock")
        conf = tmp / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 10000\nset -g status off\n")
        self.conf = str(conf)

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, "-f", self.conf, *args], check=True, capture_output=True,
                              text=True).stdout

    def dead(self, pane: str) -> bool:
        return self("display-message", "-p", "-t", pane, "#{pane_dead}").strip() == "1"

    @staticmethod
    def _strip(text: str) -> tuple[str, str]:
        """tmux's own "Pane is dead (status N, date)" line out of a capture; and N."""
        m = re.search(r"^Pane is dead \(status (\d+).*$", text, re.M)
        return (text[:m.start()] + text[m.end():], m[1]) if m else (text, "")

    def screen(self, pane: str) -> str:
        return self._strip(self("capture-pane", "-p", "-t", pane))[0]

    def history(self, pane: str) -> tuple[str, str]:
        return self._strip(self("capture-pane", "-p", "-S", "-", "-E", "-", "-t", pane))

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True)


def quote(lang: str, title: str) -> str:
    return f"《{title}》" if lang == "zh" else f"«{title}»"


def untranslated(lang: str, text: str) -> list[str]:
    n = NAMES[lang]
    rest = text
    for name in n.values():
        rest = rest.replace(name, " ")
    for token in IDS:
        rest = rest.replace(token, " ")
    rest = re.sub(r"/\S+", " ", rest)  # the timeline's path
    rest = re.sub(r"\((?:[a-z_]+|\d[^)]*)\)", " ", rest)  # a code beside its words: (unreachable), (W1)
    if lang == "zh":
        rest = re.sub(r"\b(?:MQTT|SOS|4G|mosquitto|amqtt|x\d+|\d+(?:\.\d+)?(?:%|s|ms)?)\b", " ", rest)
        return re.findall(r"[A-Za-z]{2,}", rest)
    found = CJK.findall(rest)
    found += re.findall(r"\b[a-z]+_[a-z_]+\b", rest)  # a raw code where words belong
    return found


def run_together(lang: str, screen: str) -> list[str]:
    bad = []
    for line in screen.splitlines():
        if line.startswith(("场景 ", "Scenario ")):
            break  # the summary: sentences from here on, not the dashboard's fields
        if re.match(r"^[\s│┃|]*(?:\d+:)?\d\d:\d\d ", line) or line.startswith(" "):
            continue  # a log entry or a summary detail: sentences, not fields
        for label in LABELS[lang]:
            for m in re.finditer(re.escape(label), line):
                if m.start() > 0 and line[m.start() - 1] not in BORDER:
                    bad.append(line)
    return bad


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, int], dict[str, object]]:
    if shutil.which("tmux") is None:
        why = "tmux is not installed (scripts/test installs it)"
        if in_ci():
            pytest.fail(f"{why}; CI=true needs it", pytrace=False)
        pytest.skip(why)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("pty")
    tmux = Tmux(tmp)
    cases = [(lang, w, h) for lang in ("zh", "en") for (w, h) in ((80, 24), (160, 48))] + [PLAIN]
    panes: dict[tuple[str, int, int], str] = {}
    status_files: dict[tuple[str, int, int], Path] = {}
    try:
        for lang, w, h in cases:
            file = tmp / f"{lang}.toml"
            file.write_text(scenario(lang), encoding="utf-8")
            plain = (lang, w, h) == PLAIN
            name = f"{lang}{w}" + ("plain" if plain else "")
            cmd = (f"cd {REPO} && env -u VILLAGE_LANG LANG=C.UTF-8 LC_ALL=C.UTF-8 PYTHONIOENCODING=utf-8 "
                   f"{sys.executable} -m agent.cli sim run --lang {lang} --scenario {file} --no-county "
                   f"--timeline {tmp / name}.jsonl --workdir {tmp / name}" + (" --no-live" if plain else "")
                   + f"; echo $? > {tmp / name}.status")  # tmux's own pane_dead_status is not always there yet
            status_files[(lang, w, h)] = tmp / f"{name}.status"
            tmux("new-session", "-d", "-s", name, "-x", str(w), "-y", str(h), cmd)
            panes[(lang, w, h)] = f"{name}:0.0"
        frames: dict[tuple[str, int, int], list[str]] = {c: [] for c in cases}
        done: dict[tuple[str, int, int], str] = {}
        deadline = time.monotonic() + 200
        while len(done) < len(cases):
            assert time.monotonic() < deadline, (f"the runs did not end: {sorted(set(cases) - set(done))}",
                                                 {c: frames[c][-1] for c in set(cases) - set(done)})
            for case, pane in panes.items():
                if case in done:
                    continue
                dead = tmux.dead(pane)
                screen = tmux.screen(pane)
                if not frames[case] or frames[case][-1] != screen:
                    frames[case].append(screen)
                said = status_files[case].read_text().strip() if status_files[case].exists() else ""
                if dead and said:
                    done[case] = said
            time.sleep(0.2)  # the polling period: what is checked is every captured screen, not when it came
        out: dict[tuple[str, int, int], dict[str, object]] = {}
        for case, pane in panes.items():
            history, _said = tmux.history(pane)
            out[case] = {"status": done[case], "frames": frames[case], "history": history}
        return out
    finally:
        tmux.kill()


CASES = [("zh", 80, 24), ("zh", 160, 48), ("en", 80, 24), ("en", 160, 48)]
PLAIN = ("zh", 200, 40)  # the fifth pane: --no-live, plain lines (wide: no line wraps)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CASES])
def test_every_frame_is_translated_fits_and_keeps_fields_apart(runs: dict, case: tuple[str, int, int]) -> None:
    lang, width, _height = case
    run = runs[case]
    assert run["status"] == "0", run["history"]
    frames = run["frames"]
    assert len(frames) >= 3, frames  # the dashboard was drawn, redrawn and left
    dashboards = [f for f in frames if LABELS[lang][0] in f]
    assert dashboards, frames[-1]
    for frame in frames:
        assert not untranslated(lang, frame), (untranslated(lang, frame), frame)
        assert not run_together(lang, frame), (run_together(lang, frame), frame)
        assert all(i18n.width(line) <= width for line in frame.splitlines()), frame
    for frame in dashboards:
        head = "\n".join(frame.splitlines()[:3])
        assert "…" not in head, frame  # the header's fields are never cut


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CASES])
def test_the_final_frame_and_the_summary_agree_and_name_things(runs: dict, case: tuple[str, int, int]) -> None:
    lang = case[0]
    n = NAMES[lang]
    history = runs[case]["history"].splitlines()
    start = next(i for i, line in enumerate(history) if line.startswith(("场景 ", "Scenario ")))
    final, summary = history[:start], history[start:]
    text = "\n".join(summary)
    assert not untranslated(lang, text), untranslated(lang, text)
    for name in (n["cam1"], n["cam2"], quote(lang, n["title"]), n["w1"], n["desc"]):
        assert name in text, (name, text)
    # the summary's final states, by name, are what the final frame shows for that name
    cams_at = next(i for i, line in enumerate(summary) if line.startswith(("摄像头", "Cameras")))
    for name, cam in ((n["cam1"], CAM1), (n["cam2"], CAM2), (quote(lang, n["title"]), "bc-morning")):
        line = next(line for line in summary[cams_at:] if f"{name} ({cam})" in line)
        state = re.split(r"[:：]\s?", line.split(f"({cam})", 1)[1], maxsplit=1)[1].split("  [")[0].strip()
        assert state, line
        shown = [row for row in final[-60:] if name in row and not re.search(r"\d\d:\d\d", row)]  # not the log
        assert shown and state.split(" (")[0] in shown[-1], (name, state, shown, "\n".join(final[-30:]))
    if lang == "zh":
        assert "离线：连不上 (unreachable)" in text  # the camera went dark: its reason in words with the code
    else:
        assert "offline: unreachable (unreachable)" in text
    # the counts the last frame shows are the summary's
    frame_counts = next(row for row in reversed(final) if row.lstrip(" │").startswith(("县里收到", "county received"))
                        or ("县里收到" in row or "county received" in row))
    summary_counts = next(line for line in summary if line.startswith(("县里收到", "County received")))
    numbers = lambda text: sorted(int(n) for n in re.findall(r"(?<![\d.:/])(\d+)(?![\d.:/%])", text))  # noqa: E731
    assert numbers(frame_counts.split("县里收到")[-1].split("county received")[-1]) == \
        numbers(summary_counts.split("（")[0].split(" (")[0]), (frame_counts, summary_counts)


def test_plain_lines_come_in_time_order(runs: dict) -> None:
    history = runs[PLAIN]["history"]
    assert runs[PLAIN]["status"] == "0", history
    stamps = [m for m in re.findall(r"^\[(\d+):(\d\d)\] ", history, re.M)]
    times = [int(a) * 60 + int(b) for a, b in stamps]
    assert len(times) >= 8, history
    assert times == sorted(times), history
    assert not untranslated("zh", history), untranslated("zh", history)
    for phrase in ("场景：在家的奶奶 按下 SOS", "县里：报警 SOS 求救：在家的奶奶",
                   "县里：摄像头 学校：离线：连不上 (unreachable)"):
        assert phrase in history, history

