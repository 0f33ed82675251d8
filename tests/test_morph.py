"""Morphing two atom sets (splat.morph) and `splat morph`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from test_cli import assert_one_error_line, hand_made_atom_set, run

from splat.atoms import AtomSet
from splat.errors import ParameterError
from splat.morph import match, morph


@pytest.fixture
def pair() -> tuple[AtomSet, AtomSet]:
    """A: three tones. B: A's first two a bit later, 3 semitones up, louder and longer, at another gain; no third."""
    a = hand_made_atom_set()
    b_atoms = [
        replace(x, time_s=x.time_s + 0.01, f0_hz=x.f0_hz * 2 ** (3 / 12), gain_db=x.gain_db + 6, decay_s=0.4)
        for x in a.atoms[:2]
    ]
    b = replace(a, atoms=tuple(b_atoms), gain=4.0)
    return a, b


def test_match_pairs_by_onset_and_pitch(pair):
    a, b = pair
    assert match(a, b) == [(0, 0), (1, 1)]
    assert match(a, replace(b, atoms=b.atoms[::-1])) == [(0, 1), (1, 0)]


def test_endpoints_are_the_inputs(pair):
    a, b = pair
    assert morph(a, b, 0.0) == a
    assert morph(a, b, 1.0) == b


def test_a_matched_pair_halfway(pair):
    a, b = pair
    out = morph(a, b, 0.5)
    x, y = a.atoms[0], b.atoms[0]
    m = min(out.atoms, key=lambda atom: abs(atom.time_s - 0.025))
    assert m.time_s == pytest.approx((x.time_s + y.time_s) / 2)
    assert m.f0_hz == pytest.approx(x.f0_hz * 2 ** (1.5 / 12))  # halfway in log frequency
    assert m.decay_s == pytest.approx(math.sqrt(0.1 * 0.4))  # log time constants
    # dB at the original level: A's gain 2, B's gain 4 (B's base, at amount 0.5) -> +3 dB level, written at gain 4.
    level_a, level_b = x.gain_db - 20 * math.log10(2.0), y.gain_db - 20 * math.log10(4.0)
    assert m.gain_db - 20 * math.log10(out.gain) == pytest.approx((level_a + level_b) / 2)
    # A's unmatched third atom fades by 6 dB (a factor 0.5).
    third = [atom for atom in out.atoms if atom.f0_hz == a.atoms[2].f0_hz]
    assert len(third) == 1
    assert third[0].gain_db - 20 * math.log10(out.gain) == pytest.approx(
        a.atoms[2].gain_db - 20 * math.log10(2.0) + 20 * math.log10(0.5)
    )
    assert len(out.atoms) == 3


@pytest.mark.parametrize(("amount", "expected"), [(0.3, "string"), (0.7, "membrane")])
def test_a_matched_pair_takes_the_nearer_atoms_series(pair, amount, expected):
    a, b = pair
    b = replace(b, atoms=tuple(replace(x, modes="membrane") for x in b.atoms))
    out = morph(a, b, amount)
    matched = [atom for atom in out.atoms if atom.f0_hz not in {x.f0_hz for x in (*a.atoms, *b.atoms)}]
    assert len(matched) == 2
    assert {atom.modes for atom in matched} == {expected}


def test_bad_morphs(pair, tmp_path):
    a, b = pair
    with pytest.raises(ParameterError, match="amount=1.5"):
        morph(a, b, 1.5)
    with pytest.raises(ParameterError, match="sample rates differ"):
        morph(a, replace(b, sample_rate=44100), 0.5)


def test_cli_morph(pair, tmp_path):
    a, b = pair
    paths = tmp_path / "a.atoms.json", tmp_path / "b.atoms.json"
    a.save(paths[0])
    b.save(paths[1])
    out = tmp_path / "m.atoms.json"
    result = run("morph", *paths, "--amount", "0", "-o", out)
    assert result.exit_code == 0, result.output
    assert AtomSet.load(out).atoms == a.atoms
    assert_one_error_line(run("morph", *paths, "--amount", "2", "-o", out, "--force"), mentions="amount=2")
