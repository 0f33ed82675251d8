"""The room: one reverberation tail per file, shared by every sound in it.

Atoms ring with their own decays; what the space adds (a hall's tail, a
studio's short wash) is the same for every note, so a file has one room
instead of every atom faking it with a long decay.

The room's impulse response is exponentially decaying gaussian noise in
N_BANDS octave bands (`BAND_HZ`, 125 Hz to 4 kHz) with smooth crossovers:

    h(n) = sqrt(L) sum_b sqrt(1 - q_b) q_b^(n / 2) u_b(n),    n = 0 .. ir_length - 1,
    q_b = exp(-2 ln(1000) / (rt60_b sr))   (power decay per sample: 60 dB in rt60_b),
    L = 10^(level_db / 10),

where the u_b are independent stationary noises (drawn from the room's seed)
with power spectra T_b(f): triangles on a log-frequency axis peaking at the
band centres, flat beyond the outermost ones, that sum to 1 at every frequency
(`splat.floor.band_shapes`), so sum_b u_b is white with unit variance. Band b's
part of the tail falls by 60 dB in rt60_b; between two centres the tail is the
mix of both bands' decays. The response's energy is L at every frequency
whatever the decays: `level_db` is the energy of the reverberation relative to
the direct sound (for a steady input, the wet-to-dry power ratio; minus the
direct-to-reverberant ratio).

The file plays dry + wet: the wet signal is everything else the file renders
(atoms and noise floor) convolved with h (`reverberate`).

In the fast engine, the wet's expected power (the mean over the room's noise)
in frame m and bin f is the dry expected power convolved along the frames with
the response's energy per hop (a discretisation in hops: the closer, the slower
the tail changes over a hop; `tests/test_room.py` holds it to rendered rooms):

    E|W(m, f)|^2 = sum_b T_b(f) sum_{j >= 0} k_b[j] D(m - j, f),
    k_b[0] = L (1 - Q_b^(1/2)),   k_b[j >= 1] = L (1 - Q_b) Q_b^(j - 1/2),   Q_b = q_b^hop,

k_b[j] being h's energy in the hop-wide cell centred on a lag of j hops (half
a cell at lag 0; the k_b sum to L). Every bin lies between two band centres, so
this is two causal recursions per bin (`RoomBands.coefficients`), summed term by
term (so float32's relative precision holds where the wet is quiet), in one
native loop on the CPU (`splat.native`) and with `dsp.decayed_sum` elsewhere.
The wet is a noise (a render's power in a cell is exponentially distributed
about it), so the fast engine adds it to the noise part of its model. What
sounded before a region reaches into it through each recursion's state at the
region's start (`RoomBands.carry`).

Shapes: spectrograms (frames, bins); band values (bands,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from splat import dsp, floor, native
from splat.params import RoomBounds, RoomParams

#: Centres of the room's bands, in Hz: the octave bands of room acoustics (ISO 3382), all below
#: the lowest sample rate's Nyquist.
BAND_HZ = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)
N_BANDS = len(BAND_HZ)
#: The impulse response lasts until the slowest allowed decay has fallen by TAIL_DB.
TAIL_DB = 80.0


def ir_length(sample_rate: int) -> int:
    """Samples of every room's impulse response: the power of two covering the slowest decay's fall by TAIL_DB."""
    seconds = RoomBounds().rt60_s.hi * TAIL_DB / 60.0
    return 1 << math.ceil(math.log2(seconds * sample_rate))


def band_noises(seed: int, *, sample_rate: int, device: torch.device | str = "cpu") -> Tensor:
    """The stationary band noises u_b of a room's seed (CPU generator, so identical on any device).

    Each is white noise filtered circularly over `ir_length` samples (so it is
    exactly stationary) to the power spectrum T_b.

    Returns:
        Shape (N_BANDS, ir_length(sample_rate)), float64.
    """
    n = ir_length(sample_rate)
    gen = torch.Generator().manual_seed(seed)
    host = {"dtype": torch.float64, "device": "cpu"}
    white = torch.randn(N_BANDS, n, generator=gen, **host)
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate, **host)
    shapes = floor.band_shapes(freqs, torch.tensor(BAND_HZ, **host))  # (bands, bins)
    return torch.fft.irfft(torch.fft.rfft(white) * torch.sqrt(shapes), n=n).to(device)


def impulse_response(room: RoomParams, noises: Tensor, *, sample_rate: int, n_samples: int) -> Tensor:
    """The room's impulse response h over its first `n_samples` samples (at most `ir_length`).

    Args:
        room: Decays, shape (N_BANDS,), and level, shape ().
        noises: The band noises of `band_noises`, shape (N_BANDS, ir_length); h has their dtype.
        sample_rate: In Hz.
        n_samples: Samples wanted.

    Returns:
        h, shape (min(n_samples, ir_length),), differentiable in `room`.
    """
    n = min(n_samples, noises.shape[-1])
    dtype = noises.dtype
    log_q = (-2.0 * dsp.LN_1000 / (room.rt60_s.to(dtype) * sample_rate)).unsqueeze(-1)  # (bands, 1)
    t = torch.arange(n, device=noises.device, dtype=dtype)
    envelope = torch.sqrt(-torch.expm1(log_q)) * torch.exp((0.5 * log_q * t).clamp_min(dsp.EXP_FLOOR))
    amplitude = torch.pow(10.0, room.level_db.to(dtype) / 20.0)
    return amplitude * (envelope * noises[:, :n]).sum(0)


def reverberate(dry: Tensor, ir: Tensor) -> Tensor:
    """The wet signal: `dry` convolved with `ir` (one FFT convolution), over the samples of `dry`.

    Args:
        dry: Audio, shape (samples,).
        ir: Impulse response, shape (taps,).

    Returns:
        Shape (samples,): sample n is sum_k ir[k] dry[n - k].
    """
    n = dry.numel()
    if n == 0 or ir.numel() == 0:
        return torch.zeros_like(dry)
    size = 1 << math.ceil(math.log2(n + min(ir.numel(), n) - 1))
    spectrum = torch.fft.rfft(dry, n=size) * torch.fft.rfft(ir[:n], n=size)
    return torch.fft.irfft(spectrum, n=size)[:n]


@dataclass(frozen=True)
class RoomBands:
    """The two bands around every bin of one STFT resolution, and how the wet's power is formed there.

    Attributes:
        index: Band just below each bin's frequency and the one above it, shape (2, bins)
            (the lowest two below the first centre, the highest two above the last).
        share: T_b of those two bands at each bin, shape (2, bins); they sum to 1.
        hop: The resolution's hop, in samples.
        sample_rate: In Hz.
    """

    index: Tensor
    share: Tensor
    hop: int
    sample_rate: int

    @classmethod
    def for_bins(cls, bins_hz: Tensor, *, hop: int, sample_rate: int) -> RoomBands:
        """The bands around bins at `bins_hz` (shape (bins,)); `share` has their dtype and device."""
        centres = torch.tensor(BAND_HZ, dtype=bins_hz.dtype, device=bins_hz.device)
        lower = (torch.searchsorted(centres, bins_hz, right=True) - 1).clamp(0, N_BANDS - 2)
        index = torch.stack([lower, lower + 1])
        share = torch.gather(floor.band_shapes(bins_hz, centres), 0, index)
        return cls(index=index, share=share, hop=hop, sample_rate=sample_rate)

    def coefficients(self, room: RoomParams) -> tuple[Tensor, Tensor, Tensor]:
        """The recursions of every bin, each of its two bands s weighted by its share T_s:

            wet[m] = a D[m] + v_0[m] + v_1[m],   v_s[m + 1] = Q_s v_s[m] + c_s D[m],

        with a = sum_s T_s k_s[0] and c_s = T_s k_s[1] (so k_s[j >= 1] = c_s Q_s^(j - 1) / T_s).

        Returns:
            a, shape (bins,); c and log Q_s, shapes (2, bins).
        """
        log_q_band = -2.0 * dsp.LN_1000 * self.hop / (room.rt60_s * self.sample_rate)  # (bands,)
        log_q = log_q_band[self.index]
        level = torch.pow(10.0, room.level_db / 10.0)
        root_q = torch.exp(0.5 * log_q)
        a = (self.share * level * (1.0 - root_q)).sum(0)
        c = self.share * level * -torch.expm1(log_q) * root_q
        return a, c, log_q

    def wet(self, dry: Tensor, room: RoomParams, *, state: Tensor | None = None) -> Tensor:
        """Expected power of the wet signal in every frame of a region.

        Args:
            dry: Expected power of the dry signal in the region's frames, shape (frames, bins).
            room: The room.
            state: What sounded before the region: each bin's v_s at its first frame
                (`carry`), shape (2, bins), or None for silence.

        Returns:
            Shape (frames, bins), float32 for a bfloat16 dry, else in dry's dtype.
        """
        dry = dry if dry.dtype in (torch.float32, torch.float64) else dry.float()
        a, c, log_q = self.coefficients(room)
        if native.usable(dry, a):
            return _NativeRoomWet.apply(dry.contiguous(), a, c, torch.exp(log_q), state)
        x = dry.T  # (bins, frames): frames last, as decayed_sum runs along them
        # r[m] = sum_{m' <= m} Q^(m - m') c D[m'], and v[m] = r[m - 1] (plus the state's decay).
        r = dsp.decayed_sum(c.unsqueeze(-1) * x, log_q.unsqueeze(-1)).sum(0)
        out = a.unsqueeze(-1) * x + torch.nn.functional.pad(r[..., :-1], (1, 0))
        if state is not None:
            frames = torch.arange(dry.shape[0], device=dry.device, dtype=dry.dtype)
            out = out + (state.unsqueeze(-1) * torch.exp((log_q.unsqueeze(-1) * frames).clamp_min(dsp.EXP_FLOOR))).sum(
                0
            )
        return out.T

    def carry(self, dry: Tensor, room: RoomParams, *, n_frames: int, state: Tensor | None = None) -> Tensor:
        """The recursions' v_s `n_frames` frames into a region: where the next region starts.

        Everything before that frame (the region's dry power and the state it began
        with) rings into the next region as `wet(..., state=carry(...))`.

        Args:
            dry: Expected power of the dry signal in the region's frames, shape (frames >= n_frames, bins).
            room: The room.
            n_frames: Frames from the region's start to the next region's (>= 1).
            state: The state at the region's start, shape (2, bins), or None.

        Returns:
            Shape (2, bins).
        """
        dry = dry if dry.dtype in (torch.float32, torch.float64) else dry.float()
        _, c, log_q = self.coefficients(room)
        out = dsp.decayed_sum(c.unsqueeze(-1) * dry[:n_frames].T, log_q.unsqueeze(-1))[..., -1]
        if state is not None:
            out = out + state * torch.exp((n_frames * log_q).clamp_min(dsp.EXP_FLOOR))
        return out


class _NativeRoomWet(torch.autograd.Function):
    """`RoomBands.wet` in one native pass (`splat.native`), along the bins frame after frame (no
    transposes), with its gradient written out; that of the room's coefficients only when they need one.

    Inputs: dry (frames, bins), a (bins,), c, Q and the state (2, bins) (the state may be None).
    """

    @staticmethod
    def forward(ctx, dry: Tensor, a: Tensor, c: Tensor, q: Tensor, state: Tensor | None) -> Tensor:
        a, c, q = a.contiguous(), c.contiguous(), q.contiguous()
        state = None if state is None else state.float().contiguous()
        frames, bins = dry.shape
        wet = torch.empty_like(dry)
        # The recursions' values are kept only for the gradient of a room being learned.
        ctx.params = any(ctx.needs_input_grad[1:4])
        v = dry.new_empty(2, frames, bins) if ctx.params else None
        native.library().room_wet(*map(native.ptr, (dry, a, c, q, state)), frames, bins, native.ptr(wet), native.ptr(v))
        ctx.save_for_backward(dry, a, c, q, v)
        return wet

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        dry, a, c, q, v = ctx.saved_tensors
        frames, bins = dry.shape
        grad_x = torch.empty_like(dry)
        grad_a, grad_c, grad_q = (torch.empty_like(t) if ctx.params else None for t in (a, c, q))
        native.library().room_wet_backward(
            *map(native.ptr, (grad.contiguous(), dry, a, c, q, v)),
            frames,
            bins,
            *map(native.ptr, (grad_x, grad_a, grad_c, grad_q)),
        )
        return grad_x, grad_a, grad_c, grad_q, None
