"""Atoms as the product's interface: the `Atom` record, `AtomSet`, and JSON load/save.

The JSON file alone is enough to render: it holds the sample rate, the length,
the level the input was normalised by, the model settings (envelope shape,
number of partials), every atom in physical units, each segment's noise
floor (`splat.floor`) and the room (`splat.room`). It is versioned and fully
validated on load; see the README for the field table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from splat import floor, room
from splat.errors import FormatError
from splat.files import write_text_atomic
from splat.modes import MODES, mode_indices
from splat.params import FIELDS, FLOOR_LEVEL_DB, AtomParams, Bounds, RoomBounds

FORMAT_NAME = "splat.atoms"
FORMAT_VERSION = 6
#: Older versions this splat still reads. Version 1 gave the gamma burst the shape
#: k = 1 + (attack / spread)^2; version 2 reads `spread_s` as the burst's standard
#: deviation (see `splat.dsp.burst_envelope`), so a version-1 gamma atom is converted.
#: Version 1 had no resonance short part: its atoms get `Atom`'s defaults (share 0).
#: Versions 1 and 2 had no noise floor. Versions 1-3 had no release: their atoms get
#: `Atom`'s defaults (`duration_s` at its maximum, so they ring out as before).
#: Versions 1-4 had no formant: their atoms get a 0 dB one (no change). Versions 1-5 had
#: no room (they play dry, as before), no partial series (their atoms are strings) and no pitch
#: motion (their atoms get no glide and a vibrato of depth 0: a fixed pitch).
READABLE_VERSIONS = (1, 2, 3, 4, 5, FORMAT_VERSION)
#: Atom fields each version introduced: the resonance short part (2), the release (4), the formant (5),
#: the partial series and the pitch motion (6).
_ADDED_FIELDS = {
    2: ("short_share", "short_decay_s", "short_rolloff_db"),
    4: ("duration_s", "release_s"),
    5: ("formant_hz", "formant_db"),
    6: ("modes", "f0_glide_cents_per_s", "vibrato_hz", "vibrato_cents"),
}
ENVELOPES = ("gamma", "gaussian")
MAX_PARTIALS = 512
SAMPLE_RATE_RANGE = (8000, 192_000)
#: Range of `gain`, the factor that brought the fitted audio to peak 1: peaks from 1e-9 to 1e6.
GAIN_RANGE = (1e-6, 1e9)


@dataclass(frozen=True)
class Atom:
    """One sound event in physical units (see the README's JSON table)."""

    time_s: float
    gain_db: float
    attack_s: float
    spread_s: float
    noise_center_hz: float
    noise_bandwidth_hz: float
    f0_hz: float
    inharmonicity: float
    rolloff_db: float
    decay_s: float
    mix: float
    noise_seed: int
    # Defaults: no short part (as in format version 1); its decay and rolloff then play no part.
    short_share: float = 0.0
    short_decay_s: float = 0.3
    short_rolloff_db: float = 1.0
    # Defaults: no release (as in format versions 1-3): the atom rings out.
    duration_s: float = Bounds().duration_s.hi
    release_s: float = 0.3
    # Defaults: no formant (as in format versions 1-4): the partials follow the rolloffs alone.
    formant_hz: float = 1000.0
    formant_db: float = 0.0
    # Default: harmonic partials (as in format versions 1-5); see `splat.modes`.
    modes: str = "string"
    # Defaults: a fixed pitch (as in format versions 1-5); with depth 0 the vibrato's rate plays no part.
    f0_glide_cents_per_s: float = 0.0
    vibrato_hz: float = 5.5
    vibrato_cents: float = 0.0

    @classmethod
    def from_dict(cls, data: Any, *, index: int, bounds: Bounds, duration_s: float) -> Atom:
        """Validate one JSON atom object.

        Raises:
            FormatError: naming the atom index and the field that is wrong.
        """
        where = f"atoms[{index}]"
        names = _record_fields(data, cls, where)
        values: dict[str, Any] = {}
        for name in names:
            if name not in data:
                raise FormatError(f"{where}.{name} is missing")
            value = data[name]
            if name == "noise_seed":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                    raise FormatError(f"{where}.noise_seed={value!r} must be an integer in [0, 2^63)")
                values[name] = value
                continue
            if name == "modes":
                if not isinstance(value, str) or value not in MODES:
                    raise FormatError(f"{where}.modes={value!r} must be one of {', '.join(map(repr, MODES))}")
                values[name] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FormatError(f"{where}.{name}={value!r} must be a number")
            value = _as_float(value, f"{where}.{name}")
            if not math.isfinite(value):
                raise FormatError(f"{where}.{name}={value} must be finite")
            lo, hi = (0.0, duration_s) if name == "time_s" else _range(bounds, name)
            if not lo <= value <= hi:
                raise FormatError(f"{where}.{name}={value:g} is out of range [{lo:g}, {hi:g}]")
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class FloorSegment:
    """One segment's noise floor: a stationary noise in [start_s, end_s) (see `splat.floor`).

    `level_db` holds one level per band of `splat.floor.band_centres_hz`: the
    band's variance per sample in dB, in the normalised units of `gain_db`.
    """

    start_s: float
    end_s: float
    level_db: tuple[float, ...]
    noise_seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "level_db": list(self.level_db),
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, data: Any, *, index: int, duration_s: float) -> FloorSegment:
        """Validate one JSON floor segment.

        Raises:
            FormatError: naming the segment index and the field that is wrong.
        """
        where = f"noise_floor.segments[{index}]"
        _record_fields(data, cls, where)
        start_s = _float_field(data, "start_s", 0.0, duration_s, where=where)
        end_s = _float_field(data, "end_s", 0.0, duration_s, where=where)
        if end_s <= start_s:
            raise FormatError(f"{where}.end_s={end_s:g} must be after start_s={start_s:g}")
        levels = data.get("level_db")
        if not isinstance(levels, list) or len(levels) != floor.N_BANDS:
            raise FormatError(f"{where}.level_db must be a list of {floor.N_BANDS} numbers (one per band)")
        lo, hi = FLOOR_LEVEL_DB.lo, FLOOR_LEVEL_DB.hi
        level_db = tuple(_checked_float(v, f"{where}.level_db[{b}]", lo, hi) for b, v in enumerate(levels))
        return cls(start_s, end_s, level_db, _int_field(data, "noise_seed", 0, 2**63 - 1, where=where))


@dataclass(frozen=True)
class Room:
    """The file's room: a reverberation tail added to everything else it renders (see `splat.room`).

    Attributes:
        rt60_s: Time for each band's tail to fall by 60 dB, one per `splat.room.BAND_HZ`.
        level_db: Energy of the tail relative to the direct sound (normalised units cancel).
        noise_seed: Seed of the tail's noise.
    """

    rt60_s: tuple[float, ...]
    level_db: float
    noise_seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "band_hz": list(room.BAND_HZ),
            "rt60_s": list(self.rt60_s),
            "level_db": self.level_db,
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Room:
        """Validate the JSON room object.

        Raises:
            FormatError: naming the field that is wrong.
        """
        where = "room"
        if not isinstance(data, dict):
            raise FormatError(f"room must be an object, got {type(data).__name__}")
        names = ["band_hz", *(f.name for f in fields(cls))]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise FormatError(f"room has unknown field(s) {unknown}; valid fields: {', '.join(names)}")
        bands = data.get("band_hz")
        if bands is not None and not _same_bands(bands, list(room.BAND_HZ)):
            raise FormatError(f"room.band_hz must be the {room.N_BANDS} fixed band centres {list(room.BAND_HZ)}")
        decays = data.get("rt60_s")
        if not isinstance(decays, list) or len(decays) != room.N_BANDS:
            raise FormatError(f"room.rt60_s must be a list of {room.N_BANDS} numbers (one per band)")
        bounds = RoomBounds()
        lo, hi = bounds.rt60_s.lo, bounds.rt60_s.hi
        rt60_s = tuple(_checked_float(v, f"room.rt60_s[{b}]", lo, hi) for b, v in enumerate(decays))
        level_db = _float_field(data, "level_db", bounds.level_db.lo, bounds.level_db.hi, where=where)
        return cls(rt60_s, level_db, _int_field(data, "noise_seed", 0, 2**63 - 1, where=where))


def _record_fields(data: Any, cls: type, where: str) -> list[str]:
    """The field names of dataclass `cls`, after checking that `data` is an object with no others.

    Raises:
        FormatError: naming `where` if `data` is not an object or has unknown fields.
    """
    if not isinstance(data, dict):
        raise FormatError(f"{where} must be an object, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise FormatError(f"{where} has unknown field(s) {unknown}; valid fields: {', '.join(names)}")
    return names


def _as_float(value: int | float, where: str) -> float:
    try:
        return float(value)
    except OverflowError as exc:
        raise FormatError(f"{where} is too large to be a number") from exc


def _range(bounds: Bounds, name: str) -> tuple[float, float]:
    rng = bounds.range_of(name)
    return rng.lo, rng.hi


@dataclass(frozen=True)
class AtomSet:
    """Everything needed to render: atoms plus the file-level settings.

    Attributes:
        atoms: The active atoms, sorted by `time_s`.
        sample_rate: Output sample rate in Hz.
        duration_s: Output length in seconds.
        gain: Linear factor the input audio was multiplied by before fitting;
            rendering divides by it to restore the original level.
        envelope: Burst envelope shape, "gamma" or "gaussian".
        n_partials: Maximum number of partials per atom (those above Nyquist are silent).
        seed: Seed of the fit that produced the atoms (provenance).
        config: The fit configuration (provenance; not needed to render).
        floor: Each segment's noise floor, sorted by `start_s` (empty: no floor).
        room: The room the file plays in (None: dry).
    """

    atoms: tuple[Atom, ...]
    sample_rate: int
    duration_s: float
    gain: float = 1.0
    envelope: str = "gamma"
    n_partials: int = 64
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    floor: tuple[FloorSegment, ...] = ()
    room: Room | None = None

    @property
    def n_samples(self) -> int:
        """Length of the rendered audio in samples."""
        return round(self.duration_s * self.sample_rate)

    def to_params(
        self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> tuple[AtomParams, torch.Tensor]:
        """Atoms as batch-1 tensors: (`AtomParams` of shape (1, atoms), noise seeds (atoms,))."""
        values = torch.tensor(
            [[getattr(a, name) for name in FIELDS] for a in self.atoms], dtype=torch.float64, device="cpu"
        ).reshape(1, len(self.atoms), len(FIELDS))
        seeds = torch.tensor([a.noise_seed for a in self.atoms], dtype=torch.int64, device="cpu")
        return AtomParams.unstack(values.to(device=device, dtype=dtype)), seeds

    def to_modes(self, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """The atoms' partial series as indices into `splat.modes.MODES`, int64 of shape (1, atoms)."""
        return mode_indices([a.modes for a in self.atoms], device=device).reshape(1, -1)

    def with_atoms(self, atoms: list[Atom] | tuple[Atom, ...]) -> AtomSet:
        """A copy holding `atoms` (sorted by time) instead of the current ones."""
        return replace(self, atoms=tuple(sorted(atoms, key=lambda a: (a.time_s, a.f0_hz))))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (format version `FORMAT_VERSION`); `room` only if there is one."""
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "duration_s": self.duration_s,
            "gain": self.gain,
            "envelope": self.envelope,
            "n_partials": self.n_partials,
            "seed": self.seed,
            "config": self.config,
            "noise_floor": {
                "band_hz": [round(f, 2) for f in floor.band_centres_hz(self.sample_rate)],
                "segments": [f.to_dict() for f in self.floor],
            },
            "atoms": [asdict(a) for a in self.atoms],
        }
        return doc if self.room is None else doc | {"room": self.room.to_dict()}

    def validate(self) -> dict[str, Any]:
        """Check every field as loading the JSON would (an edited copy may have left a range).

        Returns:
            The checked JSON document (`to_dict`).

        Raises:
            FormatError: naming the first field out of its range.
        """
        doc = self.to_dict()
        AtomSet.from_dict(doc)
        return doc

    def save(self, path: str | Path) -> None:
        """Write the JSON file atomically, once it is known to load back (`validate`)."""
        write_text_atomic(path, json.dumps(self.validate(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, doc: Any) -> AtomSet:
        """Validate a parsed JSON document.

        Raises:
            FormatError: on a wrong type, missing field, non-finite or out-of-range
                value, or unknown format/version; the message names the field.
        """
        if not isinstance(doc, dict):
            raise FormatError("the file must hold a JSON object at the top level")
        if doc.get("format") != FORMAT_NAME:
            raise FormatError(f"format={doc.get('format')!r}; expected {FORMAT_NAME!r} (not a splat atoms file?)")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
            raise FormatError(
                f"version={version!r} is not supported; this splat reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        sample_rate = _int_field(doc, "sample_rate", *SAMPLE_RATE_RANGE)
        duration_s = _float_field(doc, "duration_s", 1.0 / sample_rate, 24 * 3600.0)
        gain = _float_field(doc, "gain", *GAIN_RANGE)
        envelope = doc.get("envelope")
        if envelope not in ENVELOPES:
            raise FormatError(f"envelope={envelope!r} must be one of {', '.join(ENVELOPES)}")
        n_partials = _int_field(doc, "n_partials", 1, MAX_PARTIALS)
        seed = _int_field(doc, "seed", 0, 2**63 - 1)
        config = doc.get("config", {})
        if not isinstance(config, dict):
            raise FormatError("config must be an object")
        raw_atoms = doc.get("atoms")
        if not isinstance(raw_atoms, list):
            raise FormatError("atoms must be a list of objects")
        bounds = Bounds.for_sample_rate(sample_rate)
        # Fields added after a version take `Atom`'s defaults, with which the atom renders as it did.
        added = [name for since, names in _ADDED_FIELDS.items() if version < since for name in names]
        if added:
            defaults = {f.name: f.default for f in fields(Atom) if f.name in added}
            raw_atoms = [{**defaults, **a} if isinstance(a, dict) else a for a in raw_atoms]
        atoms = [Atom.from_dict(a, index=i, bounds=bounds, duration_s=duration_s) for i, a in enumerate(raw_atoms)]
        if version == 1 and envelope == "gamma":
            atoms = [replace(a, spread_s=spread_from_version_1(a.attack_s, a.spread_s, bounds)) for a in atoms]
        floor_segments = _floor_segments(doc, sample_rate, duration_s) if version >= 3 else ()
        room_record = Room.from_dict(doc["room"]) if version >= 6 and "room" in doc else None
        return cls(
            atoms=tuple(atoms),
            sample_rate=sample_rate,
            duration_s=duration_s,
            gain=gain,
            envelope=envelope,
            n_partials=n_partials,
            seed=seed,
            config=config,
            floor=floor_segments,
            room=room_record,
        )

    @classmethod
    def load(cls, path: str | Path) -> AtomSet:
        """Read and validate an atoms JSON file.

        Raises:
            FormatError: if the file cannot be read, is not JSON, or is invalid.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FormatError(f"cannot read {path}: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
            raise FormatError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(doc)


def spread_from_version_1(attack_s: float, spread_s: float, bounds: Bounds) -> float:
    """The version-2 `spread_s` of a version-1 gamma atom: the same envelope.

    Version 1 had k = 1 + (a / s1)^2; version 2 has theta = a / k and
    s2 = sqrt(k + 1) theta. The result lies within the version-1 ranges except,
    by a fraction of a percent, next to the lowest spread; it is clamped there.
    """
    k = 1.0 + (attack_s / spread_s) ** 2
    spread = math.sqrt(k + 1.0) * attack_s / k
    return min(max(spread, bounds.spread_s.lo), bounds.spread_s.hi)


def _floor_segments(doc: dict[str, Any], sample_rate: int, duration_s: float) -> tuple[FloorSegment, ...]:
    """The `noise_floor` object of a document of version 3 or later (absent: no floor)."""
    section = doc.get("noise_floor", {"segments": []})
    if not isinstance(section, dict) or not isinstance(section.get("segments"), list):
        raise FormatError("noise_floor must be an object with a list of segments")
    bands = section.get("band_hz")
    expected = floor.band_centres_hz(sample_rate)
    if bands is not None and not _same_bands(bands, expected):
        raise FormatError(
            f"noise_floor.band_hz must be the {len(expected)} fixed band centres for {sample_rate} Hz "
            "(edit level_db instead)"
        )
    segments = [
        FloorSegment.from_dict(item, index=i, duration_s=duration_s) for i, item in enumerate(section["segments"])
    ]
    return tuple(sorted(segments, key=lambda f: f.start_s))


def _same_bands(bands: Any, expected: list[float]) -> bool:
    """Whether `bands` lists the `expected` centres (as written: rounded to 0.01 Hz)."""
    if not isinstance(bands, list) or len(bands) != len(expected):
        return False
    return all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and abs(b - e) <= 0.01 + 1e-6 * e
        for b, e in zip(bands, expected, strict=True)
    )


def _int_field(doc: dict[str, Any], name: str, lo: int, hi: int, *, where: str = "") -> int:
    label = f"{where}.{name}" if where else name
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{label}={value!r} must be an integer")
    if not lo <= value <= hi:
        raise FormatError(f"{label}={value} is out of range [{lo}, {hi}]")
    return value


def _float_field(doc: dict[str, Any], name: str, lo: float, hi: float, *, where: str = "") -> float:
    return _checked_float(doc.get(name), f"{where}.{name}" if where else name, lo, hi)


def _checked_float(value: Any, label: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_as_float(value, label)):
        raise FormatError(f"{label}={value!r} must be a finite number")
    if not lo <= value <= hi:
        raise FormatError(f"{label}={value:g} is out of range [{lo:g}, {hi:g}]")
    return float(value)
