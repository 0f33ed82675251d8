"""Initial atoms from an analysis of the target: onsets x strongest pitches.

f0 is a non-convex parameter for gradient descent (the loss has a local
minimum at every harmonic relation), so atoms start where the analysis finds
events: one atom per detected onset and pitch. Pitches come from a
harmonic-sum salience of the spectrum that is *new* at the onset (after minus
before, half-wave rectified), with the harmonics of each chosen pitch removed
before the next is chosen (iterative estimation and cancellation). A candidate
whose fundamental is mostly not new (a held note) or hardly there (the
subharmonic that collects the partials of several new notes) is skipped
without cancelling anything. Notes that the cancellation hides (partials of a
louder simultaneous note) are looked for later in the fit's residual
(`residual_seeds`). Atoms left over start at random times and pitches, quiet,
for the fit to use or prune.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splat.audio import zero_padded

#: Rate of the analysis, whatever the fit's: its FFT, hop and onset settings are tuned for it, and
#: onsets (s) and pitches (Hz) do not depend on it.
ANALYSIS_RATE = 22050
_N_FFT = 4096
_HOP = 256
_N_HARMONICS = 16
_PITCHES_PER_ONSET = 4
_MIN_RELATIVE_SALIENCE = 0.15
#: Least share of the magnitude at a candidate's fundamental that must be new at the onset.
_MIN_FUNDAMENTAL_NOVELTY = 0.35
#: Least magnitude of a candidate's new fundamental relative to its strongest new partial (1-8).
_MIN_FUNDAMENTAL_PRESENCE = 0.15
#: Starting level of the atoms that no onset claimed, in dBFS.
QUIET_DB = -45.0
#: A file whose first hop is within this many dB of its loudest hop starts with a note already ringing.
_RINGING_START_WITHIN_DB = 30.0
#: A detected onset this close to 0 s already stands for the sound at the start (s).
START_ONSET_S = 0.02


@dataclass(frozen=True)
class Seed:
    """A starting atom: onset in seconds, f0 in Hz, level of its partials in dBFS."""

    time_s: float
    f0_hz: float
    level_db: float
    salience: float


def detect_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset times in seconds (backtracked to the start of the rise), shape (onsets,)."""
    import librosa  # its onset detector compiles with numba on first use (seconds): only the analysis pays

    return librosa.onset.onset_detect(
        y=audio, sr=sample_rate, hop_length=_HOP, backtrack=True, units="time", delta=0.05, wait=4
    )


def _salience(spectrum: np.ndarray, freqs_hz: np.ndarray, f0_grid_hz: np.ndarray, nyquist_hz: float) -> np.ndarray:
    """Harmonic sum: sum_h h^-0.5 |X(h f0)| over harmonics below Nyquist, shape (candidates,)."""
    h = np.arange(1, _N_HARMONICS + 1)
    harmonic_hz = f0_grid_hz[:, None] * h[None, :]
    weights = np.where(harmonic_hz < nyquist_hz, h[None, :] ** -0.5, 0.0)
    # Peak over +-1 bin, so a slightly stretched partial is still found.
    peaked = np.maximum.reduce([spectrum, np.roll(spectrum, 1), np.roll(spectrum, -1)])
    values = np.interp(harmonic_hz, freqs_hz, peaked, right=0.0)
    return (values * weights).sum(axis=1)


def _f0_grid(sample_rate: int) -> np.ndarray:
    """Candidate f0s in Hz: MIDI 21-108 in thirds of a semitone, below 0.45 sample_rate."""
    grid = 440.0 * 2.0 ** ((np.arange(21.0, 108.0, 1.0 / 3.0) - 69.0) / 12.0)
    return grid[grid < 0.45 * sample_rate]


def max_salience(spectrum: np.ndarray, sample_rate: int) -> float:
    """Largest harmonic-sum salience of any candidate f0 in a magnitude spectrum of shape (n_fft/2 + 1,)."""
    freqs = np.fft.rfftfreq(2 * (spectrum.size - 1), 1.0 / sample_rate)
    return float(_salience(spectrum, freqs, _f0_grid(sample_rate), sample_rate / 2).max())


def onset_pitches(
    new_spectrum: np.ndarray,
    after_spectrum: np.ndarray,
    sample_rate: int,
    *,
    max_pitches: int,
    min_salience: float = 0.0,
) -> list[tuple[float, float]]:
    """Strongest pitches in the spectrum that appears at an onset.

    A candidate is kept only if at least `_MIN_FUNDAMENTAL_NOVELTY` of the
    magnitude at its fundamental is new, and that new magnitude is at least
    `_MIN_FUNDAMENTAL_PRESENCE` of its strongest new partial: a note that was
    already sounding, or a subharmonic whose "harmonics" are the partials of
    other new notes, is skipped, and its harmonics stay available to the next
    candidates.

    Args:
        new_spectrum: Magnitude that is new at the onset (after minus before,
            rectified), shape (n_fft/2 + 1,).
        after_spectrum: Magnitude just after the onset, same shape.
        sample_rate: In Hz.
        max_pitches: Most pitches returned.
        min_salience: Candidates below this salience are not kept (besides those
            below `_MIN_RELATIVE_SALIENCE` of the first one kept).

    Returns:
        (f0_hz, salience) pairs, strongest first.
    """
    n_fft = 2 * (new_spectrum.size - 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    grid = _f0_grid(sample_rate)
    spectrum = new_spectrum.copy()
    allowed = np.ones(grid.size, dtype=bool)
    out: list[tuple[float, float]] = []
    floor = max(min_salience, 0.0)
    while len(out) < max_pitches and allowed.any():
        sal = np.where(allowed, _salience(spectrum, freqs, grid, sample_rate / 2), -np.inf)
        best = int(np.argmax(sal))
        if sal[best] <= floor:
            break
        f0 = float(grid[best])
        bin_of_f0 = int(round(f0 * n_fft / sample_rate))
        # Refine on the spectrum: the strongest bin within a third of a semitone of f0; never
        # the DC bin, which a low f0 reaches on a coarse spectrum (a long FFT at a high rate).
        lo = max(int(bin_of_f0 * 0.98), 1)
        hi = max(int(np.ceil(bin_of_f0 * 1.02)) + 1, lo + 1)
        peak_bin = lo + int(np.argmax(spectrum[lo:hi]))
        novelty = new_spectrum[lo:hi].max() / max(float(after_spectrum[lo:hi].max()), 1e-12)
        partial_bins = [int(round(h * f0 * n_fft / sample_rate)) for h in range(1, 9)]
        strongest = max(float(new_spectrum[max(b - 1, 0) : b + 2].max(initial=0.0)) for b in partial_bins)
        presence = new_spectrum[lo:hi].max() / max(strongest, 1e-12)
        if novelty < _MIN_FUNDAMENTAL_NOVELTY or presence < _MIN_FUNDAMENTAL_PRESENCE:
            # Not a new note here: rule out this pitch (+-1 semitone) and cancel nothing.
            allowed &= np.abs(12.0 * np.log2(grid / f0)) > 1.0
            continue
        if not out:
            floor = max(floor, _MIN_RELATIVE_SALIENCE * float(sal[best]))
        f0 = float(freqs[peak_bin]) if spectrum[peak_bin] > 0 else f0
        out.append((f0, float(sal[best])))
        for h in range(1, _N_HARMONICS + 1):
            centre = int(round(h * f0 * n_fft / sample_rate))
            spectrum[max(centre - 3, 0) : centre + 4] = 0.0
    return out


def _level_db(spectrum: np.ndarray, f0_hz: float, sample_rate: int) -> float:
    """Level in dBFS of the partials of an f0, from the magnitude at its bin (shape (n_fft/2 + 1,))."""
    n_fft = 2 * (spectrum.size - 1)
    peak = float(spectrum[int(round(f0_hz * n_fft / sample_rate))])
    # A sinusoid of amplitude A peaks at A * N / 4 under a Hann window.
    return 20.0 * float(np.log10(max(4.0 * peak / n_fft, 1e-6))) + 6.0


def rings_at_start(audio: np.ndarray) -> bool:
    """Whether `audio` (shape (samples,)) starts inside a sound rather than in silence.

    True when its first hop (`_HOP` samples, ~12 ms at 22.05 kHz) is within
    `_RINGING_START_WITHIN_DB` of its loudest hop: a recording cut from a longer
    one, with a note struck before its first sample.
    """
    frame = _HOP
    n = audio.size // frame * frame
    if n == 0:
        return False
    power = np.mean(audio[:n].reshape(-1, frame).astype(np.float64) ** 2, axis=1)
    return bool(power[0] > 0.0 and 10.0 * np.log10(power[0] / power.max()) > -_RINGING_START_WITHIN_DB)


def analyse(audio: np.ndarray, sample_rate: int, *, file_start: bool = False) -> tuple[np.ndarray, list[Seed]]:
    """Onsets and seeds for every detected onset in `audio` (times relative to its start).

    Args:
        audio: Mono audio, shape (samples,), already normalised.
        sample_rate: Its rate in Hz; other rates than `ANALYSIS_RATE` are resampled to it.
        file_start: `audio` starts where the file does. If it starts inside a
            sound (`rings_at_start`) and no onset was detected near 0 s, 0 s is an
            onset too, with everything sounding there new: otherwise no atom would
            start early enough to hold the notes struck before the file begins.
            (A later part of a file has the earlier atoms' tails for that.)

    Returns:
        Onset times in seconds, shape (onsets,), and the seeds sorted by
        salience, strongest first.
    """
    import librosa

    duration_s = audio.size / sample_rate
    if sample_rate != ANALYSIS_RATE:
        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=ANALYSIS_RATE, res_type="soxr_hq")
        sample_rate = ANALYSIS_RATE
    audio = zero_padded(audio, _N_FFT)
    onsets = detect_onsets(audio, sample_rate)
    onsets = onsets[onsets < duration_s]  # not the clip's own end, seen against the silence after it
    if file_start and (onsets.size == 0 or onsets[0] > START_ONSET_S) and rings_at_start(audio):
        onsets = np.concatenate([[0.0], onsets])
    mag = np.abs(librosa.stft(audio, n_fft=_N_FFT, hop_length=_HOP, window="hann", center=True))
    seeds: list[Seed] = []
    for t in onsets:
        frame = int(round(t * sample_rate / _HOP))
        after = mag[:, frame + 2 : frame + 9]
        if after.shape[1] == 0:
            continue
        before = mag[:, frame - 3] if frame >= 3 else np.zeros(mag.shape[0], dtype=mag.dtype)
        after_mean = after.mean(axis=1)
        new = np.maximum(after_mean - before, 0.0)
        for f0, sal in onset_pitches(new, after_mean, sample_rate, max_pitches=_PITCHES_PER_ONSET):
            seeds.append(Seed(time_s=float(t), f0_hz=f0, level_db=_level_db(new, f0, sample_rate), salience=sal))
    seeds.sort(key=lambda s: -s.salience)
    return onsets, seeds


def _onset_change(mag: np.ndarray, after: slice, last_before: int) -> tuple[np.ndarray, np.ndarray]:
    """(new, after) spectra: mean of the frames `after` minus frame `last_before` (none if < 0), rectified."""
    after_mean = mag[after].mean(axis=0)
    before = mag[last_before] if last_before >= 0 else np.zeros_like(after_mean)
    return np.maximum(after_mean - before, 0.0), after_mean


def residual_seeds(
    target_mag: np.ndarray,
    model_mag: np.ndarray,
    onsets_s: np.ndarray,
    *,
    hop: int,
    sample_rate: int,
    max_pitches: int = _PITCHES_PER_ONSET,
) -> list[Seed]:
    """Pitches that start at an onset and that the model does not explain yet.

    The same estimation as at the start (`onset_pitches`), on the rectified
    residual (target minus model magnitude) instead of the target: a note whose
    partials coincide with harmonics of a louder simultaneous note (an octave,
    a twelfth) was cancelled with it at the start, but the fitted atom of the
    louder note has a smooth partial envelope and leaves it in the residual.
    Pitches weaker than `_MIN_RELATIVE_SALIENCE` of the target's own strongest
    new pitch at that onset are not returned.

    Args:
        target_mag: Target STFT magnitude, shape (frames, n_fft/2 + 1); frame m
            is centred on sample m * hop.
        model_mag: Model magnitude, same shape.
        onsets_s: Onset times in seconds (frame m centre = m * hop / sample_rate).
        hop: Frame step in samples.
        sample_rate: In Hz.
        max_pitches: Most pitches per onset.

    Returns:
        Seeds (onset, f0, level of the unexplained partials), strongest first.
    """
    n_frames, n_bins = target_mag.shape
    half = n_bins - 1  # n_fft / 2: a frame centred that far from the onset does not overlap it
    residual = np.maximum(target_mag - model_mag, 0.0)
    seeds: list[Seed] = []
    for t in onsets_s:
        onset = float(t) * sample_rate
        first_after = int(np.ceil((onset + half) / hop))
        if first_after >= n_frames:
            continue
        after = slice(first_after, min(first_after + 2, n_frames))
        last_before = int(np.floor((onset - half) / hop))
        target_new, _ = _onset_change(target_mag, after, last_before)
        residual_new, residual_after = _onset_change(residual, after, last_before)
        floor = _MIN_RELATIVE_SALIENCE * max_salience(target_new, sample_rate)
        for f0, sal in onset_pitches(
            residual_new, residual_after, sample_rate, max_pitches=max_pitches, min_salience=floor
        ):
            level_db = _level_db(residual_new, f0, sample_rate)
            seeds.append(Seed(time_s=float(t), f0_hz=f0, level_db=level_db, salience=sal))
    seeds.sort(key=lambda s: -s.salience)
    return seeds
