"""Acoustic-model benchmark: the embedded model's greedy CER/WER per split, posterior
extraction speed, and what BEST-RQ pretraining buys when labels are scarce.

Part ``eval``
    The model (``--model``, default the embedded one) computes posteriors for ``dev``,
    ``test``, ``test-unseen-voices`` and the real-speech dev set with ``--eval-threads``
    torch threads; greedy CTC decoding, CER and WER after normalisation, and beam search
    (beam 32) with the default LM at its default weights: the default pipeline, as
    ``fusion demo`` and ``fusion decode --decoder beam`` run it. Besides the synthetic
    splits and the real-speech dev set, the real-speech splits of issue 42 where they are
    on this machine (``--real-splits``, written by ``benchmarks/real_splits.py``):
    ``librispeech-dev``, ``librispeech-test``, ``speechocean762-test`` and its adults
    (``speechocean762-test-adult``, scored on the same posteriors), with per age group and
    gender rates where the manifest has them. ``rtfx`` is audio seconds per wall second
    of ``fusion.am.infer.compute_posteriors`` (reading audio, features and the network;
    the cost of the first batch included).

Part ``pocketsphinx``
    CMU pocketsphinx (Debian's HMM-GMM recogniser with its own 3-gram,
    ``benchmarks/peer_pocketsphinx.py``) on the same audio, scored the same way.

Part ``adapt``
    The same splits with single-utterance test-time adaptation (``fusion.am.adapt``) at
    the model's own settings (``MODEL.adapt.json`` from ``fusion adapt-tune``, else
    ``AdaptConfig``'s defaults; ``--adapt-steps`` overrides the step count): greedy CER/WER
    after each number of steps (one pass), beam search on the adapted posteriors, and
    the speed of adapting (audio seconds per wall second).

Part ``pretraining``
    The same architecture as ``--model`` is pretrained by BEST-RQ on the training
    audio without its transcripts (``--pretrain-steps``), then CTC-fine-tuned on nested
    labelled subsets of the training set (``--subsets``: 10 min and 1 h by default,
    drawn with a fixed seed, the smaller inside the larger) twice: from a random
    initialisation and from the pretrained encoder, with the same recipe, seed and
    number of steps. Each fine-tuned model is scored greedily on ``test``. Every run is
    a resumable training directory under ``--work``: rerun the same command after a
    kill and it goes on where it stopped.

    python benchmarks/bench_acoustic.py [--parts eval,adapt,pretraining] [--threads 1]
        [--train MANIFEST --feature-cache DIR] [--pretrain-steps N] [--subsets 10min=300,1h=450]

Writes benchmarks/results/acoustic.json, acoustic.md, acoustic.png and
acoustic-adapt.png; the parts' own results are kept in ``--work`` (``eval.json``,
``adapt.json``, ``pretraining.json``), so one part can be rerun without the others.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, header, table, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "fusion" / "models" / "am-default" / "model.pt"
#: The real-speech test splits of issue 42 (``benchmarks/real_splits.py``, by speaker).
REAL_TEST_SPLITS = ("librispeech-test", "speechocean762-test", "speechocean762-test-adult")
SPLITS = ("test", "test-unseen-voices", "real-speech", *REAL_TEST_SPLITS)
#: A split scored on part of another's posteriors instead of computing its own.
SUBSET_OF = {"speechocean762-test-adult": "speechocean762-test"}
TOP_WORD_ERRORS = 8  # per voice: the words misrecognised most
WORD_ERROR_SPLITS = ("test-unseen-voices", "real-speech")  # tabulated in the markdown
#: fine-tuning starts: random, the BEST-RQ encoder, the BEST-RQ encoder held fixed at first
INITS = ("random", "bestrq", "bestrq-frozen")
INIT_NAMES = {"random": "random", "bestrq": "BEST-RQ", "bestrq-frozen": "BEST-RQ, encoder frozen first"}
EVAL_SPLITS = ("dev", "librispeech-dev", *SPLITS)
# Issue 42's targets (issue 3's were 3.0 and 10.0 on the synthetic splits): greedy CER
# (percent) at most these, the default pipeline's WER at most these, the pipeline at least
# POCKETSPHINX_MARGIN points ahead of pocketsphinx on every split, posteriors at least
# RTFX_TARGET times real time
CER_TARGETS = {"test": 3.5, "test-unseen-voices": 12.0, "real-speech": 10.0}
WER_TARGETS = {"real-speech": 20.0, "librispeech-test": 18.0, "speechocean762-test": 35.0}
POCKETSPHINX_MARGIN = 10.0
RTFX_TARGET = 50.0


def asrfuse_home() -> Path:
    return Path(os.environ.get("ASRFUSE_HOME", Path.home() / ".cache" / "asrfuse"))


def parse_subsets(text: str) -> list[tuple[str, float, int]]:
    """``"10min=300,1h=450"`` -> ``[("10min", 600.0, 300), ("1h", 3600.0, 450)]``."""
    out = []
    for item in text.split(","):
        name, _, steps = item.partition("=")
        name = name.strip()
        if name.endswith("min"):
            seconds = float(name[:-3]) * 60
        elif name.endswith("h"):
            seconds = float(name[:-1]) * 3600
        else:
            raise SystemExit(f"--subsets: {name!r} is not like 10min or 1h")
        out.append((name, seconds, int(steps)))
    return sorted(out, key=lambda s: s[1])


def voice_groups(utts: list[Any]) -> dict[str, list[str]]:
    """Utterance ids by the voice of a synthetic utterance (espeak-ng variants pooled) or
    the source corpus of a real one; utterances with neither are in no group."""
    groups: dict[str, list[str]] = {}
    for u in utts:
        if "voice" in u.extra or "source" in u.extra:
            key = str(u.extra["voice"]).split("+")[0] if "voice" in u.extra else str(u.extra["source"])
            groups.setdefault(key, []).append(u.id)
    return groups


def split_posteriors(model: Any, utts: list[Any], *, threads: int) -> dict[str, Any]:
    """Posteriors of ``utts`` by ``model`` and the speed of computing them: ``posts``,
    ``failed`` (reasons) and the ``utterances``, ``audio_seconds``, ``wall_seconds``,
    ``rtfx`` and ``threads`` that the results report."""
    import torch

    from fusion.am.infer import CTCModelAdapter, compute_posteriors
    from fusion.core.posteriors import Posteriors

    torch.set_num_threads(threads)
    adapter = CTCModelAdapter(model)
    t0 = time.perf_counter()
    posts, failed = [], []
    for r in compute_posteriors(utts, adapter, progress=True):
        (posts if isinstance(r, Posteriors) else failed).append(r)
    wall = time.perf_counter() - t0
    audio = sum(p.duration for p in posts)
    return {"posts": posts, "utterances": len(utts), "failed": [str(f) for f in failed],
            "failed_ids": [f.utt_id for f in failed],
            "audio_seconds": round(audio, 2), "wall_seconds": round(wall, 3),
            "rtfx": round(audio / wall, 1), "threads": threads}


def greedy_scores(model: Any, manifest: Path, *, threads: int, decoder: Any = None) -> dict[str, Any]:
    """Greedy CER/WER of ``model`` on ``manifest`` and the posterior extraction speed; with
    a beam-search ``decoder``, also its CER/WER (``pipeline_cer``, ``pipeline_wer``)."""
    from fusion.core.manifest import read_manifest

    utts = read_manifest(manifest, require=("audio", "text"))
    run = split_posteriors(model, utts, threads=threads)
    posts = run.pop("posts")
    run.pop("failed_ids")
    return {**run, **decode_scores(utts, posts, model.token_table, decoder, with_word_errors=True)}


def decode_scores(utts: list[Any], posts: list[Any], table: Any, decoder: Any = None, *,
                  with_word_errors: bool = False) -> dict[str, Any]:
    """Greedy CER/WER of ``posts`` against ``utts``' transcripts; with ``decoder`` (beam
    search: the default pipeline) its CER/WER too (``pipeline_cer``, ``pipeline_wer``); the
    same per voice or source (``voices``, when there are any), with each one's worst greedy
    words when ``with_word_errors``, and per age group and gender (``groups``, where the
    manifest has ``age`` / ``gender``)."""
    from peer_pocketsphinx import group_ids

    from fusion.core.metrics import score_corpus, word_errors
    from fusion.decoder.greedy import greedy_decode

    refs = {u.id: u.text for u in utts}
    hyps = {r.utt_id: r.best.text for r in greedy_decode(posts, table)}
    score = score_corpus(refs, hyps)
    out: dict[str, Any] = {"cer": round(100 * score.cer, 2), "wer": round(100 * score.wer, 2),
                           "char_errors": score.chars.errors, "chars": score.chars.ref_len}
    fused_hyps = None
    if decoder is not None:
        fused_hyps = {p.utt_id: decoder.decode(p).best.text for p in posts}
        fused = score_corpus(refs, fused_hyps)
        out.update(pipeline_cer=round(100 * fused.cer, 2), pipeline_wer=round(100 * fused.wer, 2))
    for field_, by in group_ids(utts).items():
        for name, ids in by.items():
            part = score_corpus({u: refs[u] for u in ids}, hyps)
            row = out.setdefault("groups", {}).setdefault(field_, {})[name] = {
                "utterances": len(ids), "cer": round(100 * part.cer, 2), "wer": round(100 * part.wer, 2)}
            if fused_hyps is not None:
                part = score_corpus({u: refs[u] for u in ids}, fused_hyps)
                row.update(pipeline_cer=round(100 * part.cer, 2), pipeline_wer=round(100 * part.wer, 2))
    groups = voice_groups(utts)
    if groups:
        out["voices"] = {}
        for group, ids in sorted(groups.items()):
            part = score_corpus({u: refs[u] for u in ids}, hyps)
            row = out["voices"][group] = {
                "utterances": len(ids), "cer": round(100 * part.cer, 2), "wer": round(100 * part.wer, 2)}
            if with_word_errors:  # greedy: the words this voice gets wrong most, and what it says
                row["word_errors"] = [e.to_dict() for e in word_errors(part, top=TOP_WORD_ERRORS)]
            if fused_hyps is not None:
                part = score_corpus({u: refs[u] for u in ids}, fused_hyps)
                row.update(pipeline_cer=round(100 * part.cer, 2), pipeline_wer=round(100 * part.wer, 2))
    return out


def eval_decoder(model: Any) -> Any:
    """The default pipeline (``fusion demo``'s and ``fusion decode --decoder beam``'s:
    beam search with the default LM at the default weights)."""
    from fusion.pipeline.build import build_decoder
    from fusion.pipeline.config import DecodeConfig

    return build_decoder(DecodeConfig.default(), model.token_table)


def eval_manifests(args: argparse.Namespace) -> dict[str, Path]:
    """The evaluation splits' manifests, in ``EVAL_SPLITS`` order; a real split whose
    manifest is not in ``--real-splits`` (a machine without the fetched corpora: see
    ``benchmarks/real_splits.py``) is left out, and said so."""
    found = {"dev": args.corpus / "dev.jsonl", "test": args.corpus / "test.jsonl",
             "test-unseen-voices": args.corpus / "test-unseen-voices.jsonl",
             "real-speech": args.real_speech,
             **{s: args.real_splits / f"{s}.jsonl" for s in ("librispeech-dev", *REAL_TEST_SPLITS)}}
    out = {}
    for split in EVAL_SPLITS:
        if found[split].is_file():
            out[split] = found[split]
        else:
            print(f"{split}: no {found[split]}, left out", file=sys.stderr)
    return out


def subset_scores(utts: list[Any], parent: dict[str, Any], table: Any, decoder: Any) -> dict[str, Any]:
    """A split's scores on the posteriors already computed for the split holding it
    (``SUBSET_OF``); its speed is the parent's."""
    ids = {u.id for u in utts}
    posts = [p for p in parent["posts"] if p.utt_id in ids]
    audio = sum(p.duration for p in posts)
    failed = [f for f, i in zip(parent["failed"], parent["failed_ids"]) if i in ids]
    return {"utterances": len(utts), "failed": failed, "audio_seconds": round(audio, 2),
            "rtfx": parent["rtfx"], "threads": parent["threads"], "subset_of": parent["split"],
            **decode_scores(utts, posts, table, decoder, with_word_errors=True)}


def shown_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def part_eval(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fusion.am.model import load_model
    from fusion.core.manifest import read_manifest

    model = load_model(args.model)
    decoder = eval_decoder(model)
    out: dict[str, Any] = {"model": shown_path(args.model), "parameters": model.num_parameters()}
    kept: dict[str, dict[str, Any]] = {}  # posteriors of the splits others are subsets of
    for split, manifest in eval_manifests(args).items():
        print(f"eval: {split}", file=sys.stderr, flush=True)
        utts = read_manifest(manifest, require=("audio", "text"))
        if SUBSET_OF.get(split) in kept:
            out[split] = subset_scores(utts, kept[SUBSET_OF[split]], model.token_table, decoder)
            continue
        run = split_posteriors(model, utts, threads=args.eval_threads)
        posts, failed_ids = run.pop("posts"), run.pop("failed_ids")
        out[split] = {**run, **decode_scores(utts, posts, model.token_table, decoder,
                                             with_word_errors=True)}
        if split in SUBSET_OF.values():
            kept[split] = {**run, "posts": posts, "failed_ids": failed_ids, "split": split}
    return out


def part_pocketsphinx(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """pocketsphinx (Debian's HMM-GMM recogniser with its own 3-gram) on every split's
    audio, scored as ours is (``benchmarks/peer_pocketsphinx.py``; its hypotheses are
    cached)."""
    from peer_pocketsphinx import pocketsphinx_scores

    out: dict[str, Any] = {}
    for split, manifest in eval_manifests(args).items():
        print(f"pocketsphinx: {split}", file=sys.stderr, flush=True)
        r = pocketsphinx_scores(manifest, jobs=args.eval_threads, progress=True,
                                cache_dir=asrfuse_home() / "pocketsphinx")
        out[split] = {k: v for k, v in r.items() if k != "failed_utterances"}
        for k in ("wer", "cer"):
            out[split][k] = round(100 * out[split][k], 2)
        for by in out[split].get("groups", {}).values():
            for row in by.values():
                for k in ("wer", "cer"):
                    row[k] = round(100 * row[k], 2)
    return out


def adapted_scores(model: Any, manifest: Path, config: Any, *, threads: int,
                   decoder: Any = None) -> dict[str, Any]:
    """Greedy CER/WER of ``model`` on ``manifest`` with test-time adaptation
    (``config``), after each number of steps from 0 to ``config.steps`` (one pass: the
    adapter keeps the posteriors each step gave), and the final posteriors' beam-search
    CER/WER with ``decoder``. ``rtfx``: audio seconds per wall second of reading,
    features and adaptation."""
    import torch

    from fusion.am.adapt_tune import adapt_each_step
    from fusion.core.manifest import read_manifest
    from fusion.core.metrics import score_corpus
    from fusion.decoder.greedy import greedy_decode

    torch.set_num_threads(threads)
    utts = read_manifest(manifest, require=("audio", "text"))
    steps = config.steps
    t0 = time.perf_counter()
    passes = adapt_each_step(model, utts, config, desc=f"adapt {manifest.stem}")
    wall = time.perf_counter() - t0
    by_step, adapted, audio = passes.by_step, passes.adapted, passes.audio_seconds
    failed = [reason for _, reason in passes.failed]
    refs = {u.id: u.text for u in utts}
    curve = []
    for k, posts in enumerate(by_step[:-1]):
        score = score_corpus(refs, {r.utt_id: r.best.text
                                    for r in greedy_decode(list(posts), model.token_table)})
        curve.append({"steps": k, "cer": round(100 * score.cer, 2), "wer": round(100 * score.wer, 2)})
    final = decode_scores(utts, list(by_step[-1]), model.token_table, decoder)
    curve.append({"steps": steps, "cer": final["cer"], "wer": final["wer"]})
    return {
        "utterances": len(utts), "adapted": adapted, "failed": failed,
        "audio_seconds": round(audio, 2), "wall_seconds": round(wall, 3),
        "rtfx": round(audio / wall, 1), "threads": threads, "by_steps": curve, **final,
    }


def part_adapt(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fusion.am.adapt_tune import model_settings
    from fusion.am.model import load_model

    model = load_model(args.model)
    config = model_settings(args.model, **({} if args.adapt_steps is None
                                           else {"steps": args.adapt_steps}))
    if config.steps == 0:
        raise SystemExit(f"part adapt: no adaptation steps for {args.model} (its settings "
                         "chose none); give --adapt-steps N")
    decoder = eval_decoder(model)
    out: dict[str, Any] = {"model": shown_path(args.model), "config": config.to_dict()}
    for split, manifest in eval_manifests(args).items():
        print(f"adapt: {split}", file=sys.stderr, flush=True)
        out[split] = adapted_scores(model, manifest, config, threads=args.eval_threads,
                                    decoder=decoder)
    return out


def pick_subsets(durations: list[float], sizes: list[float], seed: int) -> list[list[int]]:
    """Nested random subsets: the first ``k`` of one seeded permutation whose audio
    reaches each size in seconds."""
    order = list(range(len(durations)))
    random.Random(seed).shuffle(order)
    subsets = []
    for size in sizes:
        total, k = 0.0, 0
        while k < len(order) and total < size:
            total += durations[order[k]]
            k += 1
        subsets.append(sorted(order[:k]))
    return subsets


def final_metric(log_path: Path, key: str) -> float | None:
    value = None
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value


def part_pretraining(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from fusion.am.config import BatchConfig, OptimConfig, PretrainConfig, RunConfig, TrainConfig
    from fusion.am.data import FeatureSet
    from fusion.am.model import ModelConfig, load_checkpoint, load_model
    from fusion.am.pretrain import pretrain_bestrq
    from fusion.am.train import train_ctc

    torch.set_num_threads(args.threads)
    model_config = ModelConfig.from_dict(dict(load_checkpoint(args.model)["config"]))
    cache = args.feature_cache or work / "cache"
    train = FeatureSet.from_manifest(args.train, cache_dir=cache)
    dev = FeatureSet.from_manifest(args.corpus / "dev.jsonl", cache_dir=cache,
                                   max_utterances=args.dev_utterances)
    batch = BatchConfig(max_frames=8000, max_utterances=64, max_duration=30.0)
    run = dict(seed=args.seed, num_threads=args.threads, checkpoint_minutes=5.0,
               dev_max_utterances=args.dev_utterances)

    pre_dir = work / "pretrain"
    pre_config = PretrainConfig(
        model=model_config, batch=batch,
        optim=OptimConfig(lr=args.pretrain_lr, warmup_steps=min(500, args.pretrain_steps // 5),
                          total_steps=args.pretrain_steps),
        run=RunConfig(**run, eval_every_steps=max(1, args.pretrain_steps // 4)))
    t0 = time.perf_counter()
    pretrain_bestrq(args.train, None, pre_dir, pre_config, progress=True,
                    train_set=train, dev_set=dev)
    pre_seconds = time.perf_counter() - t0

    subsets = parse_subsets(args.subsets)
    durations = [float(n) / 100.0 for n in train.lengths]
    picked = pick_subsets(durations, [s for _, s, _ in subsets], args.seed)
    rows = []
    for (name, _, steps), indices in zip(subsets, picked):
        labelled = train.subset(indices)
        for init in INITS:
            out_dir = work / f"finetune-{name}-{init}"
            freeze = int(steps * args.freeze_fraction) if init == "bestrq-frozen" else 0
            config = TrainConfig(
                model=model_config, batch=batch,
                optim=OptimConfig(lr=args.finetune_lr, warmup_steps=max(1, steps // 6),
                                  total_steps=steps, freeze_encoder_steps=freeze),
                run=RunConfig(**run, eval_every_steps=max(1, steps // 6)))
            print(f"fine-tune {name} ({labelled.total_seconds / 60:.1f} min, {len(labelled)} utts) "
                  f"from {init}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            train_ctc(None, None, out_dir, config,
                      pretrained=pre_dir / "last.pt" if init != "random" else None,
                      progress=True, train_set=labelled, dev_set=dev)
            seconds = time.perf_counter() - t0
            model = load_model(out_dir / "model.pt")
            test = greedy_scores(model, args.corpus / "test.jsonl", threads=args.threads)
            rows.append({
                "labelled": name, "labelled_minutes": round(labelled.total_seconds / 60, 1),
                "utterances": len(labelled), "init": init, "steps": steps,
                "frozen_encoder_steps": freeze,
                "train_seconds_this_call": round(seconds, 1),
                "dev_cer": round(100 * final_metric(out_dir / "log.jsonl", "dev_cer"), 2),
                "test_cer": test["cer"], "test_wer": test["wer"],
                "log": str(out_dir / "log.jsonl"),
            })
    return {
        "train_manifest": str(args.train), "unlabelled_hours": round(train.total_seconds / 3600, 2),
        "pretrain": {"steps": args.pretrain_steps, "lr": args.pretrain_lr,
                     "final_dev_loss": final_metric(pre_dir / "log.jsonl", "dev_bestrq_loss"),
                     "final_dev_accuracy": final_metric(pre_dir / "log.jsonl", "dev_bestrq_acc"),
                     "seconds_this_call": round(pre_seconds, 1), "log": str(pre_dir / "log.jsonl")},
        "finetune_lr": args.finetune_lr, "dev_utterances": args.dev_utterances,
        "runs": rows,
    }


def plot(pre: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for row in pre["runs"]:
        pts = [json.loads(line) for line in Path(row["log"]).read_text().splitlines()]
        pts = [(p["step"], 100 * p["dev_cer"]) for p in pts if "dev_cer" in p]
        sizes = list(dict.fromkeys(r["labelled"] for r in pre["runs"]))
        ax.plot(*zip(*pts), marker="os^v"[sizes.index(row["labelled"]) % 4], ms=3,
                ls=("--", "-", ":", "-.")[sizes.index(row["labelled"]) % 4],
                color={"random": "tab:gray", "bestrq": "tab:blue"}.get(row["init"], "tab:green"),
                label=f"{row['labelled']} labelled, {INIT_NAMES[row['init']]}")
    ax.set(xlabel="fine-tuning step", ylabel="dev CER (%)", title="CTC fine-tuning")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax = axes[1]
    pts = [json.loads(line) for line in Path(pre["pretrain"]["log"]).read_text().splitlines()]
    train = [(p["step"], p["loss"]) for p in pts if "loss" in p]
    ax.plot(*zip(*train), lw=0.6, alpha=0.6, label="train")
    dev = [(p["step"], p["dev_bestrq_loss"]) for p in pts if "dev_bestrq_loss" in p]
    if dev:
        ax.plot(*zip(*dev), marker="o", label="dev")
    ax.set(xlabel="pretraining step", ylabel="masked-prediction loss", title="BEST-RQ pretraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def word_errors_text(errors: list[dict[str, Any]], heard: int = 3) -> str:
    """``the 40/42 (de 31, da 4, - 2)``: a voice's worst words, each with what it was heard
    as most often, for a table cell."""
    return "; ".join(
        f"{e['word']} {e['errors']}/{e['count']} ("
        + ", ".join(f"{h or '-'} {n}" for h, n in e["heard_as"][:heard]) + ")"
        for e in errors)


def adapt_markdown(ad: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    """The test-time adaptation section: each split plain (step 0) and adapted."""
    c = ad["config"]
    lines = [f"## Test-time adaptation (`--adapt-steps {c['steps']}`)", "",
             f"Model `{ad['model']}`. Each utterance alone: {c['steps']} AdamW steps at lr "
             f"{c['lr']} on the {' and '.join(c['params'])} parameters, towards "
             + ("confident frame posteriors (their entropy" if c["entropy_weight"] == 1 else
                f"confident and distinct frame posteriors (entropy, weight {c['entropy_weight']}, "
                "and minimum class confusion")
             + f", at temperature {c['temperature']}), without the transcript; utterances "
             f"under {c['min_seconds']} s are left alone (`fusion.am.adapt`). `plain` is step 0 "
             "of the same run. The settings are the model's own (`MODEL.adapt.json`), chosen "
             "on the dev sets (`dev` and real speech) by `fusion adapt-tune`, not on the test "
             "sets. `pipeline` keeps the weights tuned for the plain model's posteriors "
             "(retuned on adapted dev posteriors, they won back only part of what the seen "
             "voices lose under the LM: see the model card).", ""]
    rows = []
    for split in EVAL_SPLITS:
        if split not in ad:
            continue
        r = ad[split]
        rows.append({"split": split, "utterances": r["utterances"], "adapted": r["adapted"],
                     "plain_cer": r["by_steps"][0]["cer"], "cer": r["cer"],
                     "plain_wer": r["by_steps"][0]["wer"], "wer": r["wer"],
                     "plain_pipeline_cer": ev.get(split, {}).get("pipeline_cer"),
                     "pipeline_cer": r.get("pipeline_cer"),
                     "pipeline_wer": r.get("pipeline_wer"), "rtfx": r["rtfx"],
                     "plain_rtfx": ev.get(split, {}).get("rtfx")})
    lines.append(table(rows, [("split", "split"), ("utterances", "utts"), ("adapted", "adapted"),
                              ("plain_cer", "CER % plain"), ("cer", "CER % adapted"),
                              ("plain_wer", "WER % plain"), ("wer", "WER % adapted"),
                              ("plain_pipeline_cer", "pipeline CER % plain"),
                              ("pipeline_cer", "pipeline CER % adapted"),
                              ("pipeline_wer", "pipeline WER % adapted"),
                              ("plain_rtfx", "x real time plain"),
                              ("rtfx", "x real time adapted")]))
    rows = [{"split": s, "voice": v, "plain": ev.get(s, {}).get("voices", {}).get(v, {}).get("cer"),
             **r} for s in ("test-unseen-voices", "real-speech") if s in ad
            for v, r in sorted(ad[s].get("voices", {}).items())]
    if rows:
        lines += ["Unseen voices and real-speech sources:", ""]
        lines.append(table(rows, [("split", "split"), ("voice", "voice / source"),
                                  ("utterances", "utts"), ("plain", "CER % plain"),
                                  ("cer", "CER % adapted"), ("pipeline_cer", "pipeline CER % adapted")]))
    lines += ["Greedy CER after each number of steps:", "", "![adaptation](acoustic-adapt.png)", ""]
    return lines


def plot_adapt(ad: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split in (s for s in EVAL_SPLITS if s in ad):
        steps = [p["steps"] for p in ad[split]["by_steps"]]
        cer = [p["cer"] for p in ad[split]["by_steps"]]
        left.plot(steps, cer, marker="o", label=split)
        right.plot(steps, [c - cer[0] for c in cer], marker="o", label=split)
    for target, split in ((3.0, "test"), (10.0, "test-unseen-voices")):
        left.axhline(target, color="gray", lw=0.8, ls=":")
        left.annotate(f"{split} target", (0, target), fontsize=7, color="gray",
                      xytext=(2, 2), textcoords="offset points")
    left.set(yscale="log", xlabel="adaptation steps", ylabel="greedy CER (%)",
             title="greedy CER per split", yticks=[2, 3, 5, 10, 20, 30])
    left.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.axhline(0, color="gray", lw=0.8)
    right.set(xlabel="adaptation steps", ylabel="CER change (points)",
              title="against the plain model (step 0)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def targets(data: dict[str, Any]) -> dict[str, Any]:
    """Each target against the plain model and, where part ``adapt`` ran, with test-time
    adaptation; ``met_by`` names the ways of decoding that meet it, judged on the exact
    error counts where the results have them (``char_errors``, ``chars``), not the rounded
    rate. The default pipeline's WER targets and the margin over pocketsphinx are the plain
    pipeline's (no adaptation). Speed is the plain path's (adaptation trades it for
    accuracy: its own speed is in ``adapted``). A split not measured is left out."""
    def within(result: dict[str, Any], limit: float) -> bool:
        if "chars" in result:
            return 100 * result["char_errors"] <= limit * result["chars"]
        return result["cer"] <= limit

    out: dict[str, Any] = {}
    for split, limit in CER_TARGETS.items():
        if split not in data:
            continue
        ways = {"plain": data[split]}
        if split in data.get("adapted", {}):
            ways["adapted"] = data["adapted"][split]
        out[f"{split} cer"] = {"max_cer": limit, **{way: r["cer"] for way, r in ways.items()},
                               "met_by": [way for way, r in ways.items() if within(r, limit)]}
    for split, limit in WER_TARGETS.items():
        if "pipeline_wer" in data.get(split, {}):
            wer = data[split]["pipeline_wer"]
            out[f"{split} pipeline_wer"] = {"max_wer": limit, "plain": wer,
                                            "met_by": ["plain"] if wer <= limit else []}
    for split in SPLITS:
        r = data.get(split, {})
        if "pipeline_wer" in r and "pocketsphinx_wer" in r:
            gap = round(r["pocketsphinx_wer"] - r["pipeline_wer"], 2)
            out[f"{split} ahead of pocketsphinx"] = {
                "min_points": POCKETSPHINX_MARGIN, "plain": gap, "pocketsphinx_wer": r["pocketsphinx_wer"],
                "met_by": ["plain"] if gap >= POCKETSPHINX_MARGIN else []}
    rtfx = data["posteriors"]["rtfx"]
    out["posteriors"] = {"min_rtfx": RTFX_TARGET, "plain": rtfx,
                         "met_by": ["plain"] if rtfx >= RTFX_TARGET else []}
    return out


def targets_markdown(t: dict[str, Any], steps: int | None) -> list[str]:
    adapted = f"adapted (`--adapt-steps {steps}`)" if steps is not None else "adapted"

    def name(key: str, r: dict[str, Any]) -> str:
        split, _, what = key.rpartition(" ") if not key.endswith("pocketsphinx") else (key, "", "")
        if "max_cer" in r:
            return f"`{split}` greedy CER <= {r['max_cer']:g}%"
        if "max_wer" in r:
            return f"`{split}` default-pipeline WER <= {r['max_wer']:g}%"
        if "min_points" in r:
            return (f"`{key.removesuffix(' ahead of pocketsphinx')}` pipeline WER at least "
                    f"{r['min_points']:g} points under pocketsphinx's ({r['pocketsphinx_wer']})")
        return f"posteriors >= {r['min_rtfx']:g}x real time (`test`)"

    rows = [{"target": name(key, r), "plain": r["plain"], "adapted": r.get("adapted"),
             "met": " and ".join(r["met_by"]) or "no"} for key, r in t.items()]
    return ["## Targets", "",
            table(rows, [("target", "target"), ("plain", "plain"), ("adapted", adapted),
                         ("met", "met by")])]


def markdown(data: dict[str, Any]) -> str:
    h = data["header"]
    lines = ["# Acoustic model benchmark", "",
             f"- date: {h['date']}", f"- command: `{h['command']}`",
             f"- machine: {h['machine']['cpu']}, {h['machine']['cores']} cores", ""]
    if "targets" in data:
        lines += targets_markdown(data["targets"], data.get("adapted", {}).get("steps"))
    ev = data.get("eval")
    if ev:
        ps = data.get("pocketsphinx", {})
        lines += [f"## Model `{ev['model']}` ({ev['parameters'] / 1e6:.2f}M parameters)", "",
                  "Greedy CTC decoding, the default pipeline (beam 32 with the default LM at its "
                  "default weights, as `fusion demo` runs it) and pocketsphinx (Debian's HMM-GMM "
                  "recogniser with its own 3-gram) on the same audio, scored the same way.", ""]
        rows = [{"split": s, **ev[s], "ps_wer": ps.get(s, {}).get("wer")} for s in EVAL_SPLITS if s in ev]
        lines.append(table(rows, [("split", "split"), ("utterances", "utts"),
                                  ("audio_seconds", "audio s"), ("cer", "CER %"), ("wer", "WER %"),
                                  ("pipeline_cer", "pipeline CER %"), ("pipeline_wer", "pipeline WER %"),
                                  ("ps_wer", "pocketsphinx WER %"),
                                  ("rtfx", "posteriors x real time"), ("threads", "threads")]))
        rows = [{"split": s, "group": f"{field_} {name}", **r,
                 "ps_wer": ps.get(s, {}).get("groups", {}).get(field_, {}).get(name, {}).get("wer")}
                for s in EVAL_SPLITS if s in ev
                for field_, by in ev[s].get("groups", {}).items() for name, r in by.items()]
        if rows:
            lines += ["By age group (children: under 18) and gender:", ""]
            lines.append(table(rows, [("split", "split"), ("group", "group"), ("utterances", "utts"),
                                      ("cer", "CER %"), ("wer", "WER %"),
                                      ("pipeline_wer", "pipeline WER %"),
                                      ("ps_wer", "pocketsphinx WER %")]))
        rows = [{"split": s, "voice": v, **r} for s in EVAL_SPLITS if s in ev
                for v, r in sorted(ev[s].get("voices", {}).items(), key=lambda kv: -kv[1]["cer"])]
        if rows:
            lines += ["Error rates per voice (a voice's espeak-ng variants pooled) or, for real "
                      "speech, per source corpus, worst first:", ""]
            lines.append(table(rows, [("split", "split"), ("voice", "voice / source"),
                                      ("utterances", "utts"), ("cer", "CER %"), ("wer", "WER %"),
                                      ("pipeline_cer", "pipeline CER %"),
                                      ("pipeline_wer", "pipeline WER %")]))
        rows = [{"split": s, "voice": v, "words": word_errors_text(r["word_errors"])}
                for s in WORD_ERROR_SPLITS if s in ev for v, r in sorted(ev[s].get("voices", {}).items())
                if r.get("word_errors")]
        if rows:
            lines += ["Words each unseen voice or real-speech source got wrong most (greedy; every "
                      "split's in the JSON): errors / occurrences, then what it said instead, most "
                      "often first (`-`: nothing):", ""]
            lines.append(table(rows, [("split", "split"), ("voice", "voice / source"),
                                      ("words", "words")]))
    ad = data.get("adapt")
    if ad:
        lines += adapt_markdown(ad, ev or {})
    pre = data.get("pretraining")
    if pre:
        p = pre["pretrain"]
        lines += ["## What BEST-RQ pretraining buys", "",
                  f"BEST-RQ on {pre['unlabelled_hours']} h of training audio (transcripts unused), "
                  f"{p['steps']} steps at lr {p['lr']}; final dev masked-prediction loss "
                  f"{p['final_dev_loss']:.3f}, accuracy {p['final_dev_accuracy']:.3f} (1,024 codes). "
                  f"Then CTC fine-tuning on nested labelled subsets, the same recipe and seed from "
                  f"every start (lr {pre['finetune_lr']}): a random encoder, the BEST-RQ encoder, and "
                  f"the BEST-RQ encoder held fixed for the first updates (`frozen`: only the output "
                  f"layer learns). Greedy CER/WER on the whole `test` split, dev CER on "
                  f"{pre['dev_utterances']} dev utterances.", ""]
        lines.append(table(pre["runs"], [("labelled", "labelled"), ("labelled_minutes", "minutes"),
                                         ("init", "init"), ("steps", "steps"),
                                         ("frozen_encoder_steps", "frozen"), ("dev_cer", "dev CER %"),
                                         ("test_cer", "test CER %"), ("test_wer", "test WER %")]))
        for name in dict.fromkeys(r["labelled"] for r in pre["runs"]):
            by = {r["init"]: r for r in pre["runs"] if r["labelled"] == name}
            for init in INITS[1:]:
                if "random" in by and init in by:
                    a, b = by["random"]["test_cer"], by[init]["test_cer"]
                    lines.append(f"- {name}, {INIT_NAMES[init]}: test CER {a} -> {b} "
                                 f"({100 * (a - b) / a:+.1f}% relative reduction)")
        lines += ["", "![curves](acoustic.png)", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    home = asrfuse_home()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="eval,pocketsphinx,pretraining",
                   help="comma-separated: eval, pocketsphinx, adapt, pretraining")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--corpus", type=Path, default=home / "corpus")
    p.add_argument("--real-speech", type=Path,
                   default=REPO.parent / "shared" / "data" / "real-speech" / "manifest.jsonl")
    p.add_argument("--real-splits", type=Path, default=REPO.parent / "data" / "splits",
                   help="folder of the real-speech splits (benchmarks/real_splits.py writes them)")
    p.add_argument("--train", type=Path, default=home / "corpus" / "train.jsonl")
    p.add_argument("--feature-cache", type=Path, help="feature cache dir (default: WORK/cache)")
    p.add_argument("--work", type=Path, default=home / "bench-acoustic")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--eval-threads", type=int, default=2, help="torch threads for part eval")
    p.add_argument("--adapt-steps", type=int,
                   help="part adapt: test-time adaptation steps (default: the model's own "
                        "settings, MODEL.adapt.json, else AdaptConfig's)")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--subsets", default="10min=300,1h=450", help="NAME=STEPS, NAME like 10min or 1h")
    p.add_argument("--finetune-lr", type=float, default=1.5e-3)
    p.add_argument("--freeze-fraction", type=float, default=1 / 3,
                   help="bestrq-frozen: the share of fine-tuning steps with the encoder fixed")
    p.add_argument("--dev-utterances", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--redo", action="store_true", help="recompute parts whose results exist")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {"eval": part_eval, "pocketsphinx": part_pocketsphinx, "adapt": part_adapt,
             "pretraining": part_pretraining}
    wanted = [s.strip() for s in args.parts.split(",") if s.strip()]
    for name in wanted:
        if name not in parts:
            raise SystemExit(f"--parts: unknown part {name!r} (known: {', '.join(parts)})")
        path = args.work / f"{name}.json"
        if path.is_file() and not args.redo:
            print(f"{name}: kept {path} (--redo recomputes)", file=sys.stderr)
            continue
        result = {"header": header(), **parts[name](args, args.work)}
        path.write_text(json.dumps(result, indent=1) + "\n")

    data: dict[str, Any] = {"header": header()}
    committed = RESULTS / "acoustic.json"
    before = json.loads(committed.read_text()) if committed.is_file() else {}
    for name in parts:
        path = args.work / f"{name}.json"
        if path.is_file():
            data[name] = json.loads(path.read_text())
        elif name in before:  # a fresh machine: a part not rerun keeps its committed results
            data[name] = before[name]
            print(f"{name}: not in {args.work}, kept from {committed}", file=sys.stderr)
    ev, ps = data.get("eval"), data.get("pocketsphinx", {})
    if ev:  # the keys the issues ask for, at the top level
        for split in (s for s in SPLITS if s in ev):
            data[split] = {k: ev[split][k] for k in ("cer", "wer", "char_errors", "chars", "pipeline_wer")
                           if k in ev[split]}
            if split in ps:
                data[split]["pocketsphinx_wer"] = ps[split]["wer"]
        data["posteriors"] = {"rtfx": ev["test"]["rtfx"], "threads": ev["test"]["threads"]}
    ad = data.get("adapt")
    if ad:  # the same keys with test-time adaptation
        data["adapted"] = {"steps": ad["config"]["steps"],
                           **{split: {k: ad[split][k] for k in ("cer", "wer", "char_errors", "chars", "rtfx")
                                      if k in ad[split]}
                              for split in SPLITS if split in ad}}
    if ev:
        data["targets"] = targets(data)
    md = markdown(data)
    json_path = Path(write_results("acoustic", data, md)[0])
    if "adapt" in data:
        plot_adapt(data["adapt"], json_path.with_name("acoustic-adapt.png"))
    runs = data.get("pretraining", {}).get("runs", [])
    if runs and all(Path(r["log"]).is_file() for r in runs):
        plot(data["pretraining"], json_path.with_suffix(".png"))
    elif runs:  # a fresh machine: the study's numbers are kept, its training logs are not
        print(f"pretraining: training logs not on this machine, {json_path.with_suffix('.png').name} "
              "left as it is (rerun --parts pretraining to redraw it)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
