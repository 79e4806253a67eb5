"""Alignment benchmark: word-boundary error against reference timings, and speed.

Test speech is synthesised by festival (voices ``kal_diphone``, ``ked_diphone``,
``cmu_us_slt_arctic_hts``), which reports the time of every segment it generates: a
word's reference start is the start of its first segment, its end the end of its last
(pauses belong to no word). Sentences are drawn, with a fixed seed, from the held-out
LM text (``$ASRFUSE_HOME/corpus/text/heldout.txt``); audio is kept at 16 kHz, untrimmed,
under ``$ASRFUSE_HOME/bench-align/``. The acoustic model (``--model``, default the
embedded one) computes posteriors, and each method aligns the true transcript:

``ctc``
    CTC's topology, ``torchaudio.functional.forced_align`` (``hmm.align``'s fast path).
``hmm``
    the hybrid HMM (``hmm.model.TiedDurationHMM``: token HMMs with self-loops, learned
    durations) whose tied loop probabilities are trained by EM; Viterbi alignment.

Each method is scored as it is, and calibrated (``hmm.timing.BoundaryCalibration``): a
CTC spike lags or leads the true boundary, so ``+ offset`` subtracts one constant shift
from word starts and one from word ends, ``+ context offsets`` one per context (first
word, last word, or the gap in frames to the neighbouring word: a word straight after
another starts well before its first spike, one after a pause does not), and ``+ context
and letter offsets`` adds one per word-initial / word-final letter (a final silent e
fires inside the sound before it, a stop at its release).

The sentences are split into a *dev* set and a *test* set (disjoint sentences). Everything
that is fitted is fitted on dev only: the HMM's EM, its blank policy and prior scale
(kappa), the calibrations, and the choice of the method the summary reports. Those
choices read dev errors out of sample (calibrations cross-fitted over five folds of dev,
so a calibration with more shifts is not favoured for fitting its own data). Only test
utterances are scored.

The error of a word boundary is ``|hypothesis - reference|``; every word has two (start,
end), pooled. Speed is audio seconds aligned per second of one CPU thread (posteriors
given; the acoustic model's own speed is reported apart).

    python benchmarks/bench_align.py [--model PATH] [--dev N] [--test N] [--seed S]

Writes benchmarks/results/align.json, align.md and align.png (``--results-dir``, ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
from common import header, table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "fusion" / "models" / "am-default" / "model.pt"
#: the calibration the HMM's settings are chosen with (and whose file is saved)
BEST_CALIBRATION = "context_and_letter_offsets"
SAMPLE_RATE = 16_000
#: festival voice name -> whether its rate can be jittered (Duration_Stretch)
VOICES: dict[str, bool] = {"kal_diphone": True, "ked_diphone": True, "cmu_us_slt_arctic_hts": False}


def asrfuse_home() -> Path:
    return Path(os.environ.get("ASRFUSE_HOME", Path.home() / ".cache" / "asrfuse"))


@dataclass(frozen=True)
class RefUtterance:
    """One synthesised sentence and its reference word timings (seconds)."""

    id: str
    text: str
    voice: str
    rate: float
    audio: str
    duration: float
    words: tuple[tuple[str, float, float], ...]

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "voice": self.voice, "rate": self.rate,
                "audio": self.audio, "duration": self.duration,
                "words": [list(w) for w in self.words]}

    @classmethod
    def from_dict(cls, d: dict) -> RefUtterance:
        return cls(d["id"], d["text"], d["voice"], float(d["rate"]), d["audio"], float(d["duration"]),
                   tuple((w, float(a), float(b)) for w, a, b in d["words"]))


# -- test speech ------------------------------------------------------------------------
def pick_sentences(path: Path, n: int, seed: int, min_words: int = 4, max_words: int = 25) -> list[str]:
    """``n`` distinct normalised sentences of ``min_words .. max_words`` words."""
    from fusion.core.text import normalize_text

    lines = sorted({normalize_text(s) for s in path.read_text(encoding="utf-8").splitlines()})
    lines = [s for s in lines if min_words <= len(s.split()) <= max_words]
    random.Random(seed).shuffle(lines)
    if len(lines) < n:
        raise SystemExit(f"{path}: only {len(lines)} usable sentences, {n} asked for")
    return lines[:n]


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_batch(voice: str, jobs: Sequence[tuple[str, str, float]], out_dir: Path) -> dict[str, list]:
    """Synthesise ``(id, text, rate)`` jobs with one festival process; returns each id's
    festival words ``[name, start, end]`` (seconds) and writes ``out_dir/<id>.raw.wav``."""
    lines = [f"(voice_{voice})"]
    for utt_id, text, rate in jobs:
        if VOICES[voice]:
            lines.append(f"(Parameter.set 'Duration_Stretch {1 / rate:.4f})")
        wav = out_dir / f"{utt_id}.raw.wav"
        lines.append(f"(set! utt (utt.synth (Utterance Text {_scheme_string(text)})))")
        lines.append(f'(utt.save.wave utt "{wav}" \'riff)')
        lines.append(f'(format t "UTT {utt_id}\\n")')
        lines.append('(mapcar (lambda (w) (format t "W %s %f %f\\n" (item.name w) '
                     '(item.feat w "word_start") (item.feat w "word_end"))) '
                     "(utt.relation.items utt 'Word))")
    with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        script = f.name
    try:
        proc = subprocess.run(["festival", "-b", script], capture_output=True, text=True, check=False,
                              timeout=60 + 10 * len(jobs))
    finally:
        os.unlink(script)
    words: dict[str, list] = {}
    current: list | None = None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["UTT"]:
            current = words.setdefault(parts[1], [])
        elif parts[:1] == ["W"] and current is not None and len(parts) == 4:
            current.append([parts[1], float(parts[2]), float(parts[3])])
    if not words:
        raise RuntimeError(f"festival ({voice}) produced nothing: {proc.stderr[-2000:]}")
    return words


def match_words(words: Sequence[str], festival: Sequence[list]) -> list | None:
    """Festival's words merged onto the transcript's (it splits ``king's`` into ``king``
    ``'s`` and ``tv`` into ``t`` ``v``): ``[word, start, end]`` each, or ``None`` when
    they do not spell the transcript."""
    def letters(w: str) -> str:
        return "".join(c for c in w.lower() if c.isalpha())

    out, i = [], 0
    for word in words:
        target, got, spans = letters(word), "", []
        while i < len(festival) and len(got) < len(target):
            got += letters(festival[i][0])
            if festival[i][2] > festival[i][1]:
                spans.append(festival[i][1:])
            i += 1
        if got != target or not spans:
            return None
        out.append([word, min(a for a, _ in spans), max(b for _, b in spans)])
    return out if i == len(festival) else None


def build_test_speech(cache: Path, sentences: Sequence[str], seed: int) -> tuple[list[RefUtterance], int]:
    """Synthesise every sentence (voice and rate drawn with ``seed``) into ``cache``;
    cached by content. Returns the utterances and how many were dropped because
    festival's words did not match the transcript's."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    key = hashlib.sha256(json.dumps([list(sentences), seed, sorted(VOICES)]).encode()).hexdigest()[:12]
    manifest = cache / f"refs-{key}.jsonl"
    if manifest.exists():
        lines = manifest.read_text().splitlines()
        dropped = json.loads(lines[0])["dropped"]
        return [RefUtterance.from_dict(json.loads(x)) for x in lines[1:]], dropped
    audio_dir = cache / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    jobs: dict[str, list[tuple[str, str, float]]] = {v: [] for v in VOICES}
    texts: dict[str, tuple[str, str, float]] = {}
    for i, text in enumerate(sentences):
        voice = rng.choice(sorted(VOICES))
        rate = round(rng.uniform(0.85, 1.15), 3) if VOICES[voice] else 1.0
        utt_id = f"align-{i:04d}-" + hashlib.sha1(f"{voice}|{rate}|{text}".encode()).hexdigest()[:8]
        jobs[voice].append((utt_id, text, rate))
        texts[utt_id] = (text, voice, rate)
    timings: dict[str, list] = {}
    for voice, vjobs in jobs.items():
        for k in range(0, len(vjobs), 50):
            print(f"festival {voice}: {k + len(vjobs[k:k + 50])}/{len(vjobs)}", file=sys.stderr)
            timings.update(festival_batch(voice, vjobs[k:k + 50], audio_dir))
    utts, dropped = [], 0
    for utt_id, (text, voice, rate) in texts.items():
        raw = audio_dir / f"{utt_id}.raw.wav"
        words = timings.get(utt_id, [])
        words = match_words(text.split(), words)
        if not raw.exists() or words is None:
            dropped += 1
            raw.unlink(missing_ok=True)
            continue
        data, sr = sf.read(raw, dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.mean(axis=1))
        if sr != SAMPLE_RATE:
            wav = AF.resample(wav, sr, SAMPLE_RATE)
        out = audio_dir / f"{utt_id}.wav"
        sf.write(out, wav.numpy(), SAMPLE_RATE, subtype="PCM_16")
        raw.unlink()
        utts.append(RefUtterance(utt_id, text, voice, rate, str(out), len(wav) / SAMPLE_RATE,
                                 tuple((w, a, b) for w, a, b in words)))
    manifest.write_text("\n".join([json.dumps({"dropped": dropped})]
                                  + [json.dumps(u.to_dict()) for u in utts]) + "\n")
    return utts, dropped


# -- posteriors ---------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def compute_all_posteriors(model_path: Path, utts: Sequence[RefUtterance]) -> tuple[dict, float, object]:
    """Posteriors of every utterance, the seconds the acoustic model took and its token
    table."""
    from fusion.am.infer import CTCModelAdapter, UtteranceError, compute_posteriors
    from fusion.am.model import load_model
    from fusion.core.manifest import Utterance

    adapter = CTCModelAdapter(load_model(model_path))
    start = time.perf_counter()
    out = {}
    for r in compute_posteriors([Utterance(u.id, u.audio, u.text, u.duration) for u in utts], adapter,
                                max_batch_seconds=60.0):
        if isinstance(r, UtteranceError):
            raise SystemExit(f"posteriors failed: {r}")
        out[r.utt_id] = r
    return out, time.perf_counter() - start, adapter.token_table


# -- alignment and errors -----------------------------------------------------------------
@dataclass
class Aligned:
    """The aligned words of some utterances and the seconds aligning took."""

    utts: list[RefUtterance]
    words: list[tuple]
    seconds: float

    @property
    def x_real_time(self) -> float:
        return sum(u.duration for u in self.utts) / self.seconds


@dataclass
class Errors:
    """Signed errors (ms) of word starts and ends, with each word's voice."""

    start: np.ndarray
    end: np.ndarray
    voice: np.ndarray

    def absolute(self, voice: str | None = None) -> np.ndarray:
        """Pooled absolute errors of starts and ends (of one voice's words)."""
        keep = slice(None) if voice is None else self.voice == voice
        return np.abs(np.r_[self.start[keep], self.end[keep]])


def align_all(utts: Sequence[RefUtterance], posteriors: dict, table: object, model: object = None) -> Aligned:
    """Align every utterance's transcript (``model``: the HMM path, else CTC's fast path)."""
    from hmm.align import align

    words, seconds = [], 0.0
    for u in utts:
        t0 = time.perf_counter()
        result = align(posteriors[u.id], u.text, table, model=model)  # type: ignore[arg-type]
        seconds += time.perf_counter() - t0
        if len(result.words) != len(u.words):
            raise RuntimeError(f"{u.id}: {len(result.words)} aligned words, {len(u.words)} reference")
        words.append(result.words)
    return Aligned(list(utts), words, seconds)


def errors(aligned: Aligned, calibration: object = None) -> Errors:
    """Errors of the aligned words, after ``calibration`` (a
    :class:`hmm.timing.BoundaryCalibration`) when given."""
    starts, ends, voices = [], [], []
    for u, words in zip(aligned.utts, aligned.words):
        if calibration is not None:
            words = calibration.apply(words, u.duration)  # type: ignore[attr-defined]
        for hyp, (_, ref_start, ref_end) in zip(words, u.words):
            starts.append(1000 * (hyp.start - ref_start))
            ends.append(1000 * (hyp.end - ref_end))
            voices.append(u.voice)
    return Errors(np.array(starts), np.array(ends), np.array(voices))


def calibrations(dev: Aligned, frame_shift: float) -> dict[str, object]:
    """The method variants: no calibration, one constant start / end shift, shifts by
    context, and by context and letter (:mod:`hmm.timing`), all fitted on ``dev``."""
    from hmm.timing import POOLED, BoundaryCalibration

    refs = [[(a, b) for _, a, b in u.words] for u in dev.utts]
    by_context = BoundaryCalibration.fit(dev.words, refs, frame_shift, letter_min_count=None)
    by_letter = BoundaryCalibration.fit(dev.words, refs, frame_shift)
    constant = BoundaryCalibration.constant(frame_shift, by_context.start_shift[POOLED],
                                            by_context.end_shift[POOLED])
    return {"": None, " + offset": constant, " + context offsets": by_context,
            " + context and letter offsets": by_letter}


def cross_fitted_errors(dev: Aligned, frame_shift: float, folds: int = 5) -> dict[str, Errors]:
    """Each variant's errors on dev, out of sample: the dev utterances split into
    ``folds`` parts, each part calibrated by the variants fitted on the others."""
    parts: dict[str, list[Errors]] = {}
    for k in range(folds):
        held = [i % folds == k for i in range(len(dev.utts))]
        fit_on = Aligned([u for u, h in zip(dev.utts, held) if not h],
                         [w for w, h in zip(dev.words, held) if not h], 0.0)
        scored = Aligned([u for u, h in zip(dev.utts, held) if h],
                         [w for w, h in zip(dev.words, held) if h], 0.0)
        for name, cal in calibrations(fit_on, frame_shift).items():
            parts.setdefault(name, []).append(errors(scored, cal))
    return {name: Errors(*(np.concatenate([getattr(e, f) for e in errs]) for f in ("start", "end", "voice")))
            for name, errs in parts.items()}


def stats(abs_err: np.ndarray) -> dict:
    return {"median_ms": float(np.median(abs_err)), "p90_ms": float(np.percentile(abs_err, 90)),
            "mean_ms": float(abs_err.mean()), "within_40ms": float((abs_err <= 40).mean()),
            "boundaries": int(abs_err.size)}


def fit_hmm(dev_utts: Sequence[RefUtterance], posteriors: dict, table: object, kappa: float, blank: str,
            n_iter: int) -> object:
    """A :class:`hmm.model.TiedDurationHMM` trained by EM on the dev utterances (one state
    per character, self-loops; priors for kappa estimated on dev)."""
    from hmm.emissions import ScaledLikelihoods, estimate_priors
    from hmm.model import DurationConfig, TiedDurationHMM
    from hmm.topology import TopologyConfig

    dev_post = [posteriors[u.id] for u in dev_utts]
    priors = estimate_priors(dev_post) if kappa else None
    config = DurationConfig(topology=TopologyConfig(blank=blank), n_iter=n_iter)  # type: ignore[arg-type]
    model = TiedDurationHMM(table, ScaledLikelihoods(priors, kappa), config)  # type: ignore[arg-type]
    return model.fit(dev_post, [u.text for u in dev_utts])


def cdf_plot(path: Path, curves: dict[str, np.ndarray], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, err in curves.items():
        x = np.sort(err)
        ax.plot(x, np.arange(1, x.size + 1) / x.size, label=name)
    ax.axvline(40, color="grey", ls=":", lw=1)
    ax.set_xlim(0, 200)
    ax.set_ylim(0, 1)
    ax.set_xlabel("|word boundary error| (ms)")
    ax.set_ylabel("fraction of boundaries")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="acoustic model (model or training checkpoint; default: the embedded one)")
    parser.add_argument("--text", type=Path, default=asrfuse_home() / "corpus" / "text" / "heldout.txt",
                        help="sentences to speak (one a line)")
    parser.add_argument("--cache", type=Path, default=asrfuse_home() / "bench-align",
                        help="where the test speech is kept")
    parser.add_argument("--dev", type=int, default=100, help="dev sentences (fitting only)")
    parser.add_argument("--test", type=int, default=300, help="test sentences (scored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kappas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5],
                        help="HMM prior scales tried on dev")
    parser.add_argument("--blanks", nargs="+", default=["ctc", "word"], choices=["ctc", "word", "none"],
                        help="HMM blank policies tried on dev")
    parser.add_argument("--em-iter", type=int, default=6, help="EM iterations of the HMM")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="align", help="result file stem")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="also write the chosen duration HMM and both methods' context-and-letter "
                             "calibrations here, for `fusion align --hmm/--calibration` (the "
                             "embedded model's: fusion/models/am-default/align)")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS,
                        help="where the results go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    sentences = pick_sentences(args.text, args.dev + args.test, args.seed)
    utts, dropped = build_test_speech(args.cache, sentences, args.seed)
    dev_ids = set(sentences[:args.dev])
    dev_utts = [u for u in utts if u.text in dev_ids]
    test_utts = [u for u in utts if u.text not in dev_ids]
    posteriors, am_seconds, table = compute_all_posteriors(args.model, utts)
    audio_s = sum(u.duration for u in utts)
    frame_shift = next(iter(posteriors.values())).frame_shift
    print(f"{len(dev_utts)} dev + {len(test_utts)} test utterances, {audio_s:.0f} s of audio; "
          f"posteriors in {am_seconds:.1f} s", file=sys.stderr)

    # CTC fast path
    ctc_dev = align_all(dev_utts, posteriors, table)
    ctc_test = align_all(test_utts, posteriors, table)

    # HMM: EM on dev; blanks and kappa chosen on dev (with context offsets fitted on dev)
    grid = []
    best = None
    for kappa in args.kappas:
        for blank in args.blanks:
            t0 = time.perf_counter()
            hmm = fit_hmm(dev_utts, posteriors, table, kappa, blank, args.em_iter)
            fit_s = time.perf_counter() - t0
            dev_aligned = align_all(dev_utts, posteriors, table, hmm)
            dev_errors = cross_fitted_errors(dev_aligned, frame_shift)
            row = {"kappa": kappa, "blank": blank, "fit_s": fit_s, "em_iterations": hmm.n_iter_,
                   "em_log_likelihoods": hmm.log_likelihoods_,
                   **{"dev" + k.replace(" + ", "_with_").replace(" ", "_"): stats(e.absolute())
                      for k, e in dev_errors.items()}}
            grid.append(row)
            best_dev = row[f"dev_with_{BEST_CALIBRATION}"]
            key = (best_dev["median_ms"], best_dev["p90_ms"])
            print(f"hmm kappa={kappa} blank={blank}: dev median {row['dev']['median_ms']:.1f} ms "
                  f"(+context and letter offsets {key[0]:.1f}), EM {fit_s:.0f} s", file=sys.stderr)
            if best is None or key < best[0]:
                best = (key, row, hmm, dev_aligned, dev_errors)
    assert best is not None
    _, hmm_row, hmm, hmm_dev, hmm_dev_errors = best
    digest = file_digest(args.model)
    hmm_path = args.cache / f"duration-hmm-{digest}.json"
    hmm.save(hmm_path)
    hmm_test = align_all(test_utts, posteriors, table, hmm)

    rows, curves, saved, best_cals = [], {}, {}, {}
    for base, dev_aligned, dev_errors, test_aligned in (
            ("ctc", ctc_dev, cross_fitted_errors(ctc_dev, frame_shift), ctc_test),
            ("hmm", hmm_dev, hmm_dev_errors, hmm_test)):
        variants = calibrations(dev_aligned, frame_shift)
        cal_path = args.cache / f"boundary-calibration-{base}-{digest}.json"
        best_cals[base] = variants[f" + {BEST_CALIBRATION.replace('_', ' ')}"]
        best_cals[base].save(cal_path)  # type: ignore[attr-defined]
        saved[base] = str(cal_path)
        for suffix, cal in variants.items():
            dev_err, test_err = dev_errors[suffix], errors(test_aligned, cal)
            curves[base + suffix] = test_err.absolute()
            rows.append({
                "method": base + suffix,
                "calibration": cal.to_dict() if cal is not None else None,  # type: ignore[attr-defined]
                "dev": stats(dev_err.absolute()), "test": stats(test_err.absolute()),
                "test_start": stats(np.abs(test_err.start)), "test_end": stats(np.abs(test_err.end)),
                "test_signed_median_start_ms": float(np.median(test_err.start)),
                "test_signed_median_end_ms": float(np.median(test_err.end)),
                "align_seconds": test_aligned.seconds,
                "x_real_time": test_aligned.x_real_time,
                "by_voice": {v: stats(test_err.absolute(v)) for v in sorted(set(test_err.voice))},
            })
    if args.export is not None:
        args.export.mkdir(parents=True, exist_ok=True)
        hmm.save(args.export / "duration-hmm.json")
        for base, cal in best_cals.items():
            cal.save(args.export / f"boundary-calibration-{base}.json")  # type: ignore[attr-defined]
    # the summary's method is the one best on dev (never chosen on test)
    chosen = min(rows, key=lambda r: (r["dev"]["median_ms"], r["dev"]["p90_ms"]))
    test_audio = sum(u.duration for u in test_utts)
    data = {
        **header(),
        "summary": {
            "method": chosen["method"],
            "median_boundary_error_ms": chosen["test"]["median_ms"],
            "p90_boundary_error_ms": chosen["test"]["p90_ms"],
            "target_median_ms": 40.0,
            "meets_target": chosen["test"]["median_ms"] <= 40.0,
            "x_real_time": chosen["x_real_time"],
            "chosen_by": "lowest dev median (then p90); test utterances are only scored",
        },
        "acoustic_model": {"path": str(args.model), "sha256_12": digest,
                           "frame_shift_s": frame_shift, "posteriors_seconds": am_seconds,
                           "x_real_time": audio_s / am_seconds},
        "test_speech": {"engine": "festival", "voices": sorted(VOICES), "text": str(args.text),
                        "seed": args.seed, "dev_utterances": len(dev_utts),
                        "test_utterances": len(test_utts), "dropped": dropped,
                        "dev_audio_s": sum(u.duration for u in dev_utts), "test_audio_s": test_audio,
                        "test_words": sum(len(u.words) for u in test_utts), "cache": str(args.cache),
                        "rate_jitter": "0.85-1.15 (diphone voices), 1.0 (HTS)"},
        "hmm": {**hmm_row, "file": str(hmm_path), "loop": [float(x) for x in hmm.loop_],
                "optional_blank": float(hmm.optional_blank_),
                "expected_frames": {t: float(d) for t, d in zip(table.tokens, hmm.expected_durations())}},
        "hmm_grid": grid,
        "methods": rows,
        "calibration_files": saved,
    }
    common.RESULTS = args.results_dir
    png = args.results_dir / f"{args.out}.png"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    cdf_plot(png, curves, f"Word boundary error, {len(test_utts)} test utterances (festival)")
    md = render(data, rows, grid, png.name)
    js, mdp = write_results(args.out, data, md)
    print(f"summary ({chosen['method']}): median {chosen['test']['median_ms']:.1f} ms, "
          f"p90 {chosen['test']['p90_ms']:.1f} ms; wrote {js}, {mdp}, {png}", file=sys.stderr)
    return 0


def render(data: dict, rows: list[dict], grid: list[dict], png: str) -> str:
    ts, am, s, h = data["test_speech"], data["acoustic_model"], data["summary"], data["hmm"]
    flat = [{"method": r["method"], "med": r["test"]["median_ms"], "p90": r["test"]["p90_ms"],
             "in40": f"{100 * r['test']['within_40ms']:.0f}%",
             "smed": r["test_start"]["median_ms"], "emed": r["test_end"]["median_ms"],
             "dmed": r["dev"]["median_ms"], "dp90": r["dev"]["p90_ms"],
             "xrt": f"{r['x_real_time']:,.0f}"} for r in rows]
    voices = sorted({v for r in rows for v in r["by_voice"]})
    by_voice = [{"method": r["method"],
                 **{v: f"{r['by_voice'][v]['median_ms']:.0f} / {r['by_voice'][v]['p90_ms']:.0f}"
                    for v in voices}}
                for r in rows]
    grid_rows = [{"kappa": g["kappa"], "blank": g["blank"], "med": g["dev"]["median_ms"],
                  "p90": g["dev"]["p90_ms"], "omed": g[f"dev_with_{BEST_CALIBRATION}"]["median_ms"],
                  "op90": g[f"dev_with_{BEST_CALIBRATION}"]["p90_ms"], "fit": g["fit_s"],
                  "chosen": "yes" if (g["kappa"], g["blank"]) == (h["kappa"], h["blank"]) else ""}
                 for g in grid]
    return "".join([
        f"# Forced alignment: word-boundary error and speed\n\n{data['date']}, `{data['command']}`  \n"
        f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, "
        f"torch threads {data['machine']['torch_threads']}.\n\n",
        f"**Summary ({s['method']}, chosen on dev): median {s['median_boundary_error_ms']:.1f} ms, "
        f"90th percentile {s['p90_boundary_error_ms']:.1f} ms** (target: median <= 40 ms, "
        f"{'met' if s['meets_target'] else 'not met'}); aligns at {s['x_real_time']:,.0f}x real time.\n\n",
        f"Test speech: {ts['test_utterances']} sentences of the held-out text "
        f"({ts['test_audio_s'] / 60:.1f} min, "
        f"{ts['test_words']} words, {2 * ts['test_words']} boundaries) spoken by festival "
        f"({', '.join(ts['voices'])}; rate {ts['rate_jitter']}), whose segment times give the "
        f"reference word starts and ends; {ts['dev_utterances']} other sentences form the dev set on "
        "which the HMM is trained, its settings and the offsets fitted and the summary's method "
        "chosen (the dev columns of calibrated rows are 5-fold cross-fitted: each fifth of dev "
        "calibrated by offsets fitted on the rest). festival ked is a held-out "
        "voice of the speech corpus (never in its training split). "
        f"Acoustic model `{Path(am['path']).name}` (sha256 {am['sha256_12']}), "
        f"{1000 * am['frame_shift_s']:.0f} ms frames, posteriors at {am['x_real_time']:,.0f}x real time. "
        "Error: |aligned - reference| of every word start and end, pooled. `+ offset`: one "
        "constant start and one end shift subtracted (median signed dev errors); `+ context "
        "offsets`: one shift per context (first / last word, or the gap in frames to the "
        "neighbouring word; `hmm.timing`), fitted on dev; `+ context and letter offsets`: "
        "besides, one shift per word-initial letter (starts) and word-final letter (ends), "
        "fitted on what the context shifts leave. Speed: test audio seconds per "
        "second of alignment, posteriors given (calibration not included).\n\n",
        table(flat, [("method", "method"), ("med", "median ms"),
                     ("p90", "p90 ms"), ("in40", "<= 40 ms"), ("smed", "start median"),
                     ("emed", "end median"), ("dmed", "dev median"), ("dp90", "dev p90"),
                     ("xrt", "x real time")]),
        f"\n![CDF of boundary errors]({png})\n\n",
        "Test median / p90 (ms) per voice:\n\n",
        table(by_voice, [("method", "method")] + [(v, v) for v in voices]),
        f"\nHMM: one self-looping state per character, tied loop probabilities learned by EM "
        f"({h['em_iterations']} iterations on dev, kappa {h['kappa']}, blanks `{h['blank']}`, "
        f"optional blank {h['optional_blank']:.2f}). Settings tried (dev only):\n\n",
        table(grid_rows, [("kappa", "kappa"), ("blank", "blanks"), ("med", "dev median"),
                          ("p90", "dev p90"), ("omed", "+ context and letter offsets median"),
                          ("op90", "+ context and letter offsets p90"),
                          ("fit", "EM s"), ("chosen", "chosen")]),
    ])


if __name__ == "__main__":
    sys.exit(main())
