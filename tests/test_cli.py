import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REAL_SPEECH
from fusion.cli.main import EXTENSIONS, get_parser, main
from fusion.core.posteriors import Posteriors, PosteriorsWriter
from fusion.core.simulate import simulate_posteriors
from fusion.decoder.options import SearchOptions


@pytest.fixture
def corpus(tmp_path, table, rng):
    texts = {"u1": "hello world", "u2": "the cat sat", "u3": "good morning"}
    with PosteriorsWriter(tmp_path / "post.npz", token_table=table) as w:
        for utt_id, text in texts.items():
            w.write(simulate_posteriors(utt_id, text, table, rng)[0])
    (tmp_path / "ref.jsonl").write_text(
        "".join(json.dumps({"id": u, "text": t.upper() + "."}) + "\n" for u, t in texts.items()))
    return tmp_path


def test_decode_then_score(corpus, capsys):
    assert main(["decode", str(corpus / "post.npz"), "-o", str(corpus / "hyp.jsonl")]) == 0
    rows = [json.loads(line) for line in (corpus / "hyp.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["u1", "u2", "u3"]
    assert rows[0]["text"] == "hello world" and [w["word"] for w in rows[0]["words"]] == [
        "hello", "world"]
    assert main(["score", "--ref", str(corpus / "ref.jsonl"), "--hyp",
                 str(corpus / "hyp.jsonl"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["wer"] == 0.0 and result["utterances"] == 3 and "word_errors" not in result


def test_decode_in_worker_processes_writes_what_one_process_writes(corpus, tmp_path):
    """-o with --workers 2 (the local backend, --batch-size utterances a task): the same
    file as in this process, greedy and beam search alike."""
    for decoder in ("greedy", "beam"):
        outs = []
        for workers in ("1", "2"):
            out = tmp_path / f"{decoder}-{workers}.jsonl"
            assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", decoder,
                         "--workers", workers, "--batch-size", "2"]) == 0
            outs.append(out.read_bytes())
        assert outs[0] == outs[1] and outs[0].count(b"\n") == 3


def test_score_lists_the_words_misrecognised_most(tmp_path, capsys):
    (tmp_path / "ref.jsonl").write_text(
        json.dumps({"id": "a", "text": "The cat and the dog."}) + "\n"
        + json.dumps({"id": "b", "text": "the end"}) + "\n")
    (tmp_path / "hyp.jsonl").write_text(
        json.dumps({"id": "a", "text": "de cat an de dog"}) + "\n"
        + json.dumps({"id": "b", "text": "end"}) + "\n")
    args = ["score", "--ref", str(tmp_path / "ref.jsonl"), "--hyp", str(tmp_path / "hyp.jsonl")]
    assert main([*args, "--word-errors", "2"]) == 0
    out = capsys.readouterr().out
    assert "WER  57.14%  (3 sub, 1 del, 0 ins of 7 words)" in out  # every "the", and "and"
    lines = out.splitlines()
    i = lines.index("words misrecognised most (errors/occurrences, then what they were heard as):")
    assert lines[i + 1:] == ["  the  3/3 (100.0%)  de 2, <deleted> 1", "  and  1/1 (100.0%)  an 1"]
    assert main([*args, "--word-errors", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["word_errors"] == [{"word": "the", "count": 3, "errors": 3,
                                      "heard_as": [["de", 2], ["", 1]]}]
    with pytest.raises(SystemExit, match="--word-errors must be at least 0, got -1"):
        main([*args, "--word-errors", "-1"])


def test_score_compares_two_systems(tmp_path, capsys):
    """--compare: B's rates beside A's, and the paired bootstrap of B - A (A errs on two of
    three utterances, B on none: B is better unless a resample draws only the third)."""
    refs = {"a": "x y", "b": "x y z w", "c": "p q"}
    write = lambda name, rows: (tmp_path / name).write_text(  # noqa: E731
        "".join(json.dumps({"id": u, "text": t}) + "\n" for u, t in rows.items()))
    write("ref.jsonl", refs)
    write("a.jsonl", {"a": "x", "b": "x y z w", "c": "p r"})
    write("b.jsonl", refs)
    args = ["score", "--ref", str(tmp_path / "ref.jsonl"), "--hyp", str(tmp_path / "a.jsonl"),
            "--compare", str(tmp_path / "b.jsonl"), "--resamples", "2000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"B = {tmp_path / 'b.jsonl'}" in out
    assert "paired bootstrap over 3 utterances, 2000 resamples:" in out
    wer_line = next(line for line in out.splitlines() if line.startswith("WER  A"))
    assert wer_line.startswith("WER  A 25.00%  B 0.00%  B - A -25.00 points [95%: ")
    better, worse = wer_line.split("P(B better) ")[1].split("  P(B worse) ")
    assert float(better) == pytest.approx(26 / 27, abs=0.01) and float(worse) == 0.0
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["wer"] == 0.25 and result["compare"]["wer"] == 0.0
    assert result["compare"]["words"]["delta"] == -25.0 and result["compare"]["chars"]["unit"] == "chars"
    assert result["compare"]["hyp"] == str(tmp_path / "b.jsonl")
    with pytest.raises(SystemExit, match="--resamples must be at least 1, got 0"):
        main([*args[:-2], "--resamples", "0"])
    write("one.jsonl", {"a": "x y"})
    with pytest.raises(SystemExit, match=r"--compare .*b.jsonl: a paired bootstrap needs at least 2"):
        main(["score", "--ref", str(tmp_path / "one.jsonl"), "--hyp", str(tmp_path / "a.jsonl"),
              "--compare", str(tmp_path / "b.jsonl")])


def test_bad_utterance_is_recorded_and_the_rest_decoded(tmp_path, table, rng):
    good = simulate_posteriors("good", "yes", table, rng)[0]
    bad = Posteriors("bad", np.full((3, 29), np.nan, dtype=np.float32), 0.04)
    with PosteriorsWriter(tmp_path / "p.npz", token_table=table) as w:
        w.write(bad)
        w.write(good)
    assert main(["decode", str(tmp_path / "p.npz"), "-o", str(tmp_path / "h.jsonl")]) == 1
    assert [json.loads(x)["id"] for x in (tmp_path / "h.jsonl").read_text().splitlines()] == [
        "good"]
    (err,) = [json.loads(x) for x in (tmp_path / "h.errors.jsonl").read_text().splitlines()]
    assert err["id"] == "bad" and "NaN" in err["error"]


def test_plain_npz_needs_tokens_and_kind(tmp_path, table, capsys):
    np.savez(tmp_path / "plain.npz", a=np.full((4, 29), 1 / 29))
    assert main(["decode", str(tmp_path / "plain.npz"), "-o", str(tmp_path / "h.jsonl")]) == 2
    assert "kind= and frame_shift=" in capsys.readouterr().err
    table.save(tmp_path / "tokens.json")
    assert main(["decode", str(tmp_path / "plain.npz"), "-o", str(tmp_path / "h.jsonl"),
                 "--kind", "probs", "--frame-shift", "0.02",
                 "--tokens", str(tmp_path / "tokens.json")]) == 0


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["score", "--ref", str(tmp_path / "nope.jsonl"), "--hyp", "x"]) == 2
    assert "nope.jsonl: cannot open" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decode", "p.npz", "-o", "h.jsonl", "--decoder", "magic"])


@pytest.mark.skipif(not (REAL_SPEECH / "manifest.jsonl").exists(), reason="no shared data")
def test_demo_runs_on_the_real_speech_manifest(capsys):
    assert main(["demo", "--manifest", str(REAL_SPEECH / "manifest.jsonl"), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "utterances 75" in out and "WER" in out


def test_beam_decode_with_an_lm(corpus, tmp_path):
    text = "hello world\nthe cat sat\ngood morning\n" * 5
    (tmp_path / "t.txt").write_text(text)
    assert main(["lm", "build", str(tmp_path / "t.txt"), "-o", str(tmp_path / "lm.arpa"),
                 "--order", "2"]) == 0
    out = tmp_path / "beam.jsonl"
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                 "--lm", str(tmp_path / "lm.arpa"), "--nbest", "2", "--beam-size", "4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["hello world", "the cat sat", "good morning"]
    assert set(rows[0]["scores"]) == {"acoustic", "lm", "word_bonus"} and len(rows[0]["nbest"]) == 2
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "pyctcdecode",
                 "--lm", str(tmp_path / "lm.arpa")]) == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [
        "hello world", "the cat sat", "good morning"]
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                 "--nbest", "9", "--beam-size", "4"]) == 2


def test_the_unknown_word_penalty(corpus, tmp_path, capsys):
    """--oov-penalty: a scorer 'oov' scoring -1 per word outside the LM's words, weighted by
    the penalty; at 0 it changes no hypothesis. It needs an LM and the LM's words."""
    from lm.ngram import build_binary

    (tmp_path / "t.txt").write_text("hello world\nthe cat sat\n" * 5)  # no 'good morning'
    lm = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(tmp_path / "t.txt"), "-o", str(lm), "--order", "2"]) == 0

    def decode(*extra: str) -> list[dict]:
        out = tmp_path / "oov.jsonl"
        # weights fixed here, not the defaults: at beam 4 which alignments survive (and so a
        # hypothesis' summed score) depends on them
        assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                     "--lm", str(lm), "--lm-weight", "0.95", "--word-bonus", "4.22",
                     "--beam-size", "4", *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    plain, zero, some = decode(), decode("--oov-penalty", "0"), decode("--oov-penalty", "1.5")
    assert [r["text"] for r in plain] == [r["text"] for r in zero] == [r["text"] for r in some] == [
        "hello world", "the cat sat", "good morning"]
    assert [r["scores"]["oov"] for r in zero] == [r["scores"]["oov"] for r in some] == [0.0, 0.0, -2.0]
    assert "oov" not in plain[0]["scores"]
    for a, b in zip(plain, some):  # the same hypotheses, each OOV word 1.5 lower
        assert b["score"] == pytest.approx(a["score"] + 1.5 * b["scores"]["oov"])
    # the same from a config's [weights]
    (tmp_path / "oov.toml").write_text("[weights]\noov = 1.5\n")
    assert [r["score"] for r in decode("--config", str(tmp_path / "oov.toml"))] == [r["score"] for r in some]
    # no LM, or an LM whose words are unknown (a binary without a vocabulary): clear errors
    capsys.readouterr()
    assert main(["decode", str(corpus / "post.npz"), "-o", str(tmp_path / "x.jsonl"),
                 "--decoder", "beam", "--lm", "none", "--oov-penalty", "2"]) == 2
    assert "unknown-word penalty (--oov-penalty, [weights] oov) needs an LM" in capsys.readouterr().err
    build_binary(lm, tmp_path / "lm.bin")
    assert main(["decode", str(corpus / "post.npz"), "-o", str(tmp_path / "x.jsonl"),
                 "--decoder", "beam", "--lm", str(tmp_path / "lm.bin"), "--oov-penalty", "2"]) == 2
    assert "lm.bin: an unknown-word penalty (weight 'oov') needs the LM's words" in capsys.readouterr().err


def test_hotwords_file(corpus, tmp_path):
    (tmp_path / "hot.txt").write_text("Hello World\t3\ngood morning\n\n")
    out = tmp_path / "h.jsonl"
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                 "--hotwords", str(tmp_path / "hot.txt")]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["text"] == "hello world" and first["scores"]["hotwords"] == 6.0
    (tmp_path / "bad.txt").write_text("x\tlots\n")
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                 "--hotwords", str(tmp_path / "bad.txt")]) == 2


def test_config_file_and_ctm(corpus, tmp_path):
    (tmp_path / "t.txt").write_text("hello world\nthe cat sat\ngood morning\n" * 5)
    main(["lm", "build", str(tmp_path / "t.txt"), "-o", str(tmp_path / "lm.arpa"), "--order", "2"])
    (tmp_path / "dec.toml").write_text(
        '[search]\nbeam_size = 4\nnbest = 2\n[weights]\nlm = 0.3\n[lm]\npath = "lm.arpa"\n')
    out = tmp_path / "h.jsonl"
    assert main(["decode", str(corpus / "post.npz"), "-o", str(out), "--decoder", "beam",
                 "--config", str(tmp_path / "dec.toml"), "--ctm", str(tmp_path / "h.ctm"),
                 "--word-bonus", "0.5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows[0]["nbest"]) == 2 and set(rows[0]["scores"]) == {"acoustic", "lm", "word_bonus"}
    first = rows[0]
    total = first["scores"]["acoustic"] + 0.3 * first["scores"]["lm"] + 0.5 * first["scores"]["word_bonus"]
    assert first["score"] == pytest.approx(total)
    ctm = (tmp_path / "h.ctm").read_text().splitlines()
    assert [line.split()[4] for line in ctm[:2]] == ["hello", "world"]
    assert ctm[0].split()[:2] == ["u1", "1"] and float(ctm[0].split()[3]) > 0


@pytest.mark.parametrize("text, message", [
    ("[serch]\nbeam_size = 4\n", "unknown table"),
    ("[search]\nbeam = 4\n", "unknown key"),
    ("[search]\nbeam_size = 0\n", "beam_size"),
    ("[weights]\nlm = 'high'\n", "must be a number"),
    ("[lm]\npath = 3\n", "path string"),
    ("[search\n", "cannot read config"),
])
def test_bad_config_files(corpus, tmp_path, capsys, text, message):
    (tmp_path / "bad.toml").write_text(text)
    assert main(["decode", str(corpus / "post.npz"), "-o", str(tmp_path / "h.jsonl"),
                 "--decoder", "beam", "--config", str(tmp_path / "bad.toml")]) == 2
    assert message in capsys.readouterr().err


def test_align_writes_json_ctm_srt_and_records_failures(corpus, tmp_path):
    (tmp_path / "text.jsonl").write_text(
        '{"id": "u1", "text": "Hello, world!"}\n{"id": "u2", "text": "the cat sat"}\n'
        '{"id": "u3", "text": "%s"}\n{"id": "missing", "text": "x"}\n' % ("far too long " * 30))
    out = tmp_path / "al.jsonl"
    assert main(["align", str(corpus / "post.npz"), "--text", str(tmp_path / "text.jsonl"),
                 "-o", str(out), "--ctm", str(tmp_path / "al.ctm"),
                 "--srt", str(tmp_path / "al.srt")]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["u1", "u2"]
    words = rows[0]["words"]
    assert [w["word"] for w in words] == ["hello", "world"]
    assert words[0]["start"] < words[0]["end"] <= words[1]["start"] and 0 < words[0]["confidence"] <= 1
    assert len((tmp_path / "al.ctm").read_text().splitlines()) == 5
    srt = (tmp_path / "al.srt").read_text()
    assert srt.startswith("1\n00:00:00,") and "hello world" in srt and "\n2\n" in srt
    errors = {json.loads(x)["id"]: json.loads(x)["error"]
              for x in (tmp_path / "al.errors.jsonl").read_text().splitlines()}
    assert set(errors) == {"u3", "missing"} and "no posteriors" in errors["missing"]
    assert "'u3'" in errors["u3"]


def test_align_with_a_duration_hmm_and_a_calibration(corpus, tmp_path, table, monkeypatch, capsys):
    import fusion.cli.main as cli
    from fusion.core.tokens import TokenTable
    from hmm.emissions import ScaledLikelihoods
    from hmm.model import DurationConfig, TiedDurationHMM
    from hmm.timing import BoundaryCalibration
    from hmm.topology import TopologyConfig

    (tmp_path / "text.jsonl").write_text('{"id": "u1", "text": "hello world"}\n')
    base = ["align", str(corpus / "post.npz"), "--text", str(tmp_path / "text.jsonl")]

    def words(name: str, *extra: str) -> tuple[dict, list]:
        assert main([*base, "-o", str(tmp_path / name), *extra]) == 0
        (row,) = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return row, [(w["start"], w["end"]) for w in row["words"]]

    plain_row, plain = words("plain.jsonl")
    assert plain_row["method"] == "ctc" and plain_row["calibrated"] is False
    # starts 0.04 s later, ends 0.04 s earlier (the words are apart enough not to meet)
    BoundaryCalibration.constant(0.04, start=-0.04, end=0.04).save(tmp_path / "cal.json")
    row, shifted = words("cal.jsonl", "--calibration", str(tmp_path / "cal.json"))
    assert row["calibrated"] is True
    np.testing.assert_allclose(shifted, [(a + 0.04, b - 0.04) for a, b in plain], atol=1e-4)
    TiedDurationHMM(table, ScaledLikelihoods()).save(tmp_path / "hmm.json")
    row, _ = words("hmm.jsonl", "--hmm", str(tmp_path / "hmm.json"))
    assert row["method"] == "hmm"
    TiedDurationHMM(table, ScaledLikelihoods(), DurationConfig(topology=TopologyConfig(blank="word"))).save(
        tmp_path / "word-blanks.json")
    assert main([*base, "-o", str(tmp_path / "w.jsonl"), "--method", "ctc",
                 "--hmm", str(tmp_path / "word-blanks.json")]) == 2
    assert "CTC's topology" in capsys.readouterr().err
    # the embedded files: picked by method; absent ones named
    monkeypatch.setattr(cli, "EMBEDDED_ALIGN", tmp_path / "embedded")
    assert main([*base, "-o", str(tmp_path / "x.jsonl"), "--calibration", "default"]) == 2
    assert "boundary-calibration-ctc.json" in capsys.readouterr().err
    (tmp_path / "embedded").mkdir()
    (tmp_path / "cal.json").rename(tmp_path / "embedded" / "boundary-calibration-hmm.json")
    (tmp_path / "hmm.json").rename(tmp_path / "embedded" / "duration-hmm.json")
    row, _ = words("emb.jsonl", "--hmm", "default", "--calibration", "default")
    assert row["method"] == "hmm" and row["calibrated"] is True
    # bad input: another frame shift (per utterance, recorded), another token table (an error)
    BoundaryCalibration.constant(0.02, 0.0, 0.0).save(tmp_path / "cal20.json")
    assert main([*base, "-o", str(tmp_path / "y.jsonl"), "--calibration", str(tmp_path / "cal20.json")]) == 1
    (err,) = [json.loads(x) for x in (tmp_path / "y.errors.jsonl").read_text().splitlines()]
    assert err["id"] == "u1" and "0.02 s frames" in err["error"]
    other = TokenTable(tuple(table.tokens[:-1]), table.blank_id, table.word_boundary)
    TiedDurationHMM(other, ScaledLikelihoods()).save(tmp_path / "other.json")
    assert main([*base, "-o", str(tmp_path / "z.jsonl"), "--hmm", str(tmp_path / "other.json")]) == 2
    assert "token table" in capsys.readouterr().err


def test_a_lexicon_widens_the_candidates_to_at_least_lexicon_pruning(corpus, tmp_path):
    """Wider settings of the config or flags are kept, narrower ones (a tuned config's
    threshold, chosen for a search without the constraint) widened."""
    from fusion.core.posteriors import PosteriorsReader
    from fusion.pipeline.build import build_decoder
    from fusion.pipeline.config import DecodeConfig

    words = tmp_path / "words.txt"
    words.write_text("hello\nworld\n")
    with PosteriorsReader(corpus / "post.npz") as reader:
        table = reader.token_table
    no_lm = DecodeConfig(lm=None)
    assert build_decoder(no_lm, table).options == SearchOptions()
    wide = build_decoder(DecodeConfig(lm=None, lexicon=words), table).options
    assert (wide.token_top_k, wide.token_min_logprob, wide.beam_threshold) == (len(table) - 1, -12.0, 25.0)
    (tmp_path / "dec.toml").write_text("[search]\ntoken_min_logprob = -15.0\nbeam_threshold = 10.0\n")
    config = DecodeConfig.load(tmp_path / "dec.toml").with_overrides(
        search={"beam_size": 4}, lexicon=words, lm="none")
    mixed = build_decoder(config, table).options
    assert (mixed.token_min_logprob, mixed.token_top_k, mixed.beam_size, mixed.beam_threshold) == \
        (-15.0, len(table) - 1, 4, 25.0)
    (tmp_path / "narrow.toml").write_text("[search]\ntoken_min_logprob = -7.0\nbeam_threshold = 30.0\n")
    config = DecodeConfig.load(tmp_path / "narrow.toml").with_overrides(lexicon=words, lm="none")
    widened = build_decoder(config, table).options
    assert (widened.token_min_logprob, widened.beam_threshold) == (-12.0, 30.0)


HEAVY = ("torch", "torchaudio", "pyctcdecode", "transformers", "optuna", "matplotlib")


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (what it imports is its own)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240)


def test_import_and_parser_load_no_heavy_module():
    """`import fusion.cli.main` and `fusion --help`'s parser import no extra's packages."""
    run = _python("import sys, fusion.cli.main as c; c.get_parser(None); "
                  f"print(sorted(set({HEAVY!r}) & set(sys.modules)))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_a_missing_extra_is_one_line_naming_it(corpus):
    """A subcommand whose extra is missing: one line naming the module and the extra, status 2
    (the am extra's modules and pyctcdecode made unimportable, as in the core-only venv; which
    of the am modules is met first is the import order's business)."""
    decode = ["decode", str(corpus / "post.npz"), "-o", str(corpus / "h.jsonl"),
              "--decoder", "pyctcdecode"]
    run = _python("import sys\n"
                  "for m in ('torch', 'torchaudio', 'soundfile', 'pyctcdecode'): sys.modules[m] = None\n"
                  "from fusion.cli.main import main\n"
                  f"print(main(['train', '--help']), main({decode!r}), file=sys.stderr)")
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 3, run.stderr
    assert re.fullmatch("fusion train: error: needs '(torch|torchaudio|soundfile)', which is not "
                        r"installed: pip install 'asrfuse\[am\]' \(the am extra\)", lines[0]), lines
    assert lines[1:] == [
        "fusion decode: error: needs 'pyctcdecode', which is not installed: "
        "pip install 'asrfuse[pyctcdecode]' (the pyctcdecode extra)", "2 2"], run.stderr


def test_help_lists_every_subcommand_and_its_extra(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for ext in EXTENSIONS:
        for name in ext.commands:
            assert name in out
    assert "[am]" in out and "[tune]" in out


@pytest.mark.torch
def test_the_listed_help_lines_are_the_modules_own():
    """EXTENSIONS' names and help lines, what `fusion --help` shows without importing the
    modules, are those the modules register."""
    for ext in EXTENSIONS:
        try:
            parser = get_parser(next(iter(ext.commands)))
        except ImportError as exc:  # this venv lacks the extra
            pytest.skip(f"{ext.target}: {exc}")
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert {n: helps[n] for n in ext.commands} == ext.commands


@pytest.mark.torch
def test_a_listed_subcommand_parsed_from_the_plain_parser_runs_in_full(tmp_path, capsys):
    """get_parser(None): parsing a listed subcommand builds it then."""
    args = get_parser(None).parse_args(["average", str(tmp_path / "missing.pt"), "-o",
                                        str(tmp_path / "out.pt")])
    assert args.func(args) == 2
    assert "missing.pt" in capsys.readouterr().err
