"""Batch decoding: sharding, resuming, per-utterance failures and output-folder faults."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fusion.core.manifest
from fusion.cli import main as cli
from fusion.core.posteriors import Posteriors, PosteriorsWriter
from fusion.core.simulate import simulate_posteriors
from fusion.core.types import DecodeResult, Hypothesis
from fusion.decoder.greedy import GreedyDecoder
from fusion.run import batch
from fusion.run.batch import BatchError, BatchOptions, decode_batch

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "big", "red"]


class ArgmaxDecoder:
    """A torch-free stand-in decoder (collapsed argmax), so subprocesses start fast."""

    def __init__(self, table):
        self.table = table

    def decode(self, p: Posteriors) -> DecodeResult:
        best = np.asarray(p.log_probs).argmax(axis=1)
        ids = [int(b) for i, b in enumerate(best)
               if b != self.table.blank_id and (i == 0 or b != best[i - 1])]
        score = float(np.asarray(p.log_probs).max(axis=1).sum())
        text = " ".join("".join(self.table.tokens[i] for i in ids).replace("|", " ").split())
        return DecodeResult(p.utt_id, (Hypothesis(text, score, {"acoustic": score}),),
                            p.frame_shift, p.duration)


class FailingDecoder(ArgmaxDecoder):
    def decode(self, p):
        if p.utt_id == "u7":
            raise RuntimeError("boom")
        return super().decode(p)


def write_corpus(path: Path, table, n: int, seed: int = 0, bad: bool = True) -> list[str]:
    """``n`` simulated utterances; with ``bad``, three broken ones among them."""
    rng = np.random.default_rng(seed)
    ids = []
    with PosteriorsWriter(path, token_table=None) as w:
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            w.write(simulate_posteriors(f"u{i}", text, table, rng)[0])
            ids.append(f"u{i}")
            if bad and i == n // 3:
                w.write(Posteriors("nan", np.full((3, len(table)), np.nan, np.float32), 0.04))
                w.write(Posteriors("narrow", np.full((4, 5), -np.log(5), np.float32), 0.04))
                w.write(Posteriors("empty", np.zeros((0, len(table)), np.float32), 0.04))
                ids += ["nan", "narrow", "empty"]
    return ids


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.name.endswith((".tmp", ".journal")))


@pytest.fixture
def corpus(tmp_path, table):
    ids = write_corpus(tmp_path / "a.npz", table, 40)
    return tmp_path / "a.npz", ids


def run(post, out, table, decoder=None, **kw):
    options = BatchOptions(**{"shard_size": 7, "progress": False, **kw.pop("options", {})})
    return decode_batch([post], out, decoder or ArgmaxDecoder(table), table=table,
                        options=options, **kw)


def test_clean_run_shards_and_records_bad_utterances(corpus, tmp_path, table):
    post, ids = corpus
    summary = run(post, tmp_path / "out", table)
    assert (summary.utterances, summary.failed, summary.decoded) == (43, 2, 41)
    assert summary.shards == 7 and summary.shards_skipped == 0
    rows = read_rows(summary.hyps)
    assert [r["id"] for r in rows] == [i for i in ids if i not in ("nan", "narrow")]
    errors = {e["id"]: e["error"] for e in read_rows(summary.errors)}
    assert "NaN" in errors["nan"] and "5 columns" in errors["narrow"]
    assert set(errors) == {"nan", "narrow"}  # no frames: an empty hypothesis, as with -o
    assert next(r for r in rows if r["id"] == "empty")["text"] == ""
    shard_files = sorted(p.name for p in (tmp_path / "out" / "shards").iterdir())
    assert shard_files[:2] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert b"".join((tmp_path / "out" / "shards" / n).read_bytes() for n in shard_files
                    if not n.endswith("errors.jsonl")) == summary.hyps.read_bytes()
    assert leftovers(tmp_path / "out") == []
    decoder = ArgmaxDecoder(table)
    from fusion.core.posteriors import PosteriorsReader
    with PosteriorsReader(post, token_table=table) as reader:
        assert rows[0] == json.loads(json.dumps(decoder.decode(reader["u0"]).to_dict(table)))


def test_empty_allowed_and_decoder_exception_recorded(corpus, tmp_path, table):
    post, _ = corpus
    summary = run(post, tmp_path / "out", table, FailingDecoder(table),
                  options={"allow_empty": True})
    errors = {e["id"]: e["error"] for e in read_rows(summary.errors)}
    assert set(errors) == {"nan", "narrow", "u7"}
    assert "decoder failed (RuntimeError: boom)" in errors["u7"]


def test_many_files_list_files_and_duplicate_ids(tmp_path, table):
    write_corpus(tmp_path / "a.npz", table, 5, seed=1, bad=False)
    write_corpus(tmp_path / "b.npz", table, 4, seed=2, bad=False)  # ids u0..u3 again
    (tmp_path / "list.txt").write_text("# inputs\na.npz\n\n" + str(tmp_path / "b.npz") + "\n")
    (tmp_path / "list.jsonl").write_text('{"posteriors": "a.npz"}\n{"path": "b.npz"}\n')
    s1 = decode_batch([tmp_path / "list.txt"], tmp_path / "o1", ArgmaxDecoder(table), table=table,
                      options=BatchOptions(shard_size=4, progress=False))
    s2 = decode_batch([tmp_path / "list.jsonl"], tmp_path / "o2", ArgmaxDecoder(table), table=table,
                      options=BatchOptions(shard_size=4, progress=False))
    assert s1.hyps.read_bytes() == s2.hyps.read_bytes()
    assert s1.utterances == 9 and s1.failed == 4
    assert all("duplicate id" in e["error"] and e["file"].endswith("b.npz")
               for e in read_rows(s1.errors))
    with pytest.raises(BatchError, match="no such posteriors file"):
        (tmp_path / "bad.txt").write_text("missing.npz\n")
        decode_batch([tmp_path / "bad.txt"], tmp_path / "o3", ArgmaxDecoder(table))


def test_resume_after_interruption_is_byte_identical(corpus, tmp_path, table):
    post, _ = corpus
    clean = run(post, tmp_path / "clean", table)

    class Interrupted(ArgmaxDecoder):
        def decode(self, p):
            if p.utt_id == "u20":
                raise KeyboardInterrupt  # escapes per-utterance handling, like a crash
            return super().decode(p)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(post, out, table, Interrupted(table))
    assert not (out / "hyps.jsonl").exists()
    journals = list((out / "shards").glob("*.journal"))
    assert len(journals) == 1
    with open(journals[0], "ab") as fh:  # a torn line, as a kill mid-write leaves
        fh.write(b'ok\t{"id": "u2')
    with pytest.raises(BatchError, match="resume"):
        run(post, out, table)
    resumed = run(post, out, table, resume=True)
    assert resumed.hyps.read_bytes() == clean.hyps.read_bytes()
    assert resumed.errors.read_bytes() == clean.errors.read_bytes()
    assert resumed.shards_skipped == 3 and resumed.utterances_skipped == 23  # 3 bad + u0..u19
    assert leftovers(out) == []
    again = run(post, out, table, resume=True)  # nothing left to do
    assert again.shards_skipped == again.shards
    assert again.hyps.read_bytes() == clean.hyps.read_bytes()


def test_resume_refuses_a_different_run(corpus, tmp_path, table):
    post, _ = corpus
    run(post, tmp_path / "out", table, decoder_id="greedy")
    with pytest.raises(BatchError, match="shard_size"):
        run(post, tmp_path / "out", table, options={"shard_size": 8}, resume=True,
            decoder_id="greedy")
    with pytest.raises(BatchError, match="decoder"):
        run(post, tmp_path / "out", table, resume=True, decoder_id="beam")
    write_corpus(post, table, 41)  # the input changed under the run
    with pytest.raises(BatchError, match=r"a\.npz changed since the run began"):
        run(post, tmp_path / "out", table, resume=True, decoder_id="greedy")


def test_one_run_at_a_time_per_folder(corpus, tmp_path, table):
    import fcntl

    post, _ = corpus
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with pytest.raises(BatchError, match="in use"):
            run(post, tmp_path / "out", table)


def test_disk_full_on_shard_write_leaves_no_partial_files(corpus, tmp_path, table, monkeypatch):
    post, _ = corpus
    clean = run(post, tmp_path / "clean", table)
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fusion.core.manifest.os, "fsync", fsync)
    out = tmp_path / "out"
    with pytest.raises(BatchError, match="no space left") as info:
        run(post, out, table)
    assert "shard-0000" in str(info.value)
    assert not list(out.rglob("*.tmp"))
    for journal in (out / "shards").glob("*.journal"):  # resumable state, whole lines only
        assert journal.read_bytes().endswith(b"\n")
    assert not (out / "hyps.jsonl").exists()
    for shard in (out / "shards").glob("shard-*.jsonl"):  # finished shards are whole
        assert shard.read_bytes() in clean.hyps.read_bytes()
    monkeypatch.setattr(fusion.core.manifest.os, "fsync", real_fsync)
    assert run(post, out, table, resume=True).hyps.read_bytes() == clean.hyps.read_bytes()


def test_disk_full_on_journal_write_is_clean(corpus, tmp_path, table, monkeypatch):
    post, _ = corpus
    clean = run(post, tmp_path / "clean", table)
    appended = []
    real_append = batch._Journal.append

    def append(self, line):
        appended.append(line)
        if len(appended) == 10:
            self._fh.write(line[:5])  # part of the line reached the disk

            class Full:
                def write(self, data):
                    raise OSError(errno.ENOSPC, "No space left on device")

                def close(self):
                    pass
            self._fh.flush()
            self._fh.close()
            self._fh = Full()
        real_append(self, line)

    monkeypatch.setattr(batch._Journal, "append", append)
    out = tmp_path / "out"
    with pytest.raises(BatchError, match="no space left.*journal|journal.*no space left"):
        run(post, out, table)
    (journal,) = (out / "shards").glob("*.journal")
    assert journal.read_bytes().endswith(b"\n")  # the torn line was cut off
    monkeypatch.setattr(batch._Journal, "append", real_append)
    assert run(post, out, table, resume=True).hyps.read_bytes() == clean.hyps.read_bytes()


def test_unwritable_output_is_a_clear_error(corpus, tmp_path, table, monkeypatch):
    post, _ = corpus
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="cannot write"):
        run(post, tmp_path / "file" / "out", table)

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fusion.core.manifest.tempfile, "mkstemp", mkstemp)
    with pytest.raises(BatchError, match="permission denied"):
        run(post, tmp_path / "ro", table)
    assert not (tmp_path / "ro" / "plan.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(corpus, tmp_path, table):
    post, _ = corpus
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(BatchError, match="permission denied"):
            run(post, out, table)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_command_line_and_two_workers(corpus, tmp_path, table, capsys):
    post, _ = corpus
    table.save(tmp_path / "tokens.json")
    args = ["decode", str(post), "--out-dir", str(tmp_path / "o1"), "--shard-size", "9",
            "--no-progress", "--tokens", str(tmp_path / "tokens.json")]
    assert cli.main(args) == 1  # some utterances failed
    assert "2 utterances failed" in capsys.readouterr().err
    assert cli.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(args + ["--resume"]) == 1
    s2 = decode_batch([post], tmp_path / "o2", GreedyDecoder(table), table=table,
                      options=BatchOptions(shard_size=9, workers=2, progress=False))
    assert s2.hyps.read_bytes() == (tmp_path / "o1" / "hyps.jsonl").read_bytes()


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from fusion.run.batch import BatchOptions, decode_batch
    from fusion.core.tokens import character_table
    from test_batch import ArgmaxDecoder
    table = character_table()
    decode_batch([sys.argv[1]], sys.argv[2], ArgmaxDecoder(table), table=table,
                 options=BatchOptions(shard_size=53, progress=False),
                 resume=sys.argv[3] == "resume")
""")


def test_kill_9_at_random_moments_then_resume(tmp_path, table):
    """Real SIGKILLs at seeded random moments, up to 3 per trial, then a full resume."""
    post = tmp_path / "big.npz"
    write_corpus(post, table, 1500, seed=5)
    script = tmp_path / "run_batch.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    log = tmp_path / "stderr.log"

    def start(out, mode):
        with open(log, "wb") as err:
            return subprocess.Popen([sys.executable, str(script), str(post), str(out), mode],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)

    began = time.perf_counter()
    proc = start(tmp_path / "clean", "fresh")
    assert proc.wait(60) == 0, log.read_text()
    wall = time.perf_counter() - began
    clean = (tmp_path / "clean" / "hyps.jsonl").read_bytes()
    clean_errors = (tmp_path / "clean" / "errors.jsonl").read_bytes()
    rng = np.random.default_rng(2024)
    kills = 0
    for trial in range(5):
        out = tmp_path / f"trial{trial}"
        for attempt in range(3):
            proc = start(out, "resume")
            time.sleep(float(rng.uniform(0.05, wall)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(60)
        proc = start(out, "resume")
        assert proc.wait(60) == 0, log.read_text()
        hyps = (out / "hyps.jsonl").read_bytes()
        assert hyps == clean, f"trial {trial}: merged output differs from the clean run"
        assert (out / "errors.jsonl").read_bytes() == clean_errors
        assert leftovers(out) == []
    assert kills >= 5  # most attempts were really killed mid-run


def test_plan_memory_is_a_few_bytes_per_utterance(tmp_path, table):
    """Planning 20,000 utterances holds no Python object per utterance (issue 8: flat memory)."""
    import tracemalloc

    n = 20000
    row = np.full((1, len(table)), -np.log(len(table)), np.float32)
    with PosteriorsWriter(tmp_path / "big.npz", token_table=table) as w:
        for i in range(n):
            w.write(Posteriors(f"utt-{i:06d}", row, 0.04))
    tracemalloc.start()
    try:
        plan = batch._make_plan([tmp_path / "big.npz"], None, BatchOptions(), "")
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.total == n and not plan.duplicates and plan.locate(n - 1)[1] == f"utt-{n - 1:06d}"
    assert held < 80 * n, held  # PosteriorsReader's index: ~1 KiB an utterance
    assert peak < 2 * 2**20 + 80 * n, peak
