"""The fast engine: each atom's expected power spectrogram, "splatted" without any FFT.

Noise-driven atoms have power spectrograms that add in expectation, and each
branch of an atom (noise burst, resonance) is separable into (power in each
frame) x (share of that power in each bin). So the expected spectrogram of a
segment at one STFT resolution is a matrix product:

    E[|X|^2](frame, bin) = N/2 * sum_branches  P(branch, frame) * psi(branch, bin)

- P: each branch's power on a coarse time grid (closed-form burst envelope;
  the resonance's decay applied in closed form by `dsp.resonance_power`),
  weighted by the squared analysis window (a strided window sum per resolution).
- psi, noise: the gaussian band widened by the window's own spectral spread
  (variances add), normalised in closed form with erf.
- psi, resonance: every partial is splatted onto the few bins around it with
  the Hann window's closed-form power kernel (`dsp.hann_power_kernel`), for
  all resolutions at once, into one bin axis that holds every resolution's
  bins side by side (a single scatter-add).

Shapes: parameters (segments, atoms); spectrograms (segments, frames, bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from splat import dsp
from splat.params import AtomParams

#: Bins on each side of a partial that it is splatted onto (sidelobes beyond are < -45 dB).
SPLAT_REACH_BINS = 4
#: Standard deviation of the Hann window's power kernel, in bins.
HANN_KERNEL_SIGMA_BINS = 0.575


@dataclass(frozen=True)
class Resolution:
    """One STFT: Hann window of `n_fft` samples, frames `hop` samples apart."""

    n_fft: int
    hop: int

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1


def resolutions_for(fft_sizes: tuple[int, ...]) -> tuple[Resolution, ...]:
    """Resolutions with hop = n_fft / 4, as in the loss."""
    return tuple(Resolution(n, n // 4) for n in fft_sizes)


@dataclass(frozen=True)
class Grid:
    """Time grid on which the fast engine evaluates each segment's atoms.

    A segment's window is `n_window` samples from its start; the grid extends
    half the longest FFT on both sides so every frame centred in the window is
    complete. Cells are `step` samples wide.
    """

    n_window: int
    step: int
    pad: int  # samples of grid before the window start (n_fft_max / 2)

    @property
    def n_cells(self) -> int:
        return (self.n_window + 2 * self.pad) // self.step

    def cell_centres_s(self, sample_rate: int, device: torch.device) -> Tensor:
        """Time of each cell centre relative to the window start, shape (n_cells,)."""
        j = torch.arange(self.n_cells, device=device, dtype=torch.float32)
        return (j * self.step + (self.step - 1) / 2 - self.pad) / sample_rate


class Plan:
    """Constants of the fast engine for one grid and set of resolutions (built once per chunk).

    The spectra of all resolutions live on one bin axis: resolution i owns
    `width[i]` slots from `base[i]`, its bin b at slot base[i] + SPLAT_REACH_BINS + b;
    the slots on either side catch splats that fall off its ends.

    Attributes:
        cell_s: Grid cell centres relative to the window start, shape (n_cells,).
        slot_hz: Frequency of every slot, shape (n_slots,).
        spread: One-hot (n_res, n_slots) map from resolutions to their slots.
        bin_hz: Bin width of each resolution, shape (n_res,).
        time_kernels: Per resolution, w^2 summed over each grid cell, shape (n_fft / step,).
    """

    def __init__(
        self, grid: Grid, resolutions: tuple[Resolution, ...], *, sample_rate: int, device: torch.device
    ) -> None:
        self.grid = grid
        self.resolutions = resolutions
        self.sample_rate = sample_rate
        pad = SPLAT_REACH_BINS
        widths = [r.n_bins + 2 * pad for r in resolutions]
        self.base = [sum(widths[:i]) for i in range(len(widths))]
        self.bin_hz = torch.tensor([sample_rate / r.n_fft for r in resolutions], device=device)
        slots = [torch.arange(-pad, r.n_bins + pad, device=device) for r in resolutions]
        slot_res = torch.cat([torch.full_like(b, i) for i, b in enumerate(slots)])
        self.slot_hz = torch.cat(slots).float() * self.bin_hz[slot_res]
        # (res, slots) one-hot: spreads a per-resolution value over that resolution's slots by matmul.
        self.spread = torch.nn.functional.one_hot(slot_res, len(resolutions)).T.float()
        self.cell_s = grid.cell_centres_s(sample_rate, device)
        self.taps = torch.arange(1 - pad, pad + 1, device=device, dtype=torch.float32)
        # Per resolution, as (res, 1) columns: highest bin index a splat may use, slot of bin 0.
        self.last_bin = torch.tensor([[r.n_bins + pad - 1.0] for r in resolutions], device=device)
        self.first_slot = torch.tensor([[b + pad] for b in self.base], device=device)
        self.time_kernels = []
        for res in resolutions:
            w = torch.hann_window(res.n_fft, periodic=True, dtype=torch.float64, device=device)
            self.time_kernels.append((w * w).reshape(-1, grid.step).sum(-1).float())

    @property
    def n_slots(self) -> int:
        return self.slot_hz.numel()

    def split_bins(self, slots: Tensor) -> list[Tensor]:
        """Each resolution's bins out of a tensor over all slots (last axis).

        One `split` rather than a slice per resolution: its backward is a single
        concatenation instead of a zero-filled full-size gradient per slice.
        """
        pad = SPLAT_REACH_BINS
        sizes = [n for r in self.resolutions for n in (pad, r.n_bins, pad)]
        return list(slots.split(sizes, dim=-1)[1::3])

    def frame_powers(self, powers: Tensor, i: int) -> Tensor:
        """Window-weighted power sum_t w^2(t - t_m) p(t) of frames centred every hop in the window.

        Args:
            powers: Branch power on the grid, shape (segments, branches, n_cells).
            i: Index of the resolution.

        Returns:
            Shape (segments, branches, n_window / hop).
        """
        res, grid = self.resolutions[i], self.grid
        first = (grid.pad - res.n_fft // 2) // grid.step
        n_frames = grid.n_window // res.hop
        stride = res.hop // grid.step
        kernel = self.time_kernels[i]
        span = powers[..., first : first + (n_frames - 1) * stride + kernel.numel()]
        rows = span.reshape(1, -1, span.shape[-1])
        weight = kernel.reshape(1, 1, -1).expand(rows.shape[1], 1, -1)
        out = torch.nn.functional.conv1d(rows, weight, stride=stride, groups=rows.shape[1])
        return out.reshape(*span.shape[:-1], n_frames)


def branch_powers(
    params: AtomParams, cell_s: Tensor, window_start_s: Tensor, *, grid: Grid, sample_rate: int, envelope: str
) -> Tensor:
    """Power of both branches of every atom on the grid.

    Args:
        params: Physical parameters, shape (segments, atoms).
        cell_s: Grid cell centres relative to the window start, shape (n_cells,).
        window_start_s: Start of each segment's window, shape (segments, 1).

    Returns:
        Power, shape (segments, 2 * atoms, n_cells): noise branches, then resonances.
    """
    u = cell_s + (window_start_s - params.time_s).unsqueeze(-1)  # (segments, atoms, cells)
    env = dsp.burst_envelope(u, params.attack_s.unsqueeze(-1), params.spread_s.unsqueeze(-1), shape=envelope)
    e2 = env * env
    res = dsp.resonance_power(e2, params.decay_s.unsqueeze(-1), step_samples=grid.step, sample_rate=sample_rate)
    g2 = torch.pow(10.0, params.gain_db / 10.0).unsqueeze(-1)
    mix = params.mix.unsqueeze(-1)
    return torch.cat([g2 * (1.0 - mix) * e2, g2 * mix * res], dim=1)


def noise_spectra(params: AtomParams, plan: Plan) -> Tensor:
    """Share of each noise branch's power per bin, every resolution's bins summing to ~1.

    The band is gaussian; the window blurs it by its own spectral spread and the
    variances of the two add. The sum over a resolution's bins is the gaussian's
    integral over [0, Nyquist] divided by the bin width (erf), exact to well
    under 1 % once the blurred width exceeds half a bin, which the window ensures.

    Returns:
        Shape (segments, atoms, n_slots).
    """
    sigma_band = (params.noise_bandwidth_hz / dsp.FWHM_PER_SIGMA).unsqueeze(-1)  # (segments, atoms, 1)
    sigma = torch.sqrt(sigma_band**2 + (HANN_KERNEL_SIGMA_BINS * plan.bin_hz) ** 2)  # (segments, atoms, res)
    centre = params.noise_center_hz.unsqueeze(-1)
    nyquist = plan.sample_rate / 2
    root2 = math.sqrt(2.0)
    inside = 0.5 * (torch.erf((nyquist - centre) / (root2 * sigma)) + torch.erf(centre / (root2 * sigma)))
    total = sigma * math.sqrt(2 * math.pi) / plan.bin_hz * inside.clamp_min(1e-6)
    z = (plan.slot_hz - centre) * ((1.0 / sigma) @ plan.spread)
    return torch.exp(-0.5 * z * z) * ((1.0 / total) @ plan.spread)


def resonance_spectra(params: AtomParams, plan: Plan, *, n_partials: int) -> Tensor:
    """Share of each resonance's power per bin, every resolution's bins summing to ~1.

    Each partial k (weight c_k, frequency f_k) adds c_k * kernel(b - f_k / bin_hz)
    to the 2 * SPLAT_REACH_BINS bins b around it, at every resolution, in one
    scatter-add. Silent partials (above Nyquist or past `n_partials`) have c_k = 0.

    Returns:
        Shape (segments, atoms, n_slots).
    """
    f0 = params.f0_hz.unsqueeze(-1)
    b = params.inharmonicity.unsqueeze(-1)
    k = torch.arange(1, n_partials + 1, device=f0.device, dtype=f0.dtype)
    n_active = dsp.n_audible_partials(f0, b, nyquist_hz=plan.sample_rate / 2, n_partials=n_partials)
    weights = dsp.partial_weights(params.rolloff_db.unsqueeze(-1), k, n_active)  # (segments, atoms, partials)
    position = dsp.partial_frequencies(f0, b, k).unsqueeze(-1) / plan.bin_hz  # (..., partials, res) in bins
    with torch.no_grad():
        below = torch.floor(position)
        slot = below.unsqueeze(-1) + plan.taps  # (..., partials, res, taps)
        # Splats past either end of a resolution's bins land in its padding slots.
        index = (torch.minimum(slot, plan.last_bin).clamp_min(-SPLAT_REACH_BINS) + plan.first_slot).long()
    values = weights[..., None, None] * dsp.hann_power_kernel(slot - position.unsqueeze(-1))
    out = torch.zeros(*params.f0_hz.shape, plan.n_slots, device=f0.device, dtype=values.dtype)
    return out.scatter_add(-1, index.flatten(-3), values.flatten(-3))


def overlap_add_indices(offsets_frames: Tensor, n_window_frames: int, n_region_frames: int) -> tuple[Tensor, Tensor]:
    """Where each window frame lands in the region: (flat source positions, region frames).

    Args:
        offsets_frames: Region frame of each window's first frame, shape (segments,);
            may be negative (windows that start before the region).

    Returns:
        Indices into the flattened (segments * window frames) axis, and the region
        frame each one adds to; frames outside the region are dropped.
    """
    frames = offsets_frames.unsqueeze(-1) + torch.arange(n_window_frames, device=offsets_frames.device)
    flat = frames.flatten()
    keep = (flat >= 0) & (flat < n_region_frames)
    source = torch.arange(flat.numel(), device=flat.device)[keep]
    return source, flat[keep]


def expected_power(
    params: AtomParams,
    window_start_s: Tensor,
    plan: Plan,
    *,
    envelope: str,
    n_partials: int,
) -> list[Tensor]:
    """Expected power spectrogram of each segment's atoms over its window.

    Args:
        params: Physical parameters, shape (segments, atoms).
        window_start_s: Start of each segment's window, shape (segments, 1).
        plan: Grid, resolutions and their constants.
        envelope: "gamma" or "gaussian".
        n_partials: Maximum partials per atom.

    Returns:
        Per resolution, expected |STFT|^2 with frames centred every hop from each
        window start, shape (segments, n_window / hop, n_fft / 2 + 1).
    """
    sr = plan.sample_rate
    powers = branch_powers(params, plan.cell_s, window_start_s, grid=plan.grid, sample_rate=sr, envelope=envelope)
    spectra = torch.cat([noise_spectra(params, plan), resonance_spectra(params, plan, n_partials=n_partials)], dim=1)
    out = []
    for i, (res, bins) in enumerate(zip(plan.resolutions, plan.split_bins(spectra), strict=True)):
        frames = plan.frame_powers(powers, i)  # (segments, 2 atoms, frames)
        out.append((res.n_fft / 2) * torch.bmm(frames.transpose(1, 2), bins))
    return out
