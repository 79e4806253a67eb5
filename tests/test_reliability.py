"""The reliability holes of issue 44, each closed and pinned by a test: resumed runs check
their inputs' content, outputs never overwrite inputs, output-file errors have their own
exit status, workers die with their parent, and the smaller ones (non-finite weights, an
LM the token table cannot spell, a non-LM file, stale failure lists, the umask, temporary
files after a kill, empty utterances, truncated WAVs, malicious checkpoints, a missing
demo model)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import fusion.core.manifest
from fusion.cli.main import main
from fusion.core.manifest import (EXIT_BAD_INPUT, EXIT_FAILURES, EXIT_OK, EXIT_OUTPUT, OutputConflict,
                                  OutputError, atomic_write, check_outputs, write_failures)
from fusion.core.npzindex import content_fingerprint
from fusion.core.posteriors import Posteriors, PosteriorsWriter
from fusion.core.simulate import simulate_posteriors
from fusion.decoder.greedy import GreedyDecoder
from fusion.decoder.scorers import HotwordScorer, spelling_overlap
from fusion.pipeline.build import read_hotwords
from fusion.run.batch import BatchError, BatchOptions, decode_batch
from lm.base import LMError
from lm.ngram import read_unigrams

REPO = Path(__file__).resolve().parents[1]
TEXTS = {"u1": "hello world", "u2": "the cat sat", "u3": "good morning"}
ARPA = """\\data\\
ngram 1=6
ngram 2=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.3
-0.5\t</s>
-0.5\t{0}\t-0.3
-0.7\t{1}
-0.9\t{2}

\\2-grams:
-0.2\t{0} {1}

\\end\\
"""


def write_posteriors(path: Path, table, seed: int, *, empty: bool = False) -> Path:
    """The three utterances of TEXTS, simulated with ``seed`` (plus a 0-frame one)."""
    rng = np.random.default_rng(seed)
    with PosteriorsWriter(path, token_table=table) as w:
        for utt_id, text in TEXTS.items():
            w.write(simulate_posteriors(utt_id, text, table, rng)[0])
        if empty:
            w.write(Posteriors("empty", np.zeros((0, len(table)), np.float32), 0.04))
    return path


def same_shape_posteriors(path: Path, table, seed: int) -> Path:
    """Random posteriors of fixed shapes: another seed gives a file of the same size and ids."""
    rng = np.random.default_rng(seed)
    with PosteriorsWriter(path, token_table=table) as w:
        for i in range(6):
            logits = rng.normal(size=(12, len(table)))
            w.write(Posteriors.from_array(f"u{i}", logits, kind="logits", frame_shift=0.04,
                                          token_table=table))
    return path


@pytest.fixture
def post(tmp_path, table) -> Path:
    return write_posteriors(tmp_path / "post.npz", table, seed=0)


def one_error_line(err: str, *names: str) -> str:
    """The command's stderr is one error line naming every one of ``names``."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


# -- 1. --resume checks the inputs' content ------------------------------------------------
def test_resume_refuses_regenerated_posteriors_of_the_same_size_and_ids(tmp_path, table):
    a = same_shape_posteriors(tmp_path / "a.npz", table, seed=1)
    options = BatchOptions(shard_size=2, progress=False)
    decode_batch([a], tmp_path / "out", GreedyDecoder(table), table=table, options=options)
    (tmp_path / "out" / "shards" / "shard-00002.jsonl").unlink()  # as if killed before the end
    size = a.stat().st_size
    same_shape_posteriors(a, table, seed=2)  # regenerated: other values, same size and ids
    assert a.stat().st_size == size
    with pytest.raises(BatchError, match=r"a\.npz changed since the run began \(content differ"):
        decode_batch([a], tmp_path / "out", GreedyDecoder(table), table=table, options=options,
                     resume=True)
    same_shape_posteriors(a, table, seed=1)  # the same content written again: resumable
    summary = decode_batch([a], tmp_path / "out", GreedyDecoder(table), table=table,
                           options=options, resume=True)
    assert summary.shards_skipped == 2 and summary.decoded == 6


def test_resume_refusal_from_the_command_line_is_one_line(tmp_path, table, capsys):
    a = same_shape_posteriors(tmp_path / "a.npz", table, seed=1)
    args = ["decode", str(a), "--out-dir", str(tmp_path / "out"), "--shard-size", "2",
            "--no-progress"]
    assert main(args) == EXIT_OK
    same_shape_posteriors(a, table, seed=3)
    capsys.readouterr()
    assert main([*args, "--resume"]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, str(a), "changed since the run began")


def test_content_fingerprint_reads_the_zip_directory_or_hashes_the_bytes(tmp_path, table):
    a = same_shape_posteriors(tmp_path / "a.npz", table, seed=1)
    b = same_shape_posteriors(tmp_path / "b.npz", table, seed=1)
    c = same_shape_posteriors(tmp_path / "c.npz", table, seed=2)
    assert content_fingerprint(a) == content_fingerprint(b) != content_fingerprint(c)
    assert content_fingerprint(a).startswith("zip-crc32:")
    (tmp_path / "x.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "y.bin").write_bytes(b"x" * 2_999_999 + b"y")
    fx, fy = content_fingerprint(tmp_path / "x.bin"), content_fingerprint(tmp_path / "y.bin")
    assert fx.startswith("sha256:") and fx != fy


# -- 2. outputs never overwrite inputs -----------------------------------------------------
@pytest.mark.parametrize("case", ["same", "hard link", "symbolic link", "ctm is the input",
                                  "errors is -o", "ctm is --errors", "lm is -o"])
def test_decode_refuses_an_output_that_is_an_input(post, tmp_path, capsys, case):
    hyps = tmp_path / "h.jsonl"
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA.format("hello", "world", "cat"))
    if case == "hard link":
        os.link(post, tmp_path / "link.npz")
    elif case == "symbolic link":
        os.symlink(post, tmp_path / "link.npz")
    extra = {"same": ["-o", str(post)],
             "hard link": ["-o", str(tmp_path / "link.npz")],
             "symbolic link": ["-o", str(tmp_path / "link.npz")],
             "ctm is the input": ["-o", str(hyps), "--ctm", str(post)],
             "errors is -o": ["-o", str(hyps), "--errors", str(hyps)],
             "ctm is --errors": ["-o", str(hyps), "--ctm", str(tmp_path / "e"),
                                 "--errors", str(tmp_path / "e")],
             "lm is -o": ["-o", str(lm), "--decoder", "beam", "--lm", str(lm)]}[case]
    before = post.read_bytes(), lm.read_bytes()
    assert main(["decode", str(post), *extra]) == EXIT_BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert "refusing to overwrite an input" in line or "are one file" in line
    assert (post.read_bytes(), lm.read_bytes()) == before
    assert not hyps.exists() and not (tmp_path / "e").exists()


def test_posteriors_align_and_out_dir_refuse_to_overwrite_inputs(post, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "a"}) + "\n")
    before = manifest.read_bytes()
    assert main(["posteriors", str(manifest), "-o", str(manifest)]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "refusing to overwrite an input")
    (tmp_path / "a.wav").touch()
    assert main(["posteriors", str(manifest), "-o", str(tmp_path / "a.wav")]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "audio of 'a'")
    assert main(["align", str(post), "--text", str(manifest), "-o", str(manifest)]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "refusing to overwrite an input")
    assert manifest.read_bytes() == before
    out = tmp_path / "run"
    out.mkdir()
    hyps = out / "hyps.jsonl"
    hyps.write_text(f"{post}\n")  # the list of inputs sits where the run would write
    assert main(["decode", str(hyps), "--out-dir", str(out), "--no-progress"]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "refusing to overwrite an input")
    assert hyps.read_text() == f"{post}\n"


def test_check_outputs(tmp_path):
    (tmp_path / "in").write_text("x")
    os.link(tmp_path / "in", tmp_path / "hard")
    check_outputs({"-o": tmp_path / "new/sub/out", "--ctm": None}, {"input": tmp_path / "in"})
    assert not (tmp_path / "new").exists()  # checking leaves nothing behind
    with pytest.raises(OutputConflict, match="refusing to overwrite"):
        check_outputs({"-o": tmp_path / "hard"}, {"input": tmp_path / "in"})
    with pytest.raises(OutputConflict, match="refusing to overwrite"):
        check_outputs({"-o": tmp_path / "sub" / ".." / "in"}, {"input": tmp_path / "in"})
    with pytest.raises(OutputConflict, match="are one file"):
        check_outputs({"-o": tmp_path / "a", "--errors": tmp_path / "a"})
    with pytest.raises(OutputError, match="is not a folder"):
        check_outputs({"-o": tmp_path / "in" / "out.jsonl"})
    with pytest.raises(OutputError, match="it is a folder"):
        check_outputs({"-o": tmp_path})


# -- 3. output-file errors: one line, their own exit status, checked up front ----------------
def test_an_unwritable_output_is_refused_before_decoding(post, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    hyps = tmp_path / "h.jsonl"
    for extra, name in ((["-o", str(tmp_path / "file" / "h.jsonl")], "file/h.jsonl"),
                        (["-o", str(hyps), "--ctm", str(tmp_path / "file" / "h.ctm")], "h.ctm"),
                        (["-o", str(hyps), "--errors", str(tmp_path / "file" / "e")], "file/e")):
        assert main(["decode", str(post), *extra]) == EXIT_OUTPUT
        err = capsys.readouterr().err
        one_error_line(err, name, "cannot write")
        assert "decoded" not in err and not hyps.exists()
    assert main(["decode", str(post), "--out-dir", str(tmp_path / "file" / "run"),
                 "--no-progress"]) == EXIT_OUTPUT
    one_error_line(capsys.readouterr().err, "file/run", "cannot write")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "missing.wav"}) + "\n")
    assert main(["posteriors", str(manifest), "-o", str(tmp_path / "file" / "p.npz")]) == EXIT_OUTPUT
    one_error_line(capsys.readouterr().err, "p.npz", "is not a folder")


@pytest.mark.parametrize("where", ["write", "rename"])
def test_disk_full_while_writing_is_one_line_with_its_own_status(post, tmp_path, capsys,
                                                                 monkeypatch, where):
    hyps = tmp_path / "h.jsonl"
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "rename":
        def replace(src, dst):
            raise full
        monkeypatch.setattr(fusion.core.manifest.os, "replace", replace)
    else:
        def fsync(fd):
            raise full
        monkeypatch.setattr(fusion.core.manifest.os, "fsync", fsync)
    assert main(["decode", str(post), "-o", str(hyps)]) == EXIT_OUTPUT
    one_error_line(capsys.readouterr().err, str(hyps), "no space left on the device")
    assert list(tmp_path.iterdir()) == [post]  # no partial output, no temporary file


def test_an_errors_file_that_cannot_be_written_goes_to_stderr(tmp_path, table, capsys, monkeypatch):
    post = write_posteriors(tmp_path / "post.npz", table, seed=0)
    with PosteriorsWriter(tmp_path / "bad.npz", token_table=table) as w:
        w.write(simulate_posteriors("ok", "hello", table, np.random.default_rng(0))[0])
        w.write(Posteriors("nan", np.full((3, len(table)), np.nan, np.float32), 0.04))
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".errors.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fusion.core.manifest.os, "replace", replace)
    assert main(["decode", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "h.jsonl")]) == EXIT_OUTPUT
    err = capsys.readouterr().err.splitlines()
    at = next(i for i, line in enumerate(err) if "cannot write" in line)
    assert "h.errors.jsonl" in err[at] and "follow on stderr" in err[at]
    assert json.loads(err[at + 1])["id"] == "nan"  # the failure list is not lost
    assert (tmp_path / "h.jsonl").exists() and post.exists()


def test_write_failures_statuses(tmp_path, capsys):
    path = tmp_path / "e.jsonl"
    assert write_failures(path, [{"id": "a", "error": "x"}], total=2, command="t") == EXIT_FAILURES
    assert json.loads(path.read_text()) == {"id": "a", "error": "x"}
    assert write_failures(path, [], total=2, command="t") == EXIT_OK
    assert not path.exists()  # a clean run leaves no stale failure list
    (tmp_path / "file").write_text("")
    assert write_failures(tmp_path / "file" / "e.jsonl", [{"id": "a"}], total=1,
                          command="t") == EXIT_OUTPUT
    assert '{"id": "a"}' in capsys.readouterr().err


# -- 4. workers exit when the parent is killed ---------------------------------------------
WORKERS = textwrap.dedent("""
    import os, sys, time
    from fusion.run.parallel import decode_parallel

    class Sleeper:
        def __init__(self, folder):
            self.folder = folder

        def decode(self, item):
            open(os.path.join(self.folder, f"worker-{os.getpid()}"), "w").close()
            time.sleep(120)
            return item

    if __name__ == "__main__":
        for _ in decode_parallel(Sleeper(sys.argv[1]), range(8), workers=2):
            pass
""")


TUNE_WORKERS = textwrap.dedent("""
    import multiprocessing, os, sys, time
    import numpy as np
    from fusion.core.posteriors import Posteriors
    from fusion.core.tokens import character_table
    from fusion.rescoring.tune import FirstPassObjective

    from fusion.run.parallel import LocalBackend

    class SlowToLoad:
        \"\"\"A scorer that a pool worker loading it (its initializer) never finishes loading.\"\"\"

        def __reduce__(self):
            return _load, ()

    def _load():
        if multiprocessing.parent_process() is not None:
            open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
            time.sleep(120)
        return SlowToLoad()

    if __name__ == "__main__":
        table = character_table()
        row = np.full((2, len(table)), -np.log(len(table)), np.float32)
        dev = [Posteriors(f"u{i}", row, 0.04) for i in range(2)]
        with FirstPassObjective(table, [SlowToLoad()], dev, {"u0": "", "u1": ""},
                                backend=LocalBackend(workers=2)) as objective:
            objective.decode({})
""")


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waiting for its new parent to reap it has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("pool", ["decode", "tune"])
def test_workers_and_the_resource_tracker_exit_when_the_parent_is_killed(tmp_path, pool):
    """Decoding workers (fusion.run.parallel) and tuning's first-pass pool (fusion.rescoring.tune)."""
    script = tmp_path / "workers.py"
    script.write_text({"decode": WORKERS, "tune": TUNE_WORKERS}[pool])
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("worker-*"))) < 2:  # both workers are decoding
            assert parent.poll() is None and time.monotonic() < deadline, "workers never started"
            time.sleep(0.2)
        children = _children(parent.pid)
        workers = {int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")}
        assert workers <= children and len(children) >= 3  # + multiprocessing's resource tracker
    finally:
        parent.send_signal(signal.SIGKILL)  # as the OOM killer does: no clean-up in the parent
        parent.wait()
    deadline = time.monotonic() + 5
    while any(map(_running, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in children if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"still running 5 s after the parent was killed: {left}"


# -- 5. the smaller ones -------------------------------------------------------------------
@pytest.mark.parametrize("weight", ["inf", "-inf", "nan", "0", "x"])
def test_hotword_weights_must_be_finite_and_positive(tmp_path, weight):
    (tmp_path / "hot.txt").write_text(f"hello world\t{weight}\n")
    with pytest.raises(ValueError, match=r"hot\.txt:1: weight"):
        read_hotwords(tmp_path / "hot.txt")
    if weight != "x":
        with pytest.raises(ValueError, match="finite weight > 0"):
            HotwordScorer({"hello": float(weight)})


@pytest.mark.parametrize("flag", ["--hotword-weight", "--lm-weight", "--word-bonus"])
def test_non_finite_weights_from_flags_are_refused(post, tmp_path, capsys, flag):
    (tmp_path / "hot.txt").write_text("hello\n")
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA.format("hello", "world", "cat"))
    assert main(["decode", str(post), "-o", str(tmp_path / "h.jsonl"), "--decoder", "beam",
                 "--lm", str(lm), "--hotwords", str(tmp_path / "hot.txt"),
                 flag, "inf"]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, "must be finite")
    assert not (tmp_path / "h.jsonl").exists()


def test_an_lm_the_token_table_cannot_spell_is_warned_about(post, tmp_path, table, caplog):
    assert spelling_overlap(["hello", "WORLD", "it's", "naïve"], table) == (0.5, ["WORLD", "naïve"])
    upper, lower = tmp_path / "upper.arpa", tmp_path / "lower.arpa"
    upper.write_text(ARPA.format("HELLO", "WORLD", "CAT"))
    lower.write_text(ARPA.format("hello", "world", "cat"))
    with caplog.at_level(logging.WARNING, logger="fusion.decoder.scorers"):
        assert main(["decode", str(post), "-o", str(tmp_path / "h.jsonl"), "--decoder", "beam",
                     "--lm", str(lower)]) == EXIT_OK
        assert caplog.records == []
        assert main(["decode", str(post), "-o", str(tmp_path / "h.jsonl"), "--decoder", "beam",
                     "--lm", str(upper)]) == EXIT_OK
    [record] = caplog.records
    assert str(upper) in record.getMessage() and "0.0% of the LM's 3 words" in record.getMessage()


def test_a_file_that_is_no_lm_is_one_line_naming_it(post, tmp_path, capsys):
    junk = tmp_path / "random.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    assert main(["decode", str(post), "-o", str(tmp_path / "h.jsonl"), "--decoder", "beam",
                 "--lm", str(junk)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("fusion decode: error:"))
    assert str(junk) in line and "not a KenLM binary" in line and "Traceback" not in err
    with pytest.raises(LMError, match=r"random\.bin: not UTF-8"):
        read_unigrams(junk)


def test_a_clean_rerun_removes_the_stale_errors_file(tmp_path, table):
    bad = tmp_path / "post.npz"
    with PosteriorsWriter(bad, token_table=table) as w:
        w.write(Posteriors("nan", np.full((3, len(table)), np.nan, np.float32), 0.04))
    assert main(["decode", str(bad), "-o", str(tmp_path / "h.jsonl")]) == EXIT_FAILURES
    assert (tmp_path / "h.errors.jsonl").exists()
    write_posteriors(bad, table, seed=0)  # fixed
    assert main(["decode", str(bad), "-o", str(tmp_path / "h.jsonl")]) == EXIT_OK
    assert not (tmp_path / "h.errors.jsonl").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "out.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


ATOMIC = textwrap.dedent("""
    import os, signal, sys, time
    from fusion.cli.main import terminate_on_sigterm
    from fusion.core.manifest import atomic_write

    terminate_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when
    # started from a background job (which inherits SIGINT ignored)
    with atomic_write(sys.argv[1]) as fh:
        fh.write("partial")
        fh.flush()
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        time.sleep(30)
""")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_remove_the_temporary_file(tmp_path, sig):
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-c", ATOMIC, str(out), sig], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == (143 if sig == "SIGTERM" else -signal.SIGINT)
    assert _temporaries(tmp_path) == [] and not out.exists()


def test_a_temporary_file_left_by_a_kill_is_swept_by_the_next_write(tmp_path):
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", ATOMIC, str(out), "SIGKILL"], cwd=REPO)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    [left] = _temporaries(tmp_path)
    assert left.startswith(f".out.jsonl.{proc.pid}.")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:  # a writer still at work keeps its temporary file
        (tmp_path / f".out.jsonl.{alive.pid}.abcdefgh.tmp").write_text("busy")
        with atomic_write(out) as fh:
            fh.write("whole")
        assert _temporaries(tmp_path) == [f".out.jsonl.{alive.pid}.abcdefgh.tmp"]
        assert out.read_text() == "whole"
    finally:
        alive.kill()
        alive.wait()


def test_an_empty_utterance_is_an_empty_hypothesis_with_o_and_out_dir(tmp_path, table):
    post = write_posteriors(tmp_path / "post.npz", table, seed=0, empty=True)
    for decoder in ("greedy", "beam"):
        assert main(["decode", str(post), "-o", str(tmp_path / f"{decoder}.jsonl"),
                     "--decoder", decoder]) == EXIT_OK
        assert main(["decode", str(post), "--out-dir", str(tmp_path / decoder), "--decoder",
                     decoder, "--no-progress"]) == EXIT_OK
        rows = (tmp_path / f"{decoder}.jsonl").read_text().splitlines()
        assert rows == (tmp_path / decoder / "hyps.jsonl").read_text().splitlines()
        empty = json.loads(rows[-1])
        assert (empty["id"], empty["text"], empty["words"]) == ("empty", "", [])
        assert not (tmp_path / decoder / "errors.jsonl").exists()


def test_a_wav_cut_short_is_read_and_warned_about(tmp_path, caplog):
    from fusion.am.features import load_audio, wav_truncation

    wav = tmp_path / "a.wav"
    sf.write(wav, np.sin(np.arange(16000) / 10).astype(np.float32) * 0.1, 16000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="fusion.am.features"):
        assert len(load_audio(wav)) == 16000
        assert wav_truncation(wav) is None and caplog.records == []
        with open(wav, "r+b") as fh:
            fh.truncate(wav.stat().st_size - 8000)  # half a second of 16-bit samples gone
        assert wav_truncation(wav) == (32000, 24000)
        assert len(load_audio(wav, utt_id="a")) == 12000
    [record] = caplog.records
    assert str(wav) in record.getMessage() and "cut short" in record.getMessage()
    (tmp_path / "b.flac").write_bytes(b"")
    assert wav_truncation(tmp_path / "b.flac") is None


def test_a_malicious_hugging_face_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path / "evil"
    config = transformers.Wav2Vec2Config(
        vocab_size=5, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, conv_dim=(8,), conv_stride=(5,), conv_kernel=(10,),
        num_conv_pos_embeddings=2, num_conv_pos_embedding_groups=1)
    config.architectures = ["Wav2Vec2ForCTC"]
    config.save_pretrained(folder)
    torch.save({"x": _Evil(str(tmp_path / "PWNED"))}, folder / "pytorch_model.bin")
    (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "|": 1, "a": 2, "b": 3, "c": 4}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav"}) + "\n")
    assert main(["posteriors", str(manifest), "-o", str(tmp_path / "p.npz"), "--hf-model",
                 str(folder), "--no-progress"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("fusion posteriors: error:"))
    assert str(folder) in line and "refused" in line and "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_demo_with_a_missing_model_is_an_error_and_simulates_only_when_asked(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": u, "text": t}) + "\n" for u, t in TEXTS.items()))
    missing = tmp_path / "mdoel.pt"
    assert main(["demo", "--manifest", str(manifest), "--model", str(missing)]) == EXIT_BAD_INPUT
    one_error_line(capsys.readouterr().err, str(missing), "no such acoustic model", "--simulate")
    assert capsys.readouterr().out == ""
    assert main(["demo", "--manifest", str(manifest), "--simulate", "--model", str(missing)]) == 2
    assert main(["demo", "--manifest", str(manifest), "--simulate", "--lm", "none",
                 "--show", "0"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "SIMULATED posteriors (--simulate" in out and "utterances 3" in out
