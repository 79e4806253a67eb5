from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusion.cli.main import main
from fusion.rescoring.report import ReportError, Trial, best_so_far, pareto_front, read_trials, write_report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BEST_TOML = """# tuned on dev by fusion tune
[search]
beam_size = 32

[weights]
lm = 0.75
word_bonus = 1.5
nlm = 0.3
"""


# -- fixtures: a tuning folder as fusion tune writes it ---------------------------------
def _trial(study: str, number: int, params: dict, wer: float | None, **extra: Any) -> dict:
    stage = "rescore" if study.startswith("rescore-") else "first_pass"
    row = {"study": study, "stage": stage, "number": number, "params": params, "wer": wer,
           "cer": None if wer is None else wer / 2, "audio_seconds": 100.0,
           "decode_seconds": 2.0, "state": "complete"}
    row.update(extra)
    return row


def _grid_wer(lm: float, bonus: float) -> float:
    return round(30 + 20 * (lm - 0.75) ** 2 + 3 * (bonus - 1.5) ** 2, 3)


def trial_rows() -> list[dict]:
    rng = np.random.default_rng(7)
    rows = [_trial("grid", n, {"lm": lm, "word_bonus": wb, "beam_size": 16}, _grid_wer(lm, wb))
            for n, (lm, wb) in enumerate(itertools.product((0.25, 0.5, 0.75, 1.0), (0.5, 1.5, 2.5)))]
    for study in ("random", "tpe"):
        for n in range(6):
            lm, wb = float(rng.uniform(0, 1.2)), float(rng.uniform(0, 3))
            rows.append(_trial(study, n, {"lm": lm, "word_bonus": wb}, _grid_wer(lm, wb)))
    rows.append(_trial("tpe", 6, {"lm": 9.0, "word_bonus": 0.0}, float("inf"), state="failed",
                       error="<b>decoder crashed</b> & died"))          # as fusion tune logs it
    for study in ("rescore-grid", "rescore-random", "rescore-tpe"):
        for n in range(5):
            params = {"nlm": 0.1 * n, "hmm": 0.2, "length": 0.5, "lm": 0.75, "acoustic": 1.0}
            rows.append(_trial(study, n, params, 28.0 - 0.3 * n + (study == "rescore-tpe")))
    return rows


def summary_obj() -> dict:
    return {
        "first_pass": {"best": {"study": "grid", "params": {"lm": 0.75, "word_bonus": 1.5},
                                "wer": 30.0},
                       "studies": {"grid": {"trials": 12, "best_wer": 30.0},
                                   "random": {"trials": 6, "best_wer": 30.4},
                                   "tpe": {"trials": 7, "best_wer": 30.2}},
                       "bayes_gap_to_grid": 0.667, "bayes_trial_fraction": None},
        "rescore": {"best": {"study": "rescore-grid", "params": {"nlm": 0.4}, "wer": 26.8},
                    "studies": {"rescore-grid": {"trials": 5, "best_wer": 26.8}}},
        "beam_sweep": [{"beam_size": b, "wer": w, "cer": w / 2, "throughput": t}
                       for b, w, t in ((4, 34.0, 400.0), (8, 31.0, 200.0), (16, 30.0, 90.0),
                                       (32, 30.5, 40.0), (64, 29.8, 15.0))],
        "oracle_wer": 18.5,
        "oracle_cer": 9.25,
        "dev": "corpus/dev.jsonl",
    }


def fusion_obj() -> dict:
    rows = []
    for split, base in (("test", 60.0), ("test-unseen-voices", 75.0), ("real-speech", 90.0)):
        for k, system in enumerate(("greedy", "+ ngram", "+ neural LM", "+ rescoring", "+ HMM")):
            wer = base - 5 * k
            rows.append({"split": split, "system": system, "wer": wer,
                         "wer_ci": [wer - 2, wer + 2.5], "cer": wer / 2})
    return {"rows": rows, "summary": {"relative_wer_reduction_unseen_voices": 26.7,
                                      "bayes_gap_to_grid": 0.7, "bayes_trial_fraction": 0.25}}


@pytest.fixture
def tune_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tune"
    d.mkdir()
    lines = [json.dumps(r) for r in trial_rows()]
    # a run killed mid-write leaves half a line at the end
    (d / "trials.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:25], encoding="utf-8")
    (d / "summary.json").write_text(json.dumps(summary_obj()), encoding="utf-8")
    (d / "best.toml").write_text(BEST_TOML, encoding="utf-8")
    return d


@pytest.fixture
def fusion_json(tmp_path: Path) -> Path:
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps(fusion_obj()), encoding="utf-8")
    return path


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


# -- pure helpers -----------------------------------------------------------------------
def test_pareto_front_keeps_only_undominated_points():
    points = [(10.0, 30.0), (100.0, 40.0), (50.0, 35.0), (50.0, 45.0), (20.0, 38.0), (5.0, 30.0)]
    assert pareto_front(points) == [(10.0, 30.0), (50.0, 35.0), (100.0, 40.0)]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 2.0)]) == [(1.0, 2.0)]


def test_best_so_far_ignores_failed_trials_and_sorts_by_number():
    trials = [Trial("tpe", "first_pass", 2, {}, wer=31.0), Trial("tpe", "first_pass", 0, {}, wer=33.0),
              Trial("tpe", "first_pass", 1, {}, state="failed", error="x"),
              Trial("tpe", "first_pass", 3, {}, wer=32.0)]
    assert best_so_far(trials) == ([0, 2, 3], [33.0, 31.0, 31.0])


def test_read_trials_skips_a_truncated_last_line_only(tmp_path: Path):
    good = json.dumps(trial_rows()[0])
    path = tmp_path / "trials.jsonl"
    path.write_text(f"{good}\n{good}\n{good[:10]}", encoding="utf-8")
    trials, truncated = read_trials(path)
    assert len(trials) == 2 and truncated
    assert trials[0].params == {"lm": 0.25, "word_bonus": 0.5, "beam_size": 16}
    assert trials[0].throughput == pytest.approx(50.0)

    path.write_text(f"{good}\n{good}\n", encoding="utf-8")
    assert read_trials(path)[1] is False

    path.write_text(f"{good}\n{good[:10]}\n{good}\n", encoding="utf-8")
    with pytest.raises(ReportError, match=":2: not JSON"):
        read_trials(path)

    path.write_text(json.dumps({"study": "grid", "stage": "decode", "number": 0, "params": {}}))
    with pytest.raises(ReportError, match="stage"):
        read_trials(path)


# -- the report -------------------------------------------------------------------------
def test_full_report_has_every_plot_and_table(tune_dir: Path, fusion_json: Path, tmp_path: Path):
    out = tmp_path / "report"
    index = write_report(tune_dir, out, fusion_json=fusion_json,
                         decoder_json=REPO / "benchmarks" / "results" / "decoder.json")
    assert index == out / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in ("heatmap", "pareto", "ablation", "history"):
        assert _is_png(out / f"{name}.png")
        assert f'<figure id="{name}"><img src="data:image/png;base64,' in page
    assert page.count("<img ") == 4
    assert "<script" not in page.lower()
    # best.toml verbatim (escaped), the failed trial's error escaped, never raw
    assert "<pre># tuned on dev by fusion tune\n[search]\nbeam_size = 32\n" in page
    assert "&lt;b&gt;decoder crashed&lt;/b&gt; &amp; died" in page
    assert "<b>decoder crashed" not in page
    # summary numbers and per-study best params
    assert "N-best oracle WER %" in page and "18.50" in page
    assert "oracle_cer</td><td class=\"num\">9.25" in page
    assert "First pass: bayes_gap_to_grid" in page
    assert "corpus/dev.jsonl" in page
    assert "the truncated last line was skipped" in page
    assert "lm=0.750, word_bonus=1.500" in page          # the grid optimum
    assert "rescore-tpe" in page and "nlm=" in page
    assert "bayes_trial_fraction" in page
    # the test split's most accurate point is on the front, whichever decoder it is
    rows = json.loads((REPO / "benchmarks" / "results" / "decoder.json").read_text())["rows"]
    top = min((r for r in rows if r["split"] == "test" and r["throughput"]), key=lambda r: r["wer"])
    assert (f"<td>test: decoder benchmark</td><td>{top['decoder']} / {top['lm']}</td>"
            f"<td class=\"num\">{top['beam']}</td>") in page
    assert "Not in this report" not in page


def test_missing_inputs_are_named_not_fatal(tmp_path: Path):
    d = tmp_path / "tune"
    d.mkdir()
    (d / "best.toml").write_text(BEST_TOML, encoding="utf-8")
    index = write_report(d, tmp_path / "out")
    page = index.read_text(encoding="utf-8")
    assert "Not in this report" in page
    for what in ("trials.jsonl", "summary.json", "ablation benchmark", "decoder benchmark",
                 "beam sweep", "rescoring stage"):
        assert what in page
    assert "<img " not in page
    assert not list((tmp_path / "out").glob("*.png"))
    assert "word_bonus = 1.5" in page


def test_first_pass_only_run(tmp_path: Path):
    d = tmp_path / "tune"
    d.mkdir()
    rows = [r for r in trial_rows() if r["stage"] == "first_pass"]
    (d / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = summary_obj()
    del summary["rescore"], summary["beam_sweep"]
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    page = write_report(d, tmp_path / "out").read_text(encoding="utf-8")
    assert "Missing: the rescoring stage" in page
    assert "Missing: best.toml" in page
    assert 'id="heatmap"' in page and 'id="history"' in page and 'id="pareto"' not in page


def test_bad_inputs_raise(tune_dir: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        write_report(tune_dir, tmp_path / "out", fusion_json=tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"split": "test"}]}), encoding="utf-8")
    with pytest.raises(ReportError, match="rows\\[0\\]"):
        write_report(tune_dir, tmp_path / "out", fusion_json=bad)


def test_cli_report(tune_dir: Path, fusion_json: Path, tmp_path: Path, capsys):
    out = tmp_path / "r"
    assert main(["report", str(tune_dir), "-o", str(out), "--fusion-json", str(fusion_json)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert _is_png(out / "ablation.png")
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "no such tuning folder" in capsys.readouterr().err


# -- rendering in headless Chromium ---------------------------------------------------------
def _chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe: JSON messages,
    each ended by a NUL byte, written to its fd 3 and read from its fd 4."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: its fd 3 reads, fd 4 writes
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds, close_fds=False)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + self.timeout
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def render(self, url: str) -> tuple[list[dict], list[str]]:
        """Open ``url`` in a new tab; its images (complete, naturalWidth, naturalHeight, alt)
        and every console error, uncaught exception or failed load, as text."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        start = len(self.events)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        images = self.send("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images).map(i => "
                          "({complete: i.complete, width: i.naturalWidth, "
                          "height: i.naturalHeight, alt: i.alt})))",
            "returnByValue": True}, session=session)["result"]["value"]
        self.send("Target.closeTarget", {"targetId": target})
        errors = []
        for event in self.events[start:]:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [str(a.get("value", a.get("description"))) for a in params.get("args", [])]
                errors.append("console: " + " ".join(args))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return json.loads(images), errors

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory):
    binary = _chromium_binary()
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium')")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        browser.send("Browser.getVersion")
        yield browser
    finally:
        browser.close()


def test_chromium_harness_sees_errors_and_broken_images(chromium: Chromium, tmp_path: Path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png" alt="gone">'
                    '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    images, errors = chromium.render(page.as_uri())
    assert images == [{"complete": True, "width": 0, "height": 0, "alt": "gone"}]
    assert any("boom" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)


def test_report_renders_in_chromium(chromium: Chromium, tune_dir: Path, fusion_json: Path,
                                    tmp_path: Path):
    index = write_report(tune_dir, tmp_path / "report", fusion_json=fusion_json,
                         decoder_json=REPO / "benchmarks" / "results" / "decoder.json")
    images, errors = chromium.render(index.as_uri())
    assert errors == []
    assert len(images) == 4
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100, image
