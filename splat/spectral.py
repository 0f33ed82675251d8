"""The fast engine: each atom's expected power spectrogram, "splatted" without any FFT.

Noise-driven atoms have power spectrograms that add in expectation, and each
branch of an atom (noise burst, resonance body, resonance short part) is
separable into (power in each frame) x (share of that power in each bin). So
the expected spectrogram of a segment at one STFT resolution is a matrix
product:

    E[|X|^2](frame, bin) = N/2 * sum_branches  P(branch, frame) * psi(branch, bin)

- P: each branch's power on a coarse time grid (closed-form burst envelope;
  the resonance parts' decays applied by `dsp.resonance_power`, a blocked recursion;
  the atom's release window `dsp.release_gain` on all three),
  weighted by the squared analysis window (a strided window sum per resolution).
- psi, noise: the gaussian band widened by the window's own spectral spread
  (variances add), normalised in closed form with erf.
- psi, resonance parts: every partial is splatted onto the few bins around it
  with the Hann window's closed-form power kernel (`dsp.hann_power_taps`), for
  all resolutions at once (the body and the short part differ only in the
  partials' weights), into one bin axis that holds every resolution's
  bins side by side (a single scatter-add).

On the CPU in float32 each of these steps (and the loss, `splat.loss`) is one
native loop with its gradient written out (`splat.native`, `kernels.c`), and on
CPUs that multiply bfloat16 in hardware the products run in bfloat16 with
float32 sums (`_BFloat16Products`); the PyTorch code below is the reference the
tests hold them to, and what runs elsewhere.

The partials' and the noise's powers are kept apart (`SplitPower`): a render
has the partials' power in each cell but only a random draw about the noise's
(exponentially distributed), and the loss compares the two differently
(`splat.loss.SpectralTarget`).

Shapes: parameters (segments, atoms); spectrograms (segments, frames, bins).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from splat import dsp, floor, native
from splat.modes import partial_ratios, ratio_table
from splat.params import AtomParams

#: Bins on each side of a partial that it is splatted onto (sidelobes beyond are < -45 dB).
SPLAT_REACH_BINS = 4
#: Standard deviation of the Hann window's power kernel, in bins.
HANN_KERNEL_SIGMA_BINS = 0.575
#: Samples of an analysis window per pitch node: a frame reads a moving atom's pitch at
#: max(1, n_fft // PITCH_NODE_SAMPLES) times across its window (`pitch_nodes`).
PITCH_NODE_SAMPLES = 1024
#: Splats of a moving partial whose power is below this are skipped (the loss floors powers at 1e-8).
TINY_SPLAT_POWER = 1e-12
#: Most a moving partial's sweep during a pitch node widens its splat, in bins (`swept_shares`); a sweep
#: under MIN_SWEEP_BINS is drawn as none (its gaussian would carry less than 1e-4 of the power).
MAX_SWEEP_BINS = 16.0
MIN_SWEEP_BINS = 0.005
#: A swept splat's gaussian part reaches this many of its standard deviations (as kernels.c's SWEEP_REACH).
SWEEP_REACH_SIGMAS = 3.0


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

    The resonance spectra of all resolutions live on one bin axis: resolution i
    owns `width[i]` slots from `base[i]`, its bin b at slot base[i] + SPLAT_REACH_BINS + b;
    the slots on either side catch splats that fall off its ends. (Noise spectra
    are built per resolution, on `bins_hz`.)

    Attributes:
        cell_s: Grid cell centres relative to the window start, shape (n_cells,).
        n_slots: Length of the shared bin axis (every resolution's bins and padding).
        bins_hz: Per resolution, the frequency of each bin, shape (n_fft / 2 + 1,).
        bin_hz: Bin width of each resolution, shape (n_res,).
        time_kernels: Per resolution, N / 2 * w^2 summed over each grid cell, shape (n_fft / step,).
        pitch_nodes: Per resolution, where and with what weight its frames read a moving pitch (`pitch_nodes`).
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
        self.bin_hz = torch.tensor([sample_rate / r.n_fft for r in resolutions], device=device, dtype=torch.float32)
        self.n_slots = sum(widths)
        self.bins_hz = [
            torch.arange(r.n_bins, device=device, dtype=torch.float32) * (sample_rate / r.n_fft) for r in resolutions
        ]
        self.cell_s = grid.cell_centres_s(sample_rate, device)
        self.taps = torch.arange(1 - pad, pad + 1, device=device, dtype=torch.float32)
        # Per resolution, as (res, 1) columns: highest bin index a splat may use, slot of bin 0.
        self.last_bin = torch.tensor([[r.n_bins + pad - 1.0] for r in resolutions], device=device, dtype=torch.float32)
        self.first_slot = torch.tensor([[b + pad] for b in self.base], device=device)
        self.pitch_nodes = [
            pitch_nodes(res, grid.n_window, sample_rate=sample_rate, device=device) for res in resolutions
        ]
        self.time_kernels = []
        for res in resolutions:
            w = torch.hann_window(res.n_fft, periodic=True, dtype=torch.float64, device=device)
            # The N / 2 of E|X|^2 = N / 2 * P * psi is folded into the kernel.
            self.time_kernels.append((res.n_fft / 2 * (w * w).reshape(-1, grid.step).sum(-1)).float())

    @functools.cached_property
    def floor_shares(self) -> list[Tensor]:
        """Per resolution, each noise-floor band's share of every bin, shape (bands, n_fft / 2 + 1).

        Built on first use (~20 ms): fits without a noise floor never need it.
        """
        device = self.cell_s.device
        centres = torch.tensor(floor.band_centres_hz(self.sample_rate), dtype=torch.float64, device=device)
        return [floor.bin_shares(centres, r.n_fft, self.sample_rate).float() for r in self.resolutions]

    def split_bins(self, slots: Tensor) -> list[Tensor]:
        """Each resolution's bins out of a tensor over all slots (last axis).

        One `split` rather than a slice per resolution: its backward is a single
        concatenation instead of a zero-filled full-size gradient per slice.
        """
        pad = SPLAT_REACH_BINS
        sizes = [n for r in self.resolutions for n in (pad, r.n_bins, pad)]
        return list(slots.split(sizes, dim=-1)[1::3])

    def frame_layout(self, i: int) -> tuple[int, int, int]:
        """Where resolution i's frames sit on the grid: (cells per hop, first frame, frames).

        The first frame starts (pad - n_fft / 2) samples into the grid: a whole number
        of hops, as every size is a power of two.
        """
        res, grid = self.resolutions[i], self.grid
        return res.hop // grid.step, (grid.pad - res.n_fft // 2) // res.hop, grid.n_window // res.hop

    def frame_powers(self, powers: Tensor, *, dtype: torch.dtype | None = None) -> list[Tensor]:
        """Window-weighted power N / 2 * sum_t w^2(t - t_m) p(t) of frames centred every hop in the window.

        Args:
            powers: Branch power on the grid, shape (segments, branches, n_cells).
            dtype: Precision of the result (default: that of `powers`); the native
                kernel sums in float32 and rounds once.

        Returns:
            Per resolution, shape (segments, n_window / hop, branches): frames
            first, as the products of `expected_power` take them.
        """
        dtype = dtype or powers.dtype
        if native.usable(powers):
            return list(_NativeFramePowers.apply(powers, self, dtype))
        out = []
        rows = powers.reshape(1, -1, powers.shape[-1])
        for i, kernel in enumerate(self.time_kernels):
            stride, first, n_frames = self.frame_layout(i)
            # Convolving the whole grid and keeping the frames in the window (not convolving a
            # slice of it) spares the backward a zero-filled grid-sized gradient.
            weight = kernel.reshape(1, 1, -1).expand(rows.shape[1], 1, -1)
            frames = torch.nn.functional.conv1d(rows, weight, stride=stride, groups=rows.shape[1])
            out.append(frames[..., first : first + n_frames].reshape(*powers.shape[:-1], n_frames).transpose(1, 2))
        return [frames.to(dtype) for frames in out]


def pitch_nodes(
    res: Resolution, n_window: int, *, sample_rate: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Where each frame of a resolution reads a moving atom's pitch, with what weight and over how long.

    The window of n_fft samples is cut into J = max(1, n_fft // PITCH_NODE_SAMPLES) equal
    parts; node j sits at the centroid of w^2 over part j, weighs that part's share of the
    sum of w^2, and spans the standard deviation of time under w^2 in that part. A frame
    splats each partial once per node, at its frequency at that time and blurred by how far
    it sweeps meanwhile (`moving_resonance_power`), with that share of the frame's power: a
    long window sees a vibrato or a fast glide spread over the pitches it runs through.

    Returns:
        Node times from the window start in seconds, shape (n_window / hop, J); their
        weights, shape (J,), summing to 1; and their spans in seconds, shape (J,); float32.
    """
    n_nodes = max(1, res.n_fft // PITCH_NODE_SAMPLES)
    host = {"dtype": torch.float64, "device": "cpu"}  # built on the host whatever torch's default device
    w2 = (torch.hann_window(res.n_fft, periodic=True, **host) ** 2).reshape(n_nodes, -1)
    n = torch.arange(res.n_fft, **host).reshape(n_nodes, -1)
    mass = w2.sum(-1)
    centroid = (n * w2).sum(-1) / mass
    spread = torch.sqrt(((n - centroid.unsqueeze(-1)) ** 2 * w2).sum(-1) / mass)
    centres = torch.arange(n_window // res.hop, **host) * res.hop  # frame m is centred m hops in
    times = (centres.unsqueeze(-1) + centroid - res.n_fft / 2) / sample_rate
    like = {"device": device, "dtype": torch.float32}
    return times.to(**like), (mass / mass.sum()).to(**like), (spread / sample_rate).to(**like)


def pitch_scales(params: AtomParams, window_start_s: Tensor, plan: Plan) -> list[tuple[Tensor, Tensor]]:
    """Each atom's frequency factor s = 2^(bend / 1200) at every pitch node of every resolution, and
    how far it moves during the node's span: |ds / du| times the span.

    Args:
        params: Physical parameters, shape (segments, atoms).
        window_start_s: Start of each segment's window, shape (segments, 1).

    Returns:
        Per resolution, the factors and their sweeps, each of shape (segments, atoms, n_window / hop, nodes).
    """
    fields = (params.f0_glide_cents_per_s, params.vibrato_hz, params.vibrato_cents, params.duration_s)
    motion = [f.reshape(*f.shape, 1, 1) for f in fields]
    shift = (window_start_s - params.time_s).reshape(*params.time_s.shape, 1, 1)
    out = []
    for times, _, span_s in plan.pitch_nodes:
        u = times + shift
        scale = torch.exp2(dsp.pitch_bend_cents(u, *motion) / 1200.0)
        slope = dsp.pitch_bend_slope_cents_per_s(u, *motion)
        out.append((scale, (scale * slope).abs() * (span_s * math.log(2.0) / 1200.0)))
    return out


def moving_resonance_power(
    frames: Tensor,
    params: AtomParams,
    scale: Tensor,
    sweep: Tensor,
    plan: Plan,
    i: int,
    *,
    n_partials: int,
    modes: Tensor | None = None,
) -> Tensor:
    """Expected power of the partials of atoms whose pitch moves, at resolution i.

    At each pitch node j of frame m (`pitch_nodes`, weight v_j) partial k of an atom sits
    at f_k * scale[m, j] (f_k at its f0 on its series, `dsp.partial_frequencies`) and splats
    v_j (P_body[m] c_k + P_short[m] c'_k) onto the bins around it with the Hann kernel, blurred
    by its sweep during the node's span, sigma = f_k * sweep[m, j] / bin_hz bins (`swept_shares`,
    at most MAX_SWEEP_BINS; none under MIN_SWEEP_BINS). c_k and c'_k are the weights at the
    atom's f0 (the formant and the rolloffs do not follow the moving pitch). A partial at or
    above Nyquist is silent there, and splats below TINY_SPLAT_POWER are skipped. With every
    scale 1 and sweep 0 this is `resonance_spectra`'s splat in every frame.

    Args:
        frames: Window-weighted power of every atom's body and short part, shape
            (segments, frames, 2 * atoms): bodies first (`Plan.frame_powers`'s columns).
        params: Physical parameters, shape (segments, atoms).
        scale, sweep: The atoms' frequency factors and their sweeps at resolution i (`pitch_scales`),
            each of shape (segments, atoms, frames, nodes).
        plan: Grid, resolutions and their constants.
        i: Index of the resolution.
        n_partials: Maximum partials per atom.
        modes: Each atom's partial series (indices into `splat.modes.MODES`), integer tensor
            of shape (segments, atoms); None: every atom is a string.

    Returns:
        Power, shape (segments, frames, n_fft / 2 + 1).
    """
    if native.usable(frames, params.f0_hz, scale, sweep):
        fields = torch.stack([getattr(params, name) for name in _PARTIAL_FIELDS])  # (fields, segments, atoms)
        return _NativeMovingSpectra.apply(frames, fields, scale, sweep, plan, i, n_partials, modes)
    res = plan.resolutions[i]
    node_weights = plan.pitch_nodes[i][1]
    nyquist = plan.sample_rate / 2
    bin_hz = plan.sample_rate / res.n_fft
    f0 = params.f0_hz.unsqueeze(-1)
    b = params.inharmonicity.unsqueeze(-1)
    k = torch.arange(1, n_partials + 1, device=f0.device, dtype=f0.dtype)
    ratios = None if modes is None else partial_ratios(modes, n_partials=n_partials, dtype=f0.dtype)
    n_active = dsp.n_audible_partials(f0, b, nyquist_hz=nyquist, n_partials=n_partials, ratios=ratios)
    rolloffs = torch.stack([params.rolloff_db, params.short_rolloff_db]).unsqueeze(-1)  # (2, segments, atoms, 1)
    freqs = dsp.partial_frequencies(f0, b, k if ratios is None else ratios)  # (segments, atoms, partials)
    gains = dsp.formant_gains(freqs, params.formant_hz.unsqueeze(-1), params.formant_db.unsqueeze(-1))
    weights = dsp.partial_weights(rolloffs, k, n_active, gains)  # (2, segments, atoms, partials)
    # Layout (segments, atoms, frames, nodes, partials).
    parts = frames.unflatten(-1, (2, -1)).permute(2, 0, 3, 1)  # (2, segments, atoms, frames)
    power = (parts.unsqueeze(-1).unsqueeze(-1) * weights.unsqueeze(-2).unsqueeze(-2)).sum(0)
    power = power * node_weights.unsqueeze(-1)
    freqs = freqs.unsqueeze(-2).unsqueeze(-2)
    moving = freqs * scale.unsqueeze(-1)
    power = torch.where((moving < nyquist) & (power >= TINY_SPLAT_POWER), power, 0.0)
    position = moving / bin_hz
    sigma = (freqs * sweep.unsqueeze(-1) / bin_hz).clamp_max(MAX_SWEEP_BINS)
    sigma = torch.where(sigma < MIN_SWEEP_BINS, 0.0, sigma)
    pad = SPLAT_REACH_BINS
    # Each splat covers bins floor(p) + 1 - r .. floor(p) + r (`swept_shares`); all run over the widest
    # one's taps, the others' outside their own reach muted.
    with torch.no_grad():
        reach = _sweep_reach(sigma)
        most = int(reach.max()) if reach.numel() else pad
        taps = torch.arange(1 - most, most + 1, device=frames.device, dtype=frames.dtype)
        inside = (taps.reshape(-1, 1, 1, 1, 1, 1) >= 1 - reach) & (taps.reshape(-1, 1, 1, 1, 1, 1) <= reach)
        slot = torch.floor(position) + taps.reshape(-1, 1, 1, 1, 1, 1)
    values = torch.where(inside, swept_shares(position, sigma, taps) * power, 0.0)
    width = res.n_bins + 2 * most  # each frame's bins with the padding that catches splats off its ends
    n_segments, n_frames = frames.shape[:2]
    with torch.no_grad():
        slot = slot.clamp(-most, res.n_bins + most - 1) + most
        frame = torch.arange(n_frames, device=slot.device).reshape(-1, 1, 1)
        index = (slot + width * frame).long()  # (taps, segments, atoms, frames, nodes, partials)
    out = torch.zeros(n_segments, n_frames * width, device=frames.device, dtype=values.dtype).scatter_add(
        1, index.transpose(0, 1).reshape(n_segments, -1), values.transpose(0, 1).reshape(n_segments, -1)
    )
    return out.reshape(n_segments, n_frames, width)[..., most : most + res.n_bins]


def _sweep_reach(sigma_bins: Tensor) -> Tensor:
    """Taps on each side of a swept splat (`swept_shares`): SPLAT_REACH_BINS, or 3 gaussian deviations."""
    variance = 2.0 * HANN_KERNEL_SIGMA_BINS**2 + sigma_bins**2
    return torch.ceil(SWEEP_REACH_SIGMAS * torch.sqrt(variance)).clamp_min(SPLAT_REACH_BINS)


def swept_shares(position_bins: Tensor, sigma_bins: Tensor, taps: Tensor) -> Tensor:
    """Share of a partial's power in the bins around it while its frequency sweeps sigma bins.

    The Hann kernel blurred by a sweep of standard deviation sigma, as a mixture that is the
    kernel at sigma = 0 and keeps its variance (the kernel's, HANN_KERNEL_SIGMA_BINS^2, plus
    sigma^2) with nulls filled:

        (1 - l) hann(d) + l exp(-d^2 / 2 v) / sqrt(2 pi v),  l = sigma^2 / (sigma^2 + ks^2),  v = 2 ks^2 + sigma^2,

    hann over its SPLAT_REACH_BINS taps each side (`dsp.hann_power_taps`), the gaussian over
    the splat's whole reach (`_sweep_reach`, masked by the caller). Shapes as `dsp.hann_power_taps`:
    positions and sigmas (...), taps (taps,) as offsets from floor(position); returns (taps, ...).
    """
    k2 = HANN_KERNEL_SIGMA_BINS**2
    hann = dsp.hann_power_taps(position_bins, taps[(taps >= 1 - SPLAT_REACH_BINS) & (taps <= SPLAT_REACH_BINS)])
    before = int((taps < 1 - SPLAT_REACH_BINS).sum())
    hann = torch.nn.functional.pad(hann.movedim(0, -1), (before, taps.numel() - before - hann.shape[0])).movedim(-1, 0)
    s2 = sigma_bins**2
    mix = s2 / (s2 + k2)
    variance = 2.0 * k2 + s2
    offset = torch.floor(position_bins).detach() + taps.reshape(-1, *([1] * position_bins.dim())) - position_bins
    gauss = torch.exp(-0.5 * offset**2 / variance) / torch.sqrt(2.0 * math.pi * variance)
    return (1.0 - mix) * hann + mix * gauss


class _NativeMovingSpectra(torch.autograd.Function):
    """`moving_resonance_power` in native loops (`splat.native`): each (segment, frame) row
    splats its atoms' partials at their moving positions; the gradient runs per atom, gathering
    each splat's back into the frames' powers, the pitch factors, their sweeps and the partials'
    weights and frequencies (then, as `resonance_spectra`'s, to the fields)."""

    @staticmethod
    def forward(
        ctx,
        frames: Tensor,
        fields: Tensor,
        scale: Tensor,
        sweep: Tensor,
        plan: Plan,
        i: int,
        n_partials: int,
        modes: Tensor | None,
    ) -> Tensor:
        frames, fields, scale, sweep = frames.contiguous(), fields.contiguous(), scale.contiguous(), sweep.contiguous()
        n_segments, n_frames, _ = frames.shape
        per_segment = fields.shape[-1]
        res = plan.resolutions[i]
        node_weights = plan.pitch_nodes[i][1]
        # The series' ratios and each atom's row, kept with ctx: the kernels hold pointers to them.
        ratios, modes = ratio_table(n_partials, dtype=torch.float32), None if modes is None else modes.contiguous()
        ctx.settings = (
            n_segments,
            per_segment,
            n_partials,
            plan.sample_rate / 2,
            native.ptr(ratios),
            native.int64_ptr(modes),
            n_frames,
            node_weights.numel(),
            plan.sample_rate / res.n_fft,
            res.n_bins,
            SPLAT_REACH_BINS,
            TINY_SPLAT_POWER,
            HANN_KERNEL_SIGMA_BINS,
            MAX_SWEEP_BINS,
            MIN_SWEEP_BINS,
        )
        widest = math.ceil(SWEEP_REACH_SIGMAS * math.sqrt(2.0 * HANN_KERNEL_SIGMA_BINS**2 + MAX_SWEEP_BINS**2))
        assert widest <= 64, "beyond kernels.c's MAX_MOVING_TAPS"
        ctx.keep = node_weights, ratios, modes  # the arrays the pointers point to
        out = frames.new_empty(n_segments, n_frames, res.n_bins)
        table = fields.new_empty(n_segments * per_segment, 1 + 3 * n_partials)
        native.library().moving_spectra(
            *map(native.ptr, (fields, frames, scale, sweep, node_weights)),
            *ctx.settings,
            native.ptr(table),
            native.ptr(out),
        )
        ctx.save_for_backward(frames, fields, scale, sweep)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        frames, fields, scale, sweep = ctx.saved_tensors
        grad_frames, grad_fields, grad_scale, grad_sweep = map(torch.empty_like, (frames, fields, scale, sweep))
        native.library().moving_spectra_backward(
            *map(native.ptr, (grad.contiguous(), fields, frames, scale, sweep, ctx.keep[0])),
            *ctx.settings,
            *map(native.ptr, (grad_frames, grad_scale, grad_sweep, grad_fields)),
        )
        return grad_frames, grad_fields, grad_scale, grad_sweep, None, None, None, None


class _NativeFramePowers(torch.autograd.Function):
    """`Plan.frame_powers` in one native call (`splat.native`) over the grid transposed to
    (segments, cells, branches), so that every multiply-add runs along the branches; it
    writes the frames in the layout the products take, and only the frames kept (no
    convolution of the whole grid, no slice). The gradient gathers, for each cell, the
    frames of every resolution that cover it, into one grid."""

    @staticmethod
    def forward(ctx, powers: Tensor, plan: Plan, dtype: torch.dtype) -> tuple[Tensor, ...]:
        batch, n_rows, n_cells = powers.shape
        grid = powers.transpose(1, 2).contiguous()  # (segments, cells, branches)
        layouts = [plan.frame_layout(i) for i in range(len(plan.resolutions))]
        for (stride, first, n_frames), kernel in zip(layouts, plan.time_kernels, strict=True):
            assert (first + n_frames - 1) * stride + kernel.numel() <= n_cells, "frames past the grid"
        out = [grid.new_empty(batch, n_frames, n_rows, dtype=dtype) for _, _, n_frames in layouts]
        half = int(dtype == torch.bfloat16)
        scratch = grid.new_empty(native.library().max_threads() * n_rows * half)
        ctx.settings = (
            batch,
            n_cells,
            n_rows,
            native.ptrs(plan.time_kernels),
            *(native.int64s(list(column)) for column in zip(*layouts, strict=True)),
            native.int64s([k.numel() for k in plan.time_kernels]),
            len(layouts),
        )
        ctx.keep, ctx.half = plan.time_kernels, half  # the kernels the pointers point to
        native.library().frame_powers(native.ptr(grid), *ctx.settings, native.datas(out), half, native.ptr(scratch))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        batch, n_cells, n_rows = ctx.settings[:3]
        grads = [g.contiguous() for g in grads]
        grad_grid = grads[0].new_empty(batch, n_cells, n_rows, dtype=torch.float32)
        native.library().frame_powers_backward(native.datas(grads), *ctx.settings, native.ptr(grad_grid), ctx.half)
        return grad_grid.transpose(1, 2), None, None


def branch_powers(
    params: AtomParams, cell_s: Tensor, window_start_s: Tensor, *, grid: Grid, sample_rate: int, envelope: str
) -> Tensor:
    """Power of the three branches of every atom on the grid.

    Args:
        params: Physical parameters, shape (segments, atoms).
        cell_s: Grid cell centres relative to the window start, shape (n_cells,).
        window_start_s: Start of each segment's window, shape (segments, 1).

    Returns:
        Power, shape (segments, 3 * atoms, n_cells): noise branches, then the
        resonances' bodies, then their short parts.
    """
    if native.usable(params.time_s, cell_s, window_start_s):
        fields = torch.stack([getattr(params, name) for name in _BRANCH_FIELDS])  # (fields, segments, atoms)
        out = _NativeBranchPowers.apply(fields, window_start_s, cell_s, grid.step, sample_rate, envelope)
        return out.transpose(1, 2)
    u = cell_s + (window_start_s - params.time_s).unsqueeze(-1)  # (segments, atoms, cells)
    env = dsp.burst_envelope(u, params.attack_s.unsqueeze(-1), params.spread_s.unsqueeze(-1), shape=envelope)
    e2 = env * env
    decays = torch.stack([params.decay_s, params.short_decay_s], dim=1).unsqueeze(-1)  # (segments, 2, atoms, 1)
    res = dsp.resonance_power(e2.unsqueeze(1), decays, step_samples=grid.step, sample_rate=sample_rate)
    g2 = torch.pow(10.0, params.gain_db / 10.0).unsqueeze(-1)
    mix = params.mix.unsqueeze(-1)
    share = params.short_share.unsqueeze(-1)
    shares = torch.cat([g2 * (1.0 - mix), g2 * mix * (1.0 - share), g2 * mix * share], dim=1)
    release = dsp.release_gain(u, params.duration_s.unsqueeze(-1), params.release_s.unsqueeze(-1), power=True)
    powers = (shares * torch.cat([e2, res.flatten(1, 2)], dim=1)).unflatten(1, (3, -1))  # (segments, 3, atoms, cells)
    return (powers * release.unsqueeze(1)).flatten(1, 2)


#: The fields `branch_powers` depends on, in the order of kernels.c's FIELD_* constants.
_BRANCH_FIELDS = (
    "time_s",
    "attack_s",
    "spread_s",
    "decay_s",
    "short_decay_s",
    "gain_db",
    "mix",
    "short_share",
    "duration_s",
    "release_s",
)


class _NativeBranchPowers(torch.autograd.Function):
    """`branch_powers` in one native pass per atom (`splat.native`), gradient written out.

    Takes the fields stacked, shape (fields, segments, atoms), and returns the
    powers as (segments, cells, 3 * atoms), the layout `Plan.frame_powers` reads.
    """

    @staticmethod
    def forward(
        ctx, fields: Tensor, window_start_s: Tensor, cell_s: Tensor, step: int, sample_rate: int, envelope: str
    ) -> Tensor:
        fields, window_start_s = fields.contiguous(), window_start_s.contiguous()
        _, n_segments, n_atoms = fields.shape
        n_cells = cell_s.numel()
        out = fields.new_empty(n_segments, n_cells, 3 * n_atoms)
        saved = fields.new_empty(4, n_segments * n_atoms, n_cells)
        ctx.settings = (n_segments, n_atoms, n_cells, float(step), float(sample_rate), int(envelope == "gaussian"))
        native.library().branch_powers(
            *map(native.ptr, (fields, window_start_s, cell_s)), *ctx.settings, native.ptr(out), native.ptr(saved)
        )
        ctx.save_for_backward(fields, window_start_s, cell_s, saved)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        fields, window_start_s, cell_s, saved = ctx.saved_tensors
        grad = grad.contiguous()
        grad_fields = torch.empty_like(fields)
        scratch = fields.new_empty(native.library().max_threads(), 4, cell_s.numel())
        native.library().branch_powers_backward(
            *map(native.ptr, (grad, fields, window_start_s, cell_s, saved)),
            *ctx.settings,
            native.ptr(grad_fields),
            native.ptr(scratch),
        )
        return grad_fields, None, None, None, None, None


def noise_spectra(params: AtomParams, plan: Plan, *, dtype: torch.dtype | None = None) -> list[Tensor]:
    """Share of each noise branch's power per bin, every resolution's bins summing to ~1.

    The band is gaussian; the window blurs it by its own spectral spread and the
    variances of the two add. The sum over a resolution's bins is the gaussian's
    integral over [0, Nyquist] divided by the bin width (erf), exact to well
    under 1 % once the blurred width exceeds half a bin, which the window ensures.

    Returns:
        Per resolution, shape (segments, atoms, n_fft / 2 + 1).
    """
    dtype = dtype or params.noise_center_hz.dtype
    if native.usable(params.noise_center_hz, plan.bin_hz):
        return list(_NativeNoiseSpectra.apply(params.noise_center_hz, params.noise_bandwidth_hz, plan, dtype))
    sigma_band = (params.noise_bandwidth_hz / dsp.FWHM_PER_SIGMA).unsqueeze(-1)  # (segments, atoms, 1)
    sigma = torch.sqrt(sigma_band**2 + (HANN_KERNEL_SIGMA_BINS * plan.bin_hz) ** 2)  # (segments, atoms, res)
    centre = params.noise_center_hz.unsqueeze(-1)
    nyquist = plan.sample_rate / 2
    root2 = math.sqrt(2.0)
    inside = 0.5 * (torch.erf((nyquist - centre) / (root2 * sigma)) + torch.erf(centre / (root2 * sigma)))
    total = sigma * math.sqrt(2 * math.pi) / plan.bin_hz * inside.clamp_min(1e-6)
    return [share.to(dtype) for share in _GaussianBands.apply(centre, 1.0 / sigma, 1.0 / total, *plan.bins_hz)]


class _GaussianBands(torch.autograd.Function):
    """s_r = a_r exp(-z^2 / 2), z = (f - c) b_r, at every bin f of each resolution r; gradient in closed form.

    Inputs: centre c, per-resolution inverse width b_r and scale a_r. For g = dL/ds_r:

        dL/dc = sum_r sum_f g s z b_r,   dL/db_r = -sum_f g s z^2 / b_r,   dL/da_r = sum_f g s / a_r.

    (Autograd would keep and revisit four bin-sized intermediates per resolution.)
    """

    @staticmethod
    def forward(ctx, centre: Tensor, inv_sigma: Tensor, scale: Tensor, *bins_hz: Tensor) -> tuple[Tensor, ...]:
        out, saved = [], []
        for r, freqs in enumerate(bins_hz):
            z = (freqs - centre).mul_(inv_sigma[..., r : r + 1])
            share = torch.exp((-0.5 * z * z).clamp_min_(dsp.EXP_FLOOR)).mul_(scale[..., r : r + 1])
            out.append(share)
            saved += [z, share]
        ctx.save_for_backward(inv_sigma, scale, *saved)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        inv_sigma, scale, *saved = ctx.saved_tensors
        grad_centre = 0.0
        grad_inv_sigma, grad_scale = [], []
        for r, grad in enumerate(grads):
            z, share = saved[2 * r], saved[2 * r + 1]
            weighted = grad * share  # g s
            gz = weighted * z  # g s z
            grad_centre = grad_centre + gz.sum(-1, keepdim=True) * inv_sigma[..., r : r + 1]
            grad_inv_sigma.append((gz * z).sum(-1))
            grad_scale.append(weighted.sum(-1))
        grad_inv_sigma = -torch.stack(grad_inv_sigma, dim=-1) / inv_sigma
        grad_scale = torch.stack(grad_scale, dim=-1) / scale
        return (grad_centre, grad_inv_sigma, grad_scale) + (None,) * len(grads)


class _NativeNoiseSpectra(torch.autograd.Function):
    """`noise_spectra` in native loops (`splat.native`): one pass over each band's bins, and one
    for its gradient, with the erf normalisation's derivatives written out."""

    @staticmethod
    def forward(ctx, centre_hz: Tensor, bandwidth_hz: Tensor, plan: Plan, dtype: torch.dtype) -> tuple[Tensor, ...]:
        centre_hz, bandwidth_hz = centre_hz.contiguous(), bandwidth_hz.contiguous()
        out = [centre_hz.new_empty(*centre_hz.shape, r.n_bins, dtype=dtype) for r in plan.resolutions]
        ctx.settings, ctx.half = _band_settings(plan), int(dtype == torch.bfloat16)
        ctx.save_for_backward(centre_hz, bandwidth_hz)
        native.library().noise_spectra(
            *map(native.ptr, (centre_hz, bandwidth_hz)),
            centre_hz.numel(),
            *ctx.settings,
            native.datas(out),
            ctx.half,
        )
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        centre_hz, bandwidth_hz = ctx.saved_tensors
        grads = [g.contiguous() for g in grads]
        grad_centre, grad_bandwidth = torch.empty_like(centre_hz), torch.empty_like(bandwidth_hz)
        native.library().noise_spectra_backward(
            native.datas(grads),
            *map(native.ptr, (centre_hz, bandwidth_hz)),
            centre_hz.numel(),
            *ctx.settings,
            *map(native.ptr, (grad_centre, grad_bandwidth)),
            ctx.half,
        )
        return grad_centre, grad_bandwidth, None, None


def _band_settings(plan: Plan) -> tuple:
    """The resolutions' bin widths and bin counts, the kernel's spread and Nyquist, as `noise_spectra` takes them."""
    n_bins = native.int64s([r.n_bins for r in plan.resolutions])
    return native.ptr(plan.bin_hz), n_bins, len(plan.resolutions), HANN_KERNEL_SIGMA_BINS, plan.sample_rate / 2


def resonance_spectra(
    params: AtomParams,
    plan: Plan,
    *,
    n_partials: int,
    dtype: torch.dtype | None = None,
    modes: Tensor | None = None,
) -> list[Tensor]:
    """Share of each resonance part's power per bin, every resolution's bins summing to ~1.

    Each partial k (weight c_k, frequency f_k) adds c_k * kernel(b - f_k / bin_hz)
    to the 2 * SPLAT_REACH_BINS bins b around it, at every resolution, in one
    scatter-add per part (the parts differ only in c_k, from their rolloffs).
    Silent partials (above Nyquist or past `n_partials`) have c_k = 0.

    Args:
        params: Physical parameters, shape (segments, atoms).
        plan: Grid, resolutions and their constants.
        n_partials: Maximum partials per atom.
        dtype: Precision of the result (default: that of the parameters).
        modes: Each atom's partial series (indices into `splat.modes.MODES`), integer tensor
            of shape (segments, atoms); None: every atom is a string.

    Returns:
        Per resolution, shape (segments, 2 * atoms, n_fft / 2 + 1): each segment's
        bodies, then its short parts (so that both take one product with their
        frames, which `branch_powers` lays out in the same order).
    """
    dtype = dtype or params.f0_hz.dtype
    if native.usable(params.f0_hz, plan.bin_hz):
        fields = torch.stack([getattr(params, name) for name in _PARTIAL_FIELDS])  # (fields, segments, atoms)
        return list(_NativeResonanceSpectra.apply(fields, plan, n_partials, dtype, modes))
    f0 = params.f0_hz.unsqueeze(-1)
    b = params.inharmonicity.unsqueeze(-1)
    k = torch.arange(1, n_partials + 1, device=f0.device, dtype=f0.dtype)
    ratios = None if modes is None else partial_ratios(modes, n_partials=n_partials, dtype=f0.dtype)
    n_active = dsp.n_audible_partials(f0, b, nyquist_hz=plan.sample_rate / 2, n_partials=n_partials, ratios=ratios)
    rolloffs = torch.stack([params.rolloff_db, params.short_rolloff_db]).unsqueeze(-1)  # (2, segments, atoms, 1)
    freqs = dsp.partial_frequencies(f0, b, k if ratios is None else ratios)  # (segments, atoms, partials)
    gains = dsp.formant_gains(freqs, params.formant_hz.unsqueeze(-1), params.formant_db.unsqueeze(-1))
    weights = dsp.partial_weights(rolloffs, k, n_active, gains)  # (2, segments, atoms, partials)
    # Layout (taps, res, segments, atoms, partials): broadcasts run over long contiguous rows.
    bin_hz = plan.bin_hz.reshape(-1, 1, 1, 1)
    position = freqs / bin_hz  # (res, segments, atoms, partials), in bins
    n_segments, n_atoms = params.f0_hz.shape

    def by_atom(values: Tensor) -> Tensor:
        """(taps, res, segments, atoms, partials) -> (segments * atoms, taps * res * partials).

        One row per atom for a 2-D scatter, which runs its rows in parallel (a flat
        scatter into all atoms' slots runs on one thread: ~6x slower here). Within
        a row the order of the splats is unchanged, so the sums are bit-for-bit those
        of the flat scatter.
        """
        return values.permute(2, 3, 0, 1, 4).reshape(n_segments * n_atoms, -1)

    with torch.no_grad():
        slot = torch.floor(position) + plan.taps.reshape(-1, 1, 1, 1, 1)
        # Splats past either end of a resolution's bins land in its padding slots.
        slot = torch.minimum(slot, plan.last_bin.reshape(-1, 1, 1, 1)).clamp_min(-SPLAT_REACH_BINS)
        index = by_atom((slot + plan.first_slot.reshape(-1, 1, 1, 1)).long())
    taps = dsp.hann_power_taps(position, plan.taps)
    slots = torch.cat(
        [
            torch.zeros(n_segments * n_atoms, plan.n_slots, device=f0.device, dtype=taps.dtype)
            .scatter_add(1, index, by_atom(taps * w))
            .reshape(n_segments, n_atoms, plan.n_slots)
            for w in weights
        ],
        dim=1,
    )
    return [bins.to(dtype) for bins in plan.split_bins(slots)]


#: The fields `resonance_spectra` depends on, in the order of kernels.c's PARTIAL_* constants.
_PARTIAL_FIELDS = ("f0_hz", "inharmonicity", "rolloff_db", "short_rolloff_db", "formant_hz", "formant_db")


class _NativeResonanceSpectra(torch.autograd.Function):
    """`resonance_spectra` in native loops (`splat.native`): per atom, its audible partials'
    weights, then their splats straight into each resolution's bins; the gradient gathers
    each splat's back, writes out the kernel's slope and the weights' normalisation, and
    touches no silent partial.

    Takes the fields stacked, shape (fields, segments, atoms), and the series as
    `resonance_spectra` does; returns the shares at every resolution as it does.
    """

    @staticmethod
    def forward(
        ctx, fields: Tensor, plan: Plan, n_partials: int, dtype: torch.dtype, modes: Tensor | None
    ) -> tuple[Tensor, ...]:
        fields = fields.contiguous()
        _, n_segments, n_atoms = fields.shape
        out = [fields.new_empty(n_segments, 2 * n_atoms, r.n_bins, dtype=dtype) for r in plan.resolutions]
        # The series' ratios and each atom's row, kept with ctx: the kernels hold pointers to them.
        ctx.keep = ratio_table(n_partials, dtype=torch.float32), None if modes is None else modes.contiguous()
        ctx.settings = (n_segments * n_atoms, n_atoms, *_partial_settings(plan, n_partials, *ctx.keep))
        ctx.half = int(dtype == torch.bfloat16)
        n_bins = max(r.n_bins for r in plan.resolutions)
        scratch = fields.new_empty(native.library().max_threads() * 2 * n_bins * ctx.half)
        ctx.save_for_backward(fields)
        native.library().resonance_spectra(
            native.ptr(fields), *ctx.settings, native.datas(out), ctx.half, native.ptr(scratch), n_bins
        )
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (fields,) = ctx.saved_tensors
        grads = [g.contiguous() for g in grads]
        grad_fields = torch.empty_like(fields)
        native.library().resonance_spectra_backward(
            native.datas(grads), native.ptr(fields), *ctx.settings, native.ptr(grad_fields), ctx.half
        )
        return grad_fields, None, None, None, None


def _partial_settings(plan: Plan, n_partials: int, ratios: Tensor, modes: Tensor | None) -> tuple:
    """What `resonance_spectra`'s kernels need: partials, Nyquist, the series' ratios
    (float32, (series, n_partials)) and each atom's series (int64, or None for strings), bins."""
    assert n_partials <= 512 and SPLAT_REACH_BINS <= 8, "beyond kernels.c's MAX_PARTIALS or tap arrays"
    bins = native.int64s([r.n_bins for r in plan.resolutions])
    return (
        n_partials,
        plan.sample_rate / 2,
        native.ptr(ratios),
        native.int64_ptr(modes),
        native.ptr(plan.bin_hz),
        bins,
        len(plan.resolutions),
        SPLAT_REACH_BINS,
    )


@dataclass(frozen=True)
class FloorSpans:
    """Where each segment's noise floor sounds (see `splat.floor.segment_power`), shapes (segments, 1).

    Attributes:
        start_s, end_s: Segment boundaries in seconds.
        fade_in, fade_out: Whether each boundary is shared with a neighbouring segment.
    """

    start_s: Tensor
    end_s: Tensor
    fade_in: Tensor
    fade_out: Tensor

    @classmethod
    def for_segments(cls, starts: Tensor, n_segment: int, n_file: int, sample_rate: int) -> FloorSpans:
        """Spans of segments starting at samples `starts` (shape (segments,)) in a file of `n_file` samples."""
        ends = torch.clamp(starts + n_segment, max=n_file)
        return cls(
            start_s=(starts.float() / sample_rate).unsqueeze(-1),
            end_s=(ends.float() / sample_rate).unsqueeze(-1),
            fade_in=(starts > 0).unsqueeze(-1),
            fade_out=(ends < n_file).unsqueeze(-1),
        )


def floor_frames(spans: FloorSpans, window_start_s: Tensor, plan: Plan) -> list[Tensor]:
    """Window-weighted power of each segment's floor envelope in every frame of its window.

    Constant during a fit: the floor's levels only scale its spectrum.

    Returns:
        Per resolution, shape (segments, n_window / hop, 1).
    """
    t = plan.cell_s + window_start_s  # (segments, cells)
    env = floor.segment_power(t, spans.start_s, spans.end_s, fade_in=spans.fade_in, fade_out=spans.fade_out)
    return plan.frame_powers(env.unsqueeze(1))


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


class _BFloat16Products(torch.autograd.Function):
    """The products of `expected_power` (noise, then both resonance parts) and their gradients
    from bfloat16 copies of the frames, spectra and gradients, accumulated in float32.

    These six products per resolution are a third of a fit step's time in float32 and
    run ~2.8x faster in bfloat16 on CPUs with bf16 dot-product instructions (AVX512-BF16,
    AMX; used only there, `native.bfloat16_products`). Each factor is rounded to 8 bits
    of mantissa (relative error <= 2^-9) and every sum accumulates in float32, so a
    cell's power is off by a few parts in a thousand at most, in both directions at
    random: on the speed benchmark's clip the distance moves by 1e-6 of itself and the
    gradient keeps a cosine of 0.99998 with float32's (every field's above 0.9999 but
    one whose gradient is ~1e-9, rounding noise in both). Fits are as good (README,
    "Speed"). Everything else in the step stays float32.

    Inputs: frames (segments, frames, 3 atoms), noise spectra (segments, atoms, bins) and
    resonance spectra (segments, 2 atoms, bins), bfloat16 as the kernels write them (or
    float32, then rounded here). Returns the noise's and the
    partials' expected power, each (segments, frames, bins), in bfloat16 as the products
    leave them: the loss's kernel reads them so (and writes their gradients so), and
    whatever else combines them (placing windows, adding a floor) widens them first.
    """

    @staticmethod
    def forward(ctx, frames: Tensor, noise: Tensor, tonal: Tensor) -> tuple[Tensor, Tensor]:
        frames, noise, tonal = frames.bfloat16(), noise.bfloat16(), tonal.bfloat16()
        n_atoms = noise.shape[1]
        ctx.save_for_backward(frames, noise, tonal)
        return torch.bmm(frames[..., :n_atoms], noise), torch.bmm(frames[..., n_atoms:], tonal)

    @staticmethod
    def backward(ctx, grad_noisy: Tensor, grad_tonal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        frames, noise, tonal = ctx.saved_tensors
        n_atoms = noise.shape[1]
        grad_frames = torch.cat([torch.bmm(grad_noisy, noise.mT), torch.bmm(grad_tonal, tonal.mT)], dim=-1)
        grad_noise = torch.bmm(frames[..., :n_atoms].mT, grad_noisy)
        grad_tonal_spectra = torch.bmm(frames[..., n_atoms:].mT, grad_tonal)
        # bfloat16, as the inputs come from the kernels (autograd widens them for float32 inputs).
        return grad_frames, grad_noise, grad_tonal_spectra


@dataclass(frozen=True)
class SplitPower:
    """Expected power spectrogram of one resolution, split by how the rendered power spreads about it.

    Attributes:
        tonal: Power of the resonances' partials, shape (..., frames, bins). They
            are rendered with fixed amplitudes and phases, so the render's power
            in a cell is this (up to the interference of overlapping partials).
        noise: Power of the noise bursts and noise floors, same shape. A
            rendered noise's power in a cell is exponentially distributed about
            this mean (its magnitude is Rayleigh), whatever the seed.
    """

    tonal: Tensor
    noise: Tensor

    @property
    def total(self) -> Tensor:
        """Expected power of the render."""
        return self.tonal + self.noise

    def map(self, fn: Callable[[Tensor], Tensor]) -> SplitPower:
        """Both parts passed through the same linear map (placement, a slice)."""
        return SplitPower(fn(self.tonal), fn(self.noise))

    def __add__(self, other: SplitPower) -> SplitPower:
        """The sum, in float32 (bfloat16 products are widened rather than rounded again)."""
        return SplitPower(self.tonal.float() + other.tonal, self.noise.float() + other.noise)


def expected_power(
    params: AtomParams,
    window_start_s: Tensor,
    plan: Plan,
    *,
    envelope: str,
    n_partials: int,
    floor_db: Tensor | None = None,
    floor_at: list[Tensor] | None = None,
    modes: Tensor | None = None,
    bfloat16: bool = True,
    moving: Tensor | None = None,
) -> list[SplitPower]:
    """Expected power spectrogram of each segment's atoms (and noise floor) over its window.

    The partials of the `moving` atoms are splatted frame by frame (`moving_resonance_power`),
    the others' once per atom for all frames (`resonance_spectra`, in the products).

    Args:
        params: Physical parameters, shape (segments, atoms).
        window_start_s: Start of each segment's window, shape (segments, 1).
        plan: Grid, resolutions and their constants.
        envelope: "gamma" or "gaussian".
        n_partials: Maximum partials per atom.
        floor_db: Noise-floor band levels, shape (segments, bands), or None for no floor.
        floor_at: The floor envelope's frame powers from `floor_frames` (needed with `floor_db`).
        modes: Each atom's partial series (indices into `splat.modes.MODES`), integer tensor of
            shape (segments, atoms); None: every atom is a string.
        bfloat16: Let the products run in bfloat16 where they can (`_BFloat16Products`); False
            keeps them float32 (for differences of spectrograms, where a few parts in a thousand
            of a loud cell would swamp a quiet remainder).
        moving: Which atoms to model with moving partials, bool of shape (segments, atoms); None: those
            whose pitch moves (a glide or a vibrato depth other than 0). A fit names the atoms whose motion
            it fits, so that their glide and depth get gradients from 0 on.

    Returns:
        Per resolution, expected |STFT|^2 with frames centred every hop from each
        window start, split into partials and noise, each of shape
        (segments, n_window / hop, n_fft / 2 + 1).
    """
    sr = plan.sample_rate
    if moving is None:
        moving = (params.f0_glide_cents_per_s != 0) | (params.vibrato_cents != 0)
    any_moving = bool(moving.any())
    # With bfloat16 products the kernels write their frames and spectra in bfloat16 (summed in
    # float32, rounded once), and take their gradients so: nothing is cast around the products.
    half = bfloat16 and native.usable(params.time_s) and native.bfloat16_products()
    dtype = torch.bfloat16 if half else None
    powers = branch_powers(params, plan.cell_s, window_start_s, grid=plan.grid, sample_rate=sr, envelope=envelope)
    noise = noise_spectra(params, plan, dtype=dtype)
    tonal_spectra = resonance_spectra(params, plan, n_partials=n_partials, dtype=dtype, modes=modes)
    n_atoms = params.time_s.shape[1]
    if any_moving:
        movers, mover_modes, columns, keep = _moving_atoms(params, moving, modes)
        motion = pitch_scales(movers, window_start_s, plan)
    out = []
    for i, frames in enumerate(plan.frame_powers(powers, dtype=dtype)):  # each (segments, frames, 3 atoms)
        if any_moving:
            # The moving atoms' parts in the kernel; in the products, only the others' and every noise.
            padded = torch.nn.functional.pad(frames, (0, 1))  # a zero column last, for the repeats
            picked = torch.gather(padded, 2, columns.unsqueeze(1).expand(-1, frames.shape[1], -1)).float()
            frames = frames * keep.to(frames.dtype)
        # One product for the noise, one for both resonance parts (bodies and short parts
        # side by side in frames and spectra). One split, not two slices: its backward is one
        # concatenation, not two zero-filled gradients.
        if half:
            noisy, tonal = _BFloat16Products.apply(frames, noise[i], tonal_spectra[i])
        else:
            noise_frames, tonal_frames = frames.split([n_atoms, 2 * n_atoms], dim=-1)
            noisy = torch.bmm(noise_frames, noise[i])
            tonal = torch.bmm(tonal_frames, tonal_spectra[i])
        if any_moving:
            tonal = tonal.float() + moving_resonance_power(
                picked, movers, *motion[i], plan, i, n_partials=n_partials, modes=mover_modes
            )
        if floor_db is not None and floor_at is not None:
            spectrum = floor.band_powers(floor_db) @ plan.floor_shares[i]  # (segments, bins)
            noisy = torch.baddbmm(noisy.float(), floor_at[i], spectrum.unsqueeze(1))
        out.append(SplitPower(tonal, noisy))
    return out


def _moving_atoms(
    params: AtomParams, moving: Tensor, modes: Tensor | None
) -> tuple[AtomParams, Tensor | None, Tensor, Tensor]:
    """The moving atoms of each segment, side by side, and where their parts sit among the frames' columns.

    Returns:
        Their parameters, shape (segments, m) for the most moving atoms m of any segment (a segment with
        fewer repeats one of its atoms, silent); their series, shape (segments, m) (None if `modes` is);
        the columns of their bodies, then short parts, among
        `Plan.frame_powers`' (segments, frames, 3 atoms) and one zero column after them (3 atoms: where
        the repeats read), shape (segments, 2 m); and the columns the products keep (every noise, the
        other atoms' parts), shape (segments, 1, 3 atoms), 0 or 1.
    """
    n_atoms = moving.shape[1]
    order = torch.argsort((~moving).to(torch.int8), dim=1, stable=True)[:, : max(1, int(moving.sum(1).max()))]
    movers = AtomParams(**{name: torch.gather(value, 1, order) for name, value in vars(params).items()})
    mover_modes = None if modes is None else torch.gather(modes.expand_as(moving), 1, order)
    present = torch.gather(moving, 1, order)
    body = torch.where(present, order + n_atoms, 3 * n_atoms)
    columns = torch.cat([body, torch.where(present, order + 2 * n_atoms, 3 * n_atoms)], dim=1)
    keep = torch.cat([torch.ones_like(moving), ~moving, ~moving], dim=1).unsqueeze(1)
    return movers, mover_modes, columns, keep
