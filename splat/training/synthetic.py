"""Random atom sets drawn from instrument-like priors, rendered by splat's own renderer.

Each clip is a short "file" (one segment by default) with exact ground truth: the
atoms that made it. Families imitate what splat meets in recordings: struck
(piano), plucked (guitar), bowed (violin), blown (wind), drums and plain noise
bursts. Notes follow small musical patterns (scales, arpeggios, chords, repeated
and octave-doubled notes), so the encoder sees notes hiding under other notes'
partials. A clip may start inside a sound (atoms struck before it): those atoms are
labelled at 0 s, as the fit places atoms for what a file's first sample already holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from splat.atoms import Atom, AtomSet
from splat.modes import MODES
from splat.params import FIELDS, Bounds
from splat.synth import render_atom_set

FAMILIES = ("struck", "plucked", "bowed", "blown", "drums", "noise")
#: Sample rate of every training clip (the encoder's own rate).
CLIP_RATE = 22050
#: Length of a training clip in samples (one default segment).
CLIP_SAMPLES = 2**15
#: Longest stretch rendered before a clip that starts inside a sound (s).
PRE_ROLL_S = 0.6
#: Series index of an event whose partial series is not known (rendered MIDI).
UNKNOWN_SERIES = -1
#: Share of the struck family's clips played on bars (mallets: marimba, xylophone, glockenspiel).
BAR_SHARE = 0.2
#: Share of kicks, snares and toms rendered with a membrane's modes (the rest as inharmonic strings).
MEMBRANE_SHARE = 0.8


@dataclass(frozen=True)
class Clip:
    """A rendered clip and its ground truth.

    Attributes:
        audio: Mono audio at `CLIP_RATE`, shape (CLIP_SAMPLES,), peak 1.
        atoms: The events to find, physical values of `splat.params.FIELDS`,
            shape (events, n_fields); gains are relative to `audio`'s level.
        known: Which fields are ground truth, shape (events, n_fields), bool
            (all of them here; rendered MIDI only knows time, f0 and duration).
        series: Each event's partial series, an index into `splat.modes.MODES`, or
            UNKNOWN_SERIES; shape (events,), int8.
    """

    audio: np.ndarray
    atoms: np.ndarray
    known: np.ndarray
    series: np.ndarray


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def family_atom(
    family: str, rng: np.random.Generator, *, time_s: float, midi: float, gain_db: float, modes: str = "string"
) -> dict:
    """Physical fields of one atom of a family at a pitch (MIDI number, fractional allowed), and its `modes`.

    `modes` is the pitched families' partial series; a drum picks its own (membranes for
    kicks, snares and toms, mostly; strings stretched by inharmonicity for hats and cymbals).
    """
    f0 = _midi_to_hz(midi)
    low = min(1.0, max(0.0, (84.0 - midi) / 48.0))  # 1 for low notes, 0 from C6 up: low notes ring longer
    a = {
        "time_s": time_s,
        "gain_db": gain_db,
        "f0_hz": f0,
        "noise_center_hz": _log_uniform(rng, 500.0, 6000.0),
        "noise_bandwidth_hz": _log_uniform(rng, 500.0, 8000.0),
        "formant_hz": _log_uniform(rng, 300.0, 5000.0),
        "formant_db": float(rng.uniform(0.0, 8.0)) if rng.random() < 0.6 else 0.0,
        "modes": modes,
    }
    if family == "struck":
        decay = _log_uniform(rng, 0.8, 3.0) * (1.0 + 3.0 * low)
        a |= {
            "attack_s": _log_uniform(rng, 0.001, 0.006),
            "spread_s": _log_uniform(rng, 0.002, 0.02),
            "inharmonicity": _log_uniform(rng, 1e-5, 1e-3),
            "rolloff_db": _log_uniform(rng, 2.0, 10.0),
            "decay_s": decay,
            "mix": float(rng.uniform(0.85, 1.0)),
            "short_share": float(rng.uniform(0.2, 0.7)),
            "short_decay_s": decay * _log_uniform(rng, 0.05, 0.4),
            "short_rolloff_db": _log_uniform(rng, 1.0, 6.0),
            "duration_s": _log_uniform(rng, 0.1, 2.0) if rng.random() < 0.8 else 30.0,
            "release_s": _log_uniform(rng, 0.04, 0.4),
        }
    elif family == "plucked":
        decay = _log_uniform(rng, 0.5, 4.0)
        a |= {
            "attack_s": _log_uniform(rng, 0.0005, 0.004),
            "spread_s": _log_uniform(rng, 0.002, 0.03),
            "inharmonicity": _log_uniform(rng, 1e-5, 3e-4),
            "rolloff_db": _log_uniform(rng, 2.0, 12.0),
            "decay_s": decay,
            "mix": float(rng.uniform(0.8, 1.0)),
            "short_share": float(rng.uniform(0.1, 0.6)),
            "short_decay_s": decay * _log_uniform(rng, 0.05, 0.5),
            "short_rolloff_db": _log_uniform(rng, 1.0, 8.0),
            "duration_s": 30.0 if rng.random() < 0.5 else _log_uniform(rng, 0.15, 2.0),
            "release_s": _log_uniform(rng, 0.03, 0.3),
        }
    elif family == "bowed":
        a |= {
            "attack_s": _log_uniform(rng, 0.02, 0.2),
            "spread_s": _log_uniform(rng, 0.03, 0.25),
            "inharmonicity": _log_uniform(rng, 1e-6, 1e-4),
            "rolloff_db": _log_uniform(rng, 1.0, 6.0),
            "decay_s": _log_uniform(rng, 2.0, 12.0),
            "mix": float(rng.uniform(0.85, 1.0)),
            "short_share": float(rng.uniform(0.0, 0.4)),
            "short_decay_s": _log_uniform(rng, 0.3, 4.0),
            "short_rolloff_db": _log_uniform(rng, 1.0, 8.0),
            "duration_s": _log_uniform(rng, 0.15, 1.5),
            "release_s": _log_uniform(rng, 0.03, 0.25),
            "formant_hz": _log_uniform(rng, 1500.0, 4000.0),
            "formant_db": float(rng.uniform(5.0, 25.0)),
        }
    elif family == "blown":
        a |= {
            "attack_s": _log_uniform(rng, 0.01, 0.1),
            "spread_s": _log_uniform(rng, 0.02, 0.2),
            "inharmonicity": _log_uniform(rng, 1e-6, 5e-5),
            "rolloff_db": _log_uniform(rng, 3.0, 20.0),
            "decay_s": _log_uniform(rng, 1.0, 8.0),
            "mix": float(rng.uniform(0.6, 0.97)),
            "short_share": float(rng.uniform(0.0, 0.3)),
            "short_decay_s": _log_uniform(rng, 0.2, 2.0),
            "short_rolloff_db": _log_uniform(rng, 2.0, 20.0),
            "duration_s": _log_uniform(rng, 0.1, 1.5),
            "release_s": _log_uniform(rng, 0.02, 0.15),
            "formant_db": float(rng.uniform(0.0, 15.0)),
        }
    elif family == "drums":
        kind = rng.choice(["kick", "snare", "tom", "hat", "cymbal"])
        base = {
            "kick": (40.0, 90.0, 0.7, 0.95, 80.0, 400.0),
            "snare": (150.0, 260.0, 0.15, 0.5, 1000.0, 5000.0),
            "tom": (70.0, 220.0, 0.5, 0.9, 200.0, 1500.0),
            "hat": (300.0, 2000.0, 0.0, 0.08, 6000.0, 10000.0),
            "cymbal": (300.0, 2000.0, 0.0, 0.15, 4000.0, 9000.0),
        }[str(kind)]
        f_lo, f_hi, m_lo, m_hi, c_lo, c_hi = base
        ringing = kind in ("cymbal",) or (kind == "hat" and rng.random() < 0.3)
        membrane = kind in ("kick", "snare", "tom") and rng.random() < MEMBRANE_SHARE
        a |= {
            "modes": "membrane" if membrane else "string",
            "f0_hz": _log_uniform(rng, f_lo, f_hi),
            "attack_s": _log_uniform(rng, 0.0005, 0.003),
            "spread_s": _log_uniform(rng, 0.1, 0.3) if ringing else _log_uniform(rng, 0.005, 0.08),
            "noise_center_hz": _log_uniform(rng, c_lo, c_hi),
            "noise_bandwidth_hz": _log_uniform(rng, 1000.0, 12000.0),
            "inharmonicity": float(rng.uniform(0.0, 0.02)),
            "rolloff_db": _log_uniform(rng, 6.0, 30.0),
            "decay_s": _log_uniform(rng, 0.08, 0.8),
            "mix": float(rng.uniform(m_lo, m_hi)),
            "short_share": float(rng.uniform(0.0, 0.6)),
            "short_decay_s": _log_uniform(rng, 0.02, 0.2),
            "short_rolloff_db": _log_uniform(rng, 3.0, 30.0),
            "duration_s": 30.0,
            "release_s": 0.3,
        }
    elif family == "noise":
        centre = _log_uniform(rng, 100.0, 9000.0)
        a |= {
            "f0_hz": min(centre, 4900.0),  # a noise atom's place on the pitch axis is its band
            "attack_s": _log_uniform(rng, 0.0005, 0.1),
            "spread_s": _log_uniform(rng, 0.003, 0.3),
            "noise_center_hz": centre,
            "noise_bandwidth_hz": _log_uniform(rng, 50.0, 12000.0),
            "inharmonicity": 0.0,
            "rolloff_db": 10.0,
            "decay_s": _log_uniform(rng, 0.03, 0.5),
            "mix": float(rng.uniform(0.0, 0.15)),
            "short_share": 0.0,
            "short_decay_s": 0.1,
            "short_rolloff_db": 10.0,
            "duration_s": 30.0 if rng.random() < 0.5 else _log_uniform(rng, 0.05, 1.0),
            "release_s": _log_uniform(rng, 0.02, 0.3),
        }
    else:
        raise ValueError(f"unknown family {family!r}")
    return _clipped(a, Bounds.for_sample_rate(CLIP_RATE))


def _clipped(values: dict, bounds: Bounds) -> dict:
    out = dict(values)
    for name in FIELDS[1:]:
        if name not in out:  # the pitch motion: the generated atoms keep `Atom`'s fixed pitch
            continue
        r = bounds.range_of(name)
        out[name] = float(min(max(out[name], r.lo), r.hi))
    if out["short_decay_s"] > out["decay_s"]:
        out["short_decay_s"] = out["decay_s"]
    return out


#: Scale steps (semitones) that the note patterns draw from.
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 12), (0, 7, 12), (0, 12), (0, 4, 7, 11), (0, 3, 7, 10), (0, 5, 9))


def note_pattern(
    rng: np.random.Generator, *, span_s: float, lowest: int, highest: int
) -> list[tuple[float, int, float]]:
    """Random (onset s, MIDI pitch, velocity 0-1) notes: a scale run, an arpeggio, chords or repeats.

    Covers what trips onset-and-pitch rules: octave doublings, notes struck again
    while ringing, chords over a held bass.
    """
    kind = rng.choice(["scale", "arpeggio", "chords", "repeats", "bass_and_chords", "random"])
    root = int(rng.integers(lowest, max(lowest + 1, highest - 12)))
    mode = _MAJOR if rng.random() < 0.6 else _MINOR
    n_steps = int(rng.integers(2, 10))
    step_s = span_s / n_steps * float(rng.uniform(0.6, 1.0))
    start = float(rng.uniform(0.0, 0.25))
    notes: list[tuple[float, int, float]] = []

    def vel() -> float:
        return float(rng.uniform(0.3, 1.0))

    def jitter() -> float:
        return float(rng.normal(0.0, 0.006))

    if kind == "scale":
        direction = 1 if rng.random() < 0.5 else -1
        degree = int(rng.integers(0, 7))
        for i in range(n_steps):
            d = degree + direction * i
            pitch = root + 12 * (d // 7) + mode[d % 7]
            notes.append((start + i * step_s + jitter(), pitch, vel()))
    elif kind == "arpeggio":
        chord = _CHORDS[int(rng.integers(len(_CHORDS)))]
        for i in range(n_steps):
            pitch = root + chord[i % len(chord)] + 12 * (i // len(chord))
            notes.append((start + i * step_s + jitter(), pitch, vel()))
    elif kind == "repeats":
        pitch = root + int(rng.integers(0, 12))
        for i in range(n_steps):
            notes.append((start + i * step_s + jitter(), pitch, vel()))
            if rng.random() < 0.3:
                notes.append((start + i * step_s + jitter(), pitch + 12, vel()))
    elif kind in ("chords", "bass_and_chords"):
        n_chords = int(rng.integers(1, 5))
        chord_s = span_s / n_chords * float(rng.uniform(0.6, 1.0))
        if kind == "bass_and_chords":
            notes.append((start + jitter(), root - 12, vel()))
        for c in range(n_chords):
            base = root + mode[int(rng.integers(0, 7))]
            chord = _CHORDS[int(rng.integers(len(_CHORDS)))]
            for interval in chord:
                notes.append((start + c * chord_s + jitter(), base + interval, vel()))
    else:
        for _ in range(int(rng.integers(1, 12))):
            notes.append((float(rng.uniform(0.0, span_s)), int(rng.integers(lowest, highest)), vel()))
    return [(t, p, v) for t, p, v in notes if 0.0 <= t < span_s and lowest - 12 <= p <= highest + 12]


def random_atoms(rng: np.random.Generator, *, duration_s: float) -> list[dict]:
    """Atoms of one clip: one or two families, notes from `note_pattern`, drum hits, noise."""
    families = [str(rng.choice(FAMILIES, p=[0.3, 0.15, 0.15, 0.1, 0.2, 0.1]))]
    if rng.random() < 0.3:
        families.append(str(rng.choice(FAMILIES)))
    atoms = []
    level_db = float(rng.uniform(-30.0, 0.0))
    for family in families:
        if family in ("drums", "noise"):
            n_hits = int(rng.integers(1, 12))
            grid_s = duration_s / max(n_hits, 1)
            for i in range(n_hits):
                t = i * grid_s + float(rng.uniform(0.0, 0.5 * grid_s))
                gain = level_db + float(rng.uniform(-20.0, 0.0))
                atoms.append(family_atom(family, rng, time_s=t, midi=60.0, gain_db=gain))
            continue
        lowest, highest = {"struck": (28, 96), "plucked": (40, 84), "bowed": (55, 96), "blown": (48, 90)}[family]
        modes = "bar" if family == "struck" and rng.random() < BAR_SHARE else "string"
        for t, pitch, velocity in note_pattern(rng, span_s=duration_s, lowest=lowest, highest=highest):
            detune = float(rng.normal(0.0, 0.08))  # cents-level tuning spread, as real instruments
            gain = level_db + 40.0 * math.log10(velocity)
            atoms.append(family_atom(family, rng, time_s=t, midi=pitch + detune, gain_db=gain, modes=modes))
    return atoms


def render_clip(rng: np.random.Generator, *, n_samples: int = CLIP_SAMPLES) -> Clip:
    """One random clip with its events (see the module docstring)."""
    duration_s = n_samples / CLIP_RATE
    pre_roll_s = float(rng.uniform(0.05, PRE_ROLL_S)) if rng.random() < 0.25 else 0.0
    atoms = random_atoms(rng, duration_s=duration_s + pre_roll_s)
    if not atoms:
        atoms = [family_atom("struck", rng, time_s=pre_roll_s + 0.05, midi=60.0, gain_db=-10.0)]
    bounds = Bounds.for_sample_rate(CLIP_RATE)
    records = [
        Atom(**a, noise_seed=int(rng.integers(0, 2**62))) for a in atoms if a["time_s"] < duration_s + pre_roll_s
    ]
    total = pre_roll_s + duration_s
    atom_set = AtomSet(
        atoms=tuple(records),
        sample_rate=CLIP_RATE,
        duration_s=total,
        gain=1.0,
        envelope="gamma",
        n_partials=64,
    )
    audio = render_atom_set(atom_set).astype(np.float64)
    first = int(round(pre_roll_s * CLIP_RATE))
    audio = audio[first : first + n_samples]
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-6:
        return render_clip(rng, n_samples=n_samples)
    audio = audio / peak
    shift_db = -20.0 * math.log10(peak)
    rows, series = [], []
    for atom in records:
        t = atom.time_s - pre_roll_s
        if t < 0.0:
            # Struck before the clip: labelled at 0 s as what the clip's first sample holds, at the
            # level its resonance has fallen to there (60 dB per decay_s), released by what is left.
            ago = -t
            if ago > atom.duration_s:
                continue
            atom = replace(
                atom,
                time_s=0.0,
                gain_db=atom.gain_db - 60.0 * ago / atom.decay_s,
                duration_s=max(bounds.duration_s.lo, atom.duration_s - ago),
            )
            t = 0.0
        values = [t if name == "time_s" else getattr(atom, name) for name in FIELDS]
        values[FIELDS.index("gain_db")] += shift_db
        rows.append(values)
        series.append(MODES.index(atom.modes))
    table = np.array(rows, dtype=np.float32).reshape(-1, len(FIELDS))
    series_of = np.array(series, dtype=np.int8)
    if table.size:
        gains = table[:, FIELDS.index("gain_db")]
        audible = gains > gains.max() - 40.0  # inaudible under the rest: not an event to find
        table, series_of = table[audible], series_of[audible]
        table[:, FIELDS.index("gain_db")] = np.clip(
            table[:, FIELDS.index("gain_db")], bounds.gain_db.lo, bounds.gain_db.hi
        )
    return Clip(audio.astype(np.float32), table, np.ones_like(table, dtype=bool), series_of)
