"""The noise floor: one stationary noise per segment, shaped by a few bands, under the atoms.

What no atom is meant to hold (a room's hiss, a dense mix's wash, a bow's
steady noise) goes here instead of into dozens of quiet atoms. The floor of a
segment is white noise filtered to the power spectrum

    S(f) = sum_b g_b T_b(f) / <T_b>,     g_b = 10^(level_db_b / 10),

where the T_b are triangles on a log-frequency axis that sum to 1 at every
frequency (a partition of unity; flat beyond the outermost centres) and <T_b>
is T_b's mean over the spectrum, so band b contributes variance g_b per sample.

In time, a segment's floor power is 1 inside [start_s, end_s) and ramps
linearly over FADE_S centred on each boundary with a neighbouring segment
(powers of neighbours add to 1); at the file's start and end it stops dead.

Shapes: levels (segments, bands); spectra (segments, bins).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from splat import dsp

#: Number of bands of every floor.
N_BANDS = 24
#: Centre of the lowest band, in Hz (the highest is at Nyquist).
LOWEST_HZ = 40.0
#: Length of the power crossfade between two segments' floors, in seconds.
FADE_S = 0.05
#: Sub-samples per bin when a band's share of each STFT bin is integrated.
_SUBSAMPLES = 16
#: A band's quiet level is this percentile of its level over a segment's frames.
QUIET_PERCENTILE = 10.0
#: STFT size of that estimate.
_QUIET_FFT = 2048


def band_centres_hz(sample_rate: int) -> list[float]:
    """Centres of the N_BANDS bands, geometrically spaced from LOWEST_HZ to Nyquist."""
    ratio = (sample_rate / 2 / LOWEST_HZ) ** (1.0 / (N_BANDS - 1))
    return [LOWEST_HZ * ratio**b for b in range(N_BANDS)]


def band_shapes(freqs_hz: Tensor, centres_hz: Tensor) -> Tensor:
    """Triangles on a log-frequency axis that sum to 1 at every frequency.

    Args:
        freqs_hz: Frequencies, shape (freqs,).
        centres_hz: Increasing band centres, shape (bands,).

    Returns:
        T_b(f), shape (bands, freqs): 1 at centre b, 0 at its neighbours'
        centres; the first band is 1 below its centre, the last above its own.
    """
    x = torch.log(freqs_hz.clamp_min(1e-3))
    c = torch.log(centres_hz).unsqueeze(-1)  # (bands, 1)
    # Position between consecutive centres: band b rises on [c_{b-1}, c_b], falls on [c_b, c_{b+1}].
    rise = torch.ones_like(c.expand(-1, x.numel()))
    fall = torch.ones_like(rise)
    rise[1:] = ((x - c[:-1]) / (c[1:] - c[:-1])).clamp(0.0, 1.0)
    fall[:-1] = ((c[1:] - x) / (c[1:] - c[:-1])).clamp(0.0, 1.0)
    return torch.minimum(rise, fall)


def bin_shares(centres_hz: Tensor, n_fft: int, sample_rate: int) -> Tensor:
    """Share of each band's variance in every bin of a Hann-windowed `n_fft`-point STFT.

    The band's spectrum T_b is sampled _SUBSAMPLES times per bin and each sample is
    spread over the bins around it with the window's power kernel
    (`dsp.hann_power_taps`), so the shares are T_b blurred by the window, as the
    expected |STFT|^2 of the rendered noise is; power blurred past DC or Nyquist
    folds back (the spectrum of a real signal is symmetric). Every band's shares sum to 1.

    Returns:
        Shape (bands, n_fft / 2 + 1).
    """
    n_bins = n_fft // 2 + 1
    last = n_bins - 1
    dtype, device = centres_hz.dtype, centres_hz.device
    positions = (torch.arange(last * _SUBSAMPLES, dtype=dtype, device=device) + 0.5) / _SUBSAMPLES  # in bins
    weights = band_shapes(positions * (sample_rate / n_fft), centres_hz)  # (bands, fine)
    taps = torch.arange(-3, 5, dtype=dtype, device=device)
    kernel = dsp.hann_power_taps(positions, taps)  # (taps, fine)
    index = (torch.floor(positions) + taps.unsqueeze(-1)).long().abs()  # below DC: fold back
    index = torch.where(index > last, 2 * last - index, index)  # above Nyquist: fold back
    shares = torch.zeros(weights.shape[0], n_bins, dtype=dtype, device=device)
    for t in range(taps.numel()):
        shares.index_add_(1, index[t], weights * kernel[t])
    return shares / shares.sum(-1, keepdim=True)


def segment_power(
    t_s: Tensor, start_s: Tensor, end_s: Tensor, *, fade_in: Tensor, fade_out: Tensor, fade_s: float = FADE_S
) -> Tensor:
    """Power envelope (0..1) of each segment's floor at times `t_s`.

    Args:
        t_s: Times in seconds, shape (..., times).
        start_s, end_s: Each segment's boundaries, shape (..., 1).
        fade_in, fade_out: Whether each boundary is shared with a neighbour (then
            the power ramps linearly over `fade_s` centred on it) or is the file's
            start or end (then it stops dead), bool, shape (..., 1).

    Returns:
        Shape (..., times).
    """
    ramp_in = ((t_s - start_s) / fade_s + 0.5).clamp(0.0, 1.0)
    ramp_out = ((end_s - t_s) / fade_s + 0.5).clamp(0.0, 1.0)
    hard_in = (t_s >= start_s).to(t_s.dtype)
    hard_out = (t_s < end_s).to(t_s.dtype)
    return torch.where(fade_in, ramp_in, hard_in) * torch.where(fade_out, ramp_out, hard_out)


def band_powers(level_db: Tensor) -> Tensor:
    """g_b = 10^(level_db / 10): each band's variance per sample."""
    return torch.pow(10.0, level_db / 10.0)


def render(
    level_db: Tensor, white: Tensor, *, start_s: float, end_s: float, first: int, sample_rate: int, n_file: int
) -> Tensor:
    """One segment's floor over file samples [first, first + white.numel()).

    The noise is shaped by one circular FFT over the whole stretch (circularly
    filtered noise is exactly stationary), then faded by `segment_power`.

    Args:
        level_db: Band levels, shape (bands,).
        white: Standard-normal noise, shape (samples,).
        start_s, end_s: The segment's boundaries in seconds.
        first: File sample index of the first sample.
        sample_rate: Sample rate in Hz.
        n_file: Samples in the file (no fade at its start or end).

    Returns:
        Audio, shape (samples,), differentiable in `level_db`.
    """
    n = white.numel()
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate, dtype=white.dtype, device=white.device)
    centres = torch.tensor(band_centres_hz(sample_rate), dtype=white.dtype, device=white.device)
    shapes = band_shapes(freqs, centres)  # (bands, bins)
    # A band with no bin in a stretch this short (a file's last few samples) stays silent, not 0 / 0.
    unit = shapes / dsp.full_circle_mean(shapes, n).clamp_min(torch.finfo(white.dtype).tiny)
    spectrum = band_powers(level_db.to(white.dtype)) @ unit  # (bins,)
    shaped = torch.fft.irfft(torch.fft.rfft(white) * torch.sqrt(spectrum.clamp_min(1e-30)), n=n)
    t = (first + torch.arange(n, device=white.device, dtype=white.dtype)) / sample_rate
    envelope = segment_power(
        t,
        torch.tensor(start_s, dtype=white.dtype, device=white.device),
        torch.tensor(end_s, dtype=white.dtype, device=white.device),
        fade_in=torch.tensor(start_s > 0, device=white.device),
        fade_out=torch.tensor(end_s * sample_rate < n_file - 0.5, device=white.device),
    )
    return shaped * torch.sqrt(envelope)


def quiet_levels_db(audio: Tensor, sample_rate: int) -> Tensor:
    """Each band's level in the quietest frames of a segment: its QUIET_PERCENTILE level over the frames.

    A frame's spectrum s(bin) = |X|^2 / (N / 2 * sum w^2) is the variance share a
    stationary noise would need to give that frame; band b's level is
    sum_bin T_b(bin) s(bin) (the T_b sum to 1, so the levels add up to the variance).

    Args:
        audio: The segment's samples, shape (samples,); zero-padded to one frame if shorter.

    Returns:
        Levels in dB, shape (bands,), floored at -100 dB.
    """
    audio = torch.nn.functional.pad(audio, (0, max(0, _QUIET_FFT - audio.numel())))
    window = torch.hann_window(_QUIET_FFT, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio, _QUIET_FFT, _QUIET_FFT // 4, window=window, center=False, return_complex=True)
    power = (spec.real**2 + spec.imag**2).T  # (frames, bins)
    share = power / (_QUIET_FFT / 2 * float((window * window).sum()))
    freqs = torch.fft.rfftfreq(_QUIET_FFT, d=1.0 / sample_rate, dtype=audio.dtype, device=audio.device)
    centres = torch.tensor(band_centres_hz(sample_rate), dtype=audio.dtype, device=audio.device)
    levels = share @ band_shapes(freqs, centres).T  # (frames, bands)
    low = torch.quantile(levels, QUIET_PERCENTILE / 100.0, dim=0)
    return 10.0 * torch.log10(low.clamp_min(1e-10))


def support(start_s: float, end_s: float, *, sample_rate: int, n_samples: int) -> tuple[int, int]:
    """File samples [lo, hi) where a segment's floor is non-zero."""
    lo = max(0, math.floor((start_s - FADE_S / 2) * sample_rate))
    hi = min(n_samples, math.ceil((end_s + FADE_S / 2) * sample_rate) + 1)
    return lo, hi
