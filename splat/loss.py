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


class SpectralTarget:
    """Target magnitudes of every resolution, prepared once for repeated distances.

    `distance(model_powers)` is the mean over resolutions of spectral convergence
    plus log-magnitude L1, with the target's square root, logarithm and norm
    computed once instead of at every step.
    """

    def __init__(self, target_powers: list[Tensor]) -> None:
        self.magnitudes = [torch.sqrt(t.clamp_min(POWER_FLOOR)) for t in target_powers]
        self.logs = [torch.log(m) for m in self.magnitudes]
        self.norms = [torch.linalg.vector_norm(m) for m in self.magnitudes]

    def distance(self, model_powers: list[Tensor]) -> Tensor:
        """Mean over resolutions of spectral convergence + log-magnitude L1 (scalar)."""
        terms = [
            _SpectralDistance.apply(power, mag, log, norm)
            for mag, log, norm, power in zip(self.magnitudes, self.logs, self.norms, model_powers, strict=True)
        ]
        return torch.stack(terms).mean()


class _SpectralDistance(torch.autograd.Function):
    """||Y - X||_F / ||Y||_F + mean |log Y - log X| for X = sqrt(max(P, floor)), gradient in closed form.

    The gradient with respect to P is formed in the same pass as the value
    (a dozen elementwise operations instead of autograd's thirty):

        dL/dX = (X - Y) / (||X - Y|| ||Y||) - sign(log Y - log X) / (n X),   dX/dP = 1 / (2 X) where P > floor.
    """

    @staticmethod
    def forward(ctx, power: Tensor, mag: Tensor, log: Tensor, norm: Tensor) -> Tensor:
        model = power.clamp_min(POWER_FLOOR).sqrt_()
        diff = model - mag
        diff_norm = torch.linalg.vector_norm(diff)
        log_error = log - torch.log(model)
        value = diff_norm / norm + log_error.abs().mean()
        if ctx.needs_input_grad[0]:
            grad_mag = diff.mul_(1.0 / (diff_norm.clamp_min(1e-30) * norm))
            grad_mag.addcdiv_(torch.sign(log_error), model, value=-1.0 / model.numel())
            grad = grad_mag.div_(model).mul_(0.5).masked_fill_(power <= POWER_FLOOR, 0.0)
            ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_value: Tensor) -> tuple[Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_value, None, None, None


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
