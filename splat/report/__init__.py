"""A self-contained HTML report of a fit: see the atoms on the spectrogram, hear each one, read the metrics.

`build_report` fills the one template beside this file (`template.html`, its
script and style inline) with a JSON blob: the spectrogram as 8-bit levels on a
log-frequency grid, the atoms, the `splat eval` metrics, and the audio as
base64 Ogg Vorbis (the original, the reconstruction, the residual, and a strip
of every atom alone, one after another). The page loads nothing else: its
Content-Security-Policy forbids any request but inline data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np

from splat.atoms import AtomSet
from splat.edit import note_name
from splat.errors import ParameterError

#: Most spectrogram columns (STFT frames) in the picture; a longer file takes a longer hop.
MAX_COLUMNS = 2400
#: Rows of the log-frequency grid.
N_ROWS = 256
#: Lowest frequency drawn, in Hz (the bottom of the f0 range).
FMIN_HZ = 25.0
#: Levels drawn below the loudest, in dB.
DYNAMIC_RANGE_DB = 80.0
#: Longest clip of one atom in the atoms strip, in seconds.
CLIP_S = 1.5
#: Silence between clips in the atoms strip, in seconds.
GAP_S = 0.1
#: Peak of every clip in the atoms strip: each atom plays at one level, however quiet it is in the mix.
CLIP_PEAK = 0.5
#: Fade at a clip's cut end, in seconds.
FADE_S = 0.02
#: Frames per write of the Ogg Vorbis encoder.
OGG_BLOCK = 1 << 16
#: FFT size of the picture at 44.1 kHz (scaled with the rate): about 10 Hz apart, to part low notes.
N_FFT_44K = 4096


@dataclass(frozen=True)
class Spectrogram:
    """Levels on a log-frequency grid, quantised to bytes.

    Attributes:
        levels: uint8, shape (n_rows, n_columns), row 0 the lowest frequency; 255 = the loudest
            level, 0 = `DYNAMIC_RANGE_DB` below it or less.
        fmin_hz: Frequency of row 0 in Hz.
        fmax_hz: Frequency of the last row in Hz.
        duration_s: Time spanned by the columns in seconds.
    """

    levels: np.ndarray
    fmin_hz: float
    fmax_hz: float
    duration_s: float


def spectrogram(audio: np.ndarray, sample_rate: int) -> Spectrogram:
    """The picture's spectrogram: STFT magnitudes in dB, read off at log-spaced frequencies.

    Args:
        audio: Mono audio, shape (n_samples,).
        sample_rate: Its rate in Hz.
    """
    import librosa

    n_fft = 1 << round(math.log2(N_FFT_44K * sample_rate / 44_100))
    hop = max(n_fft // 4, math.ceil(audio.size / MAX_COLUMNS))
    magnitude = np.abs(librosa.stft(audio.astype(np.float32), n_fft=n_fft, hop_length=hop, center=True))
    fmax_hz = sample_rate / 2
    row_hz = FMIN_HZ * (fmax_hz / FMIN_HZ) ** np.linspace(0.0, 1.0, N_ROWS)
    # Linear interpolation between FFT bins (shape (n_rows, frames)).
    position = row_hz * n_fft / sample_rate
    low = np.minimum(np.floor(position).astype(int), magnitude.shape[0] - 2)
    weight = (position - low)[:, None]
    rows = (1 - weight) * magnitude[low] + weight * magnitude[low + 1]
    level_db = 20 * np.log10(np.maximum(rows, 1e-10))
    scaled = (level_db - (level_db.max() - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB
    levels = np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)
    return Spectrogram(levels, FMIN_HZ, fmax_hz, audio.size / sample_rate)


def ogg_data_uri(audio: np.ndarray, sample_rate: int) -> str:
    """Mono audio as a `data:` URI of Ogg Vorbis (clipped to full scale)."""
    import soundfile as sf

    samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
    buffer = io.BytesIO()
    # In blocks: libsndfile 1.2's Vorbis encoder crashes (SIGSEGV) on one write of a few million frames.
    with sf.SoundFile(buffer, "w", sample_rate, 1, format="OGG", subtype="VORBIS") as out:
        for start in range(0, samples.size, OGG_BLOCK):
            out.write(samples[start : start + OGG_BLOCK])
    return "data:audio/ogg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def atom_strip(atom_set: AtomSet) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Every atom alone, one after another: its first `CLIP_S` seconds at peak `CLIP_PEAK`, `GAP_S` apart.

    Returns:
        (audio of shape (n,) at `atom_set.sample_rate`, the (start_s, end_s) of each atom's clip in it).
    """
    from splat.synth import atom_signals

    sr = atom_set.sample_rate
    clips: list[np.ndarray] = [np.zeros(0)] * len(atom_set.atoms)
    for index, _, audio in atom_signals(atom_set, range(len(atom_set.atoms))):
        clip = audio[: round(CLIP_S * sr)].numpy()
        if clip.size == round(CLIP_S * sr):  # cut short: fade out rather than click
            fade = min(clip.size, round(FADE_S * sr))
            clip[-fade:] *= np.linspace(1.0, 0.0, fade)
        peak = np.abs(clip).max(initial=0.0)
        clips[index] = clip * (CLIP_PEAK / peak) if peak > 0 else clip
    gap = np.zeros(round(GAP_S * sr))
    parts, spans, at = [gap], [], gap.size
    for clip in clips:
        spans.append((at / sr, (at + clip.size) / sr))
        parts += [clip, gap]
        at += clip.size + gap.size
    return np.concatenate(parts), spans


def build_report(
    original: np.ndarray,
    sample_rate: int,
    atom_set: AtomSet | None = None,
    *,
    title: str = "splat report",
    with_visqol: bool = True,
) -> str:
    """The report's HTML: one page, nothing to fetch.

    Args:
        original: The recording, mono, shape (n_samples,), at `sample_rate` (that of `atom_set`).
        sample_rate: Its rate in Hz.
        atom_set: The atoms fitted to it; None for a page with the recording alone.
        title: The page's title.
        with_visqol: Whether the metrics include ViSQOL (slow on long audio).

    Returns:
        The HTML document.

    Raises:
        ParameterError: if the rates differ or the audio is not mono.
        SplatError: if the `eval` extra is missing (metrics).
    """
    if original.ndim != 1 or original.size == 0:
        raise ParameterError(f"the recording must be mono and not empty, got shape {original.shape}")
    if atom_set is not None and atom_set.sample_rate != sample_rate:
        raise ParameterError(f"the recording is at {sample_rate} Hz but the atoms at {atom_set.sample_rate} Hz")
    picture = spectrogram(original, sample_rate)
    data: dict[str, Any] = {
        "title": title,
        "sample_rate": sample_rate,
        "duration_s": original.size / sample_rate,
        "spectrogram": {
            "width": picture.levels.shape[1],
            "height": picture.levels.shape[0],
            "fmin_hz": picture.fmin_hz,
            "fmax_hz": picture.fmax_hz,
            "levels": base64.b64encode(picture.levels[::-1].tobytes()).decode("ascii"),  # top row first
        },
        "audio": {"original": ogg_data_uri(original, sample_rate)},
        "atoms": [],
        "metrics": [],
        "clip_peak": CLIP_PEAK,
    }
    if atom_set is not None:
        from splat.evaluate import evaluate_pair
        from splat.listen import residual
        from splat.synth import render_atom_set

        reconstruction = render_atom_set(atom_set)
        strip, spans = atom_strip(atom_set)
        report = evaluate_pair(original, reconstruction, sample_rate, atom_set=atom_set, with_visqol=with_visqol)
        data["metrics"] = report.rows()
        data["audio"]["reconstruction"] = ogg_data_uri(reconstruction, sample_rate)
        data["audio"]["residual"] = ogg_data_uri(
            residual(original, sample_rate, reconstruction, sample_rate), sample_rate
        )
        data["audio"]["atoms"] = ogg_data_uri(strip, sample_rate)
        data["atoms"] = [
            {
                "index": i,
                "time_s": a.time_s,
                "note": note_name(a.f0_hz),
                "f0_hz": a.f0_hz,
                "gain_db": a.gain_db,
                "decay_s": a.decay_s,
                "mix": a.mix,
                "duration_s": a.duration_s,
                "clip_s": spans[i],
            }
            for i, a in enumerate(atom_set.atoms)
        ]
    template = files("splat.report").joinpath("template.html").read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the script
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", blob)
