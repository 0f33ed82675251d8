"""Tests for splat.atoms (the JSON format: round trip and validation) and splat.files (atomic writes)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from splat import dsp, floor, synth
from splat.atoms import FORMAT_NAME, FORMAT_VERSION, Atom, AtomSet, FloorSegment
from splat.errors import FormatError, SplatError
from splat.files import atomic_path, write_atomic, write_text_atomic
from splat.params import FIELDS, Bounds
from splat.synth import render_atom_set

SAMPLE_RATE = 22050


def _atoms() -> list[Atom]:
    return [
        Atom(
            time_s=0.05,
            gain_db=-3.25,
            attack_s=0.004,
            spread_s=0.003,
            noise_center_hz=3000.0,
            noise_bandwidth_hz=2000.0,
            f0_hz=261.63,
            inharmonicity=0.0004,
            rolloff_db=5.0,
            decay_s=0.4,
            mix=0.8,
            noise_seed=1,
        ),
        Atom(
            time_s=0.1 / 3,  # not exactly representable: must survive the text round trip
            gain_db=-12.0,
            attack_s=0.02,
            spread_s=0.01,
            noise_center_hz=500.0,
            noise_bandwidth_hz=300.0,
            f0_hz=98.0,
            inharmonicity=0.0,
            rolloff_db=2.0,
            decay_s=1.5,
            mix=0.3,
            noise_seed=2**62 + 5,
            modes="membrane",
        ),
        Atom(
            time_s=0.2,
            gain_db=-20.0,
            attack_s=0.001,
            spread_s=0.2,
            noise_center_hz=8000.0,
            noise_bandwidth_hz=5000.0,
            f0_hz=1760.0,
            inharmonicity=0.01,
            rolloff_db=30.0,
            decay_s=0.05,
            mix=0.0,
            noise_seed=0,
        ),
    ]


def _atom_set() -> AtomSet:
    return AtomSet(
        atoms=tuple(_atoms()),
        sample_rate=SAMPLE_RATE,
        duration_s=0.4,
        gain=1.7,
        envelope="gaussian",
        n_partials=16,
        seed=42,
        config={"n_atoms": 3, "fft_sizes": [512, 1024], "lr": 0.02},
        floor=(
            FloorSegment(0.0, 0.25, tuple(-60.0 - b for b in range(floor.N_BANDS)), noise_seed=9),
            FloorSegment(0.25, 0.4, (-70.0,) * floor.N_BANDS, noise_seed=2**61),
        ),
    )


def _doc() -> dict[str, Any]:
    """A valid document, as plain JSON types."""
    return json.loads(json.dumps(_atom_set().to_dict()))


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "atoms.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --- round trip -------------------------------------------------------------------------------------


def test_save_then_load_gives_an_equal_atom_set(tmp_path):
    original = _atom_set()
    path = tmp_path / "a.atoms.json"
    original.save(path)
    loaded = AtomSet.load(path)
    assert loaded == original
    assert loaded.atoms[1].time_s == 0.1 / 3  # bit-exact, not just close
    assert loaded.atoms[1].noise_seed == 2**62 + 5


@pytest.mark.parametrize(("attack_s", "spread_s"), [(0.01, 0.003), (0.008, 0.006), (0.05, 0.2), (0.25, 0.3)])
def test_a_version_1_gamma_atom_keeps_its_envelope(attack_s, spread_s):
    # Version 1's gamma burst had k = 1 + (a / s)^2; the loaded atom must give that same curve.
    atom_set = replace(_atom_set(), envelope="gamma")
    doc = atom_set.to_dict()
    doc["version"] = 1
    doc["atoms"][0].update(attack_s=attack_s, spread_s=spread_s)
    loaded = AtomSet.from_dict(doc).atoms[0]
    assert loaded.attack_s == attack_s
    u = np.linspace(1e-4, 1.0, 2000)
    k = 1.0 + (attack_s / spread_s) ** 2
    version_1 = (u / attack_s) ** k * np.exp(k * (1.0 - u / attack_s))
    env = dsp.burst_envelope(
        torch.tensor(u).view(1, 1, -1),
        torch.tensor([[[attack_s]]], dtype=torch.float64),
        torch.tensor([[[loaded.spread_s]]], dtype=torch.float64),
        shape="gamma",
    )[0, 0].numpy()
    np.testing.assert_allclose(env, np.maximum(version_1, math.exp(dsp.EXP_FLOOR)), rtol=1e-9, atol=0)


def test_a_version_1_atom_is_read_without_a_short_part():
    # Version 1 had no short part (and the gaussian envelope did not change): the fields
    # a version-1 file lacks take Atom's defaults, whose share is 0.
    plain = _atom_set()
    assert {a.short_share for a in plain.atoms} == {0.0}
    with_short = plain.with_atoms([replace(a, short_share=0.5, short_decay_s=0.05) for a in plain.atoms])
    doc = with_short.to_dict()
    doc["version"] = 1
    for atom in doc["atoms"]:
        for name in ("short_share", "short_decay_s", "short_rolloff_db", "duration_s", "release_s"):
            del atom[name]
        del atom["formant_hz"], atom["formant_db"]
    assert AtomSet.from_dict(doc) == replace(plain, floor=()).with_atoms(plain.atoms)  # with_atoms sorts by time


@pytest.mark.parametrize("version", [1, 2])
def test_versions_before_3_have_no_noise_floor(version):
    doc = _atom_set().to_dict()
    doc["version"] = version
    assert AtomSet.from_dict(doc).floor == ()


def test_a_version_3_atom_is_read_without_a_release():
    # Version 3 had no release: its atoms take Atom's defaults, which never release them within
    # any atom's ring (30 s is 150 dB down the longest decay, 12 s for 60 dB).
    plain = _atom_set()
    released = replace(plain, atoms=tuple(replace(a, duration_s=0.2, release_s=0.1) for a in plain.atoms))
    doc = released.to_dict()
    doc["version"] = 3
    for atom in doc["atoms"]:
        del atom["duration_s"], atom["release_s"], atom["formant_hz"], atom["formant_db"]
    loaded = AtomSet.from_dict(doc)
    assert loaded == plain
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    assert {a.duration_s for a in loaded.atoms} == {bounds.duration_s.hi}
    assert bounds.duration_s.hi * 60.0 / bounds.decay_s.hi >= 150.0


def test_a_version_4_atom_is_read_without_a_formant():
    # Version 4 had no formant: its atoms take Atom's defaults, a 0 dB formant (no change).
    plain = _atom_set()
    assert {a.formant_db for a in plain.atoms} == {0.0}
    shaped = replace(plain, atoms=tuple(replace(a, formant_hz=2000.0, formant_db=12.0) for a in plain.atoms))
    doc = shaped.to_dict()
    doc["version"] = 4
    for atom in doc["atoms"]:
        del atom["formant_hz"], atom["formant_db"]
    assert AtomSet.from_dict(doc) == plain


def test_a_version_5_file_loads_and_renders_as_before():
    atom_set = _atom_set()
    doc = atom_set.to_dict()
    doc["version"] = 5
    loaded = AtomSet.from_dict(doc)
    assert loaded == atom_set
    np.testing.assert_array_equal(render_atom_set(loaded), render_atom_set(atom_set))


def test_a_version_5_file_loads_as_strings_and_renders_as_before():
    # Version 5 had no partial series: every atom is a string, rendered as before the series existed
    # (the renderer's own harmonic path, without a series).
    plain = replace(_atom_set(), floor=())
    plain = plain.with_atoms([replace(a, modes="string") for a in plain.atoms])
    doc = json.loads(json.dumps(plain.to_dict()))
    doc["version"] = 5
    for atom in doc["atoms"]:
        del atom["modes"], atom["f0_glide_cents_per_s"], atom["vibrato_hz"], atom["vibrato_cents"]
    loaded = AtomSet.from_dict(doc)
    assert loaded == plain
    params, seeds = loaded.to_params()
    white = synth.white_noise(seeds, n_samples=synth.noise_length(SAMPLE_RATE)).unsqueeze(0).double()
    kwargs = {"n_samples": loaded.n_samples, "sample_rate": SAMPLE_RATE, "start": 0, "envelope": "gaussian"}
    before = synth.render_atoms(params, white, n_partials=16, **kwargs).sum(dim=(0, 1)) / loaded.gain
    np.testing.assert_allclose(render_atom_set(loaded), before.float().numpy(), rtol=0, atol=1e-7)
    # The series matters: the same atoms as membranes sound different.
    drums = loaded.with_atoms([replace(a, modes="membrane") for a in loaded.atoms])
    assert np.abs(render_atom_set(drums) - render_atom_set(loaded)).max() > 0.01


def test_a_version_5_atom_is_read_with_a_fixed_pitch():
    # Version 5 had no pitch motion: its atoms take Atom's defaults, no glide and no vibrato depth.
    plain = _atom_set()
    assert {(a.f0_glide_cents_per_s, a.vibrato_cents) for a in plain.atoms} == {(0.0, 0.0)}
    moving = replace(
        plain,
        atoms=tuple(replace(a, f0_glide_cents_per_s=100.0, vibrato_hz=6.0, vibrato_cents=30.0) for a in plain.atoms),
    )
    doc = moving.to_dict()
    doc["version"] = 5
    for atom in doc["atoms"]:
        del atom["f0_glide_cents_per_s"], atom["vibrato_hz"], atom["vibrato_cents"]
    assert AtomSet.from_dict(doc) == plain


@pytest.mark.parametrize(
    "name", ["release_s", "formant_db", "modes", "f0_glide_cents_per_s", "vibrato_hz", "vibrato_cents"]
)
def test_a_version_6_atom_must_have_every_field(name):
    doc = _atom_set().to_dict()
    del doc["atoms"][2][name]
    with pytest.raises(FormatError, match=rf"^atoms\[2\]\.{name} is missing$"):
        AtomSet.from_dict(doc)


def test_a_version_2_atom_must_have_its_short_part():
    doc = _atom_set().to_dict()
    del doc["atoms"][1]["short_decay_s"]
    with pytest.raises(FormatError, match=r"^atoms\[1\]\.short_decay_s is missing$"):
        AtomSet.from_dict(doc)


def test_the_document_has_the_versioned_layout(tmp_path):
    path = tmp_path / "a.atoms.json"
    _atom_set().save(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == FORMAT_NAME == "splat.atoms"
    assert doc["version"] == FORMAT_VERSION == 6
    assert (doc["sample_rate"], doc["duration_s"], doc["gain"]) == (SAMPLE_RATE, 0.4, 1.7)
    assert (doc["envelope"], doc["n_partials"], doc["seed"]) == ("gaussian", 16, 42)
    assert doc["config"] == {"n_atoms": 3, "fft_sizes": [512, 1024], "lr": 0.02}
    assert [sorted(a) for a in doc["atoms"]] == [sorted((*FIELDS, "noise_seed", "modes"))] * 3
    assert [a["modes"] for a in doc["atoms"]] == ["string", "membrane", "string"]
    assert doc["atoms"][0]["f0_hz"] == 261.63
    assert doc["noise_floor"]["band_hz"] == [round(f, 2) for f in floor.band_centres_hz(SAMPLE_RATE)]
    assert doc["noise_floor"]["segments"][1] == {
        "start_s": 0.25, "end_s": 0.4, "level_db": [-70.0] * floor.N_BANDS, "noise_seed": 2**61
    }  # fmt: skip


def test_the_noise_floor_renders_and_muting_it_removes_it():
    atom_set = _atom_set()
    silent = replace(atom_set, atoms=())
    alone = render_atom_set(silent)
    # The second segment, past the crossfade: 24 bands at -70 dB each, at the input's level (gain 1.7).
    expected = floor.N_BANDS * 1e-7 / 1.7**2
    tail = alone[int(0.28 * SAMPLE_RATE) :]
    assert float(np.var(tail)) == pytest.approx(expected, rel=0.1)
    # Every band at -100 dB (the README's way to mute it): 24 bands add up to -86 dB of full scale.
    muted = tuple(replace(f, level_db=(-100.0,) * floor.N_BANDS) for f in atom_set.floor)
    rest = render_atom_set(replace(silent, floor=muted))[int(0.28 * SAMPLE_RATE) :]
    assert float(np.var(rest)) == pytest.approx(floor.N_BANDS * 1e-10 / 1.7**2, rel=0.1)


def test_save_then_load_renders_bit_identically(tmp_path):
    original = _atom_set()
    before = render_atom_set(original)
    assert np.abs(before).max() > 0.01
    path = tmp_path / "a.atoms.json"
    original.save(path)
    np.testing.assert_array_equal(render_atom_set(AtomSet.load(path)), before)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("decay_s", 0.0, "].decay_s=0 is out of range"), ("f0_hz", -5.0, "].f0_hz=-5 is out of range")],
)
def test_an_edit_out_of_range_is_refused_by_save_and_render(tmp_path, name, value, message):
    # The JSON's checks, for sets edited in Python: a decay of 0 would render NaN, and a file saved
    # with either value would not load back.
    atom_set = _atom_set()
    edited = atom_set.with_atoms([replace(atom_set.atoms[0], **{name: value}), *atom_set.atoms[1:]])
    for call in (edited.validate, lambda: edited.save(tmp_path / "e.atoms.json"), lambda: render_atom_set(edited)):
        with pytest.raises(FormatError, match=re.escape(message)):
            call()
    assert list(tmp_path.iterdir()) == []
    atom_set.validate()  # the unedited set is fine


def test_an_empty_atom_set_round_trips(tmp_path):
    empty = AtomSet(atoms=(), sample_rate=8000, duration_s=0.25)
    path = tmp_path / "empty.atoms.json"
    empty.save(path)
    assert AtomSet.load(path) == empty


def test_to_params_orders_fields_like_the_raw_tensor():
    atom_set = _atom_set()
    params, seeds = atom_set.to_params()
    assert params.f0_hz.shape == (1, 3)
    assert params.f0_hz.dtype == torch.float64
    for name in FIELDS:
        assert getattr(params, name)[0].tolist() == [getattr(a, name) for a in atom_set.atoms]
    assert seeds.tolist() == [a.noise_seed for a in atom_set.atoms]
    assert seeds.dtype == torch.int64


def test_with_atoms_sorts_by_time():
    atom_set = _atom_set().with_atoms(_atoms())
    times = [a.time_s for a in atom_set.atoms]
    assert times == sorted(times)
    assert atom_set.sample_rate == SAMPLE_RATE


def test_n_samples_is_duration_times_rate():
    assert _atom_set().n_samples == round(0.4 * SAMPLE_RATE) == 8820


# --- validation: each error names the atom and the field ------------------------------------------


def _set_atom_field(doc: dict[str, Any], index: int, name: str, value: Any) -> dict[str, Any]:
    doc["atoms"][index][name] = value
    return doc


def _drop_atom_field(doc: dict[str, Any], index: int, name: str) -> dict[str, Any]:
    del doc["atoms"][index][name]
    return doc


def _rename_atom_field(doc: dict[str, Any], index: int, old: str, new: str) -> dict[str, Any]:
    doc["atoms"][index][new] = doc["atoms"][index].pop(old)
    return doc


ATOM_ERRORS = {
    "missing field": (lambda d: _drop_atom_field(d, 1, "decay_s"), r"atoms\[1\]\.decay_s is missing"),
    "missing seed": (lambda d: _drop_atom_field(d, 0, "noise_seed"), r"atoms\[0\]\.noise_seed is missing"),
    "string": (lambda d: _set_atom_field(d, 0, "f0_hz", "440"), r"atoms\[0\]\.f0_hz='440' must be a number"),
    "bool": (lambda d: _set_atom_field(d, 2, "mix", True), r"atoms\[2\]\.mix=True must be a number"),
    "null": (lambda d: _set_atom_field(d, 1, "gain_db", None), r"atoms\[1\]\.gain_db=None must be a number"),
    "list": (lambda d: _set_atom_field(d, 1, "attack_s", [0.01]), r"atoms\[1\]\.attack_s=\[0\.01\] must be a number"),
    "bool seed": (
        lambda d: _set_atom_field(d, 1, "noise_seed", False),
        r"atoms\[1\]\.noise_seed=False must be an integer",
    ),
    "float seed": (
        lambda d: _set_atom_field(d, 0, "noise_seed", 3.0),
        r"atoms\[0\]\.noise_seed=3\.0 must be an integer",
    ),
    "negative seed": (
        lambda d: _set_atom_field(d, 2, "noise_seed", -1),
        r"atoms\[2\]\.noise_seed=-1 must be an integer",
    ),
    "seed too large": (
        lambda d: _set_atom_field(d, 2, "noise_seed", 2**63),
        r"atoms\[2\]\.noise_seed=.* in \[0, 2\^63\)",
    ),
    "NaN": (lambda d: _set_atom_field(d, 1, "gain_db", float("nan")), r"atoms\[1\]\.gain_db=nan must be finite"),
    "Infinity": (lambda d: _set_atom_field(d, 2, "decay_s", float("inf")), r"atoms\[2\]\.decay_s=inf must be finite"),
    "-Infinity": (lambda d: _set_atom_field(d, 0, "time_s", float("-inf")), r"atoms\[0\]\.time_s=-inf must be finite"),
    "negative f0": (lambda d: _set_atom_field(d, 0, "f0_hz", -440.0), r"atoms\[0\]\.f0_hz=-440 is out of range \[25, "),
    "f0 above the cap": (
        lambda d: _set_atom_field(d, 1, "f0_hz", 10_000.0),
        r"atoms\[1\]\.f0_hz=10000 is out of range",
    ),
    "time after the end": (
        lambda d: _set_atom_field(d, 2, "time_s", 0.5),
        r"atoms\[2\]\.time_s=0\.5 is out of range \[0, 0\.4\]",
    ),
    "negative time": (lambda d: _set_atom_field(d, 0, "time_s", -0.001), r"atoms\[0\]\.time_s=-0\.001 is out of range"),
    "mix above 1": (lambda d: _set_atom_field(d, 1, "mix", 1.5), r"atoms\[1\]\.mix=1\.5 is out of range \[0, 1\]"),
    "typo": (lambda d: _rename_atom_field(d, 1, "f0_hz", "f0_Hz"), r"atoms\[1\] has unknown field\(s\) \['f0_Hz'\]"),
    "extra field": (
        lambda d: _set_atom_field(d, 0, "velocity", 64),
        r"atoms\[0\] has unknown field\(s\) \['velocity'\]",
    ),
    "unknown modes": (
        lambda d: _set_atom_field(d, 1, "modes", "drum"),
        r"^atoms\[1\]\.modes='drum' must be one of 'string', 'membrane', 'bar'$",
    ),
    "modes as a number": (
        lambda d: _set_atom_field(d, 0, "modes", 1),
        r"^atoms\[0\]\.modes=1 must be one of 'string', 'membrane', 'bar'$",
    ),
    "missing modes": (lambda d: _drop_atom_field(d, 2, "modes"), r"^atoms\[2\]\.modes is missing$"),
    "atom not an object": (
        lambda d: {**d, "atoms": [d["atoms"][0], [1, 2]]},
        r"atoms\[1\] must be an object, got list",
    ),
}


@pytest.mark.parametrize("case", list(ATOM_ERRORS))
def test_invalid_atoms_are_rejected_naming_index_and_field(tmp_path, case):
    mutate, message = ATOM_ERRORS[case]
    path = _write(tmp_path, mutate(_doc()))
    with pytest.raises(FormatError, match=message):
        AtomSet.load(path)


def test_the_json_nan_literal_is_rejected(tmp_path):
    text = json.dumps(_doc(), indent=1).replace('"mix": 0.3', '"mix": NaN', 1)
    assert "NaN" in text
    path = tmp_path / "nan.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError, match=r"atoms\[1\]\.mix=nan must be finite"):
        AtomSet.load(path)


def test_values_on_the_range_ends_are_accepted(tmp_path):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    doc = _doc()
    doc["atoms"][0].update(time_s=0.0, f0_hz=bounds.f0_hz.hi, mix=1.0, gain_db=bounds.gain_db.lo)
    doc["atoms"][1].update(time_s=doc["duration_s"], f0_hz=bounds.f0_hz.lo, mix=0.0, inharmonicity=0.0)
    doc["atoms"][2].update(noise_center_hz=bounds.noise_center_hz.hi)
    loaded = AtomSet.load(_write(tmp_path, doc))
    assert loaded.atoms[0].f0_hz == bounds.f0_hz.hi
    assert loaded.atoms[1].time_s == 0.4
    assert loaded.atoms[2].noise_center_hz == 0.45 * SAMPLE_RATE  # the cap at 22050 Hz (below the default 11 kHz)


def test_integer_values_are_accepted_as_numbers(tmp_path):
    doc = _doc()
    doc["atoms"][0]["f0_hz"] = 440
    loaded = AtomSet.load(_write(tmp_path, doc))
    assert loaded.atoms[0].f0_hz == 440.0
    assert isinstance(loaded.atoms[0].f0_hz, float)


def _set(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc.update(changes)
    return doc


def _without(doc: dict[str, Any], name: str) -> dict[str, Any]:
    del doc[name]
    return doc


def _set_floor(doc: dict[str, Any], index: int, name: str, value: Any) -> dict[str, Any]:
    doc["noise_floor"]["segments"][index][name] = value
    return doc


DOCUMENT_ERRORS = {
    "unknown version": (
        lambda d: _set(d, version=7),
        r"version=7 is not supported; this splat reads versions 1, 2, 3, 4, 5, 6",
    ),
    "version as a string": (lambda d: _set(d, version="1"), r"version='1' is not supported"),
    "version as a float": (lambda d: _set(d, version=2.0), r"version=2\.0 is not supported"),
    "missing version": (lambda d: _without(d, "version"), r"version=None is not supported"),
    "wrong format name": (lambda d: _set(d, format="splat.atom"), r"format='splat\.atom'; expected 'splat\.atoms'"),
    "missing format": (lambda d: _without(d, "format"), r"format=None; expected 'splat\.atoms'"),
    "sample rate too low": (lambda d: _set(d, sample_rate=4000), r"sample_rate=4000 is out of range \[8000, 192000\]"),
    "sample rate as float": (lambda d: _set(d, sample_rate=22050.0), r"sample_rate=22050\.0 must be an integer"),
    "sample rate as bool": (lambda d: _set(d, sample_rate=True), r"sample_rate=True must be an integer"),
    "duration as string": (lambda d: _set(d, duration_s="1"), r"duration_s='1' must be a finite number"),
    "negative duration": (lambda d: _set(d, duration_s=-1.0), r"duration_s=-1 is out of range"),
    "zero gain": (lambda d: _set(d, gain=0.0), r"gain=0 is out of range"),
    "infinite gain": (lambda d: _set(d, gain=float("inf")), r"gain=inf must be a finite number"),
    "unknown envelope": (lambda d: _set(d, envelope="adsr"), r"envelope='adsr' must be one of gamma, gaussian"),
    "zero partials": (lambda d: _set(d, n_partials=0), r"n_partials=0 is out of range \[1, 512\]"),
    "negative seed": (lambda d: _set(d, seed=-3), r"seed=-3 is out of range"),
    "config not an object": (lambda d: _set(d, config=[1]), r"config must be an object"),
    "atoms not a list": (lambda d: _set(d, atoms={"0": {}}), r"atoms must be a list of objects"),
    "missing atoms": (lambda d: _without(d, "atoms"), r"atoms must be a list of objects"),
    "atom time beyond a shorter duration": (
        lambda d: _set(d, duration_s=0.1),
        r"atoms\[2\]\.time_s=0\.2 is out of range \[0, 0\.1\]",
    ),
    "floor not an object": (
        lambda d: _set(d, noise_floor=[]),
        r"noise_floor must be an object with a list of segments",
    ),
    "floor bands moved": (
        lambda d: _set(d, noise_floor={**d["noise_floor"], "band_hz": [100.0] * floor.N_BANDS}),
        r"noise_floor\.band_hz must be the 24 fixed band centres for 22050 Hz \(edit level_db instead\)",
    ),
    "floor level too high": (
        lambda d: _set_floor(d, 1, "level_db", [-70.0] * 23 + [3.0]),
        r"noise_floor\.segments\[1\]\.level_db\[23\]=3 is out of range \[-100, 0\]",
    ),
    "floor with too few levels": (
        lambda d: _set_floor(d, 0, "level_db", [-70.0] * 3),
        r"noise_floor\.segments\[0\]\.level_db must be a list of 24 numbers \(one per band\)",
    ),
    "floor ending before it starts": (
        lambda d: _set_floor(d, 1, "end_s", 0.2),
        r"noise_floor\.segments\[1\]\.end_s=0\.2 must be after start_s=0\.25",
    ),
    "floor past the end": (
        lambda d: _set_floor(d, 1, "end_s", 0.5),
        r"noise_floor\.segments\[1\]\.end_s=0\.5 is out of range \[0, 0\.4\]",
    ),
    "floor seed as float": (
        lambda d: _set_floor(d, 0, "noise_seed", 1.5),
        r"noise_floor\.segments\[0\]\.noise_seed=1\.5 must be an integer",
    ),
    "floor with an unknown field": (
        lambda d: _set_floor(d, 0, "gain_db", 1.0),
        r"noise_floor\.segments\[0\] has unknown field\(s\) \['gain_db'\]",
    ),
    "band above a lower sample rate's cap": (
        lambda d: _set(d, sample_rate=8000),
        r"atoms\[2\]\.noise_center_hz=8000 is out of range \[30, 3600\]",
    ),
}


@pytest.mark.parametrize("case", list(DOCUMENT_ERRORS))
def test_invalid_documents_are_rejected_naming_the_field(tmp_path, case):
    mutate, message = DOCUMENT_ERRORS[case]
    path = _write(tmp_path, mutate(_doc()))
    with pytest.raises(FormatError, match=message):
        AtomSet.load(path)


@pytest.mark.parametrize("top", [[1, 2], "splat.atoms", 3, None])
def test_the_top_level_must_be_an_object(tmp_path, top):
    with pytest.raises(FormatError, match="JSON object at the top level"):
        AtomSet.load(_write(tmp_path, top))


@pytest.mark.parametrize("text", ["", "{", '{"format": "splat.atoms",}', "{'format': 'splat.atoms'}", "not json"])
def test_invalid_json_text_is_rejected(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.json is not valid JSON \(line 1, column \d+"):
        AtomSet.load(path)


def test_a_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match=r"cannot read .*nowhere\.json"):
        AtomSet.load(tmp_path / "nowhere.json")


def test_a_directory_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        AtomSet.load(tmp_path)


def test_a_file_that_is_not_utf8_is_a_format_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"format": "splat.atoms\xe9"}')
    with pytest.raises(FormatError, match=r"cannot read .*latin1\.json"):
        AtomSet.load(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_an_unreadable_file_is_a_format_error(tmp_path):
    path = tmp_path / "locked.json"
    _atom_set().save(path)
    path.chmod(0)
    try:
        with pytest.raises(FormatError, match="cannot read"):
            AtomSet.load(path)
    finally:
        path.chmod(0o600)


def test_format_errors_are_splat_errors():
    # The CLI reports every SplatError without a traceback.
    assert issubclass(FormatError, SplatError)


@pytest.mark.parametrize("where", ["gain", "atom f0_hz"])
def test_a_huge_integer_is_a_format_error(tmp_path, where):
    doc = _doc()
    if where == "gain":
        doc["gain"] = 10**400
    else:
        doc["atoms"][0]["f0_hz"] = 10**400
    with pytest.raises(FormatError, match="gain|f0_hz"):
        AtomSet.load(_write(tmp_path, doc))


def test_an_integer_over_the_digit_limit_is_a_format_error(tmp_path):
    path = tmp_path / "digits.json"
    path.write_text(json.dumps(_doc()).replace('"gain": 1.7', '"gain": ' + "9" * 5000), encoding="utf-8")
    with pytest.raises(FormatError, match="digits.json"):
        AtomSet.load(path)


def test_from_dict_validates_without_a_file():
    doc = _doc()
    assert AtomSet.from_dict(doc) == _atom_set()
    doc["atoms"][0]["decay_s"] = 100.0
    with pytest.raises(FormatError, match=r"atoms\[0\]\.decay_s=100 is out of range"):
        AtomSet.from_dict(doc)


def test_atom_from_dict_checks_against_the_given_bounds():
    data = asdict(_atoms()[0])
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    assert Atom.from_dict(data, index=7, bounds=bounds, duration_s=1.0) == _atoms()[0]
    with pytest.raises(FormatError, match=r"atoms\[7\]\.time_s=0\.05 is out of range \[0, 0\.01\]"):
        Atom.from_dict(data, index=7, bounds=bounds, duration_s=0.01)


# --- atomic writing ------------------------------------------------------------------------------------


def _folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failure_inside_atomic_path_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "out.atoms.json"
    target.write_text("original", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent
            assert tmp != target
            tmp.write_text("half a file", encoding="utf-8")
            raise RuntimeError("disk on fire")
    assert target.read_text(encoding="utf-8") == "original"
    assert _folder_listing(tmp_path) == ["out.atoms.json"]


def test_a_failure_inside_atomic_path_creates_no_target(tmp_path):
    target = tmp_path / "new" / "out.wav"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"RIFF")
            raise KeyboardInterrupt
    assert not target.exists()
    assert _folder_listing(target.parent) == []


def test_a_failing_writer_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "a.atoms.json"
    _atom_set().save(target)
    before = target.read_bytes()

    def writer(tmp: Path) -> None:
        tmp.write_text("{", encoding="utf-8")
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space left"):
        write_atomic(target, writer)
    assert target.read_bytes() == before
    assert _folder_listing(tmp_path) == ["a.atoms.json"]


def test_a_failing_save_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "a.atoms.json"
    _atom_set().save(target)
    before = target.read_bytes()

    def broken_write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError("write failed")

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(OSError, match="write failed"):
        replace(_atom_set(), gain=2.0).save(target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert _folder_listing(tmp_path) == ["a.atoms.json"]


def test_atomic_writes_replace_the_target_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert _folder_listing(target.parent) == ["a.txt"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp's private 0600 would hide the output from other users; the target gets 0666 & ~umask.
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
