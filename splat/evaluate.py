"""Metrics for one original/reconstruction pair, and for atoms read as note events.

Signal metrics compare two mono signals at the same sample rate:

- `mrstft_distance`: auraloss's multi-resolution STFT loss with its defaults
  (spectral convergence + log-magnitude L1 at FFT sizes 512, 1024 and 2048).
- `log_mel_distance_db`: RMS difference of two log-mel spectrograms, in dB.
- `visqol_mos`: ViSQOL v3 (audio mode) MOS-LQO, from 1 (bad) to about 4.7
  (identical), via the pure-Python `visqol` package.

Residual checks: what the atoms leave out should be noise, not notes or hits.

- `tonal_residual_share`: the share of the residual's energy (the power the
  reconstruction lacks, cell by cell) in steady spectral peaks (partials the atoms missed).
- `missed_onset_share`: the share of the original's onset strength that the
  reconstruction does not reproduce (attacks the atoms missed).

Event metrics read the atoms as note events (`note_events_from_atoms`) and score
them with mir_eval against the ground-truth notes or hits of the shared audio
clips (`load_ground_truth`): note precision/recall/F1 with onset and pitch
tolerances, or onset F-measure for unpitched hits.

The optional dependencies (auraloss, mir_eval, visqol) are imported inside the
functions that need them; they come with ``pip install splat[eval]``.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch

from splat.atoms import AtomSet
from splat.audio import zero_padded
from splat.errors import FormatError, ParameterError, SplatError

#: Onset tolerance of the note and onset scores, in seconds (MIREX convention).
ONSET_TOLERANCE_S = 0.05
#: Pitch tolerance of the note scores, in cents (a quarter tone).
PITCH_TOLERANCE_CENTS = 50.0
#: An atom is a note event if its gain is within this many dB of the loudest atom.
EVENT_WITHIN_DB = 30.0
#: ViSQOL's audio mode works at 48 kHz; both signals are resampled to it.
VISQOL_SAMPLE_RATE = 48_000
#: Shortest input ViSQOL's audio mode accepts, in samples at 48 kHz (0.96 s). Measured
#: with visqol-python 3.8: one sample less fails with "spectrum size smaller than
#: minimum patch size".
VISQOL_MIN_SAMPLES_48K = 46_080
#: Length given to every note interval. mir_eval wants intervals, but the scores
#: here ignore offsets (offset_ratio=None), so any positive length gives the same result.
_NOMINAL_NOTE_S = 0.1
#: Floor of the log-mel spectrogram in power units (-100 dB re full-scale power).
_MEL_FLOOR_POWER = 1e-10
#: Longest FFT of the two spectral distances (auraloss's 2048, the log-mel's 2048).
_LONGEST_FFT = 2048
#: STFT of the tonal-residual check: Hann window, n_fft and hop in samples (the log-mel's).
TONAL_N_FFT = 2048
TONAL_HOP = 512
#: A residual bin is a spectral peak if it is at least as strong as its two neighbours and
#: more than this many dB above each bin three away (outside the Hann window's main lobe,
#: +-2 bins, so a sinusoid's own lobe never hides its peak).
TONAL_PEAK_DB = 10.0
#: A peak is tonal if it lies on a chain of peaks (one per frame, each within a bin of the last) this long (s).
TONAL_MIN_S = 0.1
#: Bins on each side of a tonal peak counted as its energy (the Hann main lobe).
_TONAL_LOBE_BINS = 2
#: Range of the log-mel levels of the missed-onset check, in dB under the original's loudest cell.
ONSET_RANGE_DB = 80.0


def require_optional(module: str) -> Any:
    """Import a module of the `eval` extra, or raise SplatError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SplatError(f"this needs the optional package {module!r}: pip install splat[eval]") from exc


def _check_signal(name: str, audio: np.ndarray) -> np.ndarray:
    array = np.asarray(audio)
    if array.ndim != 1 or array.size == 0:
        raise ParameterError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ParameterError(f"{name} contains NaN or infinite samples")
    return array.astype(np.float32, copy=False)


def _check_pair(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair and bring the reconstruction to the original's length.

    The original is the reference: a longer reconstruction is cut, a shorter one
    is zero-padded, so missing audio counts as silence.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ParameterError(f"sample_rate={sample_rate!r} must be a positive integer (Hz)")
    ref = _check_signal("original", original)
    est = _check_signal("reconstruction", reconstruction)
    if est.size >= ref.size:
        return ref, est[: ref.size]
    return ref, np.pad(est, (0, ref.size - est.size))


def mrstft_distance(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> float:
    """Multi-resolution STFT distance (auraloss `MultiResolutionSTFTLoss`, default settings).

    The loss is the mean over three resolutions (FFT 1024/2048/512, hop 120/240/50,
    Hann windows 600/1200/240) of spectral convergence plus the L1 distance of log
    magnitudes. It is 0 for identical signals and not symmetric (spectral
    convergence is normalised by the original's magnitude). Magnitudes are
    floored at 1e-4 before the log, so exact silence in the reconstruction
    where the original is quiet but not silent costs a lot.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length (both to 2048 samples if the original is shorter).
        sample_rate: Sample rate of both signals in Hz (checked, unused by the loss).

    Returns:
        The distance (dimensionless, >= 0).

    Raises:
        ParameterError: If a signal is not 1-D, empty or not finite.
        SplatError: If auraloss is not installed.
    """
    ref, est = (zero_padded(x, _LONGEST_FFT) for x in _check_pair(original, reconstruction, sample_rate))
    freq = require_optional("auraloss.freq")
    loss = freq.MultiResolutionSTFTLoss()
    with torch.no_grad():
        value = loss(torch.from_numpy(est).reshape(1, 1, -1), torch.from_numpy(ref).reshape(1, 1, -1))
    return float(value)


def _mel_power(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=2048, hop_length=512, n_mels=128, power=2.0)


def _log_mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return librosa.power_to_db(_mel_power(audio, sample_rate), ref=1.0, amin=_MEL_FLOOR_POWER, top_db=None)


def log_mel_distance_db(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> float:
    """RMS difference between the two signals' log-mel spectrograms, in dB.

    Both signals go through the same mel spectrogram (librosa: n_fft 2048, hop
    512, 128 mel bands, power 2, centred frames), converted to dB re 1.0 with a
    fixed floor of 1e-10 (-100 dB) and no per-signal reference or top-dB
    clipping, so a level change counts in full: a copy 6.02 dB louder
    (amplitude x2) is 6.02 dB away. The distance is the root mean square over all
    (band, frame) cells of the dB difference. It is symmetric; bins below the
    floor in both signals count as equal. Because the floor is fixed, quiet cells
    weigh as much as loud ones: a reconstruction that is silent where the
    original sits at -60 dB is 40 dB off in those cells, so sparse methods that
    leave exact silence (matching pursuit) score badly.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length (both to 2048 samples if the original is shorter).
        sample_rate: Sample rate of both signals in Hz.

    Returns:
        The distance in dB (>= 0).

    Raises:
        ParameterError: If a signal is not 1-D, empty or not finite, or the sample
            rate is not a positive integer.
    """
    ref, est = (zero_padded(x, _LONGEST_FFT) for x in _check_pair(original, reconstruction, sample_rate))
    diff_db = _log_mel_db(ref, sample_rate) - _log_mel_db(est, sample_rate)
    return float(np.sqrt(np.mean(diff_db**2)))


def visqol_mos(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> float:
    """ViSQOL v3 audio-mode MOS-LQO of the reconstruction against the original.

    Both signals are resampled to 48 kHz (librosa, soxr high quality) because the
    audio mode's model expects that rate. The score runs from 1 (bad) to about
    4.73 for identical signals. The first call in a fresh environment can take
    about 10 s while numba compiles ViSQOL's kernels (they are cached on disk);
    later calls take about 0.1 s for 1.5 s of audio.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length.
        sample_rate: Sample rate of both signals in Hz.

    Returns:
        MOS-LQO in [1, 5].

    Raises:
        ParameterError: If a signal is invalid, or shorter than 0.96 s
            (`VISQOL_MIN_SAMPLES_48K`), which ViSQOL refuses.
        SplatError: If the visqol package is not installed.
    """
    ref, est = _check_pair(original, reconstruction, sample_rate)
    duration_s = ref.size / sample_rate
    if not _long_enough_for_visqol(ref.size, sample_rate):
        raise ParameterError(
            f"ViSQOL needs at least {VISQOL_MIN_SAMPLES_48K / VISQOL_SAMPLE_RATE:g} s of audio, got {duration_s:.3f} s"
        )
    visqol = require_optional("visqol")
    ref_48k, est_48k = (
        librosa.resample(a, orig_sr=sample_rate, target_sr=VISQOL_SAMPLE_RATE).astype(np.float64) for a in (ref, est)
    )
    # ViSQOL's native code resets torch's intra-op thread count; restore the caller's.
    n_threads = torch.get_num_threads()
    api = visqol.VisqolApi()
    api.create(mode="audio")
    try:
        result = api.measure_from_arrays(ref_48k, est_48k, VISQOL_SAMPLE_RATE)
    except ValueError as exc:
        raise ParameterError(f"ViSQOL cannot score this pair ({duration_s:.3f} s): {exc}") from exc
    finally:
        torch.set_num_threads(n_threads)
    return float(result.moslqo)


def tonal_residual_share(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> float:
    """Share of the residual's energy that is tonal: in spectral peaks that persist.

    The residual is taken on power spectrograms (Hann window of `TONAL_N_FFT` samples, hop
    `TONAL_HOP`, centred frames): R = max(0, P - Q) per cell, the power of the original P
    that the reconstruction Q lacks. Not the spectrogram of the difference signal: atoms do
    not fit the phases of the partials, so a partial drawn at exactly the right level and
    frequency but with another phase leaves a difference signal that is a steady sinusoid
    of up to four times its power (all tonal), where it leaves no power deficit.

    A cell (frame m, bin k) of R is a *peak* if R[m, k] >= R[m, k +- 1] and
    R[m, k] > 10^(`TONAL_PEAK_DB` / 10) R[m, k +- 3] (three bins is outside the Hann main
    lobe, +-2 bins). A peak is *tonal* if it lies on a chain of peaks in consecutive frames,
    each within one bin of the one before (a partial gliding by up to a bin per frame), at
    least `TONAL_MIN_S` long (ceil(TONAL_MIN_S sample_rate / TONAL_HOP) frames: 5 at
    22.05 kHz). The tonal energy is the residual power of the cells within 2 bins of a tonal
    peak (a sinusoid's Hann main lobe), each counted once; the share is that over all of R.

    About 1 when the reconstruction misses a steady sinusoid and nothing else, about 0 when
    it misses only white noise (its peaks rarely stand 10 dB over both bins three away, and
    hardly ever chain through 5 frames), and 0 when it lacks nothing.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length.
        sample_rate: Sample rate of both signals in Hz.

    Returns:
        The share, in [0, 1].

    Raises:
        ParameterError: If a signal is not 1-D, empty or not finite, or the sample
            rate is not a positive integer.
    """
    ref, est = (zero_padded(x, TONAL_N_FFT) for x in _check_pair(original, reconstruction, sample_rate))
    power = [
        np.abs(librosa.stft(x, n_fft=TONAL_N_FFT, hop_length=TONAL_HOP)).astype(np.float64) ** 2 for x in (ref, est)
    ]
    residual = np.maximum(power[0] - power[1], 0.0)  # (bins, frames)
    total = float(residual.sum())
    if total == 0.0:
        return 0.0
    ratio = 10.0 ** (TONAL_PEAK_DB / 10.0)
    core = residual[3:-3]
    peaks = np.zeros_like(residual, dtype=bool)
    peaks[3:-3] = (
        (core >= residual[2:-4])
        & (core >= residual[4:-2])
        & (core > ratio * residual[:-6])
        & (core > ratio * residual[6:])
    )
    min_frames = math.ceil(TONAL_MIN_S * sample_rate / TONAL_HOP)
    tonal = peaks & (_chain_lengths(peaks) >= min_frames)
    lobes = tonal.copy()
    for shift in range(1, _TONAL_LOBE_BINS + 1):
        lobes[shift:] |= tonal[:-shift]
        lobes[:-shift] |= tonal[shift:]
    return float(residual[lobes].sum() / total)


def _chain_lengths(peaks: np.ndarray) -> np.ndarray:
    """Frames in the longest chain of peaks through each peak, 0 elsewhere.

    A chain has a peak in each of consecutive frames, each within one bin of the one
    before (a partial may glide by up to one bin per frame).

    Args:
        peaks: Shape (bins, frames), bool.

    Returns:
        Shape (bins, frames), int.
    """

    def runs(cells: np.ndarray) -> np.ndarray:
        # Chain length ending at each peak, frame by frame: 1 + the longest within a bin in the frame before.
        out = np.zeros(cells.shape, dtype=np.int64)
        for m in range(cells.shape[1]):
            before = out[:, m - 1] if m else np.zeros(cells.shape[0], dtype=np.int64)
            best = before.copy()
            best[1:] = np.maximum(best[1:], before[:-1])
            best[:-1] = np.maximum(best[:-1], before[1:])
            out[:, m] = np.where(cells[:, m], best + 1, 0)
        return out

    return np.where(peaks, runs(peaks) + runs(peaks[:, ::-1])[:, ::-1] - 1, 0)


def missed_onset_share(original: np.ndarray, reconstruction: np.ndarray, sample_rate: int) -> float:
    """Share of the original's onset strength that the reconstruction misses.

    The onset strength of a signal in frame m is librosa's (`onset_strength`'s defaults):
    the spectral flux of its log-mel spectrogram S (as `log_mel_distance_db` takes it: 128
    bands, n_fft 2048, hop 512), o[m] = mean over bands of max(0, S[band, m] - S[band, m - 1]),
    here with S in dB re the original's loudest cell and floored at -`ONSET_RANGE_DB` in both
    signals (librosa's top_db, but one floor for the pair, so a reconstruction's rise out of
    silence counts as the original's does). With o for the original and r for the
    reconstruction, the share is sum_m max(0, o[m] - r[m]) / sum_m o[m]: 0 if the
    reconstruction rises at least as much wherever the original does (a perfect one), 1 if it
    never rises (silence); 0 if the original never rises.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length.
        sample_rate: Sample rate of both signals in Hz.

    Returns:
        The share, in [0, 1].

    Raises:
        ParameterError: If a signal is not 1-D, empty or not finite, or the sample
            rate is not a positive integer.
    """
    ref, est = (zero_padded(x, _LONGEST_FFT) for x in _check_pair(original, reconstruction, sample_rate))
    mels = [_mel_power(x, sample_rate) for x in (ref, est)]
    loudest = max(float(mels[0].max()), _MEL_FLOOR_POWER)
    strength = []
    for mel in mels:
        level_db = np.maximum(
            librosa.power_to_db(mel, ref=loudest, amin=_MEL_FLOOR_POWER, top_db=None), -ONSET_RANGE_DB
        )
        strength.append(np.maximum(0.0, np.diff(level_db, axis=1)).mean(axis=0))
    total = float(strength[0].sum())
    if total == 0.0:
        return 0.0
    return float(np.maximum(0.0, strength[0] - strength[1]).sum() / total)


def _long_enough_for_visqol(n_samples: int, sample_rate: int) -> bool:
    # Integer form of n_samples / sample_rate >= 0.96 s, exact for any rate.
    return n_samples * VISQOL_SAMPLE_RATE >= VISQOL_MIN_SAMPLES_48K * sample_rate


def events_by_level(
    onsets_s: np.ndarray, f0_hz: np.ndarray, level_db: np.ndarray, *, within_db: float = EVENT_WITHIN_DB
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the events whose level is within `within_db` of the loudest one.

    Args:
        onsets_s: Onset of each candidate in seconds, shape (events,).
        f0_hz: Pitch of each candidate in Hz, shape (events,).
        level_db: Level of each candidate in dB (any common reference), shape (events,).
        within_db: Range below the loudest level that still counts, in dB.

    Returns:
        (onsets_s, f0_hz) of the kept events, sorted by onset, each of shape (kept,).

    Raises:
        ParameterError: If the arrays differ in shape or `within_db` is negative.
    """
    onsets = np.asarray(onsets_s, dtype=np.float64).reshape(-1)
    pitches = np.asarray(f0_hz, dtype=np.float64).reshape(-1)
    levels = np.asarray(level_db, dtype=np.float64).reshape(-1)
    if not onsets.shape == pitches.shape == levels.shape:
        raise ParameterError(
            f"onsets_s, f0_hz and level_db must have one value per event, got {onsets.size}, "
            f"{pitches.size} and {levels.size}"
        )
    if not within_db >= 0:
        raise ParameterError(f"within_db={within_db} must be >= 0")
    if onsets.size == 0:
        return onsets, pitches
    keep = levels >= levels.max() - within_db
    order = np.argsort(onsets[keep], kind="stable")
    return onsets[keep][order], pitches[keep][order]


def note_events_from_atoms(atom_set: AtomSet, *, within_db: float = EVENT_WITHIN_DB) -> tuple[np.ndarray, np.ndarray]:
    """Read atoms as note events: those within `within_db` dB of the loudest atom's `gain_db`.

    An event's onset is the atom's `time_s` and its pitch the atom's `f0_hz`
    (also for noise-like atoms, whose pitch then rarely matches a note).

    Args:
        atom_set: The fitted atoms.
        within_db: Range below the loudest atom's gain that still counts, in dB.

    Returns:
        (onsets_s, f0_hz), each of shape (events,), sorted by onset.

    Raises:
        ParameterError: If `within_db` is negative.
    """
    atoms = atom_set.atoms
    return events_by_level(
        np.array([a.time_s for a in atoms]),
        np.array([a.f0_hz for a in atoms]),
        np.array([a.gain_db for a in atoms]),
        within_db=within_db,
    )


def _nominal_intervals(onsets_s: np.ndarray) -> np.ndarray:
    return np.stack([onsets_s, onsets_s + _NOMINAL_NOTE_S], axis=1)


def transcription_scores(
    ref_notes: tuple[np.ndarray, np.ndarray], est_onsets_s: np.ndarray, est_f0_hz: np.ndarray
) -> dict[str, float]:
    """Note precision, recall and F1 of estimated events against reference notes.

    Uses `mir_eval.transcription.precision_recall_f1_overlap` with a 50 ms onset
    tolerance and a 50-cent pitch tolerance, and ignores offsets
    (offset_ratio=None): every note, reference and estimate, is given the interval
    [onset, onset + 0.1 s] only because mir_eval needs intervals. Matching is one
    to one, so several events on one note count once and the rest as false
    positives.

    Args:
        ref_notes: (onsets in seconds, MIDI pitches), each of shape (notes,);
            MIDI pitches may be fractional (69 = A4 = 440 Hz).
        est_onsets_s: Estimated onsets in seconds, shape (events,).
        est_f0_hz: Estimated pitches in Hz, shape (events,).

    Returns:
        {"precision", "recall", "f1"} in [0, 1], and "event_atoms_per_note":
        the number of estimated events divided by the number of reference notes.

    Raises:
        ParameterError: If there are no reference notes, shapes disagree, or a
            pitch is not positive.
        SplatError: If mir_eval is not installed.
    """
    ref_onsets = np.asarray(ref_notes[0], dtype=np.float64).reshape(-1)
    ref_midi = np.asarray(ref_notes[1], dtype=np.float64).reshape(-1)
    est_onsets = np.asarray(est_onsets_s, dtype=np.float64).reshape(-1)
    est_hz = np.asarray(est_f0_hz, dtype=np.float64).reshape(-1)
    if ref_onsets.size == 0:
        raise ParameterError("no reference notes to score against")
    if ref_onsets.shape != ref_midi.shape:
        raise ParameterError(f"{ref_onsets.size} reference onsets but {ref_midi.size} pitches")
    if est_onsets.shape != est_hz.shape:
        raise ParameterError(f"{est_onsets.size} estimated onsets but {est_hz.size} pitches")
    if np.any(est_hz <= 0):
        raise ParameterError("estimated pitches must be positive (Hz)")
    per_note = est_onsets.size / ref_onsets.size
    if est_onsets.size == 0:
        # mir_eval would warn and return zeros; say so directly instead.
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "event_atoms_per_note": 0.0}
    transcription = require_optional("mir_eval.transcription")
    precision, recall, f1, _ = transcription.precision_recall_f1_overlap(
        _nominal_intervals(ref_onsets),
        librosa.midi_to_hz(ref_midi),
        _nominal_intervals(est_onsets),
        est_hz,
        onset_tolerance=ONSET_TOLERANCE_S,
        pitch_tolerance=PITCH_TOLERANCE_CENTS,
        offset_ratio=None,
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "event_atoms_per_note": per_note}


def onset_f_measure(ref_onsets_s: np.ndarray, est_onsets_s: np.ndarray) -> float:
    """Onset F-measure with a 50 ms window (`mir_eval.onset.f_measure`).

    Matching is one to one; simultaneous reference hits (a kick and a hi-hat at
    the same time) each need their own estimated onset.

    Args:
        ref_onsets_s: Reference onsets in seconds, shape (onsets,), any order.
        est_onsets_s: Estimated onsets in seconds, shape (events,), any order.

    Returns:
        The F-measure in [0, 1]; 0 if either list is empty.

    Raises:
        SplatError: If mir_eval is not installed.
    """
    ref = np.sort(np.asarray(ref_onsets_s, dtype=np.float64).reshape(-1))
    est = np.sort(np.asarray(est_onsets_s, dtype=np.float64).reshape(-1))
    if ref.size == 0 or est.size == 0:
        return 0.0
    onset = require_optional("mir_eval.onset")
    f_measure, _, _ = onset.f_measure(ref, est, window=ONSET_TOLERANCE_S)
    return float(f_measure)


@dataclass(frozen=True)
class GroundTruth:
    """Annotated notes (pitched) or hits (unpitched) of one audio file.

    Attributes:
        onsets_s: Onset of each note or hit in seconds, sorted.
        pitches_midi: MIDI pitch of each note, or None for unpitched hits (`events`).
    """

    onsets_s: tuple[float, ...]
    pitches_midi: tuple[float, ...] | None

    @property
    def has_pitch(self) -> bool:
        """True for notes (`notes` list), False for unpitched hits (`events` list)."""
        return self.pitches_midi is not None

    def before(self, end_s: float) -> GroundTruth:
        """The notes or hits whose onset is before `end_s` seconds."""
        keep = [i for i, t in enumerate(self.onsets_s) if t < end_s]
        pitches = None if self.pitches_midi is None else tuple(self.pitches_midi[i] for i in keep)
        return GroundTruth(tuple(self.onsets_s[i] for i in keep), pitches)


def _number(item: Any, key: str, where: str, lo: float, hi: float) -> float:
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}.{key}={value!r} must be a finite number")
    if not lo <= value <= hi:
        raise FormatError(f"{where}.{key}={value:g} is out of range [{lo:g}, {hi:g}]")
    return float(value)


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read a ground-truth JSON file of the shared audio set.

    The file holds either ``"notes": [{"onset": s, "pitch": midi, ...}, ...]`` or
    ``"events": [{"onset": s, ...}, ...]``; other fields are ignored.

    Args:
        path: The JSON file.

    Returns:
        The notes (with pitches) or hits (without), sorted by onset.

    Raises:
        FormatError: If the file cannot be read, is not JSON, has neither list, or
            an entry lacks a valid onset (>= 0) or pitch (0-127).
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read ground truth {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(f"ground truth {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("notes", doc.get("events")), list):
        raise FormatError(f"ground truth {path} must be a JSON object with a 'notes' or 'events' list")
    pitched = "notes" in doc
    key = "notes" if pitched else "events"
    onsets, pitches = [], []
    for i, item in enumerate(doc[key]):
        where = f"{path}: {key}[{i}]"
        onsets.append(_number(item, "onset", where, 0.0, math.inf))
        if pitched:
            pitches.append(_number(item, "pitch", where, 0.0, 127.0))
    order = sorted(range(len(onsets)), key=lambda i: (onsets[i], pitches[i] if pitched else 0.0))
    return GroundTruth(
        onsets_s=tuple(onsets[i] for i in order),
        pitches_midi=tuple(pitches[i] for i in order) if pitched else None,
    )


@dataclass(frozen=True)
class EvalReport:
    """All metrics for one original/reconstruction pair; None where not computed.

    Attributes:
        mrstft: Multi-resolution STFT distance (lower is better).
        log_mel_db: RMS log-mel difference in dB (lower is better).
        visqol_mos: ViSQOL MOS-LQO, 1-5 (higher is better); None if skipped or too short.
        n_atoms: Number of atoms in the atom set; None without one.
        n_events: Atoms counted as note events (30 dB rule); None without atoms.
        precision: Note precision (pitched ground truth and atoms only).
        recall: Note recall.
        f1: Note F1.
        event_atoms_per_note: Events divided by reference notes.
        onset_f1: Onset F-measure (unpitched ground truth and atoms only).
        tonal_residual_share: Share of the residual's energy that is tonal (`tonal_residual_share`).
        missed_onset_share: Share of the original's onset strength the reconstruction misses
            (`missed_onset_share`).
    """

    mrstft: float
    log_mel_db: float
    visqol_mos: float | None = None
    tonal_residual_share: float | None = None
    missed_onset_share: float | None = None
    n_atoms: int | None = None
    n_events: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    event_atoms_per_note: float | None = None
    onset_f1: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        """(metric name with unit, formatted value) for each computed metric, for a table."""
        spec = (
            ("MR-STFT distance", self.mrstft, "{:.3f}"),
            ("log-mel distance (dB)", self.log_mel_db, "{:.2f}"),
            ("ViSQOL MOS-LQO (1-5)", self.visqol_mos, "{:.2f}"),
            ("tonal share of residual energy", self.tonal_residual_share, "{:.3f}"),
            ("missed share of onset strength", self.missed_onset_share, "{:.3f}"),
            ("atoms", self.n_atoms, "{:d}"),
            ("event atoms (within 30 dB)", self.n_events, "{:d}"),
            ("note precision", self.precision, "{:.3f}"),
            ("note recall", self.recall, "{:.3f}"),
            ("note F1 (50 ms, 50 cents)", self.f1, "{:.3f}"),
            ("event atoms per note", self.event_atoms_per_note, "{:.2f}"),
            ("onset F1 (50 ms)", self.onset_f1, "{:.3f}"),
        )
        return [(name, fmt.format(value)) for name, value, fmt in spec if value is not None]


def evaluate_pair(
    original: np.ndarray,
    reconstruction: np.ndarray,
    sample_rate: int,
    *,
    atom_set: AtomSet | None = None,
    notes_path: str | Path | None = None,
    with_visqol: bool = True,
) -> EvalReport:
    """Compute every metric that applies to a pair.

    Signal metrics and residual checks always; ViSQOL if `with_visqol` and the audio lasts at least
    0.96 s (`VISQOL_MIN_SAMPLES_48K`); atom counts with `atom_set`; note scores with
    `atom_set` and a notes file, or the onset F-measure with an events file. Only
    ground-truth onsets inside the original's duration are scored.

    Args:
        original: Reference audio, shape (samples,).
        reconstruction: Audio to score, shape (samples,); cut or zero-padded to
            the original's length.
        sample_rate: Sample rate of both signals in Hz.
        atom_set: The atoms behind the reconstruction, if any.
        notes_path: Ground-truth JSON (shared-audio format), if any.
        with_visqol: Whether to compute ViSQOL (about 0.1 s per 1.5 s of audio).

    Returns:
        The report.

    Raises:
        ParameterError: If a signal is invalid.
        FormatError: If the notes file is invalid.
        SplatError: If an `eval` dependency is missing.
    """
    ref, est = _check_pair(original, reconstruction, sample_rate)
    duration_s = ref.size / sample_rate
    mos = None
    if with_visqol and _long_enough_for_visqol(ref.size, sample_rate):
        mos = visqol_mos(ref, est, sample_rate)
    event_fields: dict[str, Any] = {}
    if atom_set is not None:
        onsets, pitches = note_events_from_atoms(atom_set)
        event_fields.update(n_atoms=len(atom_set.atoms), n_events=int(onsets.size))
        if notes_path is not None:
            truth = load_ground_truth(notes_path).before(duration_s)
            if truth.pitches_midi is not None:
                if truth.onsets_s:
                    event_fields.update(
                        transcription_scores((np.array(truth.onsets_s), np.array(truth.pitches_midi)), onsets, pitches)
                    )
            else:
                event_fields["onset_f1"] = onset_f_measure(np.array(truth.onsets_s), onsets)
    return EvalReport(
        mrstft=mrstft_distance(ref, est, sample_rate),
        log_mel_db=log_mel_distance_db(ref, est, sample_rate),
        visqol_mos=mos,
        tonal_residual_share=tonal_residual_share(ref, est, sample_rate),
        missed_onset_share=missed_onset_share(ref, est, sample_rate),
        **event_fields,
    )
