"""Stems, solo/where subsets and the residual (splat.listen), and `splat render`'s options for them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from test_cli import assert_one_error_line, hand_made_atom_set, run

from splat.atoms import FloorSegment
from splat.floor import N_BANDS
from splat.listen import render_subset, residual, stems
from splat.synth import render_atom_set


@pytest.fixture
def with_floor():
    """The hand-made set plus a quiet noise floor over its middle."""
    segment = FloorSegment(start_s=0.05, end_s=0.25, level_db=(-60.0,) * N_BANDS, noise_seed=3)
    return replace(hand_made_atom_set(), floor=(segment,))


def test_the_stems_sum_to_the_full_render(with_floor):
    all_stems = list(stems(with_floor))
    assert [s.name for s in all_stems] == ["000_A3_0.020s", "001_A4_0.100s", "002_E5_0.180s", "floor"]
    full = render_atom_set(with_floor)
    assert all(s.audio.shape == full.shape for s in all_stems)
    total = np.sum([s.audio.astype(np.float64) for s in all_stems], axis=0)
    np.testing.assert_allclose(total, full, rtol=0, atol=1e-6 * np.abs(full).max())
    assert all(np.abs(s.audio).max() > 0 for s in all_stems)


def test_solo_renders_only_its_atoms(with_floor):
    solo = render_subset(with_floor, [2, 0])
    by_atom = {s.name[:3]: s.audio for s in stems(with_floor, [0, 2])}
    assert set(by_atom) == {"000", "002"}  # no floor stem for a subset
    np.testing.assert_allclose(solo, by_atom["000"] + by_atom["002"], atol=1e-7)
    # Atom 1 alone starts at 0.1 s: the solo of atoms 0 and 2 differs from the full render there.
    assert np.abs(render_atom_set(with_floor) - solo).max() > 1e-3


def test_residual_is_the_difference_at_the_originals_rate_and_length(rng):
    original = rng.standard_normal(1000).astype(np.float32)
    rendered = rng.standard_normal(800).astype(np.float32)
    out = residual(original, 22050, rendered, 22050)
    assert out.shape == (1000,) and out.dtype == np.float32
    np.testing.assert_allclose(out[:800], original[:800] - rendered, atol=1e-6)
    np.testing.assert_array_equal(out[800:], original[800:])
    # A render at half the original's rate is resampled: a 1 kHz tone at 22050 Hz against itself at 44100 Hz.
    t_44k = np.arange(44100) / 44100
    t_22k = np.arange(22050) / 22050
    tone_44k = np.sin(2 * np.pi * 1000 * t_44k).astype(np.float32)
    out = residual(tone_44k, 44100, np.sin(2 * np.pi * 1000 * t_22k).astype(np.float32), 22050)
    assert out.shape == (44100,)
    assert np.abs(out[1000:-1000]).max() < 1e-2


def test_render_stems_solo_and_residual_from_the_cli(tmp_path, with_floor):
    atoms_json = tmp_path / "x.atoms.json"
    with_floor.save(atoms_json)
    original = tmp_path / "orig.wav"
    full = render_atom_set(with_floor)
    sf.write(original, np.concatenate([full, np.full(100, 0.25, np.float32)]), 22050, subtype="FLOAT")
    # The residual of a file against its own render: zero, then the extra end.
    out = tmp_path / "full.wav"
    result = run("render", atoms_json, "-o", out, "--stems", tmp_path / "stems", "--residual", original)
    assert result.exit_code == 0, result.output
    res, rate = sf.read(tmp_path / "full.residual.wav", dtype="float32")
    assert rate == 22050 and res.shape == (full.size + 100,)
    assert np.abs(res[: full.size]).max() < 1e-6 and np.all(res[full.size :] == 0.25)
    stem_files = sorted(p.name for p in (tmp_path / "stems").iterdir())
    assert stem_files == ["000_A3_0.020s.wav", "001_A4_0.100s.wav", "002_E5_0.180s.wav", "floor.wav"]
    total = sum(sf.read(tmp_path / "stems" / name, dtype="float64")[0] for name in stem_files)
    np.testing.assert_allclose(total, sf.read(out, dtype="float64")[0], atol=1e-6)
    # --solo and --where choose the same atom.
    for option in (["--solo", "1"], ["--where", "note == 'A4'"]):
        solo = tmp_path / "solo.wav"
        result = run("render", atoms_json, "-o", solo, *option, "--force")
        assert result.exit_code == 0, result.output
        assert "1 of 3 atoms" in result.stdout
        np.testing.assert_allclose(sf.read(solo, dtype="float32")[0], render_subset(with_floor, [1]), atol=1e-7)


def test_render_subset_errors(tmp_path):
    atoms_json = tmp_path / "x.atoms.json"
    hand_made_atom_set().save(atoms_json)
    out = tmp_path / "o.wav"
    assert_one_error_line(run("render", atoms_json, "-o", out, "--solo", "7"), mentions="atoms 0 to 2")
    assert_one_error_line(run("render", atoms_json, "-o", out, "--solo", "one"), mentions="--solo")
    assert_one_error_line(run("render", atoms_json, "-o", out, "--where", "mix > 2"), mentions="no atom is chosen")
    (tmp_path / "stems").mkdir()
    (tmp_path / "stems" / "keep.wav").write_bytes(b"")
    assert_one_error_line(run("render", atoms_json, "-o", out, "--stems", tmp_path / "stems"), mentions="--force")
    assert not out.exists()
