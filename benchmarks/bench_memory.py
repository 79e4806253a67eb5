"""Peak memory of decoding long utterances: greedy with confidences, beam search (the word
3-gram, compiled search, forced alignment and confidences included) and ``fusion align``'s
alignment, on synthetic peaky posteriors of 1, 10 and 30 minutes (40 ms frames, the
character table's 29 units, about 12 units a second, the issue's 21.6k units at 30
minutes).

Each case runs in a fresh interpreter that measures its own peak RSS (VmHWM after
resetting it) growth; a case over ``--cap-gib`` of RSS is stopped and reported as over
the cap. ``--before PATH`` runs the same cases on another checkout of the code (e.g.
``git archive`` of an older commit with its built extension) in the same run, side by
side, and checks that both give the same outputs.

    .venv/bin/python benchmarks/bench_memory.py [--minutes 1 10 30] [--before /tmp/before]

Writes benchmarks/results/memory.json and memory.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIGRAM = ROOT / "lm" / "models" / "word-3gram"
FRAME_SHIFT = 0.04
UNITS_PER_FRAME = 0.48  # 12 units a second at 40 ms
CASES = ("greedy", "beam", "align")


def make_posteriors(minutes: float, seed: int = 0):
    """Peaky log-posteriors of random words of the 3-gram's vocabulary, and their text:
    one frame per unit (a blank between any two), noise everywhere."""
    import numpy as np

    from fusion.core.posteriors import Posteriors
    from fusion.core.tokens import character_table

    table = character_table()
    rng = np.random.default_rng(seed)
    frames = int(round(minutes * 60 / FRAME_SHIFT))
    vocab = [w for w in (TRIGRAM / "vocab.txt").read_text().split()[:5000]
             if all(c in table.tokens for c in w)]
    words: list[str] = []
    length = 0
    while length < frames * UNITS_PER_FRAME:
        words.append(vocab[int(rng.integers(len(vocab)))])
        length += len(words[-1]) + 1
    units = [table.id_of(c) for c in "|".join(words)]
    lp = rng.normal(0.0, 1.0, size=(frames, len(table))).astype(np.float32)  # (T, V)
    lp[:, table.blank_id] += 6.0
    at = (np.arange(len(units)) * (frames / len(units))).astype(int)
    lp[at, units] += 12.0
    lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return Posteriors("long", lp, FRAME_SHIFT), " ".join(words), table


def run_case(case: str, minutes: float) -> dict:
    """In the child: the case's peak RSS growth (MiB), time and an output digest."""
    p, text, table = make_posteriors(minutes)
    if case == "beam":
        from fusion.decoder.options import SearchOptions
        from fusion.decoder.scorers import LMScorer, WordBonus
        from fusion.decoder.search import BeamSearchDecoder
        from lm.ngram import KenLM

        unigrams = (TRIGRAM / "vocab.txt").read_text().split()
        lm = LMScorer(KenLM(TRIGRAM / "model.bin"), unigrams=unigrams)
        decoder = BeamSearchDecoder(table, [lm, WordBonus()],
                                    {"lm": 0.8, "word_bonus": 1.0}, SearchOptions())
    elif case == "greedy":
        import torch  # noqa: F401 (imported by greedy_decode: loaded before the measurement)

        from fusion.decoder.greedy import greedy_decode
    else:
        from hmm.align import align
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    if case == "greedy":
        (result,) = greedy_decode([p], table)
        out = [(w.word, w.start, w.end, w.confidence) for w in result.best.words]
    elif case == "beam":
        result = decoder.decode(p)
        out = [(w.word, w.start, w.end, w.confidence) for w in result.best.words]
    else:
        result = align(p, text, table)
        out = [(w.word, w.start, w.end, w.confidence) for w in result.words]
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"case": case, "minutes": minutes, "frames": p.num_frames,
            "units": len(text.replace(" ", "")) + text.count(" "),
            "peak_growth_mib": round((peak - before) / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "seconds": round(seconds, 2), "words": len(out),
            "digest": hashlib.sha256(repr(out).encode()).hexdigest()[:16],
            "code": str(Path(sys.modules["fusion"].__file__).parents[1])}


def _status_kib(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def in_child(code: Path, case: str, minutes: float, cap_gib: float) -> dict:
    """Run one case with ``code`` first on the path; stop it past ``cap_gib`` of RSS."""
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, __file__, "--child", case, str(minutes)], cwd=code,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top = 0
    while proc.poll() is None:
        try:
            rss = _status_kib("VmRSS", str(proc.pid))
        except OSError:
            break
        top = max(top, rss)
        if rss > cap_gib * 2**20:
            proc.kill()
            proc.wait()
            return {"case": case, "minutes": minutes, "over_cap_gib": cap_gib,
                    "peak_rss_mib": round(top / 1024, 1)}
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"case": case, "minutes": minutes, "error": err.strip().splitlines()[-1][:300]}
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 30.0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--before", type=Path, help="another checkout of the code to compare")
    parser.add_argument("--cap-gib", type=float, default=6.0,
                        help="stop a case past this RSS (GiB): the machine is shared")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(args.child[0], float(args.child[1]))))
        return 0

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import header, table, write_results

    versions = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    rows = []
    for minutes in args.minutes:
        for case in args.cases:
            row: dict = {"case": case, "minutes": minutes}
            for name, code in versions.items():
                r = in_child(code, case, minutes, args.cap_gib)
                print(name, json.dumps(r), flush=True)
                row[name] = r
                row[f"{name}_mib"] = (f">{args.cap_gib * 1024:.0f} (stopped)" if "over_cap_gib" in r
                                      else r.get("peak_growth_mib", r.get("error")))
                row[f"{name}_s"] = r.get("seconds")
            row["frames"] = row["after"].get("frames")
            row["units"] = row["after"].get("units")
            if "before" in row and "digest" in row["before"]:
                row["same_output"] = row["before"]["digest"] == row["after"]["digest"]
            rows.append(row)
    data = {**header(), "frame_shift": FRAME_SHIFT, "cap_gib": args.cap_gib, "rows": rows}
    columns = [("case", "case"), ("minutes", "minutes"), ("frames", "frames"), ("units", "units"),
               ("after_mib", "peak MiB after"), ("after_s", "s after")]
    if args.before:
        columns += [("before_mib", "peak MiB before"), ("before_s", "s before"),
                    ("same_output", "same output")]
    md = (f"# Peak memory of long utterances\n\n{data['date']}, `{data['command']}`\n\n"
          f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, "
          f"{data['machine']['memory_gib']} GiB.\n\nPeak RSS growth of each case in a fresh "
          "process (posteriors made before the measurement); cases past the cap were stopped.\n\n"
          + table(rows, columns))
    js, mdp = write_results("memory", data, md)
    print(md)
    print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
