"""Edit a fitted atoms file by hand and re-render it: the atoms are the product, not the audio.

Run from the repository root after `splat fit examples/piano.wav` (or `make demo`):

    .venv/bin/python examples/edit_atoms.py

It loads examples/piano.atoms.json, takes the three loudest atoms and
  * transposes the loudest one an octave up (f0_hz * 2, kept inside the valid range),
  * mutes the second loudest (removes it),
  * raises the third loudest by 6 dB,
then writes examples/piano.edited.atoms.json and renders it to examples/piano_edited.wav.
The atom numbers it prints are positions in the input file.
Optional arguments: ATOMS.json [EDITED.atoms.json [OUT.wav]].
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from splat.atoms import AtomSet
from splat.audio import write_audio
from splat.errors import SplatError
from splat.params import Bounds
from splat.synth import render_atom_set

EXAMPLES = Path(__file__).resolve().parent
GAIN_STEP_DB = 6.0


def edit(atom_set: AtomSet) -> AtomSet:
    """Transpose the loudest atom, drop the second loudest, +6 dB on the third; print each change."""
    if len(atom_set.atoms) < 3:
        raise SplatError(f"need at least 3 atoms to edit, the file has {len(atom_set.atoms)}")
    bounds = Bounds.for_sample_rate(atom_set.sample_rate)
    loudest = sorted(range(len(atom_set.atoms)), key=lambda i: atom_set.atoms[i].gain_db, reverse=True)
    up, mute, louder = loudest[:3]
    atoms = list(atom_set.atoms)

    a = atoms[up]
    f0_hz = min(2.0 * a.f0_hz, bounds.f0_hz.hi)  # the JSON rejects f0 above its (sample-rate) cap
    atoms[up] = replace(a, f0_hz=f0_hz)
    print(f"atom {up} at {a.time_s:.3f} s: f0 {a.f0_hz:.1f} Hz -> {f0_hz:.1f} Hz (an octave up)")

    a = atoms[louder]
    gain_db = min(a.gain_db + GAIN_STEP_DB, bounds.gain_db.hi)
    atoms[louder] = replace(a, gain_db=gain_db)
    print(f"atom {louder} at {a.time_s:.3f} s: gain {a.gain_db:+.1f} dB -> {gain_db:+.1f} dB")

    a = atoms[mute]
    print(f"atom {mute} at {a.time_s:.3f} s (f0 {a.f0_hz:.1f} Hz, gain {a.gain_db:+.1f} dB): muted (removed)")
    del atoms[mute]
    return atom_set.with_atoms(atoms)


def main(argv: list[str]) -> int:
    atoms_path = Path(argv[0]) if len(argv) > 0 else EXAMPLES / "piano.atoms.json"
    edited_path = Path(argv[1]) if len(argv) > 1 else EXAMPLES / "piano.edited.atoms.json"
    audio_path = Path(argv[2]) if len(argv) > 2 else EXAMPLES / "piano_edited.wav"
    if not atoms_path.is_file():
        print(
            f"error: {atoms_path} does not exist yet; run `make demo` or `splat fit examples/piano.wav` first",
            file=sys.stderr,
        )
        return 1
    try:
        atom_set = AtomSet.load(atoms_path)
        print(f"{atoms_path}: {len(atom_set.atoms)} atoms, {atom_set.duration_s:.2f} s at {atom_set.sample_rate} Hz")
        edited = edit(atom_set)
        edited.save(edited_path)
        write_audio(audio_path, render_atom_set(edited), edited.sample_rate)
    except SplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {edited_path} ({len(edited.atoms)} atoms) and {audio_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
