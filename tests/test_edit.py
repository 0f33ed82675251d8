"""Edit operations (splat.edit) on a known set, the safe `--where` language, and `splat edit`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_cli import assert_one_error_line, hand_made_atom_set, run

from splat.atoms import AtomSet
from splat.edit import COLUMNS, Edit, edit, note_name, parse_where, select
from splat.errors import ParameterError


@pytest.fixture
def five() -> AtomSet:
    """Five tones in 1 s at 22050 Hz: onsets 0.1 to 0.5 s, f0 110, 220, 261.63, 440, 880 Hz (A2, A3, C4, A4, A5)."""
    base = hand_made_atom_set(1).atoms[0]
    f0s = (110.0, 220.0, 261.63, 440.0, 880.0)
    gains = (-20.0, -5.0, -30.0, -10.0, -15.0)
    atoms = [
        replace(base, time_s=t, f0_hz=f0, gain_db=g, noise_seed=i)
        for i, (t, f0, g) in enumerate(zip((0.1, 0.2, 0.3, 0.4, 0.5), f0s, gains, strict=True))
    ]
    return AtomSet(atoms=tuple(atoms), sample_rate=22050, duration_s=1.0)


def test_note_names():
    assert [note_name(f) for f in (440.0, 261.63, 27.5, 466.16, 880.0)] == ["A4", "C4", "A0", "A#4", "A5"]


def test_transpose_12_doubles_every_selected_f0_exactly(five):
    out = edit(five, [Edit("transpose", 12)], where="f0_hz < 300")
    assert [a.f0_hz for a in out.atoms] == [220.0, 440.0, 2 * 261.63, 440.0, 880.0]
    # Nothing else changed.
    assert [replace(a, f0_hz=0) for a in out.atoms] == [replace(a, f0_hz=0) for a in five.atoms]


def test_shift_and_stretch_move_onsets_as_stated(five):
    shifted = edit(five, [Edit("shift", 0.05)])
    assert [a.time_s for a in shifted.atoms] == pytest.approx([0.15, 0.25, 0.35, 0.45, 0.55], abs=1e-12)
    stretched = edit(five, [Edit("stretch", 1.5)])
    assert [a.time_s for a in stretched.atoms] == pytest.approx([0.15, 0.3, 0.45, 0.6, 0.75], abs=1e-12)
    assert [a.decay_s for a in stretched.atoms] == pytest.approx([0.15] * 5)
    assert [a.f0_hz for a in stretched.atoms] == [a.f0_hz for a in five.atoms]  # pitch kept
    assert stretched.duration_s == pytest.approx(1.5)  # the file grows so the onsets fit


def test_keep_n_keeps_the_n_loudest(five):
    out = edit(five, [Edit("keep", 2)])
    assert sorted(a.gain_db for a in out.atoms) == [-10.0, -5.0]
    # Among the selected atoms only: the unselected 110 Hz atom stays.
    out = edit(five, [Edit("keep", 1)], where="f0_hz > 200")
    assert [a.f0_hz for a in out.atoms] == [110.0, 220.0]


def test_gain_decay_drop_and_mix(five):
    out = edit(five, [Edit("gain", -6), Edit("decay", 2), Edit("tonal_only")], where="index in [0, 4]")
    assert [a.gain_db for a in out.atoms] == [-26.0, -5.0, -30.0, -10.0, -21.0]
    assert [a.decay_s for a in out.atoms] == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.2])
    assert [a.mix for a in out.atoms] == [1.0, 0.8, 0.8, 0.8, 1.0]
    assert [a.mix for a in edit(five, [Edit("noise_only")]).atoms] == [0.0] * 5
    assert [a.f0_hz for a in edit(five, [Edit("drop")], where="note == 'C4'").atoms] == [110.0, 220.0, 440.0, 880.0]


def test_operations_apply_in_order(five):
    # Keep the loudest (220 Hz), then transpose it.
    assert [a.f0_hz for a in edit(five, [Edit("keep", 1), Edit("transpose", 12)]).atoms] == [440.0]
    # Drop the selected atoms, then shift the rest: nothing is left to shift.
    assert edit(five, [Edit("drop"), Edit("shift", 0.1)]).atoms == ()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("f0_hz < 200 or time_s > 0.45", [0, 4]),
        ("note == 'C4'", [2]),
        ("index in [3, 1]", [1, 3]),
        ("not (gain_db > -12) and midi >= 57", [2, 4]),
        ("0.15 < time_s <= 0.3", [1, 2]),
        ("f0_hz * 2 == 440", [1]),
        ("note in ('A2', 'A5') and -gain_db > 16", [0]),
        ("rank >= n_atoms / 2", [0, 2]),  # the quieter half: -20 and -30 dB, ranks 3 and 4 of 5
        ("rank == 0", [1]),
    ],
)
def test_where_selects_exactly_the_expected_indices(five, expression, expected):
    assert select(five, expression) == expected


@pytest.mark.parametrize(
    ("expression", "mentions"),
    [
        ("__import__('os')", "Call is not allowed"),
        ("().__class__", "Attribute is not allowed"),
        ("f0_hz.real > 1", "Attribute is not allowed"),
        ("open('x')", "Call is not allowed"),
        ("[x for x in ()]", "ListComp is not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("note[0] == 'C'", "Subscript is not allowed"),
        ("f0 < 200", "unknown column 'f0'"),
        ("os", "unknown column 'os'"),
        ("f0_hz < ", "not a valid expression"),
        ("f0_hz", "not true or false"),
        ("note + 1 > 2", "not a number"),
        ("f0_hz < 'C4'", "not supported"),
        ("None == f0_hz", "constant None"),
    ],
)
def test_hostile_or_bad_expressions_are_refused(five, expression, mentions):
    with pytest.raises(ParameterError, match=mentions):
        select(five, expression)


def test_long_or_deeply_nested_expressions_are_one_error_or_work(five):
    for expression in ("not " * 5000 + "index == 0", "-" * 5000 + "1 < index", "(" * 300 + "index" + ")" * 300):
        with pytest.raises(ParameterError, match="--where"):
            select(five, expression)
    # Up to the length limit, nesting evaluates (no stack overflow): 122 nots cancel out.
    assert select(five, "not " * 122 + "index == 0") == [0]
    assert select(five, "-" * 480 + "1 < index") == [2, 3, 4]  # an even count of minus signs


def test_where_never_runs_code(five, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ParameterError):
        parse_where(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    assert not marker.exists()


def test_every_column_is_usable(five):
    for column in COLUMNS:
        value = "'A4'" if column == "note" else "0"
        select(five, f"{column} != {value}")  # no error


def test_out_of_range_is_refused_naming_atom_and_field_or_clamped(five):
    with pytest.raises(ParameterError, match=r"atom 4's f0_hz=7040 out of range \[25, 5000\]"):
        edit(five, [Edit("transpose", 36)])
    clamped = edit(five, [Edit("transpose", 36)], clamp=True)
    assert clamped.atoms[-1].f0_hz == 5000.0  # the top of the f0 range
    assert clamped.atoms[0].f0_hz == 880.0
    with pytest.raises(ParameterError, match="atom 0's time_s=-0.1"):
        edit(five, [Edit("shift", -0.2)])
    assert [a.time_s for a in edit(five, [Edit("shift", -0.2)], clamp=True).atoms][:2] == [0.0, 0.0]


def test_bad_steps_are_refused(five):
    for step, mentions in [
        (Edit("reverse"), "unknown edit"),
        (Edit("transpose"), "needs a finite amount"),
        (Edit("stretch", 0), "must be positive"),
        (Edit("keep", 1.5), "whole number"),
        (Edit("drop", 1), "takes no amount"),
    ]:
        with pytest.raises(ParameterError, match=mentions):
            edit(five, [step])


# --- splat edit ---------------------------------------------------------------------------


@pytest.fixture
def five_json(five, tmp_path):
    path = tmp_path / "five.atoms.json"
    five.save(path)
    return path


def test_cli_edit_applies_options_in_the_order_given(five_json, tmp_path):
    out = tmp_path / "out.atoms.json"
    # Transpose everything, then keep the single loudest: one atom, transposed.
    result = run("edit", five_json, "-o", out, "--transpose", "12", "--keep", "1")
    assert result.exit_code == 0, result.output
    assert [a.f0_hz for a in AtomSet.load(out).atoms] == [440.0]
    # Keep the loudest two of those above 200 Hz, then drop them: the others stay.
    result = run("edit", five_json, "-o", out, "--where", "f0_hz > 200", "--keep", "2", "--drop", "--force")
    assert result.exit_code == 0, result.output
    assert "keep then drop on the 4 atoms --where selects: 5 atoms in, 1 out" in result.stdout
    assert [a.f0_hz for a in AtomSet.load(out).atoms] == [110.0]
    # The order matters: (0.1 + 0.1) * 2 s, then 0.1 * 2 + 0.1 s.
    run("edit", five_json, "-o", out, "--shift", "0.1", "--stretch", "2", "--where", "index == 0", "--force")
    assert AtomSet.load(out).atoms[0].time_s == pytest.approx(0.2)  # sorted by time: atom 1 at 0.2 s is first
    assert 0.4 in [pytest.approx(a.time_s) for a in AtomSet.load(out).atoms]
    run("edit", five_json, "-o", out, "--stretch", "2", "--shift", "0.1", "--where", "index == 0", "--force")
    assert sorted(a.time_s for a in AtomSet.load(out).atoms) == pytest.approx([0.2, 0.3, 0.3, 0.4, 0.5])


def test_cli_edit_tonal_only_and_stretch(five_json, tmp_path):
    out = tmp_path / "out.atoms.json"
    result = run("edit", five_json, "-o", out, "--stretch", "2", "--tonal-only", "--where", "index == 0")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["duration_s"] == 2.0
    assert [a["mix"] for a in doc["atoms"]] == [1.0, 0.8, 0.8, 0.8, 0.8]
    assert doc["atoms"][0]["time_s"] == pytest.approx(0.2)


def test_cli_edit_errors_are_one_line_and_write_nothing(five_json, tmp_path):
    out = tmp_path / "out.atoms.json"
    assert_one_error_line(run("edit", five_json, "-o", out, "--transpose", "36"), mentions="atom 4's f0_hz")
    assert_one_error_line(run("edit", five_json, "-o", out, "--drop", "--where", "__import__('os')"), mentions="Call")
    assert_one_error_line(run("edit", five_json, "-o", out, "--drop", "--where", "pitch > 3"), mentions="'pitch'")
    assert_one_error_line(run("edit", five_json, "-o", out), mentions="at least one operation")
    assert not out.exists()
    assert run("edit", five_json, "-o", out, "--transpose", "36", "--clamp").exit_code == 0
    assert_one_error_line(run("edit", five_json, "-o", out, "--gain", "1"), mentions="--force")
