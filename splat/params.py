"""Raw (unconstrained) <-> physical atom parameters: the ONLY place they are mapped.

The optimiser works on one raw tensor of shape (batch, atoms, n_fields), one
column per field of `FIELDS`. Every field is a sigmoid of its raw value mapped
onto a declared range, linearly or on a log scale, so any raw value is a valid
atom and the map has an exact inverse (`to_raw`). Onset times are mapped onto
each batch item's own window (a segment of the file), given as `t0_s` and
`span_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from splat.errors import ParameterError

#: Field order of the raw tensor's last axis (and of `AtomParams`).
FIELDS: tuple[str, ...] = (
    "time_s",
    "gain_db",
    "attack_s",
    "spread_s",
    "noise_center_hz",
    "noise_bandwidth_hz",
    "f0_hz",
    "inharmonicity",
    "rolloff_db",
    "decay_s",
    "mix",
    "short_share",
    "short_decay_s",
    "short_rolloff_db",
    "duration_s",
    "release_s",
    "formant_hz",
    "formant_db",
    "f0_glide_cents_per_s",
    "vibrato_hz",
    "vibrato_cents",
)
N_FIELDS = len(FIELDS)
#: The fields of an atom's pitch motion (glide and vibrato; all at their defaults: a fixed pitch).
MOTION_FIELDS = ("f0_glide_cents_per_s", "vibrato_hz", "vibrato_cents")

# Keeps sigmoid inputs finite when a physical value sits exactly on a bound.
_EDGE = 1e-6


@dataclass(frozen=True)
class Range:
    """A closed interval and the curve the raw value is mapped along."""

    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.lo < self.hi or (self.log and self.lo <= 0):
            raise ParameterError(f"invalid range [{self.lo}, {self.hi}] (log={self.log})")


@dataclass(frozen=True)
class Bounds:
    """Physical ranges of every atom field except `time_s` (set per segment).

    Units are in the names of `splat.params.FIELDS`. `for_sample_rate` caps the
    frequency ranges below Nyquist.
    """

    gain_db: Range = Range(-90.0, 24.0)
    attack_s: Range = Range(0.0005, 0.25, log=True)
    spread_s: Range = Range(0.001, 0.3, log=True)
    noise_center_hz: Range = Range(30.0, 11_000.0, log=True)
    noise_bandwidth_hz: Range = Range(20.0, 16_000.0, log=True)
    f0_hz: Range = Range(25.0, 5_000.0, log=True)
    inharmonicity: Range = Range(0.0, 0.02)
    rolloff_db: Range = Range(0.1, 60.0, log=True)
    decay_s: Range = Range(0.03, 12.0, log=True)
    mix: Range = Range(0.0, 1.0)
    short_share: Range = Range(0.0, 1.0)
    short_decay_s: Range = Range(0.01, 12.0, log=True)
    short_rolloff_db: Range = Range(0.1, 60.0, log=True)
    duration_s: Range = Range(0.02, 30.0, log=True)
    release_s: Range = Range(0.02, 3.0, log=True)
    formant_hz: Range = Range(100.0, 9_000.0, log=True)
    formant_db: Range = Range(0.0, 30.0)
    # Pitch motion (`splat.dsp.pitch_bend_cents`). The glide and the vibrato depth are signed, so their
    # neutral 0 sits mid-range, where the sigmoid is steepest: a fit that starts there moves them.
    f0_glide_cents_per_s: Range = Range(-2400.0, 2400.0)
    vibrato_hz: Range = Range(0.5, 12.0, log=True)
    vibrato_cents: Range = Range(-150.0, 150.0)

    @classmethod
    def for_sample_rate(cls, sample_rate: int) -> Bounds:
        """Default bounds with frequency ranges capped at 0.45 * sample_rate."""
        if sample_rate < 8000:
            raise ParameterError(f"sample_rate={sample_rate} Hz is too low; use at least 8000 Hz")
        top = 0.45 * sample_rate
        base = cls()
        return cls(
            noise_center_hz=Range(base.noise_center_hz.lo, min(base.noise_center_hz.hi, top), log=True),
            noise_bandwidth_hz=Range(base.noise_bandwidth_hz.lo, min(base.noise_bandwidth_hz.hi, 2 * top), log=True),
            f0_hz=Range(base.f0_hz.lo, min(base.f0_hz.hi, top), log=True),
            formant_hz=Range(base.formant_hz.lo, min(base.formant_hz.hi, top), log=True),
        )

    def range_of(self, name: str) -> Range:
        """The `Range` of one field (not `time_s`)."""
        value = getattr(self, name)
        assert isinstance(value, Range)
        return value


@dataclass
class AtomParams:
    """Physical atom parameters; every field is a tensor of shape (batch, atoms).

    See the README's JSON table for each field's meaning.
    """

    time_s: Tensor
    gain_db: Tensor
    attack_s: Tensor
    spread_s: Tensor
    noise_center_hz: Tensor
    noise_bandwidth_hz: Tensor
    f0_hz: Tensor
    inharmonicity: Tensor
    rolloff_db: Tensor
    decay_s: Tensor
    mix: Tensor
    short_share: Tensor
    short_decay_s: Tensor
    short_rolloff_db: Tensor
    duration_s: Tensor
    release_s: Tensor
    formant_hz: Tensor
    formant_db: Tensor
    f0_glide_cents_per_s: Tensor
    vibrato_hz: Tensor
    vibrato_cents: Tensor

    def stack(self) -> Tensor:
        """All fields as one tensor of shape (batch, atoms, n_fields), in `FIELDS` order."""
        return torch.stack([getattr(self, name) for name in FIELDS], dim=-1)

    @classmethod
    def unstack(cls, values: Tensor) -> AtomParams:
        """Inverse of `stack`: (batch, atoms, n_fields) -> AtomParams."""
        if values.shape[-1] != N_FIELDS:
            raise ParameterError(f"expected {N_FIELDS} fields in the last axis, got {values.shape[-1]}")
        # One unbind, not a slice per field: its backward is one stack instead of a zero-filled
        # full-size gradient per field.
        return cls(**dict(zip(FIELDS, values.unbind(-1), strict=True)))

    def select(self, index: Tensor | slice) -> AtomParams:
        """Atoms `index` along the atoms axis of every field."""
        return AtomParams(**{f.name: getattr(self, f.name)[:, index] for f in fields(self)})


def _inverse(value: Tensor, rng: Range) -> Tensor:
    if rng.log:
        lo, hi = math.log(rng.lo), math.log(rng.hi)
        unit = (torch.log(value) - lo) / (hi - lo)
    else:
        unit = (value - rng.lo) / (rng.hi - rng.lo)
    return torch.logit(unit.clamp(_EDGE, 1 - _EDGE))


#: Range of the noise floor's band levels: dB of each band's variance per sample (normalised audio).
FLOOR_LEVEL_DB = Range(-100.0, 0.0)


def floor_to_physical(raw: Tensor, ceiling_db: Tensor) -> Tensor:
    """Noise-floor band levels in dB: a sigmoid of `raw` onto [FLOOR_LEVEL_DB.lo, ceiling_db].

    A fit caps each band at a level measured in the audio (the floor must stay
    under what the quietest frames hold); `ceiling_db` broadcasts against `raw`
    and lies in (FLOOR_LEVEL_DB.lo, FLOOR_LEVEL_DB.hi].
    """
    return FLOOR_LEVEL_DB.lo + (ceiling_db - FLOOR_LEVEL_DB.lo) * torch.sigmoid(raw)


def floor_to_raw(level_db: Tensor, ceiling_db: Tensor) -> Tensor:
    """Exact inverse of `floor_to_physical` (values on a bound are pulled inside by 1e-6)."""
    unit = (level_db - FLOOR_LEVEL_DB.lo) / (ceiling_db - FLOOR_LEVEL_DB.lo)
    return torch.logit(unit.clamp(_EDGE, 1 - _EDGE))


@dataclass(frozen=True)
class RoomBounds:
    """Physical ranges of the room (`splat.room`): each band's decay and the wet level."""

    rt60_s: Range = Range(0.1, 8.0, log=True)
    level_db: Range = Range(-60.0, 12.0)


@dataclass
class RoomParams:
    """The room in physical units (see `splat.room`).

    Attributes:
        rt60_s: Time for each band's reverberation to fall by 60 dB, shape (bands,).
        level_db: Energy of the reverberation relative to the direct sound, shape ().
    """

    rt60_s: Tensor
    level_db: Tensor


def room_to_physical(raw: Tensor, bounds: RoomBounds) -> RoomParams:
    """Map the room's raw parameters, shape (bands + 1,): every band's rt60_s (log scale), then level_db.

    Each is lo + (hi - lo) * sigmoid(raw), in log units for rt60_s.
    """
    rt60 = bounds.rt60_s
    lo, hi = math.log(rt60.lo), math.log(rt60.hi)
    rt60_s = torch.exp(lo + (hi - lo) * torch.sigmoid(raw[:-1]))
    level = bounds.level_db
    return RoomParams(rt60_s=rt60_s, level_db=level.lo + (level.hi - level.lo) * torch.sigmoid(raw[-1]))


def room_to_raw(room: RoomParams, bounds: RoomBounds) -> Tensor:
    """Exact inverse of `room_to_physical` (values on a bound are pulled inside by 1e-6), shape (bands + 1,)."""
    rt60 = _inverse(room.rt60_s, bounds.rt60_s)
    return torch.cat([rt60, _inverse(room.level_db, bounds.level_db).reshape(1).to(rt60.dtype)])


def to_physical(raw: Tensor, *, bounds: Bounds, t0_s: Tensor, span_s: Tensor | float) -> AtomParams:
    """Map raw parameters to physical units.

    Every field at once: value = lo + (hi - lo) * sigmoid(raw) (lo, hi in log
    units for a log-scale field, then exponentiated), with time_s's lo the
    batch item's t0_s and its width span_s.

    Args:
        raw: Unconstrained parameters, shape (batch, atoms, n_fields).
        bounds: Physical ranges of every field but `time_s`.
        t0_s: Start of each batch item's onset window in seconds, shape (batch, 1).
        span_s: Length of the onset window in seconds, shape (batch, 1) or one for all;
            onsets lie in [t0_s, t0_s + span_s].

    Returns:
        `AtomParams` with tensors of shape (batch, atoms).
    """
    ranges = [bounds.range_of(name) for name in FIELDS[1:]]
    ends = [(math.log(r.lo), math.log(r.hi)) if r.log else (r.lo, r.hi) for r in ranges]
    like = {"device": raw.device, "dtype": raw.dtype}
    lo = torch.tensor([0.0] + [a for a, _ in ends], **like)
    width = torch.tensor([0.0] + [b - a for a, b in ends], **like)
    is_log = torch.tensor([False] + [r.log for r in ranges], device=raw.device)
    span = torch.as_tensor(span_s, **like).expand_as(t0_s)
    # time_s's lo and width per batch item, as (batch, 1, n_fields) rows that are 0 past the first field.
    lo = lo + torch.nn.functional.pad(t0_s.unsqueeze(-1), (0, N_FIELDS - 1))
    width = width + torch.nn.functional.pad(span.unsqueeze(-1), (0, N_FIELDS - 1))
    values = torch.addcmul(lo, width, torch.sigmoid(raw))
    # exp only where the scale is logarithmic (elsewhere exp(0), unused: no overflow, zero gradient).
    values = torch.where(is_log, torch.exp(values * is_log), values)
    return AtomParams.unstack(values)


def to_raw(phys: AtomParams, *, bounds: Bounds, t0_s: Tensor, span_s: Tensor | float) -> Tensor:
    """Exact inverse of `to_physical` (values on a bound are pulled inside by 1e-6).

    Returns:
        Raw parameters, shape (batch, atoms, n_fields).
    """
    unit_t = ((phys.time_s - t0_s) / span_s).clamp(_EDGE, 1 - _EDGE)
    cols = [torch.logit(unit_t)]
    for name in FIELDS[1:]:
        cols.append(_inverse(getattr(phys, name), bounds.range_of(name)))
    return torch.stack(cols, dim=-1)
