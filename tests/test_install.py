"""The distribution: its import packages and console script, the compiled parts with KenLM
inside, a light ``import fusion.decoder.search``, and requirements split by job (setup.cfg).

These run in both test worlds of ``make test``: the full venv and the core-only one
(NumPy 2, no torch); the fresh-venv install itself is timed by benchmarks/bench_install.py.
"""

import configparser
import gzip
import re
import subprocess
import sys
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from test_ctcsearch import BIASED_ARPA  # with a bigram: KenLM loads no unigram-only model

from conftest import ambiguous
from fusion.decoder.scorers import LMScorer
from fusion.decoder.search import BeamSearchDecoder
from lm.ngram import KenLM

ROOT = Path(__file__).resolve().parents[1]

#: Modules that the core must not load to decode (the extras' heavy imports).
HEAVY = ("torch", "torchaudio", "transformers", "pyctcdecode", "kenlm", "matplotlib", "optuna",
         "scipy", "ray")

#: The extras setup.cfg offers, one per job.
EXTRAS = {"am", "neural", "tune", "ray", "hf", "pyctcdecode", "corpus", "dev", "bench"}


def requirements() -> dict[str, list[str]]:
    """setup.cfg's requirements by extra ("" for the core), as written there."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {"": cfg["options"]["install_requires"]}
    out.update(cfg["options.extras_require"].items())
    return {extra: [r.strip() for r in reqs.splitlines() if r.strip()] for extra, reqs in out.items()}


def names(reqs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs}


def test_packages_come_from_the_installed_distribution():
    owners = packages_distributions()
    for package in ("fusion", "lm", "hmm"):
        assert set(owners.get(package, ())) == {"asrfuse"}, package
        module = __import__(package)
        assert module.__doc__


def test_console_script_is_declared_and_runs():
    scripts = [ep for ep in distribution("asrfuse").entry_points if ep.group == "console_scripts"]
    assert [(ep.name, ep.value) for ep in scripts] == [("fusion", "fusion.cli.main:main")]
    out = subprocess.run([sys.executable, "-m", "fusion.cli", "--help"],
                         capture_output=True, text=True, check=True)
    for command in ("decode", "score", "demo"):
        assert command in out.stdout


def test_the_core_requires_nothing_heavy_and_numpy_without_a_cap():
    reqs = requirements()
    core = names(reqs[""])
    assert "numpy" in core and not core & set(HEAVY), core
    assert "numpy>=1.24" in reqs[""]  # 1.24 through 2.x: no upper bound
    assert set(reqs) - {""} == EXTRAS
    assert {"torch", "torchaudio", "soundfile"} <= names(reqs["am"])
    assert {"optuna", "matplotlib"} <= names(reqs["tune"])
    assert "transformers" in names(reqs["hf"]) and "pyctcdecode" in names(reqs["pyctcdecode"])


def test_import_fusion_decoder_loads_no_heavy_module():
    code = ("import sys, fusion.decoder.search; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.split() == []


def test_kenlm_is_compiled_in_and_the_decoder_runs_the_compiled_search(table, tmp_path):
    from fusion.decoder import _ctcsearch  # noqa: F401  (an ImportError here names what is missing)
    from lm import _kenlm

    path = tmp_path / "b.arpa"
    path.write_text(BIASED_ARPA)
    model = _kenlm.Model(str(path))
    assert model.order == 2 and round(model.score("bat", bos=False, eos=False), 6) == -0.5
    decoder = BeamSearchDecoder(table, [LMScorer(KenLM(path))], {"lm": 1.0})
    assert [s["kind"] for s in decoder._spec] == ["kenlm"]
    assert decoder.decode(ambiguous(table)).best.text == "bat sat"


def test_kenlm_reads_a_gzipped_arpa(tmp_path):
    """zlib is found at build time on every machine the project builds on (zlib1g-dev)."""
    path = tmp_path / "b.arpa.gz"
    path.write_bytes(gzip.compress(BIASED_ARPA.encode()))
    assert KenLM(path).score(KenLM(path).null_state(), "cat")[1] < -6.9  # log10 -3.0, in ln


def test_the_sdist_carries_the_sources_and_kenlm_licence():
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "graft fusion/decoder/csrc" in manifest
    kenlm = ROOT / "fusion" / "decoder" / "csrc" / "kenlm"
    for name in ("LICENSE", "COPYING", "COPYING.LESSER.3", "util/double-conversion/LICENSE",
                 "lm/model.cc", "python/kenlm.pyx"):
        assert (kenlm / name).is_file(), name
