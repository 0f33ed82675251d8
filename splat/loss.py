"""Multi-resolution STFT distance, defined as auraloss defines it, and an optional perceptual term.

Per resolution: spectral convergence ||Y| - |X||_F / ||Y||_F plus the mean
absolute difference of log magnitudes, with powers clamped at 1e-8 before the
square root (auraloss's `STFTLoss` with its defaults); the total is the mean
over resolutions. Here |Y| is the target, |X| the model.

The perceptual term (`SpectralTarget`'s `perceptual_weight`) pools each frame's
power into bands one ERB wide (`ErbBands`) and adds the mean absolute difference
of the bands' log magnitudes: the per-bin terms give a band's weight by its
number of bins, so most of it to the top octaves; this one weighs every ERB of
the ear's frequency scale alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from splat import native
from splat.errors import ParameterError
from splat.spectral import Resolution

POWER_FLOOR = 1e-8
#: Width of the perceptual term's bands, in ERB numbers.
ERB_BAND_WIDTH = 1.0
#: Squared correlation of neighbouring bins of a white noise's STFT under a Hann window,
#: one and two bins apart: the window's power spectrum is 3/8, -1/4, 1/16 at 0, 1, 2 bins.
_HANN_BIN_CORRELATION_SQ = ((2.0 / 3.0) ** 2, (1.0 / 6.0) ** 2)


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


#: For a noise whose power in a cell is exponential with mean P (Rayleigh magnitude):
#: its median power is ln 2 * P, and its mean magnitude squared is pi / 4 * P.
NOISE_MEDIAN_POWER = math.log(2.0)
NOISE_MEAN_MAGNITUDE_SQUARED = math.pi / 4.0


def erb_number(freq_hz: Tensor) -> Tensor:
    """ERB-number (Cam) of a frequency (Glasberg and Moore 1990): 21.4 log10(1 + 0.00437 f)."""
    return 21.4 * torch.log10(1.0 + 0.00437 * freq_hz)


@dataclass(frozen=True)
class ErbBands:
    """One resolution's bins grouped into bands `ERB_BAND_WIDTH` ERB numbers wide.

    Bin k (at k sample_rate / n_fft Hz) is in the band floor(erb_number / width);
    bands that no bin falls in are dropped (low frequencies, short FFTs), so every
    band is a run of at least one bin.

    Attributes:
        index: Band of each bin, shape (bins,), int64, from 0 and non-decreasing.
        starts: First bin of each band and one past the last bin, shape (bands + 1,), int64.
        noise_median: Median of a white noise's band power over its mean, per band, shape
            (bands,): the log term compares a rendered noise's typical band power.
    """

    index: Tensor
    starts: Tensor
    noise_median: Tensor

    @classmethod
    def for_bins(cls, n_bins: int, sample_rate: int, *, device: torch.device | str = "cpu") -> ErbBands:
        """Bands of the n_bins = n_fft / 2 + 1 bins of an STFT at `sample_rate` Hz.

        A band of M bins holds a noise power that is a sum of M exponential cells,
        correlated between neighbours by the Hann window; it is taken as a gamma
        variable with Satterthwaite's degrees of freedom M_eff = M^2 / sum_ij rho_ij^2,
        whose median over mean is (1 - 1 / (9 M_eff))^3 (Wilson and Hilferty): within
        5 % of a white noise's (0.2 dB; `tests/test_loss.py` measures it), where a
        plain mean would be up to ln 2 (1.6 dB) off in the narrowest bands.
        """
        freqs = torch.arange(n_bins, dtype=torch.float64, device="cpu") * (sample_rate / (2.0 * (n_bins - 1)))
        cells = torch.floor(erb_number(freqs) / ERB_BAND_WIDTH)
        _, index, counts = torch.unique_consecutive(cells, return_inverse=True, return_counts=True)
        m = counts.double()
        near, next_near = _HANN_BIN_CORRELATION_SQ
        correlation = m + 2.0 * (m - 1).clamp_min(0) * near + 2.0 * (m - 2).clamp_min(0) * next_near
        effective = m * m / correlation
        noise_median = (1.0 - 1.0 / (9.0 * effective)) ** 3
        starts = torch.cat([torch.zeros(1, dtype=torch.int64, device="cpu"), torch.cumsum(counts, 0)])
        return cls(index.to(device), starts.to(device), noise_median.float().to(device))

    @property
    def n_bands(self) -> int:
        return self.starts.numel() - 1

    def pool(self, power: Tensor) -> Tensor:
        """Power summed over each band's bins: (frames, bins) -> (frames, bands), float32."""
        out = torch.zeros(power.shape[0], self.n_bands, dtype=torch.float32, device=power.device)
        return out.index_add(1, self.index, power.float())


class SpectralTarget:
    """Target magnitudes of every resolution, prepared once for repeated distances.

    `distance(model_powers)` is the mean over resolutions of spectral convergence
    plus log-magnitude L1, with the target's square root, logarithm and norm
    computed once instead of at every step; with a `perceptual_weight`, plus that
    times `band_distance`.

    A model given as an expected power has to say which part of it is noise
    (`noise_powers`): a rendered noise's magnitude in a cell is random, so a
    model magnitude of sqrt(P) would be compared with a statistic of the target
    that the render does not have. Each term instead compares the statistic it
    estimates: the spectral convergence (an L2 fit, so a mean) uses the render's
    mean magnitude, sqrt(tonal + pi / 4 noise), and the log term (an L1 fit, so
    a median) the log of its median power, tonal + ln 2 noise. Both are exact
    for a cell that is all partials or all noise. Without them, a fit matches a
    noisy target's median (ln 2 of its power, -1.6 dB) and renders noise that
    quiet.
    """

    def __init__(
        self, target_powers: list[Tensor], *, sample_rate: int | None = None, perceptual_weight: float = 0.0
    ) -> None:
        """Args:
        target_powers: Per resolution, the target's power, shape (frames, n_fft / 2 + 1).
        sample_rate: In Hz; needed for the perceptual term's bands.
        perceptual_weight: Weight of `band_distance` in `distance` (>= 0).

        Raises:
            ParameterError: If `perceptual_weight` is negative, or positive without a sample rate.
        """
        if not perceptual_weight >= 0 or (perceptual_weight > 0 and sample_rate is None):
            raise ParameterError(f"perceptual_weight={perceptual_weight} must be >= 0, and needs a sample rate")
        self.magnitudes = [torch.sqrt(t.clamp_min(POWER_FLOOR)) for t in target_powers]
        self.logs = [torch.log(m) for m in self.magnitudes]
        self.norms = [torch.linalg.vector_norm(m) for m in self.magnitudes]
        self.norm_values = [float(n) for n in self.norms]  # what the native kernel takes
        self.perceptual_weight = perceptual_weight
        self.bands: list[ErbBands] = []
        self.band_logs: list[Tensor] = []
        if sample_rate is not None:
            self.bands = [ErbBands.for_bins(t.shape[-1], sample_rate, device=t.device) for t in target_powers]
            self.band_logs = [
                0.5 * torch.log(b.pool(t).clamp_min(POWER_FLOOR))
                for b, t in zip(self.bands, target_powers, strict=True)
            ]

    def distance(self, model_powers: list[Tensor], noise_powers: list[Tensor] | None = None) -> Tensor:
        """Mean over resolutions of spectral convergence + log-magnitude L1, plus the perceptual term (scalar).

        Args:
            model_powers: Per resolution, the model's power (a render's), or the
                expected power of its partials, shape (frames, bins) as the target's.
            noise_powers: Per resolution, the expected power of the model's noise
                (same shapes), or None if `model_powers` is all of it.
        """
        noises = list(noise_powers) if noise_powers is not None else [None] * len(model_powers)
        value = _SpectralDistance.apply(self, len(model_powers), *model_powers, *noises)
        if self.perceptual_weight > 0:
            value = value + self.perceptual_weight * self.band_distance(model_powers, noise_powers)
        return value

    def band_distance(self, model_powers: list[Tensor], noise_powers: list[Tensor] | None = None) -> Tensor:
        """Mean over resolutions of the mean absolute difference of ERB-band log magnitudes (scalar).

        Per resolution and frame, the target's and the model's power are summed over each band
        of `bands` (the model's as P + c N, with c the band's `ErbBands.noise_median`: a
        rendered noise's typical band power, as in `distance`'s log term), and the band's
        log magnitude is half the log of that, floored at `POWER_FLOOR`. Zero for the target
        itself, positive for any other band powers.

        Args:
            model_powers, noise_powers: As in `distance`.

        Raises:
            ParameterError: If the target was made without a sample rate.
        """
        if not self.bands:
            raise ParameterError("the ERB-band distance needs the target's sample rate")
        noises = list(noise_powers) if noise_powers is not None else [None] * len(model_powers)
        tensors = [t for t in (*model_powers, *noises) if t is not None]
        if native.usable(*tensors, bfloat16=True) and native.usable(*self.band_logs):
            return _BandDistance.apply(self, len(model_powers), *model_powers, *noises)
        total = sum(
            _torch_band_distance(power, noise, bands, log)
            for power, noise, bands, log in zip(model_powers, noises, self.bands, self.band_logs, strict=True)
        )
        return total / len(model_powers)


def _torch_band_distance(power: Tensor, noise: Tensor | None, bands: ErbBands, target_log: Tensor) -> Tensor:
    """One resolution's band term with autograd-tracked PyTorch operations (the native kernel's reference)."""
    pooled = bands.pool(power)
    if noise is not None:
        pooled = pooled + bands.noise_median * bands.pool(noise)
    return (target_log - 0.5 * torch.log(pooled.clamp_min(POWER_FLOOR))).abs().mean()


class _BandDistance(torch.autograd.Function):
    """`SpectralTarget.band_distance` in one native pass per resolution, gradient in closed form.

    With B = max(P_band + c N_band, floor): dL/dP = -sign(log Y_band - 0.5 log B) / (2 n B)
    for every bin of the band where B > floor (n = frames x bands, over the number of
    resolutions), and dL/dN = c dL/dP.

    Inputs: the target, the number of resolutions n, then n model powers and n noise powers
    (each None or a tensor).
    """

    @staticmethod
    def forward(ctx, target: SpectralTarget, n_res: int, *inputs: Tensor | None) -> Tensor:
        powers, noises = inputs[:n_res], inputs[n_res:]
        with_grad = any(ctx.needs_input_grad[2:])
        total = 0.0
        grads: list[Tensor | None] = []
        for power, noise, bands, log in zip(powers, noises, target.bands, target.band_logs, strict=True):
            if noise is not None and noise.dtype != power.dtype:
                power, noise = power.float(), noise.float()
            power = power.contiguous()
            noise = None if noise is None else noise.contiguous()
            grad_power = torch.empty_like(power) if with_grad else None
            grad_noise = torch.empty_like(noise) if with_grad and noise is not None else None
            frames, bins = power.shape
            n_cells = frames * bands.n_bands
            value = native.library().band_distance(
                native.data(power),
                native.data(noise),
                native.int64s(bands.starts.tolist()),
                native.ptr(bands.noise_median),
                native.ptr(log),
                frames,
                bins,
                bands.n_bands,
                POWER_FLOOR,
                1.0 / (n_res * n_cells),
                native.data(grad_power),
                native.data(grad_noise),
                int(power.dtype == torch.bfloat16),
            )
            total += value / n_cells
            grads += [grad_power, grad_noise]
        if with_grad:
            ctx.save_for_backward(*grads)
            # A bfloat16 power beside a float32 noise was read as float32: its gradient goes back as bfloat16.
            ctx.dtypes = [None if t is None else t.dtype for pair in zip(powers, noises, strict=True) for t in pair]
        magnitude = target.magnitudes[0]
        return torch.tensor(total / n_res, dtype=magnitude.dtype, device=magnitude.device)

    @staticmethod
    def backward(ctx, grad_value: Tensor) -> tuple[Tensor | None, ...]:
        grads = [
            None if g is None else (g * grad_value).to(dtype)
            for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        ]
        return (None, None, *grads[0::2], *grads[1::2])


class _SpectralDistance(torch.autograd.Function):
    """Mean over resolutions of ||Y - X||_F / ||Y||_F + mean |log Y - log Z|, gradient in closed form.

    X = sqrt(max(P + a N, floor)) and Z = sqrt(max(P + b N, floor)) for the
    model's power P and noise power N (a = pi / 4, b = ln 2; N = 0 if None).
    The gradient with respect to P and N is formed in the same pass as the
    value (a dozen elementwise operations instead of autograd's thirty; one
    native loop where `splat.native` can):

        dL/dX = (X - Y) / (||X - Y|| ||Y||),   dX/dP = 1 / (2 X),
        dL/dZ^2 = -sign(log Y - log Z) / (2 n Z^2),   each where its power > floor;
        dL/dP = dL/dX dX/dP + dL/dZ^2,   dL/dN = a dL/dX dX/dP + b dL/dZ^2,

    each divided by the number of resolutions (the mean). All resolutions are one
    autograd node, so the backward scales each gradient once, and on the native
    path not at all when the distance is the objective itself (incoming gradient 1).

    Inputs: the target, the number of resolutions n, then n model powers and n
    noise powers (each None or a tensor).
    """

    @staticmethod
    def forward(ctx, target: SpectralTarget, n_res: int, *inputs: Tensor | None) -> Tensor:
        powers, noises = inputs[:n_res], inputs[n_res:]
        with_grad = any(ctx.needs_input_grad[2:])
        total: Tensor | float = 0.0
        grads = []
        ctx.all_native = True
        for i, (power, noise) in enumerate(zip(powers, noises, strict=True)):
            if native.usable(power, *([] if noise is None else [noise]), bfloat16=True) and native.usable(
                target.magnitudes[i]
            ):
                value, grad = _native_distance(power, noise, target, i, with_grad=with_grad, scale=1.0 / n_res)
            else:
                value, grad = _torch_distance(power, noise, target, i, with_grad=with_grad, scale=1.0 / n_res)
                ctx.all_native = False
            total = total + value
            grads.append(grad)
        if with_grad:
            ctx.save_for_backward(*(g[0] for g in grads), *(g[1] if len(g) > 1 else None for g in grads))
        mean = total / n_res
        magnitude = target.magnitudes[0]  # the value in the target's precision, whatever the model's
        return mean if isinstance(mean, Tensor) else torch.tensor(mean, dtype=magnitude.dtype, device=magnitude.device)

    @staticmethod
    def backward(ctx, grad_value: Tensor) -> tuple[Tensor | None, ...]:
        grads = ctx.saved_tensors
        # Skipping the product by 1 needs the incoming gradient's value: free on the CPU (where the
        # native kernels run), a device sync on a GPU, and a graph break under torch.compile.
        if not (ctx.all_native and grad_value.item() == 1.0):
            grads = tuple(None if g is None else g * grad_value for g in grads)
        return (None, None, *grads)


def _torch_distance(
    power: Tensor, noise: Tensor | None, target: SpectralTarget, i: int, *, with_grad: bool, scale: float
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Resolution i's value and its gradients (times `scale`) in PyTorch operations."""
    mag, log, norm = target.magnitudes[i], target.logs[i], target.norms[i]
    if noise is None:
        sc_power = log_power = power
    else:
        sc_power = torch.add(power, noise, alpha=NOISE_MEAN_MAGNITUDE_SQUARED)
        log_power = torch.add(power, noise, alpha=NOISE_MEDIAN_POWER)
    model = sc_power.clamp_min(POWER_FLOOR).sqrt_()
    diff = model - mag
    diff_norm = torch.linalg.vector_norm(diff)
    log_model = log_power.clamp_min(POWER_FLOOR)
    log_error = log - 0.5 * torch.log(log_model)
    value = diff_norm / norm + log_error.abs().mean()
    if not with_grad:
        return value, ()
    grad_sc = diff.mul_(0.5 * scale / (diff_norm.clamp_min(1e-30) * norm)).div_(model)
    grad_sc.masked_fill_(sc_power <= POWER_FLOOR, 0.0)
    grad_log = torch.sign(log_error).div_(log_model).mul_(-0.5 * scale / model.numel())
    grad_log.masked_fill_(log_power <= POWER_FLOOR, 0.0)
    if noise is None:
        return value, (grad_sc.add_(grad_log),)
    grad_noise = torch.mul(grad_sc, NOISE_MEAN_MAGNITUDE_SQUARED).add_(grad_log, alpha=NOISE_MEDIAN_POWER)
    return value, (grad_sc.add_(grad_log), grad_noise)


def _native_distance(
    power: Tensor, noise: Tensor | None, target: SpectralTarget, i: int, *, with_grad: bool, scale: float
) -> tuple[float, tuple[Tensor, ...]]:
    """`_torch_distance` in one native pass (`splat.native`); the value as a float.

    The model's powers may be bfloat16 (the fast engine's products, `spectral._BFloat16Products`);
    their gradients then are too, and everything else is float32.
    """
    if noise is not None and noise.dtype != power.dtype:  # one precision for both (a floor widens the noise)
        power, noise = power.float(), noise.float()
    power = power.contiguous()
    noise = None if noise is None else noise.contiguous()
    half = power.dtype == torch.bfloat16
    scratch = [torch.empty(power.shape, dtype=torch.float32, device=power.device) for _ in range(2 * with_grad)]
    if not with_grad:
        grads: tuple[Tensor | None, ...] = (None, None)
    elif half:
        grads = (torch.empty_like(power), None if noise is None else torch.empty_like(noise))
    else:  # the gradients overwrite the scratch they are made from
        grads = (scratch[0], None if noise is None else scratch[1])
    value = native.library().spectral_distance(
        native.data(power),
        native.data(noise),
        native.ptr(target.magnitudes[i]),
        native.ptr(target.logs[i]),
        target.norm_values[i],
        power.numel(),
        POWER_FLOOR,
        NOISE_MEAN_MAGNITUDE_SQUARED,
        NOISE_MEDIAN_POWER,
        scale,
        *(map(native.ptr, scratch) if with_grad else (None, None)),
        *map(native.data, grads),
        int(half),
    )
    if not with_grad:
        return value, ()
    return value, grads[:1] if noise is None else grads


def error_sums(power: Tensor, noise: Tensor, magnitude: Tensor, log_magnitude: Tensor) -> tuple[Tensor, Tensor]:
    """The two sums behind one resolution's distance (`SpectralTarget.distance`), in float64.

    Sum over the last two axes (frames, bins) of (X - Y)^2 and of |log Y - log Z|, with
    X = sqrt(P + pi/4 N) and Z = sqrt(P + ln 2 N) as the distance forms them (powers
    floored at POWER_FLOOR): the distance of this resolution is sqrt(first) / ||Y|| +
    second / cells. A part of the frames gives that part's share of both sums.

    Args:
        power, noise: The model's partials' and noise's expected power, shape (..., frames, bins).
        magnitude, log_magnitude: The target's magnitude Y and log Y, broadcasting with them.

    Returns:
        The two sums, each of the powers' leading shape (...).
    """
    model = torch.add(power, noise, alpha=NOISE_MEAN_MAGNITUDE_SQUARED).clamp_min(POWER_FLOOR).sqrt()
    squares = (model - magnitude).square().sum((-2, -1), dtype=torch.float64)
    log_model = 0.5 * torch.log(torch.add(power, noise, alpha=NOISE_MEDIAN_POWER).clamp_min(POWER_FLOOR))
    return squares, (log_magnitude - log_model).abs().sum((-2, -1), dtype=torch.float64)


def changed_error_sums(
    tonal: Tensor,
    noise: Tensor,
    magnitude: Tensor,
    log_magnitude: Tensor,
    tonal_change: tuple[Tensor, Tensor],
    noise_change: tuple[Tensor, Tensor],
) -> Tensor:
    """`error_sums` of many candidate changes of the model's powers, each a sum of a few separable terms.

    Candidate c's powers are tonal + F_t[c] @ S_t[c] and noise + F_n[c] @ S_n[c]: frame
    powers times spectra of a few atoms (signed: added or removed), as the fast engine
    forms them. On the CPU in float32 one native loop per candidate forms each changed
    cell on the fly and takes the frames its terms leave alone as they are (`splat.native`);
    elsewhere the changed spectrograms are formed.

    Args:
        tonal, noise: The current powers, shape (frames, bins).
        magnitude, log_magnitude: The target's Y and log Y, shape (frames, bins).
        tonal_change, noise_change: (F, S) of shapes (candidates, frames, rank) and
            (candidates, rank, bins), rank at most 16.

    Returns:
        Each candidate's two sums, shape (candidates, 2), float64.
    """
    (frames_t, spectra_t), (frames_n, spectra_n) = tonal_change, noise_change
    arrays = (tonal, noise, magnitude, log_magnitude, frames_t, spectra_t, frames_n, spectra_n)
    if native.usable(*arrays):
        tonal, noise, magnitude, log_magnitude, frames_t, spectra_t, frames_n, spectra_n = (
            t.contiguous() for t in arrays
        )
        # Each frame's sums as it is, for the frames a candidate leaves alone.
        unchanged = torch.stack(
            error_sums(tonal.unsqueeze(1), noise.unsqueeze(1), magnitude.unsqueeze(1), log_magnitude.unsqueeze(1)),
            dim=-1,
        ).contiguous()
        out = tonal.new_empty(frames_t.shape[0], 2, dtype=torch.float64)
        scratch = tonal.new_empty(native.library().max_threads(), 2, tonal.shape[-1])
        native.library().changed_error_sums(
            *map(native.ptr, (tonal, noise, magnitude, log_magnitude)),
            *tonal.shape,
            frames_t.shape[0],
            native.ptr(frames_t),
            native.ptr(spectra_t),
            frames_t.shape[-1],
            native.ptr(frames_n),
            native.ptr(spectra_n),
            frames_n.shape[-1],
            POWER_FLOOR,
            NOISE_MEAN_MAGNITUDE_SQUARED,
            NOISE_MEDIAN_POWER,
            native.double_ptr(unchanged),
            native.double_ptr(out),
            native.ptr(scratch),
        )
        return out
    changed = (tonal + frames_t @ spectra_t, noise + frames_n @ spectra_n)
    return torch.stack(error_sums(*changed, magnitude, log_magnitude), dim=-1)


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
