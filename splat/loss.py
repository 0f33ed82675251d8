"""Multi-resolution STFT distance, defined as auraloss defines it.

Per resolution: spectral convergence ||Y| - |X||_F / ||Y||_F plus the mean
absolute difference of log magnitudes, with powers clamped at 1e-8 before the
square root (auraloss's `STFTLoss` with its defaults); the total is the mean
over resolutions. Here |Y| is the target, |X| the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from splat.spectral import Resolution

POWER_FLOOR = 1e-8


def stft_power(audio: Tensor, res: Resolution) -> Tensor:
    """|STFT|^2 with a periodic Hann window and no centre padding.

    Frame m covers samples [m * hop, m * hop + n_fft) of `audio`, so callers pad
    by n_fft / 2 to centre frames where they want them.

    Args:
        audio: Shape (batch, samples).

    Returns:
        Power, shape (batch, frames, n_fft / 2 + 1).
    """
    window = torch.hann_window(res.n_fft, periodic=True, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, res.n_fft, res.hop, window=window, center=False, return_complex=True)
    return (spec.real**2 + spec.imag**2).transpose(-1, -2)


def spectral_distance(target_power: Tensor, model_power: Tensor) -> Tensor:
    """Spectral convergence + log-magnitude L1 between two power spectrograms (scalar)."""
    target = torch.sqrt(target_power.clamp_min(POWER_FLOOR))
    model = torch.sqrt(model_power.clamp_min(POWER_FLOOR))
    convergence = torch.linalg.vector_norm(target - model) / torch.linalg.vector_norm(target)
    log_magnitude = (torch.log(target) - torch.log(model)).abs().mean()
    return convergence + log_magnitude


def multi_resolution_distance(target_powers: list[Tensor], model_powers: list[Tensor]) -> Tensor:
    """Mean of `spectral_distance` over resolutions (lists in the same order)."""
    terms = [spectral_distance(t, m) for t, m in zip(target_powers, model_powers)]
    return torch.stack(terms).mean()


def region_powers(audio: Tensor, start: int, n_region: int, resolutions: tuple[Resolution, ...]) -> list[Tensor]:
    """Power spectrograms of frames centred every hop in [start, start + n_region) of `audio`.

    Samples outside `audio` count as zeros.

    Args:
        audio: Shape (samples,).

    Returns:
        Per resolution, shape (n_region / hop, n_fft / 2 + 1).
    """
    out = []
    for res in resolutions:
        lo, hi = start - res.n_fft // 2, start + n_region + res.n_fft // 2
        piece = audio[max(lo, 0) : max(min(hi, audio.numel()), 0)]
        piece = torch.nn.functional.pad(piece, (max(-lo, 0), hi - lo - piece.numel() - max(-lo, 0)))
        out.append(stft_power(piece.unsqueeze(0), res)[0, : n_region // res.hop])
    return out
