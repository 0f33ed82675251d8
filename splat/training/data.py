"""Training sets on disk: shards of rendered clips and their events, generated from a seed.

A shard is one `.npz` file of clips of one source (`synthetic` or `midi`), written
atomically, so an interrupted build keeps every finished shard and a rerun only
makes the missing ones (the shard's seed follows from the set's seed and its index).
Shard names carry the generator's version (`SHARD_VERSION`), so shards of an older
generator are never mixed into a new set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splat.errors import ParameterError, SplatError
from splat.files import atomic_path
from splat.params import N_FIELDS
from splat.training import midi, synthetic

SOURCES = ("synthetic", "midi")
CLIPS_PER_SHARD = 200
#: Most events stored per clip (more are dropped, the quietest first).
MAX_EVENTS = 48
#: Version of what the generators draw and a shard holds (2: the events' partial series).
SHARD_VERSION = 2
_ARRAYS = ("audio", "events", "known", "counts", "series")


def benchmark_audio_dir() -> Path:
    """`../shared/audio` beside the project: the benchmark clips, which training never reads or writes."""
    return (Path(__file__).resolve().parents[2].parent / "shared" / "audio").resolve()


def refuse_benchmark_path(path: str | Path) -> None:
    """Raise if `path` lies under the benchmark's audio folder.

    Raises:
        ParameterError: naming the path.
    """
    resolved = Path(path).resolve()
    shared = benchmark_audio_dir()
    if resolved == shared or shared in resolved.parents:
        raise ParameterError(
            f"{path} is inside the benchmark's audio folder ({shared}); training data must never come from or go"
            " there: use another folder"
        )


@dataclass(frozen=True)
class DataProgress:
    """Reported after every clip."""

    source: str
    done: int
    total: int


def _shard_path(root: Path, source: str, index: int) -> Path:
    return root / f"{source}-v{SHARD_VERSION}-{index:04d}.npz"


def build(
    root: str | Path,
    *,
    n_synthetic: int,
    n_midi: int,
    seed: int,
    callback: Callable[[DataProgress], None] | None = None,
) -> list[Path]:
    """Generate (or complete) a training set in `root`; returns its shard paths.

    Raises:
        ParameterError: if `root` is under the benchmark audio folder or a count is negative.
        SplatError: if MIDI clips are asked for and no allowed soundfont or fluidsynth is installed.
    """
    refuse_benchmark_path(root)
    if n_synthetic < 0 or n_midi < 0:
        raise ParameterError("clip counts must be >= 0")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    soundfonts = midi.available_soundfonts()
    if n_midi and not soundfonts:
        raise SplatError(
            "no allowed soundfont is installed for the MIDI clips: apt-get install "
            + " ".join(midi.SOUNDFONTS)
            + " fluidsynth (make encoder does), or ask for 0 MIDI clips"
        )
    paths = []
    for s, (source, count) in enumerate((("synthetic", n_synthetic), ("midi", n_midi))):
        n_shards = -(-count // CLIPS_PER_SHARD)
        for index in range(n_shards):
            path = _shard_path(root, source, index)
            paths.append(path)
            n_clips = min(CLIPS_PER_SHARD, count - index * CLIPS_PER_SHARD)
            if path.exists():
                if callback is not None:
                    callback(DataProgress(source, min(count, (index + 1) * CLIPS_PER_SHARD), count))
                continue
            rng = np.random.default_rng([seed, s, index])
            clips: list[synthetic.Clip] = []
            while len(clips) < n_clips:
                clip = synthetic.render_clip(rng) if source == "synthetic" else midi.midi_clip(rng, soundfonts)
                if clip is None:
                    continue
                clips.append(clip)
                if callback is not None:
                    callback(DataProgress(source, index * CLIPS_PER_SHARD + len(clips), count))
            _write_shard(path, clips)
    return paths


def _write_shard(path: Path, clips: list[synthetic.Clip]) -> None:
    audio = np.stack([c.audio for c in clips]).astype(np.float32)
    events = np.zeros((len(clips), MAX_EVENTS, N_FIELDS), dtype=np.float32)
    known = np.zeros((len(clips), MAX_EVENTS, N_FIELDS), dtype=bool)
    counts = np.zeros(len(clips), dtype=np.int64)
    series = np.full((len(clips), MAX_EVENTS), synthetic.UNKNOWN_SERIES, dtype=np.int8)
    for i, clip in enumerate(clips):
        order = np.argsort(-clip.atoms[:, 1], kind="stable")[:MAX_EVENTS]  # loudest first (gain_db)
        counts[i] = order.size
        events[i, : order.size] = clip.atoms[order]
        known[i, : order.size] = clip.known[order]
        series[i, : order.size] = clip.series[order]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, audio=audio, events=events, known=known, counts=counts, series=series)


@dataclass(frozen=True)
class TrainingSet:
    """Clips and events in memory.

    Attributes:
        audio: Shape (clips, samples), float32, peak 1.
        events: Physical fields per event, shape (clips, MAX_EVENTS, n_fields).
        known: Which of them are ground truth, same shape, bool.
        counts: Events per clip, shape (clips,).
        series: Each event's partial series (index into `splat.modes.MODES`, or
            `synthetic.UNKNOWN_SERIES`), shape (clips, MAX_EVENTS), int8.
    """

    audio: np.ndarray
    events: np.ndarray
    known: np.ndarray
    counts: np.ndarray
    series: np.ndarray


def load(paths: list[Path]) -> TrainingSet:
    """Read shards (`build`'s output) into one `TrainingSet`.

    Raises:
        SplatError: if there is no shard or one is unreadable.
    """
    if not paths:
        raise SplatError("the training set is empty: build it first (splat encoder data)")
    parts = []
    for path in paths:
        refuse_benchmark_path(path)
        try:
            with np.load(path, allow_pickle=False) as shard:
                parts.append({k: shard[k] for k in _ARRAYS})
        except (OSError, ValueError, KeyError) as exc:
            raise SplatError(f"cannot read training shard {path}: {exc}; delete it and build again") from exc
    return TrainingSet(**{k: np.concatenate([p[k] for p in parts]) for k in _ARRAYS})
