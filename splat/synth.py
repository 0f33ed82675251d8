"""Time-domain rendering of atoms: the reference that defines what an atom sounds like.

`render_atoms` is simple and differentiable (the reference engine fits with
it); `render_atom_set` renders a whole `AtomSet` (the JSON alone) to audio,
one atom at a time, each only over its own support, plus each segment's noise
floor (`splat.floor`), and then the room's reverberation of all that (`splat.room`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from splat import dsp, floor, room
from splat.atoms import AtomSet
from splat.modes import partial_ratios
from splat.params import MOTION_FIELDS, AtomParams, RoomParams

#: Length of each atom's noise realisation, in seconds (covers the longest burst).
NOISE_S = 4.0
#: Rendering stops where an atom has fallen 80 dB below its peak.
TAIL_DB = 80.0


def noise_length(sample_rate: int) -> int:
    """Samples of noise per atom: the power of two at or above NOISE_S seconds."""
    return 1 << math.ceil(math.log2(NOISE_S * sample_rate))


def white_noise(seeds: Tensor, *, n_samples: int, device: torch.device | str = "cpu") -> Tensor:
    """One seeded standard-normal sequence per atom (CPU generator, so identical on any device).

    Args:
        seeds: Noise seeds, integer tensor of shape (atoms,).

    Returns:
        Noise, shape (atoms, n_samples), float32.
    """
    rows = []
    for seed in seeds.tolist():
        gen = torch.Generator().manual_seed(int(seed))
        rows.append(torch.randn(n_samples, generator=gen, device=gen.device, dtype=torch.float32))
    if not rows:
        return torch.zeros(0, n_samples, device=device, dtype=torch.float32)
    return torch.stack(rows).to(device)


def band_noise(white: Tensor, center_hz: Tensor, bandwidth_hz: Tensor, *, sample_rate: int) -> Tensor:
    """Shape white noise to the atom's gaussian band, with unit expected variance.

    Args:
        white: White noise, shape (batch, atoms, n).
        center_hz, bandwidth_hz: Band centre and -3 dB width, shape (batch, atoms, 1).

    Returns:
        Band noise, shape (batch, atoms, n).
    """
    n = white.shape[-1]
    freqs = torch.fft.rfftfreq(n, d=1.0 / sample_rate, dtype=white.dtype, device=white.device)
    power = dsp.band_shape(freqs, center_hz, bandwidth_hz)  # (batch, atoms, n//2+1)
    mean_power = dsp.full_circle_mean(power, n)
    # Far outside the band the power underflows to 0, where sqrt has an infinite slope.
    amplitude = torch.sqrt(power.clamp_min(1e-30) / mean_power)
    return torch.fft.irfft(torch.fft.rfft(white) * amplitude, n=n)


def render_atoms(
    params: AtomParams,
    white: Tensor,
    *,
    n_samples: int,
    sample_rate: int,
    start: int,
    envelope: str,
    n_partials: int,
    modes: Tensor | None = None,
    pitch_motion: bool = False,
) -> Tensor:
    """Render every atom separately over samples [start, start + n_samples) of the file.

    An atom must start at or after sample `start` for its resonance to be
    complete (the resonance integrates the burst from the window start). Noise
    sample j of an atom plays at file sample floor(time_s * sample_rate) + j,
    so the noise does not depend on where a render window begins.

    Atoms whose pitch moves (`dsp.pitch_bend_cents`) take their partials' phases from the
    warped time (`dsp.warped_time_s`), sample by sample; when no atom's pitch moves, the
    partials run at fixed frequencies (`dsp.partial_sums`, faster), unless `pitch_motion`
    asks for the moving path anyway (so that a fit gets gradients for the motion's fields).

    Args:
        params: Physical parameters, tensors of shape (batch, atoms).
        white: Each atom's white noise, shape (batch, atoms, n_noise), from `white_noise`.
        n_samples: Samples to render.
        sample_rate: Sample rate in Hz.
        start: File sample index of the first rendered sample.
        envelope: "gamma" or "gaussian".
        n_partials: Maximum number of partials per atom.
        modes: Each atom's partial series, indices into `splat.modes.MODES`, integer
            tensor of shape (batch, atoms); None: every atom is a string.
        pitch_motion: Render every atom's partials as moving ones, even at a fixed pitch.

    Returns:
        Audio per atom, shape (batch, atoms, n_samples).
    """
    p = {name: value.unsqueeze(-1) for name, value in vars(params).items()}  # (batch, atoms, 1)
    n = torch.arange(n_samples, device=white.device)
    # Seconds since each onset; the offset is formed first to keep precision late in a file.
    u = n.to(white.dtype) / sample_rate + (start / sample_rate - p["time_s"])  # (batch, atoms, n_samples)
    env = dsp.burst_envelope(u, p["attack_s"], p["spread_s"], shape=envelope)

    # Noise branch: the noise is tied to the onset (sample 0 of the noise at u = 0).
    noise = band_noise(white, p["noise_center_hz"], p["noise_bandwidth_hz"], sample_rate=sample_rate)
    n_noise = noise.shape[-1]
    # The onset sample is computed in float32 whatever the render precision, so the
    # float32 fit and the float64 render of its JSON agree on it to the sample.
    index = start + n - torch.floor(p["time_s"].detach().float() * sample_rate).long()
    inside = (index >= 0) & (index < n_noise)
    burst = env * torch.where(inside, torch.gather(noise, -1, index.clamp(0, n_noise - 1)), torch.zeros_like(u))

    # Resonance branch: two expected-power envelopes (body and short part), each times a bank
    # of fixed-amplitude partials. The short partials are in quadrature with the body's (a
    # quarter period later), so each partial's power is exactly the sum of the two parts'.
    e2 = env * env
    decays = torch.stack([p["decay_s"], p["short_decay_s"]], dim=-2)  # (batch, atoms, 2, 1)
    body, short = dsp.resonance_power(e2.unsqueeze(-2), decays, step_samples=1, sample_rate=sample_rate).unbind(-2)
    ratios = None if modes is None else partial_ratios(modes, n_partials=n_partials)  # (batch, atoms, n_partials)
    n_active = dsp.n_audible_partials(
        p["f0_hz"], p["inharmonicity"], nyquist_hz=sample_rate / 2, n_partials=n_partials, ratios=ratios
    )
    # Phases in float64, from each atom's onset offset (not from u): in float32,
    # 2 pi f u loses ~1e-3 rad after a second and the rounding noise would sit
    # only ~50 dB under the partials.
    f0, b = p["f0_hz"].double(), p["inharmonicity"].double()
    # Partials past the audible count have zero weight: stop at the largest count in the batch.
    n_max = int(n_active.max()) if n_active.numel() else 0
    ks = torch.arange(1, n_max + 1, device=u.device, dtype=torch.float64)
    freqs = dsp.partial_frequencies(f0, b, ks if ratios is None else ratios[..., :n_max])  # (batch, atoms, n_max)
    gains = dsp.formant_gains(freqs, p["formant_hz"].double(), p["formant_db"].double())
    body_amps = _amplitudes(dsp.partial_weights(p["rolloff_db"].double(), ks, n_active.double(), gains))
    short_amps = _amplitudes(dsp.partial_weights(p["short_rolloff_db"].double(), ks, n_active.double(), gains))
    first_s = start / sample_rate - p["time_s"].double()
    phases = dsp.partial_phases(ks, n_partials=n_partials).expand_as(freqs)
    if pitch_motion or dsp.pitch_moves(params.f0_glide_cents_per_s, params.vibrato_cents):
        warped, scale = _warped_time(p, first_s, n_samples=n_samples, sample_rate=sample_rate)
        body_carrier, short_sines = dsp.moving_partial_sums(
            freqs, phases, body_amps, short_amps, warped, scale, nyquist_hz=sample_rate / 2
        )
    else:
        body_carrier, short_sines = dsp.partial_sums(
            freqs, phases, body_amps, short_amps, first_s, n_samples=n_samples, sample_rate=sample_rate
        )
    short_carrier = -short_sines
    share = p["short_share"]
    # Floor at -120 dB: the square root has an infinite slope at 0 (NaN gradients).
    tone = (
        torch.sqrt(((1.0 - share) * body).clamp_min(1e-12)) * body_carrier.to(u.dtype)
        + torch.sqrt((share * short).clamp_min(1e-12)) * short_carrier.to(u.dtype)
    ) * (u >= 0)

    gain = torch.pow(10.0, p["gain_db"] / 20.0)
    release = dsp.release_gain(u, p["duration_s"], p["release_s"], power=False)
    return gain * release * (torch.sqrt(1.0 - p["mix"]) * burst + torch.sqrt(p["mix"]) * tone)


def _warped_time(p: dict[str, Tensor], first_s: Tensor, *, n_samples: int, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Warped time and frequency factor of every atom at each rendered sample, float64.

    The warped time integrates the pitch from the onset: for an atom that started before
    the window, the samples from its onset are prepended to the integral and dropped after.

    Args:
        p: The atoms' fields, shape (batch, atoms, 1).
        first_s: Time of sample 0 since each onset, shape (batch, atoms, 1), float64.

    Returns:
        `dsp.warped_time_s` and 2^(bend / 1200), each of shape (batch, atoms, n_samples).
    """
    n_before = max(0, math.ceil(float(first_s.detach().max()) * sample_rate)) if first_s.numel() else 0
    n = torch.arange(-n_before, n_samples, device=first_s.device, dtype=torch.float64)
    u = n / sample_rate + first_s
    motion = (p[name].double() for name in (*MOTION_FIELDS, "duration_s"))
    bend = dsp.pitch_bend_cents(u, *motion)
    warped = dsp.warped_time_s(u, bend, sample_rate=sample_rate)
    return warped[..., n_before:], torch.exp2(bend[..., n_before:] / 1200.0)


def _amplitudes(weights: Tensor) -> Tensor:
    """Cosine amplitudes sqrt(2 c_k) of partials with energy shares c_k, with slope 0 (not infinite) where c_k = 0.

    Silent partials (past the audible count) share the normalising sum with the
    audible ones, so an infinite slope there would turn their gradients into NaN.
    """
    audible = weights > 0
    return torch.where(audible, torch.sqrt(2.0 * torch.where(audible, weights, 1.0)), 0.0)


def render_floor_segment(
    level_db: Tensor, start_s: float, end_s: float, seed: int, *, sample_rate: int, n_file: int
) -> tuple[int, Tensor]:
    """One segment's noise floor over its support, as the JSON defines it (see `splat.floor`).

    The noise is `seed`'s standard-normal sequence over the support, so the
    reference engine and `render_atom_set` play the same realisation.

    Args:
        level_db: Band levels, shape (bands,); the audio has its dtype and device.
        start_s, end_s: The segment's boundaries (end_s > start_s).
        n_file: Samples in the file.

    Returns:
        The file sample the audio starts at, and the audio, differentiable in `level_db`.
    """
    first, last = floor.support(start_s, end_s, sample_rate=sample_rate, n_samples=n_file)
    seeds = torch.tensor([seed], device="cpu")  # seeds stay on the host (`white_noise`)
    white = white_noise(seeds, n_samples=last - first, device=level_db.device)[0].to(level_db.dtype)
    audio = floor.render(
        level_db, white, start_s=start_s, end_s=end_s, first=first, sample_rate=sample_rate, n_file=n_file
    )
    return first, audio


def support_s(params: AtomParams) -> Tensor:
    """Seconds after its onset until an atom is TAIL_DB below its peak, shape (batch, atoms).

    A bound, not an exact value: the burst's tail plus the longer of the
    resonance's two decays to -TAIL_DB, or the release's fall to -TAIL_DB if sooner.
    With T = TAIL_DB in nepers, the gamma burst's log-level
    k (ln x + 1 - x) <= k (1 - x / 2) is below -T from u = 2 a + 2 T theta on
    (theta <= spread), and the gaussian's from u = a + sqrt(2 T) spread.
    """
    tail_nepers = TAIL_DB / 20.0 * math.log(10.0)
    burst = 2.0 * params.attack_s + 2.0 * tail_nepers * params.spread_s
    ringing = burst + torch.maximum(params.decay_s, params.short_decay_s) * (TAIL_DB / 60.0)
    return torch.minimum(ringing, params.duration_s + params.release_s * (TAIL_DB / 60.0))


@torch.no_grad()
def render_atom_set(atom_set: AtomSet, *, device: torch.device | str = "cpu") -> np.ndarray:
    """Render an `AtomSet` (the JSON alone) to mono audio at the original level.

    Returns:
        Audio, shape (n_samples,), float32.

    Raises:
        FormatError: If a field is out of its range (`AtomSet.validate`).
    """
    atom_set.validate()
    out = dry_signal(atom_set, device=device)
    out += room_signal(atom_set, out)
    return (out / atom_set.gain).float().cpu().numpy()


def dry_signal(atom_set: AtomSet, *, device: torch.device | str = "cpu") -> Tensor:
    """Every atom and the noise floor, without the room, at the normalised level.

    Returns:
        Audio, shape (n_samples,), float64.
    """
    out = torch.zeros(atom_set.n_samples, dtype=torch.float64, device=device)
    for _, first, audio in atom_signals(atom_set, range(len(atom_set.atoms)), device=device):
        out[first : first + audio.numel()] += audio
    first, audio = floor_signal(atom_set, device=device)
    out[first : first + audio.numel()] += audio
    return out


def atom_signals(
    atom_set: AtomSet, indices: Iterable[int], *, device: torch.device | str = "cpu"
) -> Iterator[tuple[int, int, Tensor]]:
    """Render atoms one at a time, each only over its own support, at the normalised level.

    Args:
        atom_set: A validated AtomSet.
        indices: Positions in `atom_set.atoms` to render, in the order to yield them.

    Yields:
        (index, first sample, audio of shape (support,), float64), for each index whose
        support is not empty; divide by `atom_set.gain` for the original level.
    """
    sr = atom_set.sample_rate
    n = atom_set.n_samples
    params, seeds = atom_set.to_params(device=device)
    modes = atom_set.to_modes(device=device)
    n_noise = noise_length(sr)
    # One atom at a time, each over its own support: grouping atoms would render every
    # one of them over the longest tail in the group.
    for i in indices:
        group = torch.tensor([i], device=device)
        sub = params.select(group)
        first = int(math.floor(float(sub.time_s.min()) * sr))
        last = min(n, int(math.ceil(float((sub.time_s + support_s(sub)).max()) * sr)) + 1)
        if last <= first:
            continue
        white = white_noise(seeds[group.cpu()], n_samples=n_noise, device=device).unsqueeze(0).double()
        audio = render_atoms(
            sub,
            white,
            n_samples=last - first,
            sample_rate=sr,
            start=first,
            envelope=atom_set.envelope,
            n_partials=atom_set.n_partials,
            modes=modes[:, group],
        )
        yield i, first, audio.sum(dim=(0, 1))


def floor_signal(atom_set: AtomSet, *, device: torch.device | str = "cpu") -> tuple[int, Tensor]:
    """Every segment's noise floor (`splat.floor`) at the normalised level.

    Returns:
        (first sample, audio of shape (n,), float64); n is 0 without a floor.
    """
    sr = atom_set.sample_rate
    n = atom_set.n_samples
    out = torch.zeros(n, dtype=torch.float64, device=device)
    for segment in atom_set.floor:
        level_db = torch.tensor(segment.level_db, dtype=torch.float64, device=device)
        first, audio = render_floor_segment(
            level_db, segment.start_s, segment.end_s, segment.noise_seed, sample_rate=sr, n_file=n
        )
        out[first : first + audio.numel()] += audio
    return (0, out) if atom_set.floor else (0, out[:0])


def room_signal(atom_set: AtomSet, dry: Tensor) -> Tensor:
    """The room's reverberation of `dry` (`splat.room`); zeros if the file has no room.

    Args:
        atom_set: A validated AtomSet.
        dry: What the file renders without its room, shape (n_samples,), at the normalised level.

    Returns:
        The wet signal, shape (n_samples,), in dry's dtype and device.
    """
    if atom_set.room is None:
        return torch.zeros_like(dry)
    sr = atom_set.sample_rate
    noises = room.band_noises(atom_set.room.noise_seed, sample_rate=sr, device=dry.device).to(dry.dtype)
    like = {"device": dry.device, "dtype": dry.dtype}
    params = RoomParams(torch.tensor(atom_set.room.rt60_s, **like), torch.tensor(atom_set.room.level_db, **like))
    ir = room.impulse_response(params, noises, sample_rate=sr, n_samples=dry.numel())
    return room.reverberate(dry, ir)
