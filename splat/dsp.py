"""Pure tensor functions of the atom model: envelopes, resonance power, partials, kernels.

No state, no I/O. Conventions: per-atom signals have shape (batch, atoms, samples)
or (batch, atoms, points) on a coarser time grid; per-atom parameters broadcast
as (batch, atoms, 1). Times are in seconds, frequencies in Hz.

The model of one atom, for u = time since its onset (seconds):

    burst(u)     = e(u) * band_noise(u)                       (noise branch)
    resonance(u) = sqrt(P_res(u)) * sum_k alpha_k cos(2 pi f_k u + phi_k)
    atom(u)      = g * (sqrt(1 - mix) * burst(u) + sqrt(mix) * resonance(u))

P_res is the mean power that the burst envelope e(u) produces when it drives a
resonator of unit energy whose partials all fall by 60 dB in `decay_s`:
P_res = e^2 * h^2 with h^2(n) = (1 - q) q^n, q = exp(-2 / (tau * sr)),
tau = decay_s / ln(1000). So the resonance carries the burst's energy, rings
with the resonator's decay, and `mix` is the share of the atom's energy in it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN_1000 = math.log(1000.0)  # amplitude ratio of a 60 dB decay, as a natural log
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
HANN_MEAN_SQUARE = 0.375  # mean of w^2 for a Hann window


def burst_envelope(u_s: Tensor, attack_s: Tensor, spread_s: Tensor, *, shape: str) -> Tensor:
    """Amplitude envelope of the excitation burst, peak 1 at u = attack_s, 0 for u < 0.

    gamma:    e(u) = (u/a)^k exp(k (1 - u/a)),  k = 1 + (a / spread)^2
    gaussian: e(u) = exp(-(u - a)^2 / (2 spread^2))

    For the gamma shape, `spread_s` is the width (standard deviation) of the
    gaussian that fits the peak, softly capped by the attack time (k >= 1 keeps
    the tail decaying).

    Args:
        u_s: Time since the onset in seconds, shape (batch, atoms, points).
        attack_s: Time from onset to peak, shape (batch, atoms, 1).
        spread_s: Width of the burst in seconds, shape (batch, atoms, 1).
        shape: "gamma" or "gaussian".

    Returns:
        Envelope, shape (batch, atoms, points).
    """
    after = u_s >= 0
    if shape == "gaussian":
        z = (u_s - attack_s) / spread_s
        log_e = -0.5 * z * z
    else:
        k = 1.0 + (attack_s / spread_s) ** 2
        x = u_s.clamp_min(1e-9) / attack_s
        log_e = k * (torch.log(x) + 1.0 - x)
    return torch.where(after, torch.exp(log_e.clamp_min(-80.0)), torch.zeros_like(u_s))


def resonance_power(e2: Tensor, decay_s: Tensor, *, step_samples: int, sample_rate: int) -> Tensor:
    """Mean power of a unit-energy resonator driven by a burst of power `e2`.

    Computes y[n] = (1 - q1) * sum_{m <= n} w_{n-m} e2[m] Q^(n - m), with q1 the
    per-sample power decay, Q = q1^step the decay per grid step, w = step
    (samples per cell) except w_0 = (step + 1) / 2 (half of the own cell), as an
    exact linear (not circular) convolution via the FFT. The kernel's DFT is the
    closed form of a truncated geometric series, so no kernel is ever built.
    With step 1 this is exactly the sample-level recursion.

    Args:
        e2: Burst power on a grid of `step_samples` samples, shape (batch, atoms, points).
        decay_s: 60 dB decay time, shape (batch, atoms, 1).
        step_samples: Grid step in samples (1 for audio rate).
        sample_rate: Sample rate in Hz.

    Returns:
        Resonance power on the same grid, shape (batch, atoms, points).
    """
    n = e2.shape[-1]
    n_fft = 2 * n
    log_q1 = -2.0 * LN_1000 / (decay_s * sample_rate)  # (batch, atoms, 1)
    log_q = step_samples * log_q1
    one_minus_q1 = -torch.expm1(log_q1)
    theta = math.pi * torch.arange(n + 1, device=e2.device, dtype=e2.dtype) / n  # 2 pi m / n_fft
    q = torch.exp(log_q)
    # 1 - q e^{-i theta}, with the real part written to keep precision when q -> 1.
    den_re = -torch.expm1(log_q) + 2.0 * q * torch.sin(theta / 2) ** 2
    den_im = q * torch.sin(theta)
    sign = 1.0 - 2.0 * (torch.arange(n + 1, device=e2.device) % 2).to(e2.dtype)  # (-1)^m
    num = 1.0 - torch.exp(n * log_q) * sign
    scale = step_samples * one_minus_q1 * num / (den_re**2 + den_im**2)
    kernel = torch.complex(scale * den_re, -scale * den_im)  # num / den = num * conj(den) / |den|^2
    spec = torch.fft.rfft(e2, n=n_fft)
    full = torch.fft.irfft(spec * kernel, n=n_fft)[..., :n]
    # A grid point sits mid-cell: only the (step + 1) / 2 samples of its own cell up
    # to it have driven the resonator yet, not all `step` of them.
    return full - 0.5 * (step_samples - 1) * one_minus_q1 * e2


def partial_frequencies(f0_hz: Tensor, inharmonicity: Tensor, k: Tensor) -> Tensor:
    """Stiff-string partial frequencies f_k = k f0 sqrt(1 + B k^2), broadcasting."""
    return k * f0_hz * torch.sqrt(1.0 + inharmonicity * k * k)


def partial_index(freq_hz: Tensor, f0_hz: Tensor, inharmonicity: Tensor) -> Tensor:
    """Inverse of `partial_frequencies`: the real k whose partial lies at `freq_hz`.

    Solves k^2 + B k^4 = r^2 (r = f / f0) as k^2 = 2 r^2 / (1 + sqrt(1 + 4 B r^2)),
    which stays exact as B -> 0.
    """
    r = freq_hz / f0_hz
    return torch.sqrt(2.0 * r * r / (1.0 + torch.sqrt(1.0 + 4.0 * inharmonicity * r * r)))


def n_audible_partials(f0_hz: Tensor, inharmonicity: Tensor, *, nyquist_hz: float, n_partials: int) -> Tensor:
    """Number of partials strictly below Nyquist, at most `n_partials` (integer tensor, no gradient)."""
    with torch.no_grad():
        k = torch.floor(partial_index(torch.full_like(f0_hz, nyquist_hz), f0_hz, inharmonicity) - 1e-6)
        return k.clamp(0, n_partials)


def partial_weights(rolloff_db: Tensor, k: Tensor, n_active: Tensor) -> Tensor:
    """Energy share c_k of partial k: geometric roll-off, normalised in closed form.

    c_k = rho^(k-1) (1 - rho) / (1 - rho^K) for 1 <= k <= K, else 0, where
    rho = 10^(-rolloff_db / 10) is the power ratio between neighbouring partials
    and K = `n_active`. The weights of the K audible partials sum to 1.

    Args:
        rolloff_db: Level drop per partial in dB, shape (..., 1) broadcastable to k.
        k: Partial numbers (float), any shape broadcastable with the others.
        n_active: Audible partial count K, broadcastable.
    """
    log_rho = -rolloff_db * (math.log(10.0) / 10.0)
    norm = -torch.expm1(log_rho) / -torch.expm1(n_active.clamp_min(1) * log_rho)
    inside = (k >= 1) & (k <= n_active)
    return torch.where(inside, torch.exp((k - 1.0).clamp_min(0) * log_rho) * norm, torch.zeros_like(k * norm))


def partial_phases(k: Tensor, *, n_partials: int) -> Tensor:
    """Deterministic low-crest-factor starting phases (Schroeder): pi k (k - 1) / n_partials."""
    return math.pi * k * (k - 1.0) / n_partials


def band_shape(freq_hz: Tensor, center_hz: Tensor, bandwidth_hz: Tensor) -> Tensor:
    """Gaussian power shape of the noise band, peak 1, -3 dB full width `bandwidth_hz`."""
    sigma = bandwidth_hz / FWHM_PER_SIGMA
    z = (freq_hz - center_hz) / sigma
    return torch.exp(-0.5 * z * z)


def hann_power_kernel(delta_bins: Tensor) -> Tensor:
    """|W(delta)|^2 / (N sum w^2) for a Hann window: the share of a sinusoid's power
    that lands `delta_bins` bins from it (large-N closed form; sums to 1 over bins).

    The three shifted sincs of the Hann transform collapse to
    W(delta) / W(0) = sinc(delta) / (1 - delta^2). Its removable singularities at
    delta = 0, +-1 are stepped over by 5e-4 bins (value error < 3e-4).
    """
    x = delta_bins
    near = (x.abs() < 1e-4) | ((x.abs() - 1.0).abs() < 1e-4)
    x = torch.where(near, x + 5e-4, x)
    amp = torch.sin(math.pi * x) / (math.pi * x * (1.0 - x * x))
    return amp * amp * (0.25 / HANN_MEAN_SQUARE)
