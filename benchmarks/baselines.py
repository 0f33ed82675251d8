"""Reference decompositions to put splat's numbers in context.

- `gabor_matching_pursuit`: greedy matching pursuit over Hann-windowed cosines at
  several scales (as MPTK does), a classic sparse decomposition with no notion
  of notes. `matching_pursuit_equal_numbers` runs it with as many numbers as 64
  splat atoms hold.
- `ltas_noise`: noise with the clip's long-term spectrum and level: a floor that
  knows nothing about time.
- `random_phase_stft`: the clip's own STFT magnitudes with random phases: what
  perfect magnitudes give without phase information.

Every function takes mono audio of shape (samples,) and returns float32 audio
of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.signal

from splat.errors import ParameterError
from splat.params import N_FIELDS

#: Numbers that describe one Gabor atom: scale, time, frequency, amplitude, phase.
GABOR_NUMBERS_PER_ATOM = 5
#: Window lengths of the matching-pursuit dictionary, in samples (3 ms to 186 ms at 22.05 kHz).
DEFAULT_SCALES = (64, 256, 1024, 4096)


def _check_audio(x: np.ndarray) -> np.ndarray:
    audio = np.asarray(x)
    if audio.ndim != 1 or audio.size == 0:
        raise ParameterError(f"audio must be a non-empty 1-D array, got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ParameterError("audio contains NaN or infinite samples")
    return audio.astype(np.float64)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


@dataclass(frozen=True)
class GaborAtom:
    """One matching-pursuit atom: a unit-energy Hann-windowed cosine times `amplitude`.

    The waveform is ``amplitude * g(n - start)`` with
    ``g(m) ∝ hann(m) * cos(2π freq_hz m / sample_rate + phase_rad)`` for
    ``0 <= m < scale_samples`` and ``||g|| = 1``.

    Attributes:
        scale_samples: Window length in samples.
        time_s: Start of the window in seconds.
        freq_hz: Frequency of the cosine in Hz (an STFT bin centre of the scale).
        amplitude: Weight of the unit-energy atom (its energy is amplitude²).
        phase_rad: Phase of the cosine at the window start, in radians.
    """

    scale_samples: int
    time_s: float
    freq_hz: float
    amplitude: float
    phase_rad: float

    @property
    def level_db(self) -> float:
        """Atom energy in dB (20·log10 amplitude); comparable across scales."""
        return 20.0 * math.log10(max(self.amplitude, 1e-30))


@dataclass(frozen=True)
class MatchingPursuitResult:
    """Output of `gabor_matching_pursuit`.

    Attributes:
        audio: Sum of the atoms, float32, shape (samples,).
        atoms: The atoms in the order they were picked (largest energy first, roughly).
    """

    audio: np.ndarray
    atoms: tuple[GaborAtom, ...]


class _Scale:
    """Inner products of the residual with every atom of one window length.

    The atoms at bin k span the 2-D space of ``w·cos(ωn)`` and ``w·sin(ωn)``
    (ω = 2πk/L). Any unit vector in that space is a phase-shifted windowed cosine,
    so the best free-phase atom is the normalised projection of the residual onto
    the space and its squared inner product is the projection's energy
    ``v^T G^+ v``, with ``v = (<r, w cos>, <r, w sin>) = (Re X, -Im X)`` from the
    STFT ``X`` and ``G`` the 2x2 Gram matrix. ``G = E/2·I`` except near DC and
    Nyquist, where the plain "|X|" rule would be wrong.
    """

    def __init__(self, length: int, n_samples: int) -> None:
        self.length = length
        self.hop = length // 4
        self.n_frames = (n_samples - length) // self.hop + 1
        n = np.arange(length)
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * n / length)  # periodic Hann
        self.bins = np.arange(length // 2 + 1)
        # Gram entries from the DFT of w² at bin 2k: cc = (E + Re W2)/2,
        # ss = (E - Re W2)/2, cs = -Im W2 / 2.
        w2_dft = np.fft.fft(self.window**2)[(2 * self.bins) % length]
        energy = float(np.sum(self.window**2))
        gram = np.empty((self.bins.size, 2, 2))
        gram[:, 0, 0] = (energy + w2_dft.real) / 2
        gram[:, 1, 1] = (energy - w2_dft.real) / 2
        gram[:, 0, 1] = gram[:, 1, 0] = -w2_dft.imag / 2
        # At DC and Nyquist the sine vanishes: the pseudo-inverse drops it.
        self.gram_pinv = np.linalg.pinv(gram, rcond=1e-9, hermitian=True)
        self.scores = np.zeros((self.n_frames, self.bins.size))
        self.coefs = np.zeros((self.n_frames, self.bins.size, 2))

    def update(self, residual: np.ndarray, first: int, last: int) -> None:
        """Recompute frames first..last (inclusive) from the residual."""
        starts = np.arange(first, last + 1) * self.hop
        frames = residual[starts[:, None] + np.arange(self.length)[None, :]] * self.window
        spectrum = np.fft.rfft(frames, axis=1)
        v = np.stack([spectrum.real, -spectrum.imag], axis=-1)  # (frames, bins, 2)
        coefs = np.einsum("kij,fkj->fki", self.gram_pinv, v)
        self.coefs[first : last + 1] = coefs
        self.scores[first : last + 1] = np.einsum("fki,fki->fk", v, coefs)

    def frames_touching(self, start: int, stop: int) -> tuple[int, int]:
        """First and last frame that overlap samples [start, stop)."""
        first = max(0, -(-(start - self.length + 1) // self.hop))
        last = min(self.n_frames - 1, (stop - 1) // self.hop)
        return first, last

    def waveform(self, frame: int, k: int) -> np.ndarray:
        """The projection of the residual onto atom (frame, k), shape (length,)."""
        alpha, beta = self.coefs[frame, k]
        omega_n = 2 * np.pi * k * np.arange(self.length) / self.length
        return self.window * (alpha * np.cos(omega_n) + beta * np.sin(omega_n))


def gabor_matching_pursuit(
    x: np.ndarray, sample_rate: int, *, n_atoms: int, scales: tuple[int, ...] = DEFAULT_SCALES
) -> MatchingPursuitResult:
    """Greedy matching pursuit over multi-scale Hann-windowed cosines.

    The dictionary holds, for each window length L in `scales`, unit-energy
    Hann-windowed cosines starting every L/4 samples (windows lie inside the
    clip), at every STFT bin frequency k·sample_rate/L, with any phase. Each step
    picks the atom with the largest inner product with the residual, subtracts
    it, and recomputes only the STFT frames that overlap it.

    Args:
        x: Audio, shape (samples,).
        sample_rate: Sample rate in Hz.
        n_atoms: Number of atoms to pick (fewer if the residual becomes zero).
        scales: Window lengths in samples; multiples of 4, at most the clip length.

    Returns:
        The reconstruction (float32, shape (samples,)) and the atoms.

    Raises:
        ParameterError: If the audio is invalid, `n_atoms` < 1, or a scale does
            not fit.
    """
    audio = _check_audio(x)
    if n_atoms < 1:
        raise ParameterError(f"n_atoms={n_atoms} must be at least 1")
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate={sample_rate} must be positive (Hz)")
    for length in scales:
        if length < 4 or length % 4 or length > audio.size:
            raise ParameterError(
                f"scale {length} must be a multiple of 4 between 4 and the clip length ({audio.size} samples)"
            )
    residual = audio.copy()
    dictionary = [_Scale(length, audio.size) for length in scales]
    for scale in dictionary:
        scale.update(residual, 0, scale.n_frames - 1)
    atoms = []
    for _ in range(n_atoms):
        best = max(dictionary, key=lambda s: s.scores.max())
        frame, k = np.unravel_index(np.argmax(best.scores), best.scores.shape)
        energy = best.scores[frame, k]
        if energy <= 1e-20 * max(np.sum(audio**2), 1e-30):
            break
        start = int(frame) * best.hop
        residual[start : start + best.length] -= best.waveform(frame, k)
        alpha, beta = best.coefs[frame, k]
        atoms.append(
            GaborAtom(
                scale_samples=best.length,
                time_s=start / sample_rate,
                freq_hz=float(k) * sample_rate / best.length,
                amplitude=float(np.sqrt(energy)),
                phase_rad=float(np.arctan2(-beta, alpha)),
            )
        )
        for scale in dictionary:
            scale.update(residual, *scale.frames_touching(start, start + best.length))
    return MatchingPursuitResult(audio=(audio - residual).astype(np.float32), atoms=tuple(atoms))


def gabor_atoms_for_splat_budget(n_splat_atoms: int = 64) -> int:
    """Number of Gabor atoms that hold as many numbers as `n_splat_atoms` splat atoms.

    A splat atom has `splat.params.N_FIELDS` = 21 continuous numbers (its integer
    noise seed is not counted); a Gabor atom has 5 (scale, time, frequency,
    amplitude, phase). So 64 splat atoms = 1344 numbers = floor(1344 / 5) = 268
    Gabor atoms (281 if the seed were counted as a 22nd number).
    """
    if n_splat_atoms < 1:
        raise ParameterError(f"n_splat_atoms={n_splat_atoms} must be at least 1")
    return n_splat_atoms * N_FIELDS // GABOR_NUMBERS_PER_ATOM


def matching_pursuit_equal_numbers(
    x: np.ndarray, sample_rate: int, *, n_splat_atoms: int = 64
) -> MatchingPursuitResult:
    """`gabor_matching_pursuit` with the number budget of `n_splat_atoms` splat atoms."""
    return gabor_matching_pursuit(x, sample_rate, n_atoms=gabor_atoms_for_splat_budget(n_splat_atoms))


def ltas_noise(x: np.ndarray, sample_rate: int, *, seed: int) -> np.ndarray:
    """Stationary noise with the clip's long-term average spectrum and RMS.

    The spectrum is Welch's power spectral density (2048-sample Hann segments, or
    the whole clip if shorter); white Gaussian noise is shaped by its square root
    in one FFT over the whole clip, then scaled to the clip's RMS.

    Args:
        x: Audio, shape (samples,).
        sample_rate: Sample rate in Hz.
        seed: Seed of the noise generator.

    Returns:
        Noise, float32, shape (samples,); silence for a silent clip.

    Raises:
        ParameterError: If the audio is invalid.
    """
    audio = _check_audio(x)
    freqs_hz, psd = scipy.signal.welch(audio, fs=sample_rate, nperseg=min(2048, audio.size))
    white = np.random.default_rng(seed).standard_normal(audio.size)
    spectrum = np.fft.rfft(white) * np.sqrt(np.interp(np.fft.rfftfreq(audio.size, 1 / sample_rate), freqs_hz, psd))
    noise = np.fft.irfft(spectrum, n=audio.size)
    noise_rms = _rms(noise)
    if noise_rms == 0.0:
        return np.zeros(audio.size, dtype=np.float32)
    return (noise * (_rms(audio) / noise_rms)).astype(np.float32)


def random_phase_stft(x: np.ndarray, sample_rate: int, *, seed: int, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """The clip's STFT magnitudes with independent uniform random phases, inverted.

    No phase retrieval (Griffin-Lim) is done, so the result is not consistent:
    neighbouring frames overlap 4x with unrelated phases and partly cancel in the
    overlap-add. Re-analysed, its magnitudes differ from the clip's by about 50%
    (relative Frobenius norm) and its level drops by about 6 dB. The output is
    therefore scaled to the clip's RMS, so the baseline is not penalised for a
    level that any model with a gain gets right.

    Args:
        x: Audio, shape (samples,).
        sample_rate: Sample rate in Hz (unused; kept for a uniform signature).
        seed: Seed of the phase generator.
        n_fft: FFT size in samples.
        hop: Hop size in samples.

    Returns:
        Audio, float32, shape (samples,).

    Raises:
        ParameterError: If the audio is invalid or hop/n_fft are not positive.
    """
    audio = _check_audio(x)
    if n_fft < 2 or hop < 1 or hop > n_fft:
        raise ParameterError(f"need 2 <= n_fft and 1 <= hop <= n_fft, got n_fft={n_fft}, hop={hop}")
    magnitude = np.abs(librosa.stft(audio, n_fft=n_fft, hop_length=hop))
    phase = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, size=magnitude.shape)
    out = librosa.istft(magnitude * np.exp(1j * phase), hop_length=hop, n_fft=n_fft, length=audio.size)
    out_rms = _rms(out)
    if out_rms == 0.0:
        return np.zeros(audio.size, dtype=np.float32)
    return (out * (_rms(audio) / out_rms)).astype(np.float32)
