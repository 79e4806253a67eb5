"""The LM text corpus never trains on held-out or real-speech sentences."""

import json

from fusion.cli.main import main
from fusion.corpus.build import sentence_split
from fusion.corpus.lmtext import build_lm_text
from fusion.corpus.sources import cache_path


def test_no_leakage(tmp_path):
    # many distinct sentences so every split receives some; plus the ones that must not leak
    sentences = [f"the {a} saw the {b} by the river" for a in ("cat", "dog", "fox", "owl", "hen")
                 for b in ("boat", "tree", "house", "mill", "bridge", "gate", "barn", "pond")]
    real = "printing in the only sense with which we are at present concerned"
    containing = f"and so {real} he said"
    excluded = sentences[0] if sentence_split(sentences[0]) == "train" else sentences[1]
    pool = sentences + [real, containing]
    cache = tmp_path / "cache"
    cache.mkdir()
    cache_path("austen", cache_dir=cache).write_text("\n".join(pool) + "\n")
    (tmp_path / "exclude.txt").write_text(excluded.upper() + ".\n")  # normalised before matching
    summary = build_lm_text(tmp_path / "out", sources=("austen",), heldout_fraction=0.5,
                            exclude_files=[tmp_path / "exclude.txt"], forbidden=[real],
                            cache_dir=cache)
    splits = {s: (tmp_path / "out" / f"{s}.txt").read_text().splitlines()
              for s in ("train", "dev", "test")}
    everything = [s for lines in splits.values() for s in lines]
    assert real not in everything and containing not in everything
    assert excluded not in splits["train"]
    for split, lines in splits.items():
        assert lines and all(sentence_split(s, 0.5) == split for s in lines)
    assert not set(splits["train"]) & (set(splits["dev"]) | set(splits["test"]))
    written = json.loads((tmp_path / "out" / "lm-text.json").read_text())
    assert written == summary and summary["splits"]["train"]["sentences"] == len(splits["train"])


def test_cli_build_and_perplexity(tmp_path, capsys):
    lines = [f"the {a} {v} the {b}" for a in ("cat", "dog", "owl") for v in ("saw", "ate", "met")
             for b in ("mat", "hat", "bat")]
    (tmp_path / "train.txt").write_text("\n".join(lines * 3) + "\n")
    (tmp_path / "test.txt").write_text("the cat saw the hat\nthe owl met the zebra\n")
    for level in ("word", "char"):
        out = tmp_path / f"{level}.arpa"
        assert main(["lm", "build", str(tmp_path / "train.txt"), "-o", str(out), "--order", "3",
                     "--level", level, "--binary"]) == 0
        assert out.exists() and out.with_suffix(".bin").exists()
        assert main(["lm", "ppl", str(out.with_suffix(".bin")), str(tmp_path / "test.txt"),
                     "--level", level, "--json"]) == 0
        out_text = capsys.readouterr().out
        result = json.loads(out_text[out_text.index("{"):])
        assert result["sentences"] == 2 and result["perplexity"] > 1
        # word: "zebra" is unknown; char: "z" and "r" are (and "|" + </s> count as units)
        assert result["oov_words"] == (1 if level == "word" else 2)
        assert result["units"] == (6 + 6 if level == "word" else 20 + 22)
