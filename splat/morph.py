"""Morph between two recordings' atoms: match them by onset and pitch, interpolate the pairs.

Atoms of A and B are paired by an optimal assignment (`scipy.optimize.linear_sum_assignment`)
on a cost that adds the squared onset distance in units of `ONSET_SCALE_S` and the
squared pitch distance in units of `PITCH_SCALE_SEMITONES`; pairs costing more than
`MAX_COST` are left unmatched. A matched pair is interpolated in a perceptual space:
log-scale fields (frequencies, time constants; see `splat.params.Bounds`) along
their logarithm, levels in dB relative to the original level, the rest linearly;
the categorical ones (noise seed, partial series `modes`) are the nearer atom's.
Unmatched atoms fade by gain: A's by (1 - amount), B's by amount.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np

from splat.atoms import Atom, AtomSet
from splat.errors import ParameterError
from splat.params import Bounds

#: Onset distance that costs as much as `PITCH_SCALE_SEMITONES` of pitch distance, in seconds.
ONSET_SCALE_S = 0.1
#: Pitch distance that costs 1, in semitones.
PITCH_SCALE_SEMITONES = 2.0
#: Pairs costing more are not matched (about 0.3 s apart, or 6 semitones, or a mix of both).
MAX_COST = 9.0
#: Atom fields that are not numbers on a scale: a morphed pair takes the nearer atom's.
_CATEGORICAL = ("noise_seed", "modes")


def match(a: AtomSet, b: AtomSet) -> list[tuple[int, int]]:
    """Pairs (index in A, index in B) of the optimal onset-and-pitch assignment, costs above `MAX_COST` dropped."""
    from scipy.optimize import linear_sum_assignment

    if not a.atoms or not b.atoms:
        return []
    time_a = np.array([x.time_s for x in a.atoms])[:, None]
    time_b = np.array([x.time_s for x in b.atoms])[None, :]
    pitch_a = 12 * np.log2([x.f0_hz for x in a.atoms])[:, None]
    pitch_b = 12 * np.log2([x.f0_hz for x in b.atoms])[None, :]
    cost = ((time_a - time_b) / ONSET_SCALE_S) ** 2 + ((pitch_a - pitch_b) / PITCH_SCALE_SEMITONES) ** 2
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if cost[i, j] <= MAX_COST]


def morph(a: AtomSet, b: AtomSet, amount: float) -> AtomSet:
    """The atoms `amount` of the way from A to B (0 gives A, 1 gives B).

    File settings (envelope, partials, floor, room, seed, config) are A's below amount
    0.5 and B's from it; the length is the longer of the two in between.

    Args:
        a, b: Atom sets at the same sample rate.
        amount: Position in [0, 1].

    Returns:
        The morphed AtomSet, validated.

    Raises:
        ParameterError: if `amount` is outside [0, 1] or the sample rates differ.
    """
    if not 0.0 <= amount <= 1.0:
        raise ParameterError(f"amount={amount} must be in [0, 1]")
    if a.sample_rate != b.sample_rate:
        raise ParameterError(f"the sample rates differ ({a.sample_rate} Hz and {b.sample_rate} Hz); fit both at one")
    if amount == 0.0:
        return a
    if amount == 1.0:
        return b
    base = a if amount < 0.5 else b
    bounds = Bounds.for_sample_rate(a.sample_rate)
    # Levels are compared at the original level: each file was normalised by its own gain.
    offset_a, offset_b, offset_out = (20 * math.log10(s.gain) for s in (a, b, base))
    pairs = match(a, b)
    atoms = [
        _interpolate(
            replace(a.atoms[i], gain_db=a.atoms[i].gain_db - offset_a + offset_out),
            replace(b.atoms[j], gain_db=b.atoms[j].gain_db - offset_b + offset_out),
            amount,
            bounds,
        )
        for i, j in pairs
    ]
    matched_a = {i for i, _ in pairs}
    matched_b = {j for _, j in pairs}
    fade_a, fade_b = offset_out - offset_a, offset_out - offset_b
    atoms += [_faded(x, 1.0 - amount, fade_a, bounds) for i, x in enumerate(a.atoms) if i not in matched_a]
    atoms += [_faded(x, amount, fade_b, bounds) for j, x in enumerate(b.atoms) if j not in matched_b]
    out = replace(base, duration_s=max(a.duration_s, b.duration_s)).with_atoms(atoms)
    out.validate()
    return out


def _interpolate(x: Atom, y: Atom, amount: float, bounds: Bounds) -> Atom:
    """A pair's atom `amount` of the way from x to y: log-scale fields along their log, others linearly,
    categorical ones (`_CATEGORICAL`) from the nearer of the two."""
    values: dict[str, float | int | str] = {}
    for f in fields(Atom):
        u, v = getattr(x, f.name), getattr(y, f.name)
        if f.name in _CATEGORICAL:
            values[f.name] = u if amount < 0.5 else v
            continue
        if f.name != "time_s" and bounds.range_of(f.name).log:
            values[f.name] = math.exp((1 - amount) * math.log(u) + amount * math.log(v))
        else:
            values[f.name] = (1 - amount) * u + amount * v
        if f.name != "time_s":
            rng = bounds.range_of(f.name)  # rounding must not step outside the range
            values[f.name] = min(max(values[f.name], rng.lo), rng.hi)
    return Atom(**values)  # type: ignore[arg-type]


def _faded(x: Atom, factor: float, offset_db: float, bounds: Bounds) -> Atom:
    """An unmatched atom with its amplitude times `factor` (> 0), its level moved by `offset_db`."""
    gain_db = x.gain_db + offset_db + 20 * math.log10(factor)
    return replace(x, gain_db=min(max(gain_db, bounds.gain_db.lo), bounds.gain_db.hi))
