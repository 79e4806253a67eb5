import json
from pathlib import Path

import pytest

from fusion.core.manifest import ManifestError, Utterance, atomic_write, read_manifest, write_manifest


def _write(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_round_trip_and_relative_audio(tmp_path):
    utts = [Utterance("a", str(tmp_path / "audio" / "a.wav"), "hello", 1.5, {"voice": "slt"}),
            Utterance("b", "/abs/b.wav", None, None)]
    write_manifest(tmp_path / "m.jsonl", utts)
    first = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert first == {"id": "a", "audio": "audio/a.wav", "text": "hello", "duration": 1.5,
                     "voice": "slt"}
    back = read_manifest(tmp_path / "m.jsonl")
    assert back == utts and back[0].extra == {"voice": "slt"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "text": ""}', "{oops"], r"m.jsonl:2: invalid JSON"),
        (['{"id": "a", "text": ""}', '{"id": "a"}'], r"m.jsonl:2: duplicate id 'a' \(first on line 1\)"),
        (['{"text": "x"}'], r"m.jsonl:1: 'id' must be a non-empty string"),
        (['{"id": "a", "duration": -1}'], r"utterance 'a': 'duration' must be finite"),
        (['{"id": "a", "duration": "long"}'], r"'duration' must be a number"),
        (['{"id": "a", "text": 3}'], r"'text' must be a string"),
        (['{"id": "a", "audio": ""}'], r"'audio' must be a path string"),
        (['{"id": "a"}'], r"m.jsonl:1: utterance 'a' has no 'text'"),
        (['[1, 2]'], r"expected a JSON object"),
    ],
)
def test_errors_name_file_line_and_utterance(tmp_path, lines, message):
    path = _write(tmp_path / "m.jsonl", lines)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path, require=("text",))


def test_bad_utf8_and_missing_file(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(ManifestError, match="m.jsonl:1: not UTF-8"):
        read_manifest(tmp_path / "m.jsonl")
    with pytest.raises(ManifestError, match="cannot open"):
        read_manifest(tmp_path / "absent.jsonl")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("new")
            raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
