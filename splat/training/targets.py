"""What the encoder should output for a clip: the dense event map and per-cell fields.

An event at onset t and pitch p (MIDI, fractional) belongs to cell
(m, k) = (round(t / hop), round(p - LOWEST_MIDI)): the cell's target probability is 1
there and falls off as a gaussian around it (CenterNet's "penalty-reduced" negatives),
and the cell regresses what the cell does not say: the offsets t / hop - m and
p - LOWEST_MIDI - k, and every other field as `splat.params` maps it (the unit value
sigmoid(raw) is compared, so a field's error is a share of its range). Where the
event's partial series is known, the cell also classifies it (`splat.modes.MODES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from splat.encoder import ENCODER_RATE, HOP, LOWEST_MIDI, N_PITCHES, RAW_FIELDS, SERIES_CHANNELS
from splat.params import FIELDS, Bounds

#: Spread of the target's gaussian around an event, in frames and in semitones.
SIGMA_FRAMES = 1.0
SIGMA_SEMITONES = 0.7
_REACH = (3, 2)  # cells around an event that get a gaussian value (frames, semitones)


@dataclass(frozen=True)
class Targets:
    """Targets of a batch.

    Attributes:
        heat: Target probability per cell, shape (batch, frames, N_PITCHES).
        values: Regression targets per cell: onset offset and f0 offset (each in
            [-0.5, 0.5]), then the unit values of RAW_FIELDS, shape (batch, 2 + len(RAW_FIELDS), frames, N_PITCHES).
        known: Where `values` are ground truth (at event cells, known fields), same shape, bool.
        series: The event's partial series per cell (index into `splat.modes.MODES`), -1
            where there is no event or its series is not known, shape (batch, frames, N_PITCHES), int64.
    """

    heat: Tensor
    values: Tensor
    known: Tensor
    series: Tensor


def unit_values(events: np.ndarray, bounds: Bounds) -> np.ndarray:
    """The unit value sigmoid(raw) of each RAW_FIELDS column, shape (events, len(RAW_FIELDS)).

    Args:
        events: Physical values in FIELDS order, shape (events, n_fields).
    """
    out = np.zeros((events.shape[0], len(RAW_FIELDS)), dtype=np.float32)
    for i, name in enumerate(RAW_FIELDS):
        r = bounds.range_of(name)
        value = events[:, FIELDS.index(name)].astype(np.float64)
        if r.log:
            unit = (np.log(np.clip(value, r.lo, r.hi)) - math.log(r.lo)) / (math.log(r.hi) - math.log(r.lo))
        else:
            unit = (np.clip(value, r.lo, r.hi) - r.lo) / (r.hi - r.lo)
        out[:, i] = unit
    return out


def build_targets(
    events: np.ndarray, known: np.ndarray, counts: np.ndarray, series: np.ndarray, *, n_frames: int
) -> Targets:
    """Targets for a batch of clips.

    Args:
        events: Physical fields, shape (batch, max events, n_fields).
        known: Which of them are ground truth, same shape, bool.
        counts: Events per clip, shape (batch,).
        series: Each event's partial series (index into MODES, negative if not known), shape (batch, max events).
        n_frames: Frames of the network's output.
    """
    bounds = Bounds.for_sample_rate(ENCODER_RATE)
    batch = events.shape[0]
    heat = np.zeros((batch, n_frames, N_PITCHES), dtype=np.float32)
    values = np.zeros((batch, 2 + len(RAW_FIELDS), n_frames, N_PITCHES), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=bool)
    series_of = np.full((batch, n_frames, N_PITCHES), -1, dtype=np.int64)
    loudest = np.full((batch, n_frames, N_PITCHES), -np.inf)
    gain_col = FIELDS.index("gain_db")
    time_col, f0_col = FIELDS.index("time_s"), FIELDS.index("f0_hz")
    raw_cols = [FIELDS.index(name) for name in RAW_FIELDS]
    dm, dk = np.meshgrid(np.arange(-_REACH[0], _REACH[0] + 1), np.arange(-_REACH[1], _REACH[1] + 1), indexing="ij")
    blob = np.exp(-0.5 * ((dm / SIGMA_FRAMES) ** 2 + (dk / SIGMA_SEMITONES) ** 2))
    for b in range(batch):
        n = int(counts[b])
        if n == 0:
            continue
        ev, kn = events[b, :n], known[b, :n]
        units = unit_values(ev, bounds)
        position = ev[:, time_col] * ENCODER_RATE / HOP
        pitch = 69.0 + 12.0 * np.log2(np.maximum(ev[:, f0_col], 1e-3) / 440.0) - LOWEST_MIDI
        for e in range(n):
            m, k = int(round(position[e])), int(round(pitch[e]))
            if not (0 <= m < n_frames and 0 <= k < N_PITCHES):
                continue
            lo_m, lo_k = m - _REACH[0], k - _REACH[1]
            sm = slice(max(lo_m, 0), min(m + _REACH[0] + 1, n_frames))
            sk = slice(max(lo_k, 0), min(k + _REACH[1] + 1, N_PITCHES))
            part = blob[sm.start - lo_m : sm.stop - lo_m, sk.start - lo_k : sk.stop - lo_k]
            heat[b, sm, sk] = np.maximum(heat[b, sm, sk], part)
            # Two events in one cell (a unison): the louder one's fields are the target.
            gain = ev[e, gain_col] if kn[e, gain_col] else 0.0
            if gain < loudest[b, m, k]:
                continue
            loudest[b, m, k] = gain
            values[b, 0, m, k] = position[e] - m
            values[b, 1, m, k] = pitch[e] - k
            values[b, 2:, m, k] = units[e]
            mask[b, 0, m, k] = kn[e, time_col]
            mask[b, 1, m, k] = kn[e, f0_col]
            mask[b, 2:, m, k] = kn[e, raw_cols]
            series_of[b, m, k] = max(int(series[b, e]), -1)
    arrays = (heat, values, mask, series_of)
    return Targets(*(torch.from_numpy(a) for a in arrays))


def losses(outputs: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
    """Detection, regression and series losses of a batch.

    Detection: CenterNet's focal loss (alpha 2, beta 4), summed over cells and divided
    by the number of events. Regression: mean L1 over known values at event cells, the
    offsets compared as tanh(x) / 2 and the fields as sigmoid(raw), all on a 0..1 scale.
    Series: mean cross-entropy of the series logits at event cells whose series is known
    (0 when none is).

    Args:
        outputs: Network output, shape (batch, N_OUTPUTS, frames, N_PITCHES).
        targets: `build_targets` of the batch.

    Returns:
        (detection loss, regression loss, series loss), scalars.
    """
    logit = outputs[:, 0]
    prob = torch.sigmoid(logit)
    positive = targets.heat >= 1.0 - 1e-6
    log_p = torch.nn.functional.logsigmoid(logit)
    log_not_p = torch.nn.functional.logsigmoid(-logit)
    pos_loss = -((1.0 - prob) ** 2 * log_p)[positive].sum()
    neg_loss = -(((1.0 - targets.heat) ** 4) * prob**2 * log_not_p)[~positive].sum()
    n_pos = positive.sum().clamp_min(1)
    detection = (pos_loss + neg_loss) / n_pos
    fields = outputs[:, : SERIES_CHANNELS.start]
    predicted = torch.cat([torch.tanh(fields[:, 1:3]) * 0.5 + 0.5, torch.sigmoid(fields[:, 3:])], dim=1)
    target = torch.cat([targets.values[:, :2] + 0.5, targets.values[:, 2:]], dim=1)
    known = targets.known
    regression = ((predicted - target).abs() * known).sum() / known.sum().clamp_min(1)
    labelled = targets.series >= 0
    per_cell = torch.nn.functional.cross_entropy(
        outputs[:, SERIES_CHANNELS], targets.series.clamp_min(0), reduction="none"
    )
    series = (per_cell * labelled).sum() / labelled.sum().clamp_min(1)
    return detection, regression, series
