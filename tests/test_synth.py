"""Tests for splat.synth: a naive NumPy reference of one atom, physics of the rendered sound, invariants."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.signal
import torch

from splat import dsp, synth
from splat.atoms import Atom, AtomSet
from splat.params import FIELDS, AtomParams

SAMPLE_RATE = 22050
NYQUIST = SAMPLE_RATE / 2
N_PARTIALS = 32
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _atom(**changes: float) -> Atom:
    """A mid-range atom at 0.1 s; `changes` override fields."""
    values = dict(
        time_s=0.1,
        gain_db=-6.0,
        attack_s=0.01,
        spread_s=0.008,
        noise_center_hz=2500.0,
        noise_bandwidth_hz=1500.0,
        f0_hz=330.0,
        inharmonicity=0.0005,
        rolloff_db=4.0,
        decay_s=0.3,
        mix=0.6,
        noise_seed=7,
        short_share=0.3,
        short_decay_s=0.08,
        short_rolloff_db=1.5,
    )
    values.update(changes)
    return Atom(**values)


def _params(atoms: list[Atom]) -> tuple[AtomParams, torch.Tensor]:
    """Batch-1 float64 parameters and the noise seeds of `atoms`."""
    return AtomSet(atoms=tuple(atoms), sample_rate=SAMPLE_RATE, duration_s=1.0).to_params(dtype=torch.float64)


def _render(atoms: list[Atom], *, n_samples: int, envelope: str = "gamma", n_partials: int = N_PARTIALS) -> np.ndarray:
    """`render_atoms` in float64 from t = 0: per-atom audio, shape (atoms, n_samples)."""
    params, seeds = _params(atoms)
    white = synth.white_noise(seeds, n_samples=synth.noise_length(SAMPLE_RATE)).unsqueeze(0).double()
    audio = synth.render_atoms(
        params, white, n_samples=n_samples, sample_rate=SAMPLE_RATE, start=0, envelope=envelope, n_partials=n_partials
    )
    assert audio.shape == (1, len(atoms), n_samples)
    assert audio.dtype == torch.float64
    return audio[0].numpy()


def _atom_set(atoms: list[Atom], *, duration_s: float = 1.0, **changes) -> AtomSet:
    """An AtomSet rendered with the same settings as `_render` (gamma envelope, N_PARTIALS)."""
    return AtomSet(atoms=tuple(atoms), sample_rate=SAMPLE_RATE, duration_s=duration_s, n_partials=N_PARTIALS, **changes)


# --- a naive NumPy reference of one atom ----------------------------------------------------------


def _reference(
    atom: Atom,
    white: np.ndarray,
    *,
    n_samples: int,
    envelope: str,
    n_partials: int,
    noise_freqs_hz: np.ndarray,
    ratios: np.ndarray | None = None,
) -> np.ndarray:
    """The model of the splat.dsp module docstring, written out sample by sample in NumPy.

    `noise_freqs_hz` is the frequency axis of the noise's rfft (n // 2 + 1 bins); `ratios` are
    partial k's frequency ratios r_k (default k, a string's).
    """
    sr = SAMPLE_RATE
    u = np.arange(n_samples) / sr - atom.time_s

    # Burst envelope, peak 1 at u = attack_s, 0 before the onset (floored at exp(-80) after it).
    a, s = atom.attack_s, atom.spread_s
    env = np.zeros(n_samples)
    after = u >= 0
    if envelope == "gaussian":
        env[after] = np.exp(-((u[after] - a) ** 2) / (2 * s**2))
    else:
        theta = max(np.roots([1.0, a, -(s**2)]).real)  # mode a = k theta, std s = sqrt(k + 1) theta
        k = a / theta
        x = np.maximum(u[after], 1e-9) / a
        env[after] = np.exp(k * (np.log(x) + 1.0 - x))
    env[after] = np.maximum(env[after], math.exp(-80.0))

    # Band noise: white noise times sqrt of a gaussian power shape, scaled to unit mean power.
    n = white.size
    freqs = noise_freqs_hz
    sigma = atom.noise_bandwidth_hz / FWHM_PER_SIGMA
    power = np.exp(-0.5 * ((freqs - atom.noise_center_hz) / sigma) ** 2)
    weights = np.full(freqs.size, 2.0)
    weights[0] = weights[-1] = 1.0  # n is even: DC and Nyquist appear once on the full circle
    mean_power = np.sum(power * weights) / n
    band = np.fft.irfft(np.fft.rfft(white) * np.sqrt(np.maximum(power, 1e-30) / mean_power), n=n)
    burst = np.zeros(n_samples)
    onset = math.floor(atom.time_s * sr)  # noise sample j plays at file sample floor(time_s * sr) + j
    for i in range(n_samples):
        j = i - onset
        if 0 <= j < n:
            burst[i] = env[i] * band[j]

    # Resonance powers: the one-pole recursion of the burst power (q per sample, -60 dB in the
    # decay time), for the body (decay_s) and for the short part (short_decay_s).
    def one_pole(decay_s: float) -> np.ndarray:
        q = math.exp(-2.0 * math.log(1000.0) / (decay_s * sr))
        out, acc = np.zeros(n_samples), 0.0
        for i in range(n_samples):
            acc = q * acc + (1.0 - q) * env[i] ** 2
            out[i] = acc
        return out

    # Partials: stiff-string frequencies (of ratio r_k = k, or `ratios`), geometric energy shares over
    # those below Nyquist, Schroeder phases; the short part's partials lag the body's by a quarter
    # period (-sin instead of cos).
    r = np.arange(1.0, n_partials + 1.0) if ratios is None else ratios[:n_partials]
    partials = [
        (k, r[k - 1] * atom.f0_hz * math.sqrt(1.0 + atom.inharmonicity * r[k - 1] ** 2))
        for k in range(1, n_partials + 1)
    ]
    audible = [(k, f) for k, f in partials if f < sr / 2]

    # Pitch motion: every partial's frequency times 2^(bend / 1200), bend = glide * min(u, duration)
    # + depth * sin(2 pi rate u) after the onset; the phase runs on the integral of that factor from
    # the onset (u before it). The integral by the midpoint rule on a grid 16 times finer than the
    # samples (the renderer integrates sample by sample), then read at each sample.
    def factor(v: np.ndarray) -> np.ndarray:
        v = np.maximum(v, 0.0)
        bend = atom.f0_glide_cents_per_s * np.minimum(v, atom.duration_s) + atom.vibrato_cents * np.sin(
            2.0 * math.pi * atom.vibrato_hz * v
        )
        return 2.0 ** (bend / 1200.0)

    step = 1.0 / (16 * sr)
    fine = np.arange(0.0, max(u[-1], 0.0) + 2 * step, step)
    integral = np.concatenate([[0.0], np.cumsum(factor(fine[:-1] + step / 2) - 1.0) * step])
    warped = u + np.where(u > 0, np.interp(u, fine, integral), 0.0)
    scale = factor(u)

    # The formant: a power gain 10^(formant_db / 10) at formant_hz, falling as a gaussian in octaves
    # to half its excess 0.5 octave away; the shares are renormalised to sum to 1.
    sigma_octaves = 1.0 / FWHM_PER_SIGMA
    boost = {
        k: 1.0
        + (10.0 ** (atom.formant_db / 10.0) - 1.0)
        * math.exp(-0.5 * (math.log2(f / atom.formant_hz) / sigma_octaves) ** 2)
        for k, f in audible
    }

    def carrier(rolloff_db: float, wave) -> np.ndarray:
        rho = 10.0 ** (-rolloff_db / 10.0)
        total = sum(rho ** (k - 1) * boost[k] for k, _ in audible)
        out = np.zeros(n_samples)
        for k, f in audible:
            share = rho ** (k - 1) * boost[k] / total
            live = f * scale < sr / 2  # silent while at or above Nyquist
            out += live * math.sqrt(2.0 * share) * wave(2.0 * math.pi * f * warped + math.pi * k * (k - 1) / n_partials)
        return out

    body = (1.0 - atom.short_share) * one_pole(atom.decay_s)
    fast = atom.short_share * one_pole(atom.short_decay_s)
    # The renderer floors each power at -120 dB (1e-12) before its square root.
    tone = (
        np.sqrt(np.maximum(body, 1e-12)) * carrier(atom.rolloff_db, np.cos)
        - np.sqrt(np.maximum(fast, 1e-12)) * carrier(atom.short_rolloff_db, np.sin)
    ) * after

    # Release: from duration_s after the onset, a fall of 60 dB (a factor 1000) every release_s.
    release = 1000.0 ** (-np.maximum(u - atom.duration_s, 0.0) / atom.release_s)
    g = 10.0 ** (atom.gain_db / 20.0)
    return g * release * (math.sqrt(1.0 - atom.mix) * burst + math.sqrt(atom.mix) * tone)


REFERENCE_ATOMS = [
    _atom(),
    _atom(
        time_s=0.05,
        f0_hz=1234.5,
        inharmonicity=0.01,
        rolloff_db=0.5,
        mix=0.2,
        noise_seed=123,
        short_share=0.6,
        short_decay_s=0.04,
        short_rolloff_db=0.2,
        duration_s=0.12,
        release_s=0.05,
        formant_hz=3000.0,
        formant_db=15.0,
    ),
    _atom(
        time_s=0.0,
        attack_s=0.002,
        spread_s=0.05,
        decay_s=0.05,
        noise_center_hz=300.0,
        noise_bandwidth_hz=80.0,
        short_share=0.0,  # as every version-1 atom
    ),
    _atom(f0_hz=220.0, f0_glide_cents_per_s=-400.0, duration_s=0.2, vibrato_hz=6.5, vibrato_cents=45.0),
    # Partial 3 passes Nyquist at about 85 cents up: silent from then on, and at the vibrato's peaks.
    _atom(f0_hz=3500.0, f0_glide_cents_per_s=1200.0, duration_s=0.25, vibrato_hz=9.0, vibrato_cents=-30.0, mix=0.9),
]
REFERENCE_IDS = [
    "mid",
    "short-part-inharmonic-released-formant",
    "onset-at-zero",
    "glide-and-vibrato",
    "glide-past-nyquist",
]


def _compare_with_reference(atom: Atom, envelope: str, noise_freqs_hz: np.ndarray) -> None:
    n_samples = round(0.4 * SAMPLE_RATE)
    n_partials = 24
    rendered = _render([atom], n_samples=n_samples, envelope=envelope, n_partials=n_partials)[0]
    white = synth.white_noise(torch.tensor([atom.noise_seed]), n_samples=synth.noise_length(SAMPLE_RATE))[0]
    expected = _reference(
        atom,
        white.double().numpy(),
        n_samples=n_samples,
        envelope=envelope,
        n_partials=n_partials,
        noise_freqs_hz=noise_freqs_hz,
    )
    peak = np.abs(expected).max()
    assert peak > 0.01
    # float64 throughout. The FFT convolution leaves ~1e-15 * max(P) of rounding in the resonance
    # power P; just after the onset P sits at its 1e-12 floor, where sqrt amplifies an absolute
    # error by 1 / (2 sqrt(1e-12)) = 5e5: ~5e-10 of the peak amplitude at most. A moving pitch adds
    # the trapezoidal rule's error on the warped time, (1 / sr)^2 / 12 times the factor's curvature
    # (~40 / s^2 for 45 cents at 6.5 Hz) per second: ~1e-9 s, 1e-5 rad at 2 kHz, ~1e-6 of the peak
    # (a rectangle rule would be off by ~(1 / 2 sr) times the bend's factor - 1: ~1e-3 of it).
    moving = atom.f0_glide_cents_per_s != 0 or atom.vibrato_cents != 0
    np.testing.assert_allclose(rendered, expected, rtol=0, atol=(1e-5 if moving else 1e-9) * peak)


@pytest.mark.parametrize("envelope", ["gamma", "gaussian"])
@pytest.mark.parametrize("atom", REFERENCE_ATOMS, ids=REFERENCE_IDS)
def test_single_atom_matches_the_numpy_reference(atom, envelope):
    n_noise = synth.noise_length(SAMPLE_RATE)
    _compare_with_reference(atom, envelope, np.fft.rfftfreq(n_noise, d=1.0 / SAMPLE_RATE))


def test_single_atom_noise_is_float64_accurate():
    _compare_with_reference(
        REFERENCE_ATOMS[0], "gamma", np.fft.rfftfreq(synth.noise_length(SAMPLE_RATE), d=1.0 / SAMPLE_RATE)
    )


def test_pure_resonance_has_no_noise_and_pure_burst_has_no_tone():
    n = round(0.3 * SAMPLE_RATE)
    tone_only = _render([_atom(mix=1.0, noise_seed=1)], n_samples=n)[0]
    tone_other_seed = _render([_atom(mix=1.0, noise_seed=2)], n_samples=n)[0]
    np.testing.assert_array_equal(tone_only, tone_other_seed)  # the seed only drives the noise branch
    burst_1 = _render([_atom(mix=0.0, noise_seed=1)], n_samples=n)[0]
    burst_2 = _render([_atom(mix=0.0, noise_seed=2)], n_samples=n)[0]
    assert np.abs(burst_1 - burst_2).max() > 0.1 * np.abs(burst_1).max()
    burst_other_f0 = _render([_atom(mix=0.0, noise_seed=1, f0_hz=999.0)], n_samples=n)[0]
    np.testing.assert_array_equal(burst_1, burst_other_f0)  # f0 only drives the tone


# --- white and band noise -------------------------------------------------------------------------


def test_white_noise_is_seeded_per_atom():
    a = synth.white_noise(torch.tensor([5, 9, 5]), n_samples=1000)
    assert a.shape == (3, 1000)
    assert a.dtype == torch.float32
    assert torch.equal(a[0], a[2])
    assert not torch.equal(a[0], a[1])
    alone = synth.white_noise(torch.tensor([9]), n_samples=1000)
    assert torch.equal(alone[0], a[1])  # a row does not depend on the other atoms' seeds
    assert synth.white_noise(torch.tensor([], dtype=torch.int64), n_samples=10).shape == (0, 10)


def test_noise_length_is_a_power_of_two_covering_noise_s():
    n = synth.noise_length(SAMPLE_RATE)
    assert n & (n - 1) == 0
    assert synth.NOISE_S * SAMPLE_RATE <= n < 2 * synth.NOISE_S * SAMPLE_RATE


def test_band_noise_has_unit_variance_and_its_power_in_the_band():
    n = synth.noise_length(SAMPLE_RATE)
    white = synth.white_noise(torch.arange(4), n_samples=n).double().unsqueeze(0)  # (1, 4, n)
    center = torch.tensor([[[500.0], [2000.0], [6000.0], [9000.0]]], dtype=torch.float64)
    width = torch.tensor([[[200.0], [1000.0], [3000.0], [500.0]]], dtype=torch.float64)
    band = synth.band_noise(white, center, width, sample_rate=SAMPLE_RATE)[0].numpy()
    # A band of width B holds ~n B / sr independent bins (>= 1000 here): the variance estimate
    # has a relative standard deviation <= sqrt(1 / 1000) ~ 3 %, so 12 % is a 4-sigma bound.
    np.testing.assert_allclose(band.var(axis=1), 1.0, rtol=0.12)
    freqs = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
    spectrum = np.abs(np.fft.rfft(band, axis=1)) ** 2
    for i in range(4):
        c, w = center[0, i, 0].item(), width[0, i, 0].item()
        inside = np.abs(freqs - c) <= w  # +-FWHM = +-2.35 sigma: 98 % of the gaussian power shape
        assert spectrum[i, inside].sum() / spectrum[i].sum() > 0.95


# --- physics of the rendered sound ---------------------------------------------------------------


def _spectrum_db(audio: np.ndarray, pad: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed, zero-padded magnitude spectrum in dB: (freqs_hz, level_db)."""
    n_fft = pad * audio.size
    magnitude = np.abs(np.fft.rfft(audio * np.hanning(audio.size), n=n_fft))
    return np.fft.rfftfreq(n_fft, d=1.0 / SAMPLE_RATE), 20 * np.log10(magnitude + 1e-300)


def _peak_hz(audio: np.ndarray, lo_hz: float = 0.0, hi_hz: float = NYQUIST) -> float:
    """Frequency of the strongest spectral peak in [lo_hz, hi_hz], refined by a parabola through 3 log bins."""
    freqs, level = _spectrum_db(audio)
    band = np.flatnonzero((freqs >= lo_hz) & (freqs <= hi_hz))
    i = band[np.argmax(level[band])]
    a, b, c = level[i - 1], level[i], level[i + 1]
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return float(freqs[i] + offset * (freqs[1] - freqs[0]))


@pytest.mark.parametrize("f0_hz", [55.0, 220.0, 440.0, 1500.0])
def test_fundamental_is_at_f0(f0_hz):
    atom = _atom(f0_hz=f0_hz, inharmonicity=0.0, rolloff_db=20.0, mix=1.0, decay_s=0.5)
    audio = _render([atom], n_samples=SAMPLE_RATE)[0]
    assert _peak_hz(audio) == pytest.approx(f0_hz, rel=0.01)


@pytest.mark.parametrize("decay_s", [0.15, 0.3, 0.8])
def test_level_falls_60_db_in_decay_s(decay_s):
    atom = _atom(time_s=0.05, attack_s=0.005, spread_s=0.003, f0_hz=440.0, rolloff_db=10.0, mix=1.0, decay_s=decay_s)
    audio = _render([atom], n_samples=SAMPLE_RATE)[0]
    frame = round(0.02 * SAMPLE_RATE)
    rms = np.sqrt(np.mean(audio[: audio.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    centres_s = (np.arange(rms.size) + 0.5) * frame / SAMPLE_RATE
    level_db = 20 * np.log10(rms + 1e-300)
    # After the burst (attack + 5 spreads past the onset), and while well above the -120 dB power floor.
    fit = (centres_s > atom.time_s + atom.attack_s + 5 * atom.spread_s + 0.02) & (level_db > level_db.max() - 90)
    assert fit.sum() >= 8
    slope_db_per_s = np.polyfit(centres_s[fit], level_db[fit], 1)[0]
    assert -60.0 / slope_db_per_s == pytest.approx(decay_s, rel=0.10)


def test_partials_above_nyquist_are_not_folded_back():
    # f0 = 3 kHz: partials 1-3 lie below Nyquist (11025 Hz), 4-8 above. Folded back, partials 4-7 would
    # land at 10050, 7050, 4050 and 1050 Hz, at nearly the level of the others (0.1 dB roll-off).
    atom = _atom(f0_hz=3000.0, inharmonicity=0.0, rolloff_db=0.1, mix=1.0, attack_s=0.02, spread_s=0.01, decay_s=0.3)
    audio = _render([atom], n_samples=SAMPLE_RATE, n_partials=8)[0]
    freqs, level = _spectrum_db(audio)
    peak = level.max()
    for k in (1, 2, 3):
        near = np.abs(freqs - 3000.0 * k) < 20
        assert level[near].max() > peak - 1.0  # each audible partial is there, all about equally loud
    lines = np.zeros(freqs.size, dtype=bool)
    for k in (1, 2, 3):
        lines |= np.abs(freqs - 3000.0 * k) < 200  # the lines and their envelope's skirts
    assert level[~lines].max() < peak - 60
    for alias_hz in (1050.0, 4050.0, 7050.0, 10050.0):
        assert level[np.abs(freqs - alias_hz) < 50].max() < peak - 60


def test_inharmonic_partial_10_is_at_the_stiff_string_frequency():
    f0, b = 200.0, 0.001
    atom = _atom(f0_hz=f0, inharmonicity=b, rolloff_db=1.0, mix=1.0, decay_s=0.5)
    audio = _render([atom], n_samples=SAMPLE_RATE)[0]
    expected = 10 * f0 * math.sqrt(1 + 100 * b)  # 2097.6 Hz; harmonic partial 10 would be at 2000 Hz
    # Partials 9 and 11 are at 1871 and 2329 Hz, outside the search band.
    measured = _peak_hz(audio, 1950.0, 2200.0)
    assert measured == pytest.approx(expected, rel=0.005)
    assert abs(measured - 10 * f0) > 0.03 * 10 * f0


# --- invariants ---------------------------------------------------------------------------------------


def _three_atoms() -> list[Atom]:
    return [
        _atom(),
        _atom(time_s=0.13, f0_hz=196.0, mix=0.9, noise_seed=11, gain_db=-3.0),
        _atom(time_s=0.31, f0_hz=587.0, mix=0.1, noise_seed=12, decay_s=0.1, attack_s=0.003),
    ]


def test_batched_render_equals_single_atom_renders():
    atoms = _three_atoms()
    n = round(0.5 * SAMPLE_RATE)
    together = _render(atoms, n_samples=n)
    singles = np.stack([_render([atom], n_samples=n)[0] for atom in atoms])
    # Batched and single FFTs round differently (~1e-15 of max P); sqrt near the 1e-12 power
    # floor amplifies that by up to 5e5 (see test_single_atom_matches_the_numpy_reference).
    np.testing.assert_allclose(together, singles, rtol=0, atol=1e-9 * np.abs(singles).max())
    np.testing.assert_allclose(together.sum(axis=0), singles.sum(axis=0), rtol=0, atol=3e-9 * np.abs(singles).max())


def test_render_does_not_depend_on_the_batch():
    first = _three_atoms()
    second = [replace(a, f0_hz=1.5 * a.f0_hz, noise_seed=a.noise_seed + 1, mix=1.0 - a.mix) for a in first]
    items = [_params(first), _params(second)]
    whites = [synth.white_noise(seeds, n_samples=synth.noise_length(SAMPLE_RATE)).double() for _, seeds in items]
    kwargs = dict(n_samples=8192, sample_rate=SAMPLE_RATE, start=0, envelope="gamma", n_partials=16)
    both = AtomParams.unstack(torch.cat([params.stack() for params, _ in items]))
    batched = synth.render_atoms(both, torch.stack(whites), **kwargs)
    assert batched.shape == (2, 3, 8192)
    for b, ((params, _), white) in enumerate(zip(items, whites, strict=True)):
        alone = synth.render_atoms(params, white.unsqueeze(0), **kwargs)[0].numpy()
        np.testing.assert_allclose(batched[b].numpy(), alone, rtol=0, atol=1e-9 * np.abs(alone).max())


def _tail_bound(atoms: list[Atom], n_samples: int, gain: float = 1.0) -> float:
    """render_atom_set stops each atom TAIL_DB below its own peak: the most that can be cut off."""
    peaks = np.abs(_render(atoms, n_samples=n_samples)).max(axis=1)
    return float(10 ** (-synth.TAIL_DB / 20) * peaks.sum() / gain)


def test_render_atom_set_is_the_sum_of_single_atom_renders():
    atoms = _three_atoms()
    mixed = synth.render_atom_set(_atom_set(atoms, duration_s=0.6))
    singles = sum(synth.render_atom_set(_atom_set([a], duration_s=0.6)).astype(np.float64) for a in atoms)
    assert mixed.shape == (round(0.6 * SAMPLE_RATE),)
    assert mixed.dtype == np.float32
    # Alone, an atom's render stops at its own support; in a group, at the group's last support.
    # Beyond that the float32 rounding of each of the 4 renders: 2^-24 of the peak.
    tol = _tail_bound(atoms, mixed.size) + 4 * 2.0**-24 * np.abs(singles).max()
    np.testing.assert_allclose(mixed, singles, rtol=0, atol=tol)


def test_render_atom_set_matches_a_full_window_render():
    # Each atom is rendered only until it is 80 dB down: the odd ones by their own decay, the even
    # ones (which would ring for seconds) by their release.
    atoms = [
        _atom(time_s=0.02 * i, f0_hz=110.0 * (i + 1), noise_seed=i, decay_s=0.05)
        if i % 2
        else _atom(time_s=0.02 * i, f0_hz=110.0 * (i + 1), noise_seed=i, decay_s=3.0, duration_s=0.03, release_s=0.04)
        for i in range(10)
    ]
    atom_set = _atom_set(atoms, duration_s=0.5, gain=0.5)
    rendered = synth.render_atom_set(atom_set)
    full = _render(atoms, n_samples=atom_set.n_samples).sum(axis=0) / atom_set.gain
    tol = _tail_bound(atoms, atom_set.n_samples, atom_set.gain) + 2.0**-24 * np.abs(full).max()
    np.testing.assert_allclose(rendered, full, rtol=0, atol=tol)


def test_moving_an_atom_moves_its_audio_by_as_many_samples():
    shift = round(0.1 * SAMPLE_RATE)  # 2205 samples
    n = round(0.5 * SAMPLE_RATE)
    early = _render([_atom(time_s=0.1)], n_samples=n)[0]
    late = _render([_atom(time_s=0.2)], n_samples=n)[0]
    assert np.all(late[: shift + round(0.1 * SAMPLE_RATE)] == 0.0)  # silent before its onset
    np.testing.assert_allclose(late[shift:], early[:-shift], rtol=0, atol=1e-10 * np.abs(early).max())


def test_moving_an_atom_in_an_atom_set_moves_its_audio():
    shift = round(0.1 * SAMPLE_RATE)
    early = synth.render_atom_set(_atom_set([_atom(time_s=0.1)], duration_s=0.8))
    late = synth.render_atom_set(_atom_set([_atom(time_s=0.2)], duration_s=0.8))
    assert np.all(late[: round(0.2 * SAMPLE_RATE)] == 0.0)
    np.testing.assert_allclose(late[shift:], early[:-shift], rtol=0, atol=1e-6 * np.abs(early).max())


def test_doubling_every_f0_doubles_the_peak_frequency():
    atoms = [
        _atom(f0_hz=220.0, inharmonicity=0.0, rolloff_db=12.0, mix=1.0, decay_s=0.5),
        _atom(time_s=0.2, f0_hz=277.0, inharmonicity=0.0, rolloff_db=12.0, mix=1.0, decay_s=0.5, gain_db=-12.0),
    ]
    up = [replace(a, f0_hz=2 * a.f0_hz) for a in atoms]
    low = _peak_hz(synth.render_atom_set(_atom_set(atoms)))
    high = _peak_hz(synth.render_atom_set(_atom_set(up)))
    assert low == pytest.approx(220.0, rel=0.01)
    assert high / low == pytest.approx(2.0, rel=0.005)


def test_plus_6_02_db_doubles_the_amplitude():
    n = round(0.3 * SAMPLE_RATE)
    base = _render([_atom()], n_samples=n)[0]
    louder = _render([_atom(gain_db=_atom().gain_db + 20 * math.log10(2.0))], n_samples=n)[0]
    np.testing.assert_allclose(louder, 2.0 * base, rtol=1e-12, atol=1e-15)


def test_render_atom_set_divides_by_the_gain():
    atoms = _three_atoms()
    plain = synth.render_atom_set(_atom_set(atoms, duration_s=0.5))
    scaled = synth.render_atom_set(_atom_set(atoms, duration_s=0.5, gain=4.0))
    assert np.abs(plain).max() > 0.01
    np.testing.assert_allclose(scaled, plain / 4.0, rtol=1e-6, atol=1e-12)


def test_rendering_is_deterministic():
    atom_set = _atom_set(_three_atoms(), duration_s=0.5)
    first = synth.render_atom_set(atom_set)
    np.testing.assert_array_equal(synth.render_atom_set(atom_set), first)
    reseeded = atom_set.with_atoms([replace(a, noise_seed=a.noise_seed + 1000) for a in atom_set.atoms])
    assert not np.array_equal(synth.render_atom_set(reseeded), first)


@pytest.mark.parametrize("duration_s", [0.25, 1.0])
def test_an_empty_atom_set_renders_silence_of_the_right_length(duration_s):
    audio = synth.render_atom_set(_atom_set([], duration_s=duration_s))
    assert audio.shape == (round(duration_s * SAMPLE_RATE),)
    assert audio.dtype == np.float32
    assert not np.any(audio)


def test_an_atom_at_the_very_end_renders_nothing():
    audio = synth.render_atom_set(_atom_set([_atom(time_s=0.5)], duration_s=0.5))
    assert audio.shape == (round(0.5 * SAMPLE_RATE),)
    assert not np.any(audio)


def test_render_atoms_is_differentiable_in_every_field():
    # Both atoms are released inside the 0.19 s rendered and have a formant, a glide and a vibrato,
    # so those fields matter too; the second has only 3 of the 8 partials below Nyquist (silent ones
    # must not give NaN).
    shape = dict(formant_hz=1000.0, formant_db=6.0, f0_glide_cents_per_s=-300.0, vibrato_hz=7.0, vibrato_cents=20.0)
    atoms = [
        _atom(duration_s=0.04, release_s=0.1, **shape),
        _atom(time_s=0.15, mix=0.5, noise_seed=3, duration_s=0.02, f0_hz=3000.0, **shape),
    ]
    params, seeds = _params(atoms)
    values = params.stack().clone().requires_grad_(True)
    white = synth.white_noise(seeds, n_samples=synth.noise_length(SAMPLE_RATE)).unsqueeze(0).double()
    audio = synth.render_atoms(
        AtomParams.unstack(values),
        white,
        n_samples=4096,
        sample_rate=SAMPLE_RATE,
        start=0,
        envelope="gamma",
        n_partials=8,
    )
    audio.square().sum().backward()
    grad = values.grad
    assert grad is not None
    assert bool(torch.isfinite(grad).all())
    for i, name in enumerate(FIELDS):
        assert bool((grad[..., i] != 0).all()), name


@pytest.mark.parametrize("envelope", ["gamma", "gaussian"])
@pytest.mark.parametrize(("attack_s", "spread_s"), [(0.0005, 0.3), (0.25, 0.001), (0.01, 0.01), (0.25, 0.3)])
def test_support_bounds_the_burst_at_tail_db(envelope, attack_s, spread_s):
    # Past support_s minus the resonance's share, the burst is already TAIL_DB below its peak of 1.
    atom = _atom(attack_s=attack_s, spread_s=spread_s)
    params, _ = _params([atom])
    burst_s = float(synth.support_s(params)[0, 0]) - atom.decay_s * synth.TAIL_DB / 60.0
    u = torch.linspace(burst_s, burst_s + 5.0, 20_001, dtype=torch.float64).view(1, 1, -1)
    env = dsp.burst_envelope(u, params.attack_s[..., None], params.spread_s[..., None], shape=envelope)
    assert env.max().item() <= 10 ** (-synth.TAIL_DB / 20)


def test_the_short_part_adds_power_not_amplitude():
    # With the body's decay and rolloff, a short part in quadrature leaves each partial's envelope
    # as it was: sqrt(1 - s) cos + sqrt(s) (-sin) has the amplitude of cos for any share s.
    n = round(0.4 * SAMPLE_RATE)
    shape = dict(mix=1.0, short_decay_s=0.3, short_rolloff_db=4.0, f0_hz=440.0)
    plain = _render([_atom(short_share=0.0, **shape)], n_samples=n, n_partials=1)[0]
    split = _render([_atom(short_share=0.5, **shape)], n_samples=n, n_partials=1)[0]
    after_onset = slice(round(0.13 * SAMPLE_RATE), round(0.3 * SAMPLE_RATE))  # onset at 0.1 s; no Hilbert edges
    envelope = [np.abs(scipy.signal.hilbert(x))[after_onset] for x in (plain, split)]
    np.testing.assert_allclose(envelope[1], envelope[0], rtol=1e-3)
    assert np.max(np.abs(split - plain)) > 0.1 * np.max(np.abs(plain))  # the phase did move
