"""A new user's install: a fresh core-only venv, ``pip install`` of this tree, then the decoder.

    .venv/bin/python benchmarks/bench_install.py [--imports 7] \\
        [--dropin-posteriors POST.npz --dropin-manifest REFS.jsonl]

Copies the tree without any build output (so KenLM and the extensions compile from
scratch, as from an sdist), makes a venv with the machine's ``python3``, and times
``pip install`` of the core only (no extras: pip picks the newest NumPy, 2.x). Then, in
fresh processes of that venv started outside the tree: ``import fusion.decoder.search``'s time
(median of ``--imports``) and peak memory (VmHWM), which heavy modules it loaded, the
NumPy version, and whether the compiled search is built (``fusion.decoder._ctcsearch``, which
every decoder runs). Where benchmarks/bench_dropin.py exists and posteriors
are given, its results (the drop-in decoders against the originals) go under ``dropin``.
Writes benchmarks/results/install.json and install.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: What a user's checkout or sdist does not have: build output, venvs, caches.
IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                "*.so", "*.o", "*.a", ".pytest_cache", ".hypothesis")
HEAVY = ("torch", "torchaudio", "transformers", "pyctcdecode", "kenlm", "matplotlib", "optuna",
         "scipy", "ray")
TARGET_IMPORT_S = 0.3

# Run in the fresh venv: the import alone, timed, with its peak memory and what it loaded.
IMPORT_PROBE = """
import json, sys, time
t, c = time.perf_counter(), time.process_time()
import fusion.decoder.search
elapsed, cpu = time.perf_counter() - t, time.process_time() - c
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import numpy
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mib": hwm / 1024,
                  "numpy": numpy.__version__, "heavy": [m for m in %r if m in sys.modules]}))
"""

# The same for NumPy alone: what a loaded machine makes of an import the decoder cannot avoid.
NUMPY_PROBE = "import time; t = time.perf_counter(); import numpy; print(time.perf_counter() - t)"

# Run in the fresh venv: a decoder with an n-gram LM scorer, and the engine it chose.
ENGINE_PROBE = """
import json, sys
import numpy as np
from fusion.decoder.search import BeamSearchDecoder
from fusion.core.posteriors import Posteriors
from fusion.decoder.scorers import LMScorer
from fusion.core.tokens import character_table
from lm.ngram import KenLM
table = character_table()
decoder = BeamSearchDecoder(table, [LMScorer(KenLM(sys.argv[1]))], {"lm": 0.5})
rng = np.random.default_rng(0)
logits = rng.normal(size=(50, len(table)))
lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
decoder.decode(Posteriors("probe", lp, 0.04))
import fusion.decoder.search as d
print(json.dumps({"engine": "compiled" if d._ctcsearch is not None else "none",
                  "compiled_error": d._CTC_ERROR,
                  "torch_loaded": "torch" in sys.modules}))
"""

# KenLM loads no unigram-only model: two words and a bigram
ARPA = ("\\data\\\nngram 1=5\nngram 2=1\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t0\n-0.5\t</s>\t0\n"
        "-0.5\ta\t0\n-0.7\tb\t0\n\n\\2-grams:\n-0.1\ta b\n\n\\end\\\n")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise RuntimeError(f"{venv}: no site-packages")
    return found[0]


def timed(cmd: list[str], **kwargs: Any) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``: (wall seconds, CPU seconds of it and its children, result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, cpu, result


def fresh_install(work: Path, python: str, imports: int) -> dict[str, Any]:
    """Copy the tree, make a venv, pip install it (core only) and probe the result."""
    src, venv = work / "src", work / "venv"
    shutil.copytree(REPO, src, ignore=IGNORE)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = site_packages(venv)
    empty = folder_bytes(site)
    load = os.getloadavg()[0]
    wall, cpu, result = timed([py, "-m", "pip", "install", "-v", "--disable-pip-version-check", str(src)],
                              cwd=work)
    log = result.stdout + result.stderr
    kenlm_line = next((line.strip() for line in log.splitlines() if "KenLM: compressed" in line), "")
    installed = folder_bytes(site) - empty
    own = json.loads(subprocess.run(
        [py, "-c", "import json; from importlib.metadata import distribution as d; "
                   "print(json.dumps(sum(f.size or 0 for f in d('asrfuse').files)))"],
        capture_output=True, text=True, check=True, cwd=work).stdout)
    dists = subprocess.run([py, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                           capture_output=True, text=True, check=True, cwd=work).stdout
    probes = [json.loads(subprocess.run([py, "-c", IMPORT_PROBE % (HEAVY,)], capture_output=True,
                                        text=True, check=True, cwd=work).stdout)
              for _ in range(imports)]
    numpy_s = [float(subprocess.run([py, "-c", NUMPY_PROBE], capture_output=True, text=True,
                                    check=True, cwd=work).stdout) for _ in range(imports)]
    arpa = work / "probe.arpa"
    arpa.write_text(ARPA)
    engine = json.loads(subprocess.run([py, "-c", ENGINE_PROBE, str(arpa)], capture_output=True,
                                       text=True, check=True, cwd=work).stdout)
    seconds = [p["seconds"] for p in probes]
    return {
        "install_wall_s": round(wall, 1),
        "install_cpu_s": round(cpu, 1),
        "load_average_at_start": round(load, 1),
        "kenlm_build": kenlm_line,
        "installed_mib": round(installed / 2**20, 1),
        "asrfuse_mib": round(own / 2**20, 1),
        "packages": sorted(f"{d['name']}=={d['version']}" for d in json.loads(dists)),
        "import_s_median": round(statistics.median(seconds), 4),
        "import_s_all": [round(s, 4) for s in seconds],
        "import_cpu_s_median": round(statistics.median(p["cpu_seconds"] for p in probes), 4),
        "numpy_import_s_median": round(statistics.median(numpy_s), 4),
        "load_average_after": round(os.getloadavg()[0], 1),
        "import_peak_rss_mib": round(statistics.median(p["peak_rss_mib"] for p in probes), 1),
        "heavy_modules_loaded": sorted({m for p in probes for m in p["heavy"]}),
        "numpy": probes[0]["numpy"],
        **engine,
    }


def dropin(posteriors: Path | None, manifest: Path | None) -> dict[str, Any]:
    """bench_dropin's results on the given posteriors, or a note saying why there are none.
    It is imported by its own name (benchmarks/ is on ``sys.path``), so the functions it runs
    in child processes pickle."""
    if posteriors is None or manifest is None:
        return {"note": "no --dropin-posteriors/--dropin-manifest given: rerun with them"}
    import bench_dropin

    return bench_dropin.run(posteriors, manifest, REPO / "lm" / "models" / "word-3gram" / "model.bin")


def markdown(data: dict[str, Any]) -> str:
    r = data["fresh_venv"]
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    lines = [
        "# Install: a fresh core-only venv",
        "",
        f"Date {data['date']}; machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, "
        f"Python {data['machine']['python']}; command: `{data['command']}`.",
        "",
        "`pip install` of a copy of the tree without build output (core only, no extras), into "
        "a new venv; the imports run in fresh processes outside the tree.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| install wall time | {r['install_wall_s']} s (CPU {r['install_cpu_s']} s; load average "
        f"{r['load_average_at_start']} at start) | |",
        f"| installed size | {r['installed_mib']} MiB in site-packages, asrfuse itself "
        f"{r['asrfuse_mib']} MiB | |",
        f"| `import fusion.decoder.search` | {r['import_s_median'] * 1000:.0f} ms median of "
        f"{len(r['import_s_all'])} (CPU {r['import_cpu_s_median'] * 1000:.0f} ms; `import numpy` "
        f"alone {r['numpy_import_s_median'] * 1000:.0f} ms; load average "
        f"{r['load_average_after']}) | < 300 ms: {ok(r['import_s_median'] < TARGET_IMPORT_S)} |",
        f"| its peak memory | {r['import_peak_rss_mib']} MiB | |",
        f"| heavy modules loaded | {', '.join(r['heavy_modules_loaded']) or 'none'} | no torch: "
        f"{ok('torch' not in r['heavy_modules_loaded'])} |",
        f"| decoder engine with a KenLM scorer | {r['engine']} | compiled: "
        f"{ok(r['engine'] == 'compiled')} |",
        f"| NumPy | {r['numpy']} | 2.x: {ok(r['numpy'].startswith('2.'))} |",
        "",
        f"KenLM build: {r['kenlm_build'] or '(not reported)'}.",
        "",
        f"Packages installed: {', '.join(r['packages'])}.",
        "",
        "## Drop-in decoders",
        "",
    ]
    d = data["dropin"]
    lines.append(d["note"] if "note" in d else "```json\n" + json.dumps(d, indent=1) + "\n```")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=shutil.which("python3") or sys.executable,
                        help="the interpreter the fresh venv is made from")
    parser.add_argument("--imports", type=int, default=7, help="fresh processes to time")
    parser.add_argument("--dropin-posteriors", type=Path)
    parser.add_argument("--dropin-manifest", type=Path)
    args = parser.parse_args(argv)
    if args.imports < 1:
        raise SystemExit("--imports must be at least 1")
    with tempfile.TemporaryDirectory(prefix="asrfuse-install-") as tmp:
        fresh = fresh_install(Path(tmp), args.python, args.imports)
    data = {**header(), "fresh_venv": fresh,
            "dropin": dropin(args.dropin_posteriors, args.dropin_manifest)}
    write_results("install", data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
