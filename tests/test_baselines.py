"""Checks of the benchmark baselines on tiny synthetic signals."""

import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal

# benchmarks/ is a folder of scripts, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from baselines import (  # noqa: E402
    gabor_atoms_for_splat_budget,
    gabor_matching_pursuit,
    ltas_noise,
    random_phase_stft,
)

from splat.errors import ParameterError  # noqa: E402

SR = 22050
N = 8192


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _hann_cosine(length, k, phase_rad, start, amplitude=0.3):
    """A Hann-windowed cosine at bin k of a `length`-sample window, placed at `start` in N samples."""
    m = np.arange(length)
    x = np.zeros(N)
    x[start : start + length] = (
        amplitude * (0.5 - 0.5 * np.cos(2 * np.pi * m / length)) * np.cos(2 * np.pi * k * m / length + phase_rad)
    )
    return x


@pytest.mark.parametrize("length,k", [(1024, 37), (256, 1), (64, 32)])
def test_mp_recovers_one_dictionary_atom(length, k):
    # Bins 1 and 32 (= Nyquist at L=64) are where the windowed cosine and sine are
    # not orthogonal with equal norms, so a "|STFT|" shortcut would leave a residual.
    start = 3 * (length // 4)
    x = _hann_cosine(length, k, 0.7, start)
    result = gabor_matching_pursuit(x, SR, n_atoms=1)
    (atom,) = result.atoms
    assert atom.scale_samples == length
    assert abs(atom.freq_hz - k * SR / length) <= SR / length
    assert atom.time_s == pytest.approx(start / SR)
    assert np.sum((x - result.audio) ** 2) < 0.01 * np.sum(x**2)


def test_mp_energy_decreases_and_atoms_sum_to_output(rng):
    x = rng.standard_normal(N)
    result = gabor_matching_pursuit(x, SR, n_atoms=20)
    amplitudes = np.array([a.amplitude for a in result.atoms])
    # Each atom removes amplitude² of energy from the residual (orthogonal projection).
    residual_energy = np.sum((x - result.audio) ** 2)
    assert residual_energy == pytest.approx(np.sum(x**2) - np.sum(amplitudes**2), rel=1e-4)


def test_mp_rejects_a_scale_longer_than_the_clip():
    with pytest.raises(ParameterError, match="scale 16384"):
        gabor_matching_pursuit(np.ones(N), SR, n_atoms=1, scales=(64, 16384))


def test_equal_number_budget():
    assert gabor_atoms_for_splat_budget(64) == 268  # floor(64 * 21 / 5): 21 continuous fields per splat atom


def _broadband_burst(rng):
    t = np.arange(N) / SR
    b, a = scipy.signal.butter(2, 1500, fs=SR)
    return (scipy.signal.lfilter(b, a, rng.standard_normal(N)) * np.exp(-t / 0.1)).astype(np.float32)


def _centroid_hz(x):
    freqs_hz, psd = scipy.signal.welch(x, fs=SR, nperseg=1024)
    return np.sum(freqs_hz * psd) / np.sum(psd)


def _rms(x):
    return np.sqrt(np.mean(np.square(x, dtype=np.float64)))


def test_ltas_noise_keeps_level_and_spectral_centroid(rng):
    x = _broadband_burst(rng)
    y = ltas_noise(x, SR, seed=0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert _rms(y) == pytest.approx(_rms(x), rel=0.01)
    # White noise would put the centroid near 5.5 kHz, about 6x too high.
    assert _centroid_hz(y) == pytest.approx(_centroid_hz(x), rel=0.10)


def test_random_phase_stft_keeps_magnitudes_not_waveform(rng):
    x = _broadband_burst(rng) + 0.1 * np.sin(2 * np.pi * 440 * np.arange(N) / SR).astype(np.float32)
    y = random_phase_stft(x, SR, seed=0)
    assert y.shape == x.shape and y.dtype == np.float32
    mag_x = np.abs(librosa.stft(x, n_fft=2048, hop_length=512))
    mag_y = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    # Without phase retrieval the STFT is inconsistent: each re-analysed bin sums
    # about four overlapping frames with unrelated phases, so its magnitude is
    # Rayleigh-like around the target, a relative error of 0.5-0.65 over seeds.
    # Noise with the same long-term spectrum but no time structure scores about
    # 0.83 and unshaped white noise 1.25, so 0.7 still tells them apart.
    assert np.linalg.norm(mag_y - mag_x) / np.linalg.norm(mag_x) < 0.7
    # The frame-energy envelope survives (same-spectrum noise correlates about 0.3).
    assert np.corrcoef(mag_x.sum(axis=0), mag_y.sum(axis=0))[0, 1] > 0.9
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.4
