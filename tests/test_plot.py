"""splat.plot: the atoms drawn on a spectrogram, written atomically as a PNG."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from splat.atoms import Atom, AtomSet
from splat.plot import plot_atoms
from splat.synth import render_atom_set

matplotlib_image = pytest.importorskip("matplotlib.image")

SR = 22050


def _atom_set() -> AtomSet:
    atoms = tuple(
        Atom(
            time_s=0.05 + 0.1 * i,
            gain_db=-6.0 * (i + 1),
            attack_s=0.004,
            spread_s=0.003,
            noise_center_hz=2000.0,
            noise_bandwidth_hz=1000.0,
            f0_hz=220.0 * (i + 1),
            inharmonicity=1e-4,
            rolloff_db=4.0,
            decay_s=0.3,
            mix=0.8,
            noise_seed=i,
            duration_s=0.15,
            release_s=0.1,
        )
        for i in range(3)
    )
    return AtomSet(atoms=atoms, sample_rate=SR, duration_s=0.5, n_partials=16)


def _pixels(path) -> np.ndarray:
    return matplotlib_image.imread(str(path))


def test_the_png_shows_where_the_atoms_are(tmp_path):
    atom_set = _atom_set()
    audio = render_atom_set(atom_set)
    # One title for all three (the default names the file).
    plot_atoms(tmp_path / "a.png", audio, SR, atom_set, title="atoms")
    plot_atoms(tmp_path / "b.png", audio, SR, atom_set, title="atoms")
    moved = atom_set.with_atoms([replace(atom_set.atoms[0], f0_hz=1760.0), *atom_set.atoms[1:]])
    plot_atoms(tmp_path / "c.png", audio, SR, moved, title="atoms")
    a, b, c = (_pixels(tmp_path / f"{name}.png") for name in "abc")
    assert a.shape[:2] == (660, 1210)  # 11 x 6 inches at 110 dpi
    np.testing.assert_array_equal(a, b)  # the same atoms draw the same picture
    assert np.abs(a - c).max() > 0.5  # an atom moved three octaves moves its marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]  # no temporary files left


def test_audio_shorter_than_one_fft_is_drawn_without_warnings(tmp_path):
    atom_set = _atom_set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_atoms(tmp_path / "short.png", render_atom_set(atom_set)[:300], SR, atom_set, title="atoms")
    assert _pixels(tmp_path / "short.png").shape[:2] == (660, 1210)
