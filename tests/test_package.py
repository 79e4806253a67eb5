"""``import fusion``: the public names, each from its one module, loaded on first use."""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusion

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    return out.stdout.split()


def test_every_public_name_resolves_to_its_home_module():
    assert fusion.__all__[0] == "__version__" and len(set(fusion.__all__)) == len(fusion.__all__)
    for name in fusion.__all__[1:]:
        value = getattr(fusion, name)
        home = importlib.import_module(fusion._EXPORTS[name])
        assert value is getattr(home, name), name
        assert name in getattr(home, "__all__", [name]), f"{name} is not public in its module"
        assert name in dir(fusion)
    assert isinstance(fusion.__version__, str)


def test_the_names_a_newcomer_needs_are_there():
    wanted = {"BeamSearchDecoder", "DecodeConfig", "build_decoder", "TokenTable", "Posteriors",
              "PosteriorsReader", "PosteriorsWriter", "DecodeResult", "greedy_decode",
              "LMScorer", "LexiconScorer", "HotwordScorer", "WordBonus", "WordScorer"}
    assert wanted <= set(fusion.__all__)


def test_unknown_names_and_submodules():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fusion.nope  # noqa: B018
    from fusion import run  # a subpackage is still imported, not mistaken for a name

    assert run.__name__ == "fusion.run"


def test_import_fusion_is_light():
    """No torch, numpy or search module until a name is used; a lowest-layer name loads
    no torch either."""
    loaded = _run("import sys, fusion; print('torch' in sys.modules, 'numpy' in sys.modules, "
                  "'fusion.decoder.search' in sys.modules, 'fusion.decoder._ctcsearch' in sys.modules)")
    assert loaded == ["False", "False", "False", "False"]
    loaded = _run("import sys, fusion; fusion.PosteriorsReader, fusion.TokenTable; "
                  "print('torch' in sys.modules, 'fusion.decoder.search' in sys.modules)")
    assert loaded == ["False", "False"]


def test_decode_through_the_front_door(tmp_path, table):
    """The package docstring's way in, without an LM: the best path of peaked posteriors."""
    frames = ["h", "h", "<blank>", "i", "|"]
    log_probs = np.full((len(frames), len(table)), np.log(1e-4 / (len(table) - 1)), np.float32)
    for t, token in enumerate(frames):
        log_probs[t, table.tokens.index(token)] = np.log(1 - 1e-4)
    with fusion.PosteriorsWriter(tmp_path / "p.npz", token_table=table) as writer:
        writer.write(fusion.Posteriors("u1", log_probs, 0.04))
    with fusion.PosteriorsReader(tmp_path / "p.npz") as reader:
        decoder = fusion.build_decoder(fusion.DecodeConfig(lm=None), reader.token_table)
        results = [decoder.decode(p) for p in reader]
    assert [r.best.text for r in results] == ["hi"]
    assert isinstance(results[0], fusion.DecodeResult)
