"""Initial atoms from an analysis of the target: onsets x strongest pitches.

f0 is a non-convex parameter for gradient descent (the loss has a local
minimum at every harmonic relation), so atoms start where the analysis finds
events: one atom per detected onset and pitch. Pitches come from a
harmonic-sum salience of the spectrum that is *new* at the onset (after minus
before, half-wave rectified), with the harmonics of each chosen pitch removed
before the next is chosen (iterative estimation and cancellation). Atoms left
over start at random times and pitches, quiet, for the fit to use or prune.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

_N_FFT = 4096
_HOP = 256
_N_HARMONICS = 16
_PITCHES_PER_ONSET = 4
_MIN_RELATIVE_SALIENCE = 0.15
#: Starting level of the atoms that no onset claimed, in dBFS.
QUIET_DB = -45.0


@dataclass(frozen=True)
class Seed:
    """A starting atom: onset in seconds, f0 in Hz, level of its partials in dBFS."""

    time_s: float
    f0_hz: float
    level_db: float
    salience: float


def detect_onsets(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset times in seconds (backtracked to the start of the rise), shape (onsets,)."""
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


def onset_pitches(new_spectrum: np.ndarray, sample_rate: int, *, max_pitches: int) -> list[tuple[float, float]]:
    """Strongest pitches in the spectrum that appears at an onset.

    Args:
        new_spectrum: Magnitude (after minus before, rectified), shape (n_fft/2 + 1,).

    Returns:
        (f0_hz, peak magnitude) pairs, strongest first.
    """
    freqs = np.fft.rfftfreq(_N_FFT, 1.0 / sample_rate)
    nyquist = sample_rate / 2
    grid = librosa.midi_to_hz(np.arange(21.0, 108.0, 1.0 / 3.0))
    grid = grid[grid < 0.45 * sample_rate]
    spectrum = new_spectrum.copy()
    out: list[tuple[float, float]] = []
    first = None
    for _ in range(max_pitches):
        sal = _salience(spectrum, freqs, grid, nyquist)
        best = int(np.argmax(sal))
        if first is None:
            first = sal[best]
        if first <= 0 or sal[best] < _MIN_RELATIVE_SALIENCE * first:
            break
        f0 = float(grid[best])
        bin_of_f0 = int(round(f0 * _N_FFT / sample_rate))
        # Refine on the spectrum: the strongest bin within a third of a semitone of f0.
        lo, hi = int(bin_of_f0 * 0.98), int(np.ceil(bin_of_f0 * 1.02)) + 1
        peak_bin = lo + int(np.argmax(spectrum[lo:hi]))
        f0 = float(freqs[peak_bin]) if spectrum[peak_bin] > 0 else f0
        out.append((f0, float(sal[best])))
        for h in range(1, _N_HARMONICS + 1):
            centre = int(round(h * f0 * _N_FFT / sample_rate))
            spectrum[max(centre - 3, 0) : centre + 4] = 0.0
    return out


def analyse(audio: np.ndarray, sample_rate: int) -> list[Seed]:
    """Seeds for every detected onset in `audio` (times relative to its start).

    Args:
        audio: Mono audio, shape (samples,), already normalised.

    Returns:
        Seeds sorted by salience, strongest first.
    """
    onsets = detect_onsets(audio, sample_rate)
    mag = np.abs(librosa.stft(audio, n_fft=_N_FFT, hop_length=_HOP, window="hann", center=True))
    seeds: list[Seed] = []
    for t in onsets:
        frame = int(round(t * sample_rate / _HOP))
        after = mag[:, frame + 2 : frame + 9]
        if after.shape[1] == 0:
            continue
        before = mag[:, max(frame - 3, 0)]
        new = np.maximum(after.mean(axis=1) - before, 0.0)
        for f0, sal in onset_pitches(new, sample_rate, max_pitches=_PITCHES_PER_ONSET):
            # A sinusoid of amplitude A peaks at A * N / 4 under a Hann window.
            peak = float(new[int(round(f0 * _N_FFT / sample_rate))])
            level_db = 20.0 * np.log10(max(4.0 * peak / _N_FFT, 1e-6)) + 6.0
            seeds.append(Seed(time_s=float(t), f0_hz=f0, level_db=level_db, salience=sal))
    seeds.sort(key=lambda s: -s.salience)
    return seeds
