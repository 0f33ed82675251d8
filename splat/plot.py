"""A picture of the atoms: the audio's spectrogram with every atom drawn where it sits.

Each atom is a marker at (`time_s`, `f0_hz`), its area set by `gain_db` and its
colour by `mix`, with a line from its onset to where it is 60 dB down (its decay,
or its release if sooner). Needs matplotlib (`pip install splat[eval]`).
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np

from splat.atoms import AtomSet
from splat.audio import zero_padded
from splat.evaluate import GroundTruth, require_optional
from splat.files import atomic_path

#: STFT of the background spectrogram: window and hop in samples.
N_FFT = 4096
HOP = 256
#: Dynamic range of the spectrogram and of the marker sizes, in dB.
RANGE_DB = 80.0
MARKER_RANGE_DB = 60.0


def plot_atoms(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    atom_set: AtomSet | None,
    *,
    truth: GroundTruth | None = None,
    title: str | None = None,
) -> None:
    """Save a PNG of `audio`'s log-frequency spectrogram with the atoms (and true notes) on it.

    Args:
        path: PNG file to write (atomically).
        audio: Mono audio, shape (samples,).
        sample_rate: Its sample rate in Hz.
        atom_set: The atoms to draw, or None for the spectrogram alone.
        truth: Ground-truth notes (squares at onset and pitch) or hits (dashed lines), or None.
        title: Figure title (default: the file's stem and the atom count).

    Raises:
        SplatError: If matplotlib is not installed.
    """
    matplotlib = require_optional("matplotlib")
    matplotlib.use("Agg")
    plt = require_optional("matplotlib.pyplot")
    display = require_optional("librosa.display")

    samples = zero_padded(np.asarray(audio, dtype=np.float32), N_FFT)
    spectrum = np.abs(librosa.stft(samples, n_fft=N_FFT, hop_length=HOP))
    spec_db = librosa.amplitude_to_db(spectrum, ref=np.max, top_db=RANGE_DB)
    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    mesh = display.specshow(spec_db, sr=sample_rate, hop_length=HOP, x_axis="time", y_axis="log", ax=ax, cmap="gray_r")
    fig.colorbar(mesh, ax=ax, format="%+.0f dB", pad=0.01)
    if truth is not None and truth.pitches_midi is not None:
        ax.scatter(
            truth.onsets_s,
            librosa.midi_to_hz(np.array(truth.pitches_midi)),
            marker="s",
            s=90,
            facecolors="none",
            edgecolors="tab:green",
            label="true notes",
        )
    elif truth is not None:
        for onset_s in truth.onsets_s:
            ax.axvline(onset_s, color="tab:green", lw=0.8, ls="--")
    if atom_set is not None and atom_set.atoms:
        atoms = atom_set.atoms
        gain_db = np.array([a.gain_db for a in atoms])
        # Marker area from 10 (MARKER_RANGE_DB below the loudest) to 250 (the loudest).
        size = 10 + 240 * np.clip(1 + (gain_db - gain_db.max()) / MARKER_RANGE_DB, 0, 1)
        times_s = np.array([a.time_s for a in atoms])
        f0_hz = np.array([a.f0_hz for a in atoms])
        rings_s = [min(a.decay_s, a.duration_s + a.release_s) for a in atoms]
        ends_s = np.minimum(times_s + rings_s, len(audio) / sample_rate)
        ax.hlines(f0_hz, times_s, ends_s, colors="tab:orange", lw=0.8, alpha=0.6)
        points = ax.scatter(
            times_s,
            f0_hz,
            s=size,
            c=[a.mix for a in atoms],
            cmap="coolwarm",
            vmin=0,
            vmax=1,
            edgecolors="black",
            linewidths=0.5,
            label="atoms (size: gain, line: until 60 dB down)",
        )
        fig.colorbar(points, ax=ax, label="mix (0: noise burst, 1: tone)", pad=0.01)
    ax.set_ylim(25, sample_rate / 2)
    if title is None:
        shown = "no atoms" if atom_set is None else f"{len(atom_set.atoms)} atoms at (time_s, f0_hz)"
        title = f"{Path(path).stem}: {shown}"
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
