"""Tests for splat.dsp against naive NumPy loops and closed forms (float64 throughout)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splat import dsp

SAMPLE_RATE = 22050


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _col(value: float) -> torch.Tensor:
    """A per-atom parameter of shape (batch=1, atoms=1, 1)."""
    return torch.full((1, 1, 1), value, dtype=torch.float64)


def _naive_resonance(x: np.ndarray, decay_s: float, sample_rate: int) -> np.ndarray:
    """y[n] = q y[n-1] + (1 - q) x[n], y[-1] = 0, with q = exp(-2 ln(1000) / (decay_s * sr))."""
    q = math.exp(-2.0 * math.log(1000.0) / (decay_s * sample_rate))
    y = np.empty_like(x)
    acc = 0.0
    for n, value in enumerate(x):
        acc = q * acc + (1.0 - q) * value
        y[n] = acc
    return y


# --- burst_envelope ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["gamma", "gaussian"])
@pytest.mark.parametrize(("attack_s", "spread_s"), [(0.002, 0.001), (0.01, 0.01), (0.05, 0.2), (0.1, 0.02)])
def test_burst_peaks_at_one_at_the_attack_time(shape, attack_s, spread_s):
    dt = 1.0 / SAMPLE_RATE
    u = _t(np.arange(-100, round(0.5 * SAMPLE_RATE)) * dt).reshape(1, 1, -1)
    env = dsp.burst_envelope(u, _col(attack_s), _col(spread_s), shape=shape)[0, 0]
    peak = int(torch.argmax(env))
    assert abs(u[0, 0, peak].item() - attack_s) <= dt
    assert env.max().item() <= 1.0
    # The nearest sample is within dt / 2 of the peak, where the envelope is a gaussian of width
    # w (spread_s for the gaussian shape, sqrt(a theta) <= spread_s for the gamma shape).
    width = spread_s if shape == "gaussian" else math.sqrt(attack_s * _gamma_theta(attack_s, spread_s))
    assert env.max().item() >= math.exp(-0.5 * (0.5 * dt / width) ** 2) - 1e-6
    at_attack = dsp.burst_envelope(_col(attack_s), _col(attack_s), _col(spread_s), shape=shape)
    assert at_attack.item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("shape", ["gamma", "gaussian"])
def test_burst_is_zero_before_the_onset(shape):
    u = _t(-np.logspace(-9, 1, 50)).reshape(1, 1, -1)
    env = dsp.burst_envelope(u, _col(0.01), _col(0.5), shape=shape)
    assert torch.equal(env, torch.zeros_like(env))


def test_gaussian_burst_matches_its_formula():
    a, s = 0.03, 0.012
    u_np = np.linspace(0.0, 0.2, 4001)
    env = dsp.burst_envelope(_t(u_np).reshape(1, 1, -1), _col(a), _col(s), shape="gaussian")[0, 0].numpy()
    expected = np.exp(-((u_np - a) ** 2) / (2 * s**2))
    # Below exp(-80) the envelope is held at exp(-80) (a -695 dB floor).
    np.testing.assert_allclose(env, np.maximum(expected, math.exp(-80.0)), rtol=1e-13, atol=0)


def _gamma_theta(attack_s: float, spread_s: float) -> float:
    """Scale of the gamma burst: the positive root of theta^2 + a theta - s^2 (numpy's solver)."""
    return float(max(np.roots([1.0, attack_s, -(spread_s**2)]).real))


@pytest.mark.parametrize(("a", "s"), [(0.02, 0.01), (0.002, 0.1), (0.1, 0.3)])
def test_gamma_burst_matches_its_formula(a, s):
    k = a / _gamma_theta(a, s)
    u_np = np.linspace(1e-4, 0.3, 3000)
    env = dsp.burst_envelope(_t(u_np).reshape(1, 1, -1), _col(a), _col(s), shape="gamma")[0, 0].numpy()
    expected = (u_np / a) ** k * np.exp(k * (1.0 - u_np / a))
    np.testing.assert_allclose(env, np.maximum(expected, math.exp(-80.0)), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("attack_s", "spread_s"), [(0.05, 0.005), (0.02, 0.02), (0.002, 0.05), (0.25, 0.001)])
def test_gamma_burst_has_standard_deviation_spread(attack_s, spread_s):
    # Read as a density over u >= 0, the gamma burst has its mode at the attack and the standard
    # deviation `spread_s`, whatever their ratio (trapezoid integration on a fine grid).
    theta = _gamma_theta(attack_s, spread_s)
    u = np.linspace(0.0, attack_s + 60.0 * theta + 20.0 * spread_s, 400_001)
    env = dsp.burst_envelope(_t(u).reshape(1, 1, -1), _col(attack_s), _col(spread_s), shape="gamma")[0, 0].numpy()
    mass = np.trapezoid(env, u)
    mean = np.trapezoid(u * env, u) / mass
    std = math.sqrt(np.trapezoid((u - mean) ** 2 * env, u) / mass)
    assert std == pytest.approx(spread_s, rel=1e-4)
    assert u[np.argmax(env)] == pytest.approx(attack_s, abs=u[1])


@pytest.mark.parametrize(("attack_s", "spread_s"), [(0.05, 0.005), (0.02, 0.02), (0.01, 0.05)])
def test_gamma_peak_curvature_is_that_of_a_gaussian_of_width_at_most_spread(attack_s, spread_s):
    # d^2/du^2 log e at the peak is -k / a^2 = -1 / (a theta): a gaussian of width sqrt(a theta),
    # which is ~spread_s when spread_s << attack_s (theta ~ s^2 / a) and below it otherwise.
    h = 1e-5 * attack_s
    u = _t([attack_s - h, attack_s, attack_s + h]).reshape(1, 1, 3)
    log_e = torch.log(dsp.burst_envelope(u, _col(attack_s), _col(spread_s), shape="gamma")[0, 0]).numpy()
    curvature = (log_e[0] - 2 * log_e[1] + log_e[2]) / h**2
    width = math.sqrt(attack_s * _gamma_theta(attack_s, spread_s))
    assert curvature == pytest.approx(-1.0 / width**2, rel=1e-4)
    assert width <= spread_s


def test_gamma_burst_with_a_long_spread_is_a_struck_decay():
    # Spread far above the attack: the burst is near full level one attack after the onset and
    # its tail falls as exp(-u / theta) with theta close to the spread (a drum hit, a pluck).
    a, s = 0.001, 0.1
    u = _t([a / 2, 0.3, 0.3 + 1e-4]).reshape(1, 1, 3)
    env = dsp.burst_envelope(u, _col(a), _col(s), shape="gamma")[0, 0].numpy()
    assert env[0] > 0.99
    slope = (math.log(env[2]) - math.log(env[1])) / 1e-4
    k = a / _gamma_theta(a, s)
    assert slope == pytest.approx(k / 0.3 - 1.0 / _gamma_theta(a, s), rel=1e-3)
    assert -1.0 / slope == pytest.approx(s, rel=0.02)


def test_burst_broadcasts_over_batch_and_atoms():
    u = _t(np.linspace(-0.01, 0.1, 64)).reshape(1, 1, -1).expand(2, 3, -1)
    attack = _t(np.full((2, 3, 1), 0.01))
    spread = _t(np.linspace(0.002, 0.02, 6).reshape(2, 3, 1))
    env = dsp.burst_envelope(u, attack, spread, shape="gamma")
    assert env.shape == (2, 3, 64)
    single = dsp.burst_envelope(u[:1, :1], attack[1:, 2:], spread[1:, 2:], shape="gamma")
    torch.testing.assert_close(env[1:, 2:], single, rtol=0, atol=0)


# --- resonance_power --------------------------------------------------------------------------


@pytest.mark.parametrize("decay_s", [0.03, 0.3, 5.0])
def test_resonance_at_audio_rate_is_the_one_pole_recursion(rng, decay_s):
    n = 4096
    x = rng.uniform(0.0, 1.0, n) * np.exp(-np.arange(n) / 800.0)
    y = dsp.resonance_power(_t(x).reshape(1, 1, -1), _col(decay_s), step_samples=1, sample_rate=SAMPLE_RATE)
    assert y.shape == (1, 1, n)
    expected = _naive_resonance(x, decay_s, SAMPLE_RATE)
    # The FFT convolution's rounding is ~1e-16 of the largest term, times log2(n) stages.
    np.testing.assert_allclose(y[0, 0].numpy(), expected, rtol=0, atol=1e-13 * np.abs(x).max())


def test_resonance_of_an_impulse_is_the_power_kernel():
    # h^2(n) = (1 - q) q^n: a unit-energy resonator's power decays 60 dB (in amplitude) over decay_s.
    n, decay_s = 4096, 0.1  # decay_s is a whole number of samples (2205)
    x = np.zeros(n)
    x[0] = 1.0
    y = dsp.resonance_power(_t(x).reshape(1, 1, -1), _col(decay_s), step_samples=1, sample_rate=SAMPLE_RATE)[0, 0]
    q = math.exp(-2.0 * math.log(1000.0) / (decay_s * SAMPLE_RATE))
    np.testing.assert_allclose(y.numpy(), (1 - q) * q ** np.arange(n), rtol=1e-9, atol=1e-15)
    decay_samples = round(decay_s * SAMPLE_RATE)
    assert y[decay_samples].item() / y[0].item() == pytest.approx(1e-6, rel=1e-9)  # -60 dB amplitude


def test_resonance_conserves_energy_when_the_decay_fits(rng):
    n = SAMPLE_RATE  # 1 s
    x = np.zeros(n)
    x[:2205] = rng.uniform(0.0, 1.0, 2205)  # a 0.1 s burst
    y = dsp.resonance_power(_t(x).reshape(1, 1, -1), _col(0.05), step_samples=1, sample_rate=SAMPLE_RATE)
    # Each input sample's energy leaks out as (1 - q) q^j; what is left after 0.9 s is 10^(-6 * 0.9 / 0.05).
    assert y.sum().item() == pytest.approx(x.sum(), rel=1e-10)


def test_resonance_keeps_exactly_the_energy_inside_the_window(rng):
    # With a long decay some energy rings on past the window: sum y = sum_m x[m] (1 - q^(n - m)).
    n, decay_s = 4096, 2.0
    x = rng.uniform(0.0, 1.0, n)
    y = dsp.resonance_power(_t(x).reshape(1, 1, -1), _col(decay_s), step_samples=1, sample_rate=SAMPLE_RATE)
    q = math.exp(-2.0 * math.log(1000.0) / (decay_s * SAMPLE_RATE))
    expected = np.sum(x * (1.0 - q ** (n - np.arange(n))))
    assert y.sum().item() == pytest.approx(expected, rel=1e-10)
    assert expected < 0.7 * x.sum()  # so the check is not the same as energy conservation


def test_resonance_batches_atoms_independently(rng):
    x = rng.uniform(0.0, 1.0, (2, 3, 500))
    decay = rng.uniform(0.03, 1.0, (2, 3, 1))
    y = dsp.resonance_power(_t(x), _t(decay), step_samples=1, sample_rate=SAMPLE_RATE)
    for b in range(2):
        for a in range(3):
            np.testing.assert_allclose(
                y[b, a].numpy(), _naive_resonance(x[b, a], float(decay[b, a, 0]), SAMPLE_RATE), rtol=0, atol=1e-13
            )


@pytest.mark.parametrize("n", [1, 2, 7, 33, 1000])
@pytest.mark.parametrize("log_q", [0.0, -0.01, -4.0, -50.0])
def test_decayed_sum_is_the_first_order_recursion(rng, n, log_q):
    # Block sizes follow sqrt(n): 1, 2, 3, 6 and 32 points, with a partial last block for 7 and 1000.
    x = rng.uniform(0.0, 1.0, (2, n))
    r = dsp.decayed_sum(_t(x), torch.full((2, 1), log_q, dtype=torch.float64)).numpy()
    expected = np.empty_like(x)
    acc = np.zeros(2)
    for i in range(n):
        acc = math.exp(log_q) * acc + x[:, i]
        expected[:, i] = acc
    np.testing.assert_allclose(r, expected, rtol=1e-12)


def test_decayed_sum_keeps_the_relative_precision_of_a_long_tail_in_float32():
    # An impulse through Q = 0.9: r[n] = 0.9^n falls to 1e-30 over 650 points. Each output is a product
    # of powers of Q, so even the smallest keeps float32's relative precision (an FFT convolution's
    # rounding, ~1e-7 of the peak, would swamp everything below ~-70 dB).
    n = 650
    x = torch.zeros(1, n)
    x[0, 0] = 1.0
    r = dsp.decayed_sum(x, torch.full((1, 1), math.log(0.9))).double()
    expected = 0.9 ** torch.arange(n, dtype=torch.float64)
    assert expected[-1] < 1e-29
    assert ((r[0] - expected).abs() / expected).max() < 1e-5


def test_decayed_sum_gradient_matches_finite_differences_when_decays_broadcast(rng):
    # One input per atom, two decays: the input's gradient sums over both.
    x = _t(rng.uniform(0.0, 1.0, size=(2, 1, 3, 50))).requires_grad_(True)
    log_q = _t(-rng.uniform(0.01, 0.5, size=(2, 2, 3, 1))).requires_grad_(True)
    assert torch.autograd.gradcheck(dsp.decayed_sum, (x, log_q))


@pytest.mark.parametrize(("step", "decay_s", "spread_s"), [(11, 0.2, 0.02), (33, 0.2, 0.02), (33, 0.05, 0.01)])
def test_resonance_on_a_coarse_grid_approximates_the_sample_level_result(step, decay_s, spread_s):
    n = SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    x = np.exp(-((t - 0.05) ** 2) / spread_s**2)  # power of a gaussian burst
    exact = _naive_resonance(x, decay_s, SAMPLE_RATE)
    half = (step - 1) // 2
    centres = np.arange(n // step) * step + half  # cell centres j * step + (step - 1) / 2
    grid = dsp.resonance_power(
        _t(x[centres]).reshape(1, 1, -1), _col(decay_s), step_samples=step, sample_rate=SAMPLE_RATE
    )
    error = np.abs(grid[0, 0].numpy() - exact[centres])
    # Error budget, from how the grid sum replaces the sample sum (f(m) = x[m] q^(c - m)):
    #  * each earlier cell is a midpoint rule over `step` samples: sum_{d=-h}^{h} f(c + d) - step f(c)
    #    = f'' step (step^2 - 1) / 24, and the cells' weights (1 - q) step Q^i sum to <= step (1 - q) / (1 - Q);
    #  * the own cell's h + 1 samples up to the centre are taken as (h + 1) x(c):
    #    error <= (1 - q) h (h + 1) / 2 max|x'|.
    # With |f''| <= |x''| + 2 |ln q| |x'| + ln(q)^2 x (per-sample differences), this gives the bound below.
    q = math.exp(-2.0 * math.log(1000.0) / (decay_s * SAMPLE_RATE))
    log_q = abs(math.log(q))
    d1, d2 = np.abs(np.diff(x)).max(), np.abs(np.diff(x, 2)).max()
    f2 = d2 + 2 * log_q * d1 + log_q**2 * x.max()
    weight = step * (1 - q) / (1 - q**step)
    bound = weight * (step**2 - 1) / 24 * f2 + (1 - q) * half * (half + 1) / 2 * d1
    assert error.max() <= bound
    # The bound is second order in the step, and so is the error: it is not a loose bound on a first-order error.
    assert error.max() / exact.max() < 0.02


def test_resonance_grid_error_shrinks_quadratically_with_the_step():
    n = SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    x = np.exp(-((t - 0.05) ** 2) / 0.02**2)
    exact = _naive_resonance(x, 0.2, SAMPLE_RATE)
    errors = []
    for step in (11, 33):
        centres = np.arange(n // step) * step + (step - 1) // 2
        grid = dsp.resonance_power(
            _t(x[centres]).reshape(1, 1, -1), _col(0.2), step_samples=step, sample_rate=SAMPLE_RATE
        )
        errors.append(np.abs(grid[0, 0].numpy() - exact[centres]).max())
    # Tripling the step multiplies a second-order error by ~9 (first order would give ~3).
    assert 6.0 < errors[1] / errors[0] < 12.0


# --- partials ---------------------------------------------------------------------------------


def test_partial_index_inverts_partial_frequencies(rng):
    f0 = _t(rng.uniform(25.0, 5000.0, (4, 1)))
    b = _t(np.concatenate([[[0.0]], rng.uniform(0.0, 0.02, (3, 1))]))
    k = _t(np.arange(1, 65, dtype=np.float64))
    freqs = dsp.partial_frequencies(f0, b, k)
    assert freqs.shape == (4, 64)
    torch.testing.assert_close(dsp.partial_index(freqs, f0, b), k.expand(4, 64), rtol=1e-12, atol=0)
    # And the other way: any frequency maps back to itself through its real partial index.
    f = _t(rng.uniform(30.0, 11000.0, (4, 16)))
    torch.testing.assert_close(dsp.partial_frequencies(f0, b, dsp.partial_index(f, f0, b)), f, rtol=1e-12, atol=0)


def test_harmonic_partials_are_multiples_of_f0():
    f0 = _t([[110.0], [261.63]])
    k = _t(np.arange(1, 33, dtype=np.float64))
    freqs = dsp.partial_frequencies(f0, torch.zeros_like(f0), k)
    torch.testing.assert_close(freqs, f0 * k, rtol=1e-15, atol=0)


def test_stiff_string_partials_follow_the_closed_form():
    f0, b = 100.0, 0.004
    k = np.arange(1, 21, dtype=np.float64)
    freqs = dsp.partial_frequencies(_t([f0]), _t([b]), _t(k)).numpy()
    np.testing.assert_allclose(freqs, k * f0 * np.sqrt(1 + b * k**2), rtol=1e-15)
    assert freqs[9] / (10 * f0) == pytest.approx(math.sqrt(1.4))


def _count_below(f0: float, b: float, nyquist_hz: float, n_partials: int) -> int:
    return sum(1 for k in range(1, n_partials + 1) if k * f0 * math.sqrt(1 + b * k * k) < nyquist_hz)


def test_audible_partials_are_those_strictly_below_nyquist(rng):
    nyquist = SAMPLE_RATE / 2
    f0 = rng.uniform(25.0, 5000.0, 200)
    b = np.where(rng.uniform(size=200) < 0.25, 0.0, rng.uniform(0.0, 0.02, 200))
    counts = dsp.n_audible_partials(_t(f0), _t(b), nyquist_hz=nyquist, n_partials=64)
    expected = [_count_below(f, bb, nyquist, 64) for f, bb in zip(f0, b, strict=True)]
    assert counts.tolist() == expected
    assert not counts.requires_grad


def test_a_partial_exactly_on_nyquist_is_not_audible():
    nyquist = SAMPLE_RATE / 2
    counts = dsp.n_audible_partials(
        _t([nyquist / 10, nyquist / 10 * 1.0001, nyquist / 10 / 1.0001]),
        _t([0.0, 0.0, 0.0]),
        nyquist_hz=nyquist,
        n_partials=64,
    )
    assert counts.tolist() == [9.0, 9.0, 10.0]


def test_audible_partials_are_capped_at_n_partials():
    counts = dsp.n_audible_partials(_t([25.0, 25.0, 6000.0]), _t([0.0, 0.0, 0.0]), nyquist_hz=11025.0, n_partials=8)
    assert counts.tolist() == [8.0, 8.0, 1.0]
    assert _count_below(25.0, 0.0, 11025.0, 1000) == 440  # far more than the cap


@pytest.mark.parametrize("rolloff_db", [0.1, 1.0, 3.0, 12.0, 60.0])
@pytest.mark.parametrize("n_active", [1, 2, 7, 64])
def test_partial_weights_sum_to_one_over_the_audible_partials(rolloff_db, n_active):
    k = _t(np.arange(0, 80, dtype=np.float64))
    c = dsp.partial_weights(_t([rolloff_db]), k, _t([float(n_active)])).numpy()
    assert c[1 : n_active + 1].sum() == pytest.approx(1.0, rel=1e-12)
    assert c[0] == 0.0
    assert np.all(c[n_active + 1 :] == 0.0)
    assert np.all(c[1 : n_active + 1] >= 0.0)


@pytest.mark.parametrize("rolloff_db", [0.1, 3.0, 12.0, 60.0])
def test_neighbouring_partials_differ_by_the_rolloff(rolloff_db):
    k = _t(np.arange(1, 6, dtype=np.float64))
    c = dsp.partial_weights(_t([rolloff_db]), k, _t([64.0])).numpy()
    np.testing.assert_allclose(c[1:] / c[:-1], 10.0 ** (-rolloff_db / 10.0), rtol=1e-12)
    # The first weight is the geometric series' normalisation (1 - rho) / (1 - rho^K).
    rho = 10.0 ** (-rolloff_db / 10.0)
    assert c[0] == pytest.approx((1 - rho) / (1 - rho**64), rel=1e-12)


def test_partial_weights_are_zero_when_no_partial_is_audible():
    c = dsp.partial_weights(_t([6.0]), _t(np.arange(0, 10, dtype=np.float64)), _t([0.0]))
    assert torch.equal(c, torch.zeros_like(c))


def test_partial_phases_are_schroeder_phases():
    k = np.arange(1, 17, dtype=np.float64)
    phases = dsp.partial_phases(_t(k), n_partials=16).numpy()
    np.testing.assert_allclose(phases, np.pi * k * (k - 1) / 16, rtol=1e-15)
    assert phases[0] == 0.0


@pytest.mark.parametrize("n_samples", [1, 255, 256, 1000])
def test_partial_sums_equal_the_sample_by_sample_sums(rng, n_samples):
    freqs = rng.uniform(30.0, 11000.0, (2, 3, 7))
    phases = rng.uniform(0.0, 2 * np.pi, (2, 3, 7))
    a, b = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    first_s = rng.uniform(-1.0, 3.0, (2, 3, 1))
    cos_sum, sin_sum = dsp.partial_sums(
        _t(freqs), _t(phases), _t(a), _t(b), _t(first_s), n_samples=n_samples, sample_rate=SAMPLE_RATE
    )
    x = 2 * np.pi * freqs[..., None] * (first_s[..., None] + np.arange(n_samples) / SAMPLE_RATE) + phases[..., None]
    # Phases up to 2 pi * 11 kHz * 3 s ~ 2e5 rad are known to ~2e5 * 1e-16 rad in float64.
    np.testing.assert_allclose(cos_sum.numpy(), (a[..., None] * np.cos(x)).sum(-2), rtol=0, atol=1e-9)
    np.testing.assert_allclose(sin_sum.numpy(), (b[..., None] * np.sin(x)).sum(-2), rtol=0, atol=1e-9)


def test_partial_sums_of_no_partials_are_zero():
    empty = torch.zeros(1, 2, 0, dtype=torch.float64)
    cos_sum, sin_sum = dsp.partial_sums(
        empty, empty, empty, empty, torch.zeros(1, 2, 1, dtype=torch.float64), n_samples=300, sample_rate=SAMPLE_RATE
    )
    assert cos_sum.shape == sin_sum.shape == (1, 2, 300)
    assert not cos_sum.any() and not sin_sum.any()


# --- band_shape ---------------------------------------------------------------------------------


def test_band_shape_is_a_gaussian_with_the_given_half_power_width():
    center, width = 2000.0, 600.0
    shape = dsp.band_shape(_t([center, center - width / 2, center + width / 2, center + width]), _t(center), _t(width))
    np.testing.assert_allclose(shape.numpy()[:3], [1.0, 0.5, 0.5], rtol=1e-12)  # -3 dB at +- width / 2
    assert shape[3].item() == pytest.approx(0.5**4, rel=1e-12)  # gaussian: twice as far, the log is 4x


# --- hann_power_taps --------------------------------------------------------------------------

N_WINDOW = 4096
PAD = 16


def _hann_power_on_grid() -> tuple[np.ndarray, np.ndarray]:
    """|FFT(periodic Hann)|^2 / (N sum w^2) at offsets j / 16 bins, |offset| <= 8 (zero-padded 16x)."""
    n = np.arange(N_WINDOW)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_WINDOW)
    power = np.abs(np.fft.fft(w, PAD * N_WINDOW)) ** 2 / (N_WINDOW * np.sum(w**2))
    j = np.arange(-8 * PAD, 8 * PAD + 1)
    return j / PAD, power[j % (PAD * N_WINDOW)]


def _hann_power_at(delta: np.ndarray) -> np.ndarray:
    """The same, at arbitrary offsets, by a direct DTFT sum."""
    n = np.arange(N_WINDOW)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_WINDOW)
    spectrum = np.exp(-2j * np.pi * np.outer(delta, n) / N_WINDOW) @ w
    return np.abs(spectrum) ** 2 / (N_WINDOW * np.sum(w**2))


SINGULAR = (-1.0, 0.0, 1.0)


def _kernel(delta) -> np.ndarray:
    """The share at each offset bin - position in `delta`, one sinusoid per offset (float64)."""
    out = []
    for d in np.atleast_1d(np.asarray(delta, dtype=np.float64)):
        position = 1000.0 - d
        tap = 1000.0 - math.floor(position)
        out.append(dsp.hann_power_taps(_t([position]), _t([tap]))[0, 0].item())
    return np.array(out)


def test_hann_kernel_matches_the_numerical_window_spectrum():
    delta, numeric = _hann_power_on_grid()
    # At integer offsets the position is stepped by 5e-4 bins (tested below); compare elsewhere.
    regular = delta != np.round(delta)
    kernel = _kernel(delta[regular])
    # The closed form is the N -> infinity limit: it replaces sin(pi d / N) by pi d / N, a relative
    # error ~(pi d / N)^2 / 6 in each of the window's three Dirichlet kernels; allow (pi (|d| + 1) / N)^2.
    rtol = (np.pi * (np.abs(delta[regular]) + 1) / N_WINDOW) ** 2
    assert np.all(np.abs(kernel - numeric[regular]) <= rtol * numeric[regular] + 1e-15)
    # And it is not trivially small: the main lobe holds most of the power.
    assert kernel.max() > 0.5


def test_hann_kernel_steps_over_its_singular_points_by_5e_4_bins():
    # At 0 and +-1 the closed form is 0/0; the function evaluates it 5e-4 bins further instead.
    kernel = _kernel(SINGULAR)
    np.testing.assert_allclose(kernel, _hann_power_at(np.array(SINGULAR) + 5e-4), rtol=1e-6)
    # Exact values: W(0) = N / 2 and |W(+-1)| = N / 4 with sum w^2 = 3N / 8, i.e. 2/3 and 1/6.
    # The step costs O(5e-4) where the kernel has a slope (at +-1: |K'| = 1/2) and O(5e-4^2) at the top.
    exact = np.array([1 / 6, 2 / 3, 1 / 6])
    _, numeric = _hann_power_on_grid()
    np.testing.assert_allclose(numeric[[7 * PAD, 8 * PAD, 9 * PAD]], exact, rtol=1e-12)
    slope = np.abs(np.gradient(_hann_power_at(np.array([1.0 - 1e-3, 1.0, 1.0 + 1e-3])), 1e-3))[1]
    assert slope == pytest.approx(0.5, rel=1e-3)
    assert np.all(np.abs(kernel - exact) <= np.array([slope, 0.0, slope]) * 5e-4 * 1.01 + 1e-6)


def test_hann_kernel_at_every_integer_offset_is_the_window_spectrum_5e_4_bins_further():
    # One position serves all taps, so a position within 1e-4 of an integer steps every tap.
    delta = np.arange(-8.0, 9.0)
    np.testing.assert_allclose(_kernel(delta), _hann_power_at(delta + 5e-4), rtol=1e-6, atol=1e-15)


def test_hann_kernel_error_at_singular_points_is_below_the_documented_3e_4():
    kernel = _kernel(SINGULAR)
    assert np.all(np.abs(kernel - np.array([1 / 6, 2 / 3, 1 / 6])) < 3e-4)


@pytest.mark.parametrize("offset", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_hann_kernel_sums_to_one_over_integer_spaced_offsets(offset):
    # Parseval: a sinusoid's power is spread over the bins, whatever its fractional offset.
    # The tail beyond 300 bins is ~(2/3) / (pi^2 300^6) per bin; at offset 0 the steps at +-1 cancel
    # to first order (slopes of opposite sign), leaving O(5e-4^2).
    total = _kernel(offset + np.arange(-300, 301)).sum()
    assert total == pytest.approx(1.0, abs=1e-6)


def test_hann_kernel_is_symmetric_away_from_its_singular_points():
    delta = np.array([0.3, 0.77, 1.5, 2.25, 5.1])
    np.testing.assert_allclose(_kernel(delta), _kernel(-delta), rtol=1e-12)


def test_hann_taps_of_one_position_equal_the_kernel_at_each_offset(rng):
    position = _t(rng.uniform(2.0, 60.0, size=(3, 4)))
    taps = _t(np.arange(-3.0, 5.0))
    shares = dsp.hann_power_taps(position, taps).numpy()  # (taps, 3, 4)
    offsets = np.floor(position.numpy())[None] + taps.numpy()[:, None, None] - position.numpy()[None]
    np.testing.assert_allclose(shares, _kernel(offsets.ravel()).reshape(shares.shape), rtol=1e-9, atol=1e-15)


def test_hann_taps_gradient_matches_finite_differences(rng):
    # Positions away from the stepped neighbourhoods of integers, where the value is smooth.
    position = _t(rng.integers(2, 60, size=(2, 5)) + rng.uniform(0.01, 0.99, size=(2, 5))).requires_grad_(True)
    taps = _t(np.arange(-3.0, 5.0))
    assert torch.autograd.gradcheck(lambda p: dsp.hann_power_taps(p, taps), (position,))


# --- written-out gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["gamma", "gaussian"])
def test_burst_envelope_gradient_matches_finite_differences(rng, shape):
    # Times on both sides of the onset; atoms broadcast against one shared time axis.
    u = _t(rng.uniform(-0.02, 0.08, size=(1, 1, 40))).requires_grad_(True)
    attack = _t(rng.uniform(0.002, 0.012, size=(2, 3, 1))).requires_grad_(True)
    # Spreads from below the attack (a peaked burst) to far above it (a struck decay).
    spread = _t(rng.uniform(0.002, 0.05, size=(2, 3, 1))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: dsp.burst_envelope(*a, shape=shape), (u, attack, spread))


@pytest.mark.parametrize("step", [1, 4])
def test_resonance_gradient_matches_finite_differences(rng, step):
    e2 = _t(rng.uniform(0.0, 1.0, size=(2, 3, 40))).requires_grad_(True)
    decay = _t(rng.uniform(0.002, 0.012, size=(2, 3, 1))).requires_grad_(True)  # decays within the window
    assert torch.autograd.gradcheck(
        lambda e, d: dsp.resonance_power(e, d, step_samples=step, sample_rate=SAMPLE_RATE), (e2, decay)
    )


def test_release_gain_is_one_until_the_release_then_falls_60_db_per_release_time():
    u = torch.tensor([[[0.0, 0.2, 0.3, 0.35, 0.4, 0.5]]], dtype=torch.float64)
    duration, release = torch.full((1, 1, 1), 0.3, dtype=torch.float64), torch.full((1, 1, 1), 0.1, dtype=torch.float64)
    amplitude = dsp.release_gain(u, duration, release, power=False)[0, 0]
    level_db = 20.0 * torch.log10(amplitude)
    np.testing.assert_allclose(level_db.numpy(), [0.0, 0.0, 0.0, -30.0, -60.0, -120.0], atol=1e-9)
    power = dsp.release_gain(u, duration, release, power=True)[0, 0]
    np.testing.assert_allclose(power.numpy(), (amplitude**2).numpy(), rtol=1e-12)


def test_formant_gains_boost_the_centre_and_half_the_excess_half_an_octave_away():
    formant_hz, formant_db = torch.tensor(2000.0, dtype=torch.float64), torch.tensor(12.0, dtype=torch.float64)
    freqs = torch.tensor([2000.0, 2000.0 * 2**0.5, 2000.0 / 2**0.5, 50.0], dtype=torch.float64)
    gains = dsp.formant_gains(freqs, formant_hz, formant_db).numpy()
    peak = 10**1.2
    np.testing.assert_allclose(gains[:3], [peak, 1 + (peak - 1) / 2, 1 + (peak - 1) / 2], rtol=1e-12)
    assert gains[3] == pytest.approx(1.0, abs=1e-9)  # 5.3 octaves away
    flat = dsp.formant_gains(freqs, formant_hz, torch.tensor(0.0, dtype=torch.float64))
    np.testing.assert_array_equal(flat.numpy(), np.ones(4))


def test_partial_weights_with_gains_sum_to_one_and_match_the_closed_form_without_a_boost():
    k = torch.arange(1, 21, dtype=torch.float64)
    n_active = torch.tensor([[12.0]], dtype=torch.float64)
    rolloff = torch.tensor([[4.0]], dtype=torch.float64)
    plain = dsp.partial_weights(rolloff, k, n_active)
    flat = dsp.partial_weights(rolloff, k, n_active, torch.ones(20, dtype=torch.float64))
    np.testing.assert_allclose(flat.numpy(), plain.numpy(), rtol=1e-12, atol=1e-15)
    gains = dsp.formant_gains(k * 200.0, torch.tensor(1000.0), torch.tensor(15.0)).double()
    shaped = dsp.partial_weights(rolloff, k, n_active, gains)
    assert float(shaped.sum()) == pytest.approx(1.0, rel=1e-12)
    assert torch.all(shaped[..., 12:] == 0)  # nothing above the audible count
    ratio = (shaped / plain)[..., :12]
    assert int(ratio.argmax()) == 4  # partial 5 (1000 Hz) gains most
