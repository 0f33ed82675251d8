"""Shared fixtures: a seeded random generator and helpers that write small audio files into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SAMPLE_RATE = 22050


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator with a fixed seed, so every test sees the same 'random' data."""
    return np.random.default_rng(1234)


@pytest.fixture
def write_wav(tmp_path: Path) -> Callable[..., Path]:
    """Return `write(name, samples, sample_rate=22050, subtype="FLOAT") -> Path`.

    `samples` has shape (n_samples,) or (n_samples, n_channels). The FLOAT subtype
    stores values exactly, including NaN and values above full scale.
    """

    def write(name: str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE, *, subtype: str = "FLOAT") -> Path:
        path = tmp_path / name
        sf.write(path, samples, sample_rate, format="WAV", subtype=subtype)
        return path

    return write


def sine(freq_hz: float, *, duration_s: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine of shape (n_samples,) with a Hann fade so it has no edge clicks."""
    n_samples = round(duration_s * sample_rate)
    t_s = np.arange(n_samples) / sample_rate
    return (amplitude * np.hanning(n_samples) * np.sin(2 * np.pi * freq_hz * t_s)).astype(np.float32)


@pytest.fixture
def make_sine() -> Callable[..., np.ndarray]:
    """Return `sine(freq_hz, *, duration_s, sample_rate, amplitude=0.5)` (see `sine`)."""
    return sine


def harmonic_spectrum(
    f0_hz: float, *, n_fft: int, sample_rate: int, amplitude: float = 1.0, n_harmonics: int = 16
) -> np.ndarray:
    """STFT magnitude, shape (n_fft/2 + 1,), of a tone whose partial h (at h f0) has amplitude / h.

    Each partial is a Hann-window main lobe (peak amplitude * n_fft / 4, about 2 bins wide).
    """
    bins = np.arange(n_fft // 2 + 1)
    out = np.zeros(bins.size)
    for h in range(1, n_harmonics + 1):
        centre = h * f0_hz * n_fft / sample_rate
        if centre >= bins.size - 2:
            break
        d = np.abs(bins - centre)
        out += amplitude / h * (n_fft / 4) * np.where(d < 2.0, np.cos(np.pi * d / 4.0) ** 2, 0.0)
    return out


@pytest.fixture
def make_harmonic_spectrum() -> Callable[..., np.ndarray]:
    """Return `harmonic_spectrum(f0_hz, *, n_fft, sample_rate, amplitude=1.0, n_harmonics=16)`."""
    return harmonic_spectrum


@pytest.fixture
def clip(rng: np.random.Generator) -> np.ndarray:
    """0.3 s of synthetic music at 22050 Hz: two decaying tones and a noise burst, shape (n_samples,)."""
    n_samples = round(0.3 * SAMPLE_RATE)
    t_s = np.arange(n_samples) / SAMPLE_RATE
    audio = np.zeros(n_samples)
    for onset_s, f0_hz, decay_s in [(0.02, 220.0, 0.08), (0.15, 660.0, 0.05)]:
        active = t_s >= onset_s
        local_s = t_s[active] - onset_s
        audio[active] += 0.4 * np.exp(-local_s / decay_s) * np.sin(2 * np.pi * f0_hz * local_s)
    burst = slice(round(0.1 * SAMPLE_RATE), round(0.12 * SAMPLE_RATE))
    audio[burst] += 0.1 * rng.standard_normal(burst.stop - burst.start)
    return audio.astype(np.float32)


def _native_settings(monkeypatch: pytest.MonkeyPatch, name: str):
    """Sets environment variable `name` to 0 for the test, with `splat.native`'s lookups redone."""
    from splat import native

    monkeypatch.setenv(name, "0")
    native.forget()
    yield
    monkeypatch.delenv(name)
    native.forget()


@pytest.fixture
def pytorch_only(monkeypatch: pytest.MonkeyPatch):
    """The fast engine without its native kernels (SPLAT_NATIVE=0): the code CUDA and compiler-less machines run."""
    yield from _native_settings(monkeypatch, "SPLAT_NATIVE")


@pytest.fixture
def float32_products(monkeypatch: pytest.MonkeyPatch):
    """The native kernels with float32 products (SPLAT_BFLOAT16=0), as on a CPU without bfloat16 instructions."""
    yield from _native_settings(monkeypatch, "SPLAT_BFLOAT16")
