"""A static HTML report of a tuning run (``fusion report``).

Reads what ``fusion tune`` leaves in its output folder, and optionally the benchmark
JSONs, and writes ``index.html`` with four plots (also saved as PNGs beside it):

- the grid study's first-pass WER over LM weight x word bonus (heat map),
- WER against throughput across beam sizes, with the Pareto front,
- the per-scorer ablation (WER bars with bootstrap 95% intervals, grouped by split),
- the tuning history: best-so-far WER against trial number, one line per study.

Inputs (every one optional; the page says what is missing)::

    TUNE_DIR/trials.jsonl   one trial a line: study, stage, number, params, wer, cer,
                            audio_seconds, decode_seconds, state, error (a truncated last
                            line, from a killed run, is skipped)
    TUNE_DIR/summary.json   first_pass / rescore: {best, studies}, beam_sweep, oracle_wer, dev
    TUNE_DIR/best.toml      the tuned decoding config, shown verbatim
    fusion_json             the ablation benchmark: {"rows": [{split, system, wer, wer_ci, cer}]}
    decoder_json            the decoder benchmark: {"rows": [{split, decoder, lm, beam, wer,
                            throughput, ...}]}

The page is self-contained (the PNGs are embedded as base64) and has no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from fusion.core.manifest import atomic_write

__all__ = ["ReportError", "Trial", "best_so_far", "pareto_front", "read_trials", "write_report"]

STAGES = ("first_pass", "rescore")
STAGE_TITLES = {"first_pass": "First pass", "rescore": "Rescoring"}
STUDY_ORDER = ("grid", "random", "tpe")
PLOT_DPI = 100


class ReportError(ValueError):
    """A tuning folder or benchmark file that cannot be read as documented."""


# -- inputs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One line of ``trials.jsonl``. ``wer``/``cer`` are percent; None when failed."""

    study: str
    stage: str
    number: int
    params: dict[str, Any]
    wer: float | None = None
    cer: float | None = None
    audio_seconds: float | None = None
    decode_seconds: float | None = None
    state: str = "complete"
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.state == "complete" and self.wer is not None

    @property
    def method(self) -> str:
        """The search method without the stage prefix: ``rescore-tpe`` -> ``tpe``."""
        return self.study.removeprefix("rescore-")

    @property
    def throughput(self) -> float | None:
        """Seconds of audio decoded per wall-clock second."""
        if self.audio_seconds is None or not self.decode_seconds:
            return None
        return self.audio_seconds / self.decode_seconds

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> Trial:
        if not isinstance(obj, dict):
            raise ReportError(f"{where}: a trial must be a JSON object")
        missing = [k for k in ("study", "stage", "number", "params") if k not in obj]
        if missing:
            raise ReportError(f"{where}: trial lacks {missing}")
        if not isinstance(obj["study"], str) or obj["stage"] not in STAGES:
            raise ReportError(f"{where}: 'study' must be a string and 'stage' one of {STAGES}")
        if not isinstance(obj["params"], dict) or not isinstance(obj["number"], int):
            raise ReportError(f"{where}: 'params' must be an object and 'number' an integer")

        def number(key: str) -> float | None:
            value = obj.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportError(f"{where}: {key!r} must be a number, not {value!r}")
            return float(value) if math.isfinite(value) else None

        error = obj.get("error")
        return cls(study=obj["study"], stage=obj["stage"], number=obj["number"],
                   params=dict(obj["params"]), wer=number("wer"), cer=number("cer"),
                   audio_seconds=number("audio_seconds"), decode_seconds=number("decode_seconds"),
                   state=str(obj.get("state", "complete")),
                   error=None if error is None else str(error))


def read_trials(path: str | Path) -> tuple[list[Trial], bool]:
    """The trials of a ``trials.jsonl`` and whether a truncated last line was skipped.

    Only the last line may be unreadable (a run killed mid-write); a bad line elsewhere
    is an error.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    trials: list[Trial] = []
    truncated = False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                truncated = True
                break
            raise ReportError(f"{path}:{lineno}: not JSON ({exc.msg}); only the last line "
                              "may be truncated") from None
        trials.append(Trial.from_dict(obj, f"{path}:{lineno}"))
    return trials, truncated


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: {what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: {what} must hold a JSON object")
    return data


def _rows(data: dict[str, Any], path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise ReportError(f"{path}: expected a 'rows' list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(k not in row for k in required):
            raise ReportError(f"{path}: rows[{i}] needs the keys {list(required)}")
    return rows


# -- pure helpers -----------------------------------------------------------------------
def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (throughput, wer) points no other point beats on both (higher throughput, lower
    WER), sorted by throughput."""
    front: list[tuple[float, float]] = []
    for tp, wer in sorted(set(points), key=lambda p: (-p[0], p[1])):
        if not front or wer < front[-1][1]:
            front.append((tp, wer))
    return front[::-1]


def best_so_far(trials: Iterable[Trial]) -> tuple[list[int], list[float]]:
    """Trial numbers and the lowest WER of the complete trials up to each, in trial order."""
    numbers, best = [], []
    current = math.inf
    for t in sorted(trials, key=lambda t: t.number):
        if not t.complete:
            continue
        current = min(current, t.wer)  # type: ignore[type-var]
        numbers.append(t.number)
        best.append(current)
    return numbers, best


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v, 3)}" for k, v in sorted(params.items()))


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))


def _study_key(name: str) -> tuple[int, str]:
    method = name.removeprefix("rescore-")
    return (STUDY_ORDER.index(method) if method in STUDY_ORDER else len(STUDY_ORDER), name)


# -- plots ------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, metadata={"Software": None})
    return buf.getvalue()


def plot_heatmap(trials: Sequence[Trial]) -> tuple[bytes | None, str]:
    """WER over LM weight x word bonus of the first-pass grid study; the best WER over any
    other parameter (e.g. beam size) per cell."""
    grid = [t for t in trials if t.stage == "first_pass" and t.study == "grid" and t.complete
            and isinstance(t.params.get("lm"), (int, float))
            and isinstance(t.params.get("word_bonus"), (int, float))]
    if not grid:
        return None, "no complete first-pass grid trials with 'lm' and 'word_bonus' parameters"
    lms = sorted({float(t.params["lm"]) for t in grid})
    bonuses = sorted({float(t.params["word_bonus"]) for t in grid})
    wer = np.full((len(bonuses), len(lms)), np.nan)
    for t in grid:
        i, j = bonuses.index(float(t.params["word_bonus"])), lms.index(float(t.params["lm"]))
        wer[i, j] = t.wer if np.isnan(wer[i, j]) else min(wer[i, j], t.wer)
    others = sorted({k for t in grid for k in t.params} - {"lm", "word_bonus"})
    fig = _figure(max(4.5, 0.75 * len(lms) + 2.5), max(3.5, 0.5 * len(bonuses) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(wer), cmap="viridis_r", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label="WER %")
    ax.set_xticks(range(len(lms)), [_fmt(v, 3) for v in lms])
    ax.set_yticks(range(len(bonuses)), [_fmt(v, 3) for v in bonuses])
    ax.set_xlabel("LM weight")
    ax.set_ylabel("word bonus")
    lo, hi = np.nanmin(wer), np.nanmax(wer)
    if len(lms) * len(bonuses) <= 225:
        for (i, j), value in np.ndenumerate(wer):
            if np.isfinite(value):
                dark = hi > lo and (value - lo) / (hi - lo) > 0.5
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    bi, bj = np.unravel_index(np.nanargmin(wer), wer.shape)
    ax.add_patch(Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    title = f"first-pass grid: best {wer[bi, bj]:.2f}% at lm={_fmt(lms[bj], 3)}, " \
            f"word_bonus={_fmt(bonuses[bi], 3)}"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    note = f"{len(grid)} complete grid trials; the red box marks the best cell."
    if others:
        note += f" Each cell is the lowest WER over {', '.join(others)}."
    return _png(fig), note


def _pareto_panels(summary: dict[str, Any], decoder_rows: Sequence[dict[str, Any]] | None
                   ) -> list[tuple[str, dict[str, list[tuple[float, float, Any]]]]]:
    """Panels of series: [(title, {label: [(throughput, wer, beam)]})]."""
    panels = []
    sweep = summary.get("beam_sweep")
    if isinstance(sweep, list):
        points = [(float(r["throughput"]), float(r["wer"]), r.get("beam_size")) for r in sweep
                  if isinstance(r, dict) and isinstance(r.get("throughput"), (int, float))
                  and isinstance(r.get("wer"), (int, float)) and r["throughput"] > 0]
        if points:
            panels.append(("dev: tuned weights, beam sweep", {"tuned": points}))
    for split in sorted({str(r["split"]) for r in decoder_rows or ()}):
        series: dict[str, list[tuple[float, float, Any]]] = {}
        for r in decoder_rows or ():
            if str(r["split"]) != split or not isinstance(r.get("throughput"), (int, float)) \
                    or r["throughput"] <= 0 or not isinstance(r.get("wer"), (int, float)):
                continue
            label = " / ".join(str(x) for x in (r["decoder"], r.get("lm")) if x)
            series.setdefault(label, []).append((float(r["throughput"]), float(r["wer"]),
                                                 r.get("beam")))
        if series:
            panels.append((f"{split}: decoder benchmark", series))
    return panels


def plot_pareto(summary: dict[str, Any], decoder_rows: Sequence[dict[str, Any]] | None
                ) -> tuple[bytes | None, str, list[list[Any]]]:
    """WER against throughput, one panel per source, with each panel's Pareto front.
    Also the front's points as table rows: source, series, beam, throughput, WER."""
    panels = _pareto_panels(summary, decoder_rows)
    if not panels:
        return None, "no beam sweep in summary.json and no decoder benchmark rows", []
    cols, rows = min(2, len(panels)), math.ceil(len(panels) / 2)
    fig = _figure(6.0 * cols, 4.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fronts = []
    for ax, (title, series) in zip(axes, panels):
        for label, points in sorted(series.items()):
            points = sorted(points, key=lambda p: p[0])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4,
                    linewidth=1, label=label)
            if len(series) == 1:
                for tp, wer, beam in points:
                    if beam is not None:
                        ax.annotate(f"beam {beam}", (tp, wer), textcoords="offset points",
                                    xytext=(4, 4), fontsize=7)
        front = pareto_front((p[0], p[1]) for pts in series.values() for p in pts)
        where = {(p[0], p[1]): (label, p[2]) for label, pts in sorted(series.items()) for p in pts}
        fronts += [[title, *where[p], *p] for p in front]
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="black",
                linewidth=1.2, marker="s", markerfacecolor="none", markersize=8, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("throughput (audio s per wall s)")
        ax.set_ylabel("WER %")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    note = "Lower right is better; the dashed line joins the Pareto-optimal points."
    if decoder_rows:
        note += " Decoder benchmark: one series per decoder and LM."
    return _png(fig), note, fronts


def plot_ablation(rows: Sequence[dict[str, Any]]) -> tuple[bytes | None, str]:
    """WER bars per system, grouped by split, with the bootstrap interval as error bars."""
    rows = [r for r in rows if isinstance(r.get("wer"), (int, float))]
    if not rows:
        return None, "no ablation rows with a WER"
    splits = list(dict.fromkeys(str(r["split"]) for r in rows))
    systems = list(dict.fromkeys(str(r["system"]) for r in rows))
    width = 0.8 / len(systems)
    fig = _figure(max(6.0, 1.1 * len(splits) * len(systems) ** 0.5 + 4), 4.4)
    ax = fig.add_subplot()
    for k, system in enumerate(systems):
        xs, ys, err = [], [], [[], []]
        for s, split in enumerate(splits):
            row = next((r for r in rows if str(r["split"]) == split and str(r["system"]) == system),
                       None)
            if row is None:
                continue
            xs.append(s - 0.4 + width * (k + 0.5))
            ys.append(float(row["wer"]))
            ci = row.get("wer_ci")
            ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
                isinstance(c, (int, float)) for c in ci)
            err[0].append(max(0.0, row["wer"] - ci[0]) if ok else 0.0)
            err[1].append(max(0.0, ci[1] - row["wer"]) if ok else 0.0)
        ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=3, label=system)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("WER %")
    ax.set_title("ablation: WER per system (error bars: 95% bootstrap interval)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(len(systems), 3))
    fig.tight_layout()
    return _png(fig), "Systems in the benchmark's order; each adds one knowledge source."


def plot_history(trials: Sequence[Trial]) -> tuple[bytes | None, str]:
    """Best-so-far WER against trial number, one line per study, one panel per stage."""
    stages = [s for s in STAGES if any(t.stage == s and t.complete for t in trials)]
    if not stages:
        return None, "no complete trials"
    fig = _figure(5.2 * len(stages), 4.2)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        mine = [t for t in trials if t.stage == stage]
        for study in sorted({t.study for t in mine}, key=_study_key):
            ts = [t for t in mine if t.study == study]
            numbers, best = best_so_far(ts)
            if not numbers:
                continue
            line, = ax.step(numbers, best, where="post", linewidth=1.5,
                            label=f"{ts[0].method} ({len(numbers)})")
            done = [t for t in ts if t.complete]
            ax.scatter([t.number for t in done], [t.wer for t in done], s=8, alpha=0.3,
                       color=line.get_color())
        grid = [t.wer for t in mine if t.method == "grid" and t.complete]
        if grid:
            ax.axhline(min(grid) * 1.02, color="grey", linestyle=":", linewidth=1,
                       label="grid best + 2%")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial number")
        ax.set_ylabel("best WER so far %")
        ax.set_title(STAGE_TITLES[stage], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig), "Lines: best-so-far WER; dots: each trial (legend: complete trials)."


# -- HTML -------------------------------------------------------------------------------
_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 0.5em 0 1.5em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .missing { font-size: 0.9em; color: #555; }
.missing { font-style: italic; }
"""


@dataclass
class _Page:
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def heading(self, text: str, level: int = 2) -> None:
        self.add(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.add(f"<p{attr}>{html.escape(text)}</p>")

    def lack(self, text: str) -> None:
        self.missing.append(text)
        self.para(f"Missing: {text}.", cls="missing")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        for row in rows:
            cells = []
            for value in row:
                cls = ' class="num"' if isinstance(value, (int, float)) and value is not None else ""
                cells.append(f"<td{cls}>{html.escape(_fmt(value))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        self.add("\n".join(out))

    def figure(self, png: bytes, name: str, alt: str, caption: str) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.add(f'<figure id="{name}"><img src="data:image/png;base64,{data}" '
                 f'alt="{html.escape(alt)}"><figcaption>{html.escape(caption)} '
                 f'(also <a href="{name}.png">{name}.png</a>)</figcaption></figure>')


def _stage_tables(page: _Page, stage: str, trials: Sequence[Trial], summary: dict[str, Any]
                  ) -> None:
    title = STAGE_TITLES[stage]
    page.heading(title, 3)
    info = summary.get(stage) if isinstance(summary.get(stage), dict) else {}
    best = info.get("best") if isinstance(info.get("best"), dict) else None
    if best:
        params = best.get("params") if isinstance(best.get("params"), dict) else {}
        page.para(f"Best overall (summary.json): study {_fmt(best.get('study'))}, "
                  f"WER {_fmt(best.get('wer'))}%, {_fmt_params(params) or 'no parameters'}.")
    studies_info = info.get("studies") if isinstance(info.get("studies"), dict) else {}
    mine = [t for t in trials if t.stage == stage]
    names = sorted({t.study for t in mine} | set(studies_info), key=_study_key)
    if not names:
        page.lack(f"{title.lower()} trials and summary")
        return
    rows = []
    for name in names:
        ts = [t for t in mine if t.study == name]
        done = [t for t in ts if t.complete]
        top = min(done, key=lambda t: (t.wer, t.number)) if done else None
        s = studies_info.get(name) if isinstance(studies_info.get(name), dict) else {}
        rows.append([name, len(done) if ts else s.get("trials"), len(ts) - len(done) if ts else None,
                     top.wer if top else s.get("best_wer"), top.cer if top else None,
                     top.number if top else None, _fmt_params(top.params) if top else None])
    page.table(["study", "complete trials", "failed", "best WER %", "CER %", "trial", "params"], rows)


def _trial_failures(page: _Page, trials: Sequence[Trial]) -> None:
    failed = [t for t in trials if not t.complete]
    if not failed:
        return
    page.heading(f"Failed trials ({len(failed)})", 3)
    page.table(["study", "trial", "params", "error"],
               [[t.study, t.number, _fmt_params(t.params), t.error or t.state] for t in failed[:50]])
    if len(failed) > 50:
        page.para(f"… and {len(failed) - 50} more (see trials.jsonl).")


def write_report(tune_dir: str | Path, out_dir: str | Path, *, fusion_json: str | Path | None = None,
                 decoder_json: str | Path | None = None) -> Path:
    """Write ``out_dir/index.html`` (and the plots as PNGs) from a ``fusion tune`` folder
    and, optionally, the ablation and decoder benchmark JSONs. Returns the page's path."""
    tune_dir, out_dir = Path(tune_dir), Path(out_dir)
    if not tune_dir.is_dir():
        raise FileNotFoundError(f"{tune_dir}: no such tuning folder")
    for path in (fusion_json, decoder_json):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    page = _Page()

    trials_path = tune_dir / "trials.jsonl"
    trials, truncated = read_trials(trials_path) if trials_path.is_file() else ([], False)
    summary_path = tune_dir / "summary.json"
    summary = _read_json(summary_path, "summary.json") if summary_path.is_file() else {}
    toml_path = tune_dir / "best.toml"
    best_toml = toml_path.read_text(encoding="utf-8", errors="replace") \
        if toml_path.is_file() else None
    ablation = None
    if fusion_json is not None:
        data = _read_json(Path(fusion_json), "the ablation benchmark")
        ablation = (_rows(data, Path(fusion_json), ("split", "system", "wer")), data.get("summary"))
    decoder_rows = None
    if decoder_json is not None:
        decoder_rows = _rows(_read_json(Path(decoder_json), "the decoder benchmark"), Path(decoder_json),
                             ("split", "decoder", "wer", "throughput"))

    page.add(f"<h1>Tuning report: {html.escape(tune_dir.name or str(tune_dir))}</h1>")
    page.para(f"Tuning folder: {tune_dir.resolve()}")

    # summary numbers
    page.heading("Summary")
    if not trials_path.is_file():
        page.lack("trials.jsonl (no trial log)")
    if not summary_path.is_file():
        page.lack("summary.json")
    rows: list[list[Any]] = []
    if "dev" in summary:
        rows.append(["dev manifest", summary["dev"]])
    for stage in STAGES:
        mine = [t for t in trials if t.stage == stage]
        if mine:
            done = [t for t in mine if t.complete]
            rows.append([f"{STAGE_TITLES[stage]} trials (complete / failed)",
                         f"{len(done)} / {len(mine) - len(done)}"])
        best = summary.get(stage, {}).get("best") if isinstance(summary.get(stage), dict) else None
        if isinstance(best, dict) and best.get("wer") is not None:
            rows.append([f"{STAGE_TITLES[stage]} best WER %", best["wer"]])
        if isinstance(summary.get(stage), dict):   # any other numbers, e.g. bayes_gap_to_grid
            rows += [[f"{STAGE_TITLES[stage]}: {k}", v] for k, v in summary[stage].items()
                     if k not in ("best", "studies") and _scalar(v)]
    if "oracle_wer" in summary:
        rows.append(["N-best oracle WER %", summary["oracle_wer"]
                     if summary["oracle_wer"] is not None else "not measured"])
    elif summary:
        page.lack("oracle WER (no 'oracle_wer' in summary.json)")
    rows += [[k, v] for k, v in summary.items()
             if k not in ("dev", "oracle_wer", "beam_sweep", *STAGES) and _scalar(v)]
    if truncated:
        rows.append(["trials.jsonl", "the truncated last line was skipped"])
    if rows:
        page.table(["", "value"], rows)
    if ablation and isinstance(ablation[1], dict) and ablation[1]:
        page.heading("Ablation benchmark summary", 3)
        page.table(["key", "value"], [[k, v if isinstance(v, (int, float, str)) or v is None
                                       else json.dumps(v)] for k, v in ablation[1].items()])

    # per-study tables
    page.heading("Best parameters per study")
    for stage in STAGES:
        if stage == "rescore" and not any(t.stage == stage for t in trials) and stage not in summary:
            page.lack("the rescoring stage (no rescore trials or summary)")
            continue
        _stage_tables(page, stage, trials, summary)
    _trial_failures(page, trials)

    # plots
    plots: dict[str, bytes] = {}
    page.heading("WER over LM weight x word bonus")
    png, note = plot_heatmap(trials)
    if png:
        plots["heatmap"] = png
        page.figure(png, "heatmap", "heat map of first-pass WER over LM weight and word bonus", note)
    else:
        page.lack(note)

    page.heading("WER against throughput across beams")
    png, note, fronts = plot_pareto(summary, decoder_rows)
    if png:
        plots["pareto"] = png
        page.figure(png, "pareto", "WER against throughput with the Pareto front", note)
        page.heading("Pareto-optimal points", 3)
        page.table(["source", "series", "beam", "throughput (audio s / s)", "WER %"], fronts)
    else:
        page.lack(note)
    if "beam_sweep" not in summary:
        page.lack("beam sweep (no 'beam_sweep' in summary.json)")
    elif isinstance(summary["beam_sweep"], list) and summary["beam_sweep"]:
        page.heading("Beam sweep (dev)", 3)
        page.table(["beam size", "WER %", "CER %", "throughput (audio s / s)"],
                   [[r.get("beam_size"), r.get("wer"), r.get("cer"), r.get("throughput")]
                    for r in summary["beam_sweep"] if isinstance(r, dict)])
    if decoder_rows is None:
        page.lack("decoder benchmark (no --decoder-json given)")

    page.heading("Per-scorer ablation")
    if ablation is None:
        page.lack("ablation benchmark (no --fusion-json given)")
    else:
        png, note = plot_ablation(ablation[0])
        if png:
            plots["ablation"] = png
            page.figure(png, "ablation", "WER per system and split with 95% intervals", note)
        else:
            page.lack(note)
        page.table(["split", "system", "WER %", "95% interval", "CER %"],
                   [[r["split"], r["system"], r.get("wer"),
                     " – ".join(_fmt(c) for c in r["wer_ci"])
                     if isinstance(r.get("wer_ci"), (list, tuple)) else None, r.get("cer")]
                    for r in ablation[0]])

    page.heading("Tuning history")
    png, note = plot_history(trials)
    if png:
        plots["history"] = png
        page.figure(png, "history", "best-so-far WER against trial number per study", note)
    else:
        page.lack(note)

    page.heading("Tuned decoding config (best.toml)")
    if best_toml is None:
        page.lack("best.toml")
    else:
        page.add(f"<pre>{html.escape(best_toml)}</pre>")

    if page.missing:
        page.heading("Not in this report")
        page.add("<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in page.missing) + "</ul>")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        with atomic_write(out_dir / f"{name}.png", "wb") as fh:
            fh.write(png)
        (out_dir / f"{name}.png").chmod(0o644)  # atomic_write's temporary files are private
    index = out_dir / "index.html"
    with atomic_write(index) as fh:
        fh.write("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                 "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request, no console error
                 f"<title>{html.escape(f'asrfuse tuning report: {tune_dir.name}')}</title>\n"
                 f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(page.parts)
                 + "\n</body>\n</html>\n")
    index.chmod(0o644)
    return index
