"""The fast engine: each atom's expected power spectrogram, "splatted" without any FFT.

Noise-driven atoms have power spectrograms that add in expectation, and each
branch of an atom (noise burst, resonance) is separable into (power in each
frame) x (share of that power in each bin). So the expected spectrogram of a
segment at one STFT resolution is a matrix product:

    E[|X|^2](frame, bin) = N/2 * sum_branches  P(branch, frame) * psi(branch, bin)

- P: each branch's power on a coarse time grid (closed-form burst envelope;
  the resonance's decay applied in closed form by `dsp.resonance_power`),
  weighted by the squared analysis window: a strided window sum.
- psi: each branch's spectrum is first drawn on one fine *line grid* (twice
  the finest FFT's resolution): the noise band as a gaussian, each partial as
  a two-bin linear-interpolation "splat" of its power. A fixed banded matrix
  per resolution then blurs the line grid by that resolution's Hann power
  kernel and samples it at the resolution's bins. So the per-atom work is done
  once, not once per resolution, and needs no trigonometry.

Shapes: parameters (segments, atoms); spectrograms (segments, frames, bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from splat import dsp
from splat.params import AtomParams

#: Kernel reach of the blur, in bins of the target resolution (main lobe +-2, first sidelobe).
KERNEL_REACH_BINS = 3


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

    Attributes:
        line_hz: Frequencies of the line grid, shape (n_line,).
        time_kernels: Per resolution, w^2 summed over each grid cell, shape (n_fft / step,).
        freq_kernels: Per resolution, the Hann power kernel at every line-grid
            offset within reach of a bin, shape (2 * reach * ratio + 1,).
    """

    def __init__(
        self, grid: Grid, resolutions: tuple[Resolution, ...], *, sample_rate: int, device: torch.device
    ) -> None:
        self.grid = grid
        self.resolutions = resolutions
        self.sample_rate = sample_rate
        n_max = max(r.n_fft for r in resolutions)
        self.line_step_hz = sample_rate / (2 * n_max)
        self.line_hz = torch.arange(n_max + 1, device=device, dtype=torch.float32) * self.line_step_hz
        self.time_kernels = []
        self.freq_kernels = []
        for res in resolutions:
            w = torch.hann_window(res.n_fft, periodic=True, dtype=torch.float64, device=device)
            self.time_kernels.append((w * w).reshape(-1, grid.step).sum(-1).float())
            ratio = 2 * n_max // res.n_fft
            offsets = torch.arange(-KERNEL_REACH_BINS * ratio, KERNEL_REACH_BINS * ratio + 1, device=device)
            self.freq_kernels.append(dsp.hann_power_kernel(offsets.double() / ratio).float())

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
        return _depthwise(span, kernel, stride)

    def blur(self, line: Tensor, i: int) -> Tensor:
        """Line-grid spectra seen through resolution i: blur by its Hann power kernel, sample at its bins.

        Args:
            line: Power per line-grid bin, shape (segments, branches, n_line).

        Returns:
            Power per bin, shape (segments, branches, n_fft / 2 + 1).
        """
        kernel = self.freq_kernels[i]
        half = kernel.numel() // 2
        ratio = (line.shape[-1] - 1) // (self.resolutions[i].n_bins - 1)
        return _depthwise(torch.nn.functional.pad(line, (half, half)), kernel, ratio)


def _depthwise(x: Tensor, kernel: Tensor, stride: int) -> Tensor:
    """Correlate every row of x (..., n) with the same 1-D kernel, keeping every `stride`-th output."""
    lead = x.shape[:-1]
    rows = x.reshape(1, -1, x.shape[-1])
    weight = kernel.reshape(1, 1, -1).expand(rows.shape[1], 1, -1)
    out = torch.nn.functional.conv1d(rows, weight, stride=stride, groups=rows.shape[1])
    return out.reshape(*lead, out.shape[-1])


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


def line_spectra(params: AtomParams, line_hz: Tensor, *, sample_rate: int, n_partials: int) -> Tensor:
    """Share of each branch's power per line-grid bin (each row sums to 1).

    Noise: the gaussian band sampled on the grid. Resonance: each bin takes
    the partial nearest to it, weighted by the linear-interpolation hat (1 - |offset|
    in grid steps, >= 0), so each partial's power lands on its two neighbouring
    bins. Partials are >= 25 Hz apart, far more than one grid step, so no bin
    ever needs a second partial.

    Args:
        params: Physical parameters, shape (segments, atoms).
        line_hz: Line-grid frequencies (uniform from 0 Hz), shape (n_line,).

    Returns:
        Shape (segments, 2 * atoms, n_line): noise branches, then resonances.
    """
    step_hz = float(line_hz[1] - line_hz[0])
    band = dsp.band_shape(line_hz, params.noise_center_hz.unsqueeze(-1), params.noise_bandwidth_hz.unsqueeze(-1))
    band = band / band.sum(-1, keepdim=True).clamp_min(1e-30)
    f0 = params.f0_hz.unsqueeze(-1)
    b = params.inharmonicity.unsqueeze(-1)
    with torch.no_grad():
        k = torch.round(dsp.partial_index(line_hz, f0, b))
    n_active = dsp.n_audible_partials(f0, b, nyquist_hz=sample_rate / 2, n_partials=n_partials)
    hat = torch.relu(1.0 - (line_hz - dsp.partial_frequencies(f0, b, k)).abs() / step_hz)
    tone = dsp.partial_weights(params.rolloff_db.unsqueeze(-1), k, n_active) * hat
    return torch.cat([band, tone], dim=1)


def overlap_add_indices(
    offsets_frames: Tensor, n_window_frames: int, n_region_frames: int
) -> tuple[Tensor, Tensor]:
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
        plan: Grid, resolutions and their kernels.
        envelope: "gamma" or "gaussian".
        n_partials: Maximum partials per atom.

    Returns:
        Per resolution, expected |STFT|^2 with frames centred every hop from each
        window start, shape (segments, n_window / hop, n_fft / 2 + 1).
    """
    sr = plan.sample_rate
    cell_s = plan.grid.cell_centres_s(sr, params.f0_hz.device)
    powers = branch_powers(params, cell_s, window_start_s, grid=plan.grid, sample_rate=sr, envelope=envelope)
    line = line_spectra(params, plan.line_hz, sample_rate=sr, n_partials=n_partials)
    out = []
    for i, res in enumerate(plan.resolutions):
        frames = plan.frame_powers(powers, i)  # (segments, 2 atoms, frames)
        spectra = plan.blur(line, i)  # (segments, 2 atoms, bins)
        out.append((res.n_fft / 2) * torch.bmm(frames.transpose(1, 2), spectra))
    return out
