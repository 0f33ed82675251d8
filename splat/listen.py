"""Listening to parts of a fit: a subset of the atoms, one stem per atom, and the residual.

Every signal here is at the original level (divided by `AtomSet.gain`) and lasts
the whole file, so stems line up in any audio editor and sum to the full render.
A file's room (`splat.room`) reverberates what is rendered: a subset plays in it,
and its reverberation of the whole file is a stem of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from splat.atoms import AtomSet
from splat.edit import note_name
from splat.errors import ParameterError
from splat.synth import atom_signals, dry_signal, floor_signal, room_signal

#: Stem file names of the noise floor and of the room's reverberation (the atoms' stems are named by `stem_name`).
FLOOR_STEM = "floor"
ROOM_STEM = "room"


@dataclass(frozen=True)
class Stem:
    """One stem: a name to write it under and its audio.

    Attributes:
        name: File name without suffix, e.g. "007_C4_1.250s" (index, note, onset) or "floor".
        audio: Audio at the original level, shape (n_samples,), float32.
    """

    name: str
    audio: np.ndarray


def stem_name(atom_set: AtomSet, index: int) -> str:
    """A stem's file name (no suffix): zero-padded index, note ("#" spelled "s") and onset, e.g. "007_Cs4_1.250s"."""
    atom = atom_set.atoms[index]
    width = max(3, len(str(len(atom_set.atoms) - 1)))
    return f"{index:0{width}d}_{note_name(atom.f0_hz).replace('#', 's')}_{atom.time_s:.3f}s"


def check_indices(atom_set: AtomSet, indices: Sequence[int]) -> list[int]:
    """`indices` sorted without repeats, after checking each names an atom.

    Raises:
        ParameterError: naming the first index out of range.
    """
    n_atoms = len(atom_set.atoms)
    for index in indices:
        if not 0 <= index < n_atoms:
            raise ParameterError(f"atom index {index} is out of range: the file has atoms 0 to {n_atoms - 1}")
    return sorted(set(indices))


def render_subset(atom_set: AtomSet, indices: Sequence[int]) -> np.ndarray:
    """Render only the atoms `indices` (no noise floor), over the whole file, in the file's room if it has one.

    Returns:
        Audio at the original level, shape (n_samples,), float32.

    Raises:
        ParameterError: if an index names no atom.
        FormatError: if a field is out of its range.
    """
    atom_set.validate()
    out = torch.zeros(atom_set.n_samples, dtype=torch.float64)
    for _, first, audio in atom_signals(atom_set, check_indices(atom_set, indices)):
        out[first : first + audio.numel()] += audio
    out += room_signal(atom_set, out)
    return (out / atom_set.gain).float().numpy()


def stems(atom_set: AtomSet, indices: Sequence[int] | None = None) -> Iterator[Stem]:
    """One whole-file stem per atom (and, when all atoms are asked for, one for the noise floor and one
    for the room's reverberation of everything).

    The stems of all atoms, the floor and the room sum to `splat.render(atom_set)` (to float32 precision).

    Args:
        atom_set: The atoms.
        indices: Atoms to make stems of; None for every atom plus the floor.

    Yields:
        `Stem`s, in index order, then the floor, then the room; one at a time, to bound memory.

    Raises:
        ParameterError: if an index names no atom.
        FormatError: if a field is out of its range.
    """
    atom_set.validate()
    chosen = range(len(atom_set.atoms)) if indices is None else check_indices(atom_set, indices)
    for index in chosen:
        out = np.zeros(atom_set.n_samples, dtype=np.float64)
        # No signal for an atom whose support lies past the end: its stem is silent.
        for _, first, audio in atom_signals(atom_set, [index]):
            out[first : first + audio.numel()] = audio.numpy()
        yield Stem(stem_name(atom_set, index), (out / atom_set.gain).astype(np.float32))
    if indices is None and atom_set.floor:
        _, audio = floor_signal(atom_set)
        yield Stem(FLOOR_STEM, (audio / atom_set.gain).float().numpy())
    if indices is None and atom_set.room is not None:
        wet = room_signal(atom_set, dry_signal(atom_set))
        yield Stem(ROOM_STEM, (wet / atom_set.gain).float().numpy())


def residual(original: np.ndarray, original_rate: int, rendered: np.ndarray, rendered_rate: int) -> np.ndarray:
    """Original minus render, at the original's rate and length.

    The render is resampled to the original's rate (soxr, high quality) if the
    rates differ, then cut or zero-padded at its end; both start at time 0.

    Args:
        original: Mono audio, shape (n,).
        original_rate: Its sample rate in Hz.
        rendered: Mono render, shape (m,).
        rendered_rate: Its sample rate in Hz.

    Returns:
        The residual, shape (n,), float32.
    """
    if rendered_rate != original_rate:
        import librosa

        rendered = librosa.resample(rendered, orig_sr=rendered_rate, target_sr=original_rate, res_type="soxr_hq")
    aligned = np.zeros(original.shape[0], dtype=np.float64)
    n = min(original.shape[0], rendered.shape[0])
    aligned[:n] = rendered[:n]
    return (original.astype(np.float64) - aligned).astype(np.float32)
