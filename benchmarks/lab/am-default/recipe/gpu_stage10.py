"""Stages 10, 12, 13, 14 and 18 on a lent GPU: synthesise fresh training speech on the machine's
CPUs, then continue the embedded model on its GPU, all inside one wall-clock deadline.

Nothing large travels to the GPU machine (64 MiB), so the speech is made there, by
``fusion.corpus.build`` from the TTS programs and sentence lists that
``gpu-stage10-pack.sh`` packed, in increments of new sentences (``--from-hours`` on)
until ``--synth-until`` seconds; Opus-packed utterances (``--packed``, pack.py, one or
more prefixes) join them. Features are computed by every CPU, then ``train_ctc``
continues ``--pretrained`` on the GPU for whatever time is left before ``--deadline``
less ``--export-margin``. The trained model comes back as fp16 model.pt and best.pt
(under 16 MiB each), with log.jsonl, curves.png and summary.json. ``gpu-stage10.sh``
runs it.

Stages 10-13 spent about half of each call synthesising with the GPU idle. With
``--overlap`` the training starts after a first small increment (``--first-hours``) and a
second process (``grower``, spawned: CUDA is never forked) goes on synthesising until
``--synth-until`` on all CPUs but ``--train-cpus``; each increment it finishes joins the
training set at the trainer's next epoch (``train_ctc``'s ``grow``). Stage 14 ran so: the
training started at 57 s instead of about 260, and 44% more steps fitted in the call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

T0 = time.time()  # wall clock: a spawned process (grower) shares it


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def elapsed() -> float:
    return time.time() - T0


def _chunk_features(utts: list):
    """The FeatureSet of some utterances, in a worker (one thread: every CPU has one)."""
    import torch

    torch.set_num_threads(1)
    from fusion.am.data import FeatureSet

    return FeatureSet._compute(utts, progress=False, desc="")


def feature_set(manifests: list[Path], jobs: int):
    """One FeatureSet over several manifests, features computed by ``jobs`` processes."""
    from fusion.core.manifest import read_manifest

    utts = [u for m in manifests for u in read_manifest(m, require=("audio", "text"))]
    chunks = [utts[i::jobs * 8] for i in range(jobs * 8)]
    with ProcessPoolExecutor(jobs) as pool:
        from fusion.am.data import FeatureSet

        return FeatureSet.concat(list(pool.map(_chunk_features, chunks)))


def packed_set(prefix: str, jobs: int):
    """The FeatureSet of the Opus-packed utterances whose streams are present."""
    import torch

    from fusion.am.data import FeatureSet, offsets_of

    index = json.loads(Path(prefix + ".json").read_text())
    chunks = sorted({u["chunk"] for u in index if Path(f"{prefix}-{u['chunk']}.ogg").is_file()})
    work = [(f"{prefix}-{k}.ogg", [u for u in index if u["chunk"] == k]) for k in chunks]
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_train import chunk_features  # stage 1's reader of the same packing

    with ProcessPoolExecutor(min(jobs, len(work))) as pool:
        rows = [r for part in pool.map(chunk_features, work) for r in part]
    lengths = torch.tensor([r[2].shape[0] for r in rows], dtype=torch.int64)
    return FeatureSet([r[0] for r in rows], [r[1] for r in rows], torch.cat([r[2] for r in rows]),
                      offsets_of(lengths))


def probe_engines() -> list[str]:
    """Voice-name patterns of the engines that synthesise a test sentence here."""
    from fusion.corpus.synth import synthesize
    from fusion.corpus.voices import Prosody, available_voices, catalogue, train_only_catalogue

    ok = []
    probes = {"espeak-*": "espeak-en-us", "flite-*": "flite-slt", "festival-*": "festival-kal",
              "dectalk-*": "dectalk-paul"}
    voices = {v.name: v for v in (*catalogue(), *train_only_catalogue())}
    installed = {v.name for v in available_voices(voices.values())}
    for pattern, name in probes.items():
        if name not in installed:
            say(f"probe {pattern}: {name} not installed")
            continue
        try:
            t = time.monotonic()
            audio = synthesize("the quick brown fox jumps over the lazy dog", voices[name],
                               prosody=Prosody(1.0, 1.0), seed=1)
            say(f"probe {pattern}: {len(audio) / 16000:.2f} s of audio in "
                f"{time.monotonic() - t:.2f} s")
            ok.append(pattern)
        except Exception as exc:  # noqa: BLE001 - report and go on without that engine
            say(f"probe {pattern}: FAILED {type(exc).__name__}: {exc}")
    return ok  # DECtalk's 36 variants stay out: stage 9 learnt them without transfer


def build(args: argparse.Namespace, train_voices: list[str], lo: float, until: float, *,
          first_step: float, max_step: float, jobs: int, dev_minutes: float,
          on_built: Callable[[Path], None] | None = None) -> tuple[list[Path], float]:
    """Build increments of new training sentences from ``lo`` hours until ``until`` seconds
    (at least one); the first holds the dev split. Returns them and where the next starts."""
    from fusion.corpus.build import CorpusOptions, build_corpus

    made: list[Path] = []
    rate = None

    def options(dev: float) -> CorpusOptions:
        return CorpusOptions(dev_minutes=dev, test_minutes=0.0, unseen_minutes=0.0,
                             train_voices=tuple(train_voices), sources=tuple(args.sources))

    while True:
        step = first_step if rate is None else min(max_step, (until - elapsed()) * rate * 0.85)
        if made and step < min(1.0, first_step):  # hours: too little time left for another
            break
        hi = lo + step
        out = args.work / f"corpus-{lo:g}-{hi:g}"
        t = time.time()
        summary = build_corpus(out, hours=hi, from_hours=lo, jobs=jobs, seed=0,
                               options=options(0.0 if made else dev_minutes), progress=False)
        took = time.time() - t
        rate = summary.hours["train"] / took  # hours of audio a second
        say(f"built {out.name}: {summary.utterances} utterances, {summary.hours} h, "
            f"{summary.errors} errors, {took:.0f} s ({rate * 3600:.0f}x real time)")
        if on_built is not None:
            on_built(out)
        made.append(out)
        lo = hi
    return made, lo


def grower(args: argparse.Namespace, train_voices: list[str], lo: float, t0: float) -> None:
    """In a process of its own while the model trains: build increments until
    ``--synth-until``, leaving each one's features in WORK/inc-*.pt for :class:`Joiner`."""
    global T0
    T0 = t0  # this process's clock starts with the script's
    jobs = max(1, args.jobs - args.train_cpus)

    def save(corpus: Path) -> None:
        fs = feature_set([corpus / "train.jsonl"], jobs)
        fs.save(args.work / f"inc-{corpus.name}.pt")  # atomic: whole or absent for the reader
        say(f"features of {corpus.name} ready ({fs.total_seconds / 3600:.2f} h)")

    try:
        if args.synth_until - elapsed() > 40:
            build(args, train_voices, lo, args.synth_until, first_step=args.step_hours,
                  max_step=args.step_hours, jobs=jobs, dev_minutes=0.0, on_built=save)
    except Exception:  # noqa: BLE001 - the training goes on with what it has
        say("grower: " + traceback.format_exc())


class Joiner:
    """``train_ctc``'s ``grow``: the increments :func:`grower` finished since the last call."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.joined: list[dict] = []

    def __call__(self):
        from fusion.am.data import FeatureSet

        done = {j["file"] for j in self.joined}
        new = [p for p in sorted(self.work.glob("inc-*.pt")) if p.name not in done]
        if not new:
            return None
        sets = []
        for path in new:
            sets.append(FeatureSet.load(path))
            self.joined.append({"file": path.name, "at_s": round(elapsed(), 1),
                                "hours": round(sets[-1].total_seconds / 3600, 3)})
        return FeatureSet.concat(sets)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--deadline", type=float, required=True, help="seconds from start")
    p.add_argument("--synth-until", type=float, default=200.0)
    p.add_argument("--export-margin", type=float, default=45.0)
    p.add_argument("--from-hours", type=float, default=86.0)
    p.add_argument("--step-hours", type=float, default=4.0)
    p.add_argument("--overlap", action="store_true",
                   help="train from the first increment on while a second process goes on "
                        "synthesising until --synth-until; each increment joins the training "
                        "set at the next epoch")
    p.add_argument("--first-hours", type=float, default=2.0,
                   help="with --overlap: the increment built before training starts")
    p.add_argument("--train-cpus", type=int, default=3,
                   help="with --overlap: CPUs left to the training process")
    p.add_argument("--dev-minutes", type=float, default=8.0)
    p.add_argument("--sources", nargs="+", default=None,
                   help="text sources (their sentence lists must have travelled): by default "
                        "fusion.corpus.sources.SOURCES, or the opt-in commentaries (mhcc "
                        "tdavid, from --from-hours 0)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--packed", action="append", default=[],
                   help="prefix of Opus-packed utterances (pack.py); may be repeated")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--pretrained", type=Path, default=Path("fusion/models/am-default/model.pt"))
    p.add_argument("--work", type=Path, default=None,
                   help="an empty or new directory for the corpora, increments and run (default: "
                        "a fresh one under /tmp: a warm machine keeps an earlier call's, whose "
                        "run a growing training refuses and whose increments would join)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.sources is None:
        from fusion.corpus.sources import SOURCES  # no torch: nothing forked later minds it

        args.sources = list(SOURCES)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="stage10-"))
    elif args.work.exists() and any(args.work.iterdir()):
        p.error(f"--work {args.work}: not empty (an earlier call's corpora and run); name a new directory")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run = args.work / "run"
    proc, joiner = None, None
    try:
        import torch

        from fusion.am.data import FeatureSet

        say(f"torch {torch.__version__}, {os.cpu_count()} CPUs")  # CUDA untouched before forks
        engines = probe_engines()
        summary["engines"] = engines
        if not engines:
            raise RuntimeError("no TTS engine works here")
        if args.overlap:
            corpora, lo = build(args, engines, args.from_hours, 0.0, first_step=args.first_hours,
                                max_step=0.0, jobs=args.jobs, dev_minutes=args.dev_minutes)
        else:
            corpora, lo = build(args, engines, args.from_hours, args.synth_until,
                                first_step=args.step_hours, max_step=args.step_hours * 3,
                                jobs=args.jobs, dev_minutes=args.dev_minutes)
        summary["corpora"] = [c.name for c in corpora]
        trains = [c / "train.jsonl" for c in corpora]
        t = time.monotonic()
        train_set = feature_set(trains, args.jobs)
        summary["packed_hours"] = {}
        for prefix in args.packed:
            packed = packed_set(prefix, args.jobs)
            say(f"packed {prefix}: {len(packed)} utterances, {packed.total_seconds / 3600:.2f} h")
            summary["packed_hours"][prefix] = round(packed.total_seconds / 3600, 3)
            train_set = FeatureSet.concat([train_set, packed])
        dev_set = feature_set([corpora[0] / "dev.jsonl"], args.jobs)
        say(f"features: train {len(train_set)} utterances {train_set.total_seconds / 3600:.2f} h, "
            f"dev {len(dev_set)}, {time.monotonic() - t:.0f} s")
        summary["train_hours"] = round(train_set.total_seconds / 3600, 3)
        summary["train_utterances"] = len(train_set)
        summary["dev_utterances"] = len(dev_set)

        from fusion.am.config import TrainConfig, load_config
        from fusion.am.train import train_ctc

        if args.overlap:  # a fresh interpreter: nothing of this one's state, CUDA's included
            proc = mp.get_context("spawn").Process(target=grower, args=(args, engines, lo, T0))
            proc.start()
            joiner = Joiner(args.work)

        budget = round((args.deadline - args.export_margin - elapsed()) / 60, 2)
        config = load_config(TrainConfig, args.config, {"run": {"time_budget_minutes": budget}})
        say(f"training for {budget:.2f} min")
        summary["train_budget_minutes"] = round(budget, 2)
        state = train_ctc(None, None, run, config, pretrained=args.pretrained, progress=False,
                          log=say, train_set=train_set, dev_set=dev_set, grow=joiner)
        summary["steps"] = state.step
    except Exception:  # noqa: BLE001 - whatever was trained still comes back
        summary["error"] = traceback.format_exc()
        say(summary["error"])
    finally:
        if proc is not None:  # done by --synth-until unless training failed early
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        if joiner is not None:
            summary["joined"] = joiner.joined
            summary["joined_hours"] = round(sum(j["hours"] for j in joiner.joined), 3)
        try:
            from fusion.am.model import average_checkpoints, save_checkpoint

            for name in ("model.pt", "best.pt", "last.pt"):
                if (run / name).is_file():
                    save_checkpoint(args.out / "model.pt", average_checkpoints([run / name]))
                    summary["exported"] = name
                    say(f"exported {name} -> {args.out / 'model.pt'}")
                    break
            if (run / "best.pt").is_file() and summary.get("exported") != "best.pt":
                save_checkpoint(args.out / "best.pt", average_checkpoints([run / "best.pt"]))
            for name in ("log.jsonl", "curves.png"):
                if (run / name).is_file():
                    shutil.copy(run / name, args.out / name)
        except Exception:  # noqa: BLE001
            summary["export_error"] = traceback.format_exc()
            say(summary["export_error"])
        summary["seconds"] = round(elapsed(), 1)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if "error" not in summary else 1


if __name__ == "__main__":
    sys.exit(main())
