"""Fit atoms to audio: `FitConfig`, `fit()`, `FitResult`.

The file is cut into segments (about 1.5 s); each segment owns up to `n_atoms`
atoms whose onsets lie inside it, while their tails may ring on. Consecutive
segments are fitted jointly, a chunk at a time (one batched optimisation, so
there is no seam between them); a chunk sees the tails of the atoms fitted
before it as a fixed background, and its loss looks half a segment past its
end. Memory is bounded by the chunk size, not the file length.

Per chunk: initial atoms from onset/pitch analysis, then Adam on the raw
parameters with a warm-up + cosine learning-rate schedule, minimising the
multi-resolution STFT distance plus an annealed L1 penalty on atom gains
(in dB above the bottom of their range); atoms falling more than `prune_db`
below the loudest are pruned, and a duplicate of a louder atom's note is
pruned with its power handed to that atom. With `noise_floor`, each segment's
noise floor (`splat.floor`) is fitted alongside its atoms, capped in each band
at the level of the segment's quietest frames, with no penalty. With `room`, the
file's room (`splat.room`: a reverberation tail per band) is fitted jointly with
the first chunk's atoms and then held for the later chunks, whose atoms are
fitted in it; what rang in the room before a chunk reaches into it (the fast
engine carries the room's recursions across, the reference engine renders it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from splat import analysis, dsp, floor, spectral, synth
from splat.atoms import ENVELOPES, GAIN_RANGE, Atom, AtomSet, FloorSegment, Room
from splat.checkpoint import FitState
from splat.encoder import Encoder, Proposals
from splat.engines import FastEngine, ModelSpec, ReferenceEngine, Region
from splat.errors import AudioError, ParameterError
from splat.evaluate import EVENT_WITHIN_DB
from splat.modes import MODES, STRING
from splat.optim import Adam, warmup_cosine
from splat.params import (
    FIELDS,
    FLOOR_LEVEL_DB,
    MOTION_FIELDS,
    AtomParams,
    Bounds,
    RoomBounds,
    RoomParams,
    floor_to_physical,
    floor_to_raw,
    room_to_physical,
    room_to_raw,
    to_physical,
    to_raw,
)
from splat.room import N_BANDS as ROOM_BANDS

ENGINES = ("fast", "reference")
#: Where a fit's atoms start: the encoder's proposals, the onset/pitch analysis, or nowhere (quiet atoms at
#: random times and pitches).
INITS = ("encoder", "analysis", "random")
#: Level given to pruned atoms inside the loss (they are dropped from the output).
MUTED_DB = -200.0
#: Peak level the input is normalised to before fitting.
NORMALISED_PEAK = 1.0
#: Fractions of the iterations after which quiet atoms are pruned.
PRUNE_AT = (0.5, 0.75, 1.0)
#: Step size of each raw field relative to `FitConfig.lr`. Adam's steps are about
#: lr in raw units whatever the gradient scale, so these set how far a field can
#: move per step: ~2 ms for onsets and ~6 cents for f0 at lr = 0.05, so that
#: neither jumps out of the basin the analysis put it in; and from a fixed pitch,
#: ~18 cents/s of glide, ~1 cent of vibrato depth and ~1 % of its rate, so that a
#: motion the audio does not ask for stays small.
FIELD_STEP = {
    "time_s": 0.1,
    "f0_hz": 0.05,
    "inharmonicity": 0.5,
    "f0_glide_cents_per_s": 0.3,
    "vibrato_hz": 0.25,
    "vibrato_cents": 0.25,
}
#: Starting values of the fields the analysis does not set (physical units).
START_SHAPE = {
    "attack_s": 0.008,
    "spread_s": 0.006,
    "noise_bandwidth_hz": 3000.0,
    "inharmonicity": 1e-4,
    "rolloff_db": 4.0,
    "decay_s": 1.5,
    "mix": 0.85,
    # The short part starts as a copy of the body (same decay and rolloff), so an atom starts
    # as a one-part resonance and the fit splits it where the audio asks for it.
    "short_share": 0.3,
    "short_decay_s": 1.5,
    "short_rolloff_db": 4.0,
    "release_s": 0.3,
    "formant_hz": 2500.0,
    "formant_db": 3.0,
    # A fixed pitch: no glide, a vibrato of depth 0 (its rate a typical one, for when the depth grows).
    "f0_glide_cents_per_s": 0.0,
    "vibrato_hz": 5.5,
    "vibrato_cents": 0.0,
}
#: An atom starts with its release START_OVERLAP times as far from its onset as the next
#: onset the analysis found at least MIN_START_DURATION_S later, or LAST_START_DURATION_S
#: after it if there is none: a note is first taken to ring a little into the next one, and
#: the fit moves its release from there (1.5 gave the best fidelity and note F1 on the
#: dev clips, against 1: see the README).
MIN_START_DURATION_S = 0.1
START_OVERLAP = 1.5
LAST_START_DURATION_S = 2.0
#: Fractions of the iterations after which the residual is searched for missed notes
#: (the first before the sparsity penalty starts, so the new atoms compete on equal terms).
RESEED_AT = (0.2, 0.4)
#: Atoms whose onsets are closer than this (s) count as starting together.
_SAME_ONSET_S = 0.05
#: Fractions of the iterations after which the events' partial series are chosen (`choose_series`; fast
#: engine only): every event-level atom tries each other series, and one that starts with a louder atom is
#: tried absorbed by it as a membrane or a bar (one drum hit that several harmonic atoms each held in part).
SERIES_AT = (0.4, 0.5, 0.75, 1.0)
#: Series an atom may take when it absorbs another that starts with it: inharmonic modes. Never a
#: string, so the notes of a chord stay apart.
STRIKE_MODES = ("membrane", "bar")
#: Within one round of `choose_series`, changes whose atoms all start this far apart (s) are made together.
_INDEPENDENT_S = 0.1
#: Most rounds of `choose_series` at one point of the fit.
_SERIES_ROUNDS = 4
#: Intervals (semitones) of partials 3-8 above a fundamental: where a note can hide.
_HIDING_INTERVALS = 12.0 * np.log2(np.arange(3, 9))
#: Two atoms of the same pitch (within `DUPLICATE_CENTS`) that start less than this
#: apart (s) describe one note: the quieter one is pruned.
DUPLICATE_S = 0.1
DUPLICATE_CENTS = 50.0
#: Most audio fitted together, in samples of segments with up to `CHUNK_ATOMS` atoms (a segment with
#: more counts in proportion): a chunk's memory grows with its samples and atoms (~1 KB per sample at 64
#: atoms), so long segments, high rates or many atoms get fewer segments per chunk, and a segment that
#: alone exceeds it is refused.
CHUNK_SAMPLES = 2**20
CHUNK_ATOMS = 64
#: The noise floor starts this many dB under its ceiling in every band.
FLOOR_START_DB = 6.0
#: Where the room starts: every band's decay and the level of its tail.
ROOM_START_RT60_S = 0.5
ROOM_START_LEVEL_DB = -20.0
#: The polish (`FitConfig.polish_iters`): its peak learning rate relative to `FitConfig.lr`, and the
#: fields it leaves where the fast engine put them.
POLISH_LR = 0.5
POLISH_FIXED = ("time_s", "f0_hz")


@dataclass(frozen=True)
class FitConfig:
    """Everything that controls a fit. Recorded in the output JSON.

    Attributes:
        n_atoms: Maximum atoms per segment.
        n_iters: Optimiser steps per chunk of segments.
        lr: Peak learning rate of Adam on the raw parameters.
        seed: Seed for the initial atoms and their noise.
        device: "cpu" or "cuda".
        engine: "fast" (expected spectrogram) or "reference" (time domain).
        envelope: Burst envelope shape, "gamma" or "gaussian".
        sample_rate: Rate the audio is resampled to, in Hz.
        segment_s: Segment length in seconds (rounded to a multiple of the longest FFT).
        n_partials: Maximum partials per atom.
        fft_sizes: STFT sizes of the loss (hop = size / 4).
        sparsity: Final weight of the L1 penalty on atom gains (in dB above the bottom of their range).
        prune_db: Atoms this far below the loudest one are pruned.
        segments_per_chunk: Segments optimised together at most (bounds memory; see `chunk_segments`).
        grid_step: Time grid of the fast engine, in samples (a power of two, so every hop is whole cells).
        greedy: Weight of a second distance computed with only the louder half of
            each segment's atoms (matching-pursuit-like: the loud atoms must explain
            as much as they can on their own). 0 = plain global loss. Fast engine only.
        noise_floor: Fit a stationary noise floor per segment under the atoms (`splat.floor`).
        room: Fit the file's room (`splat.room`): a reverberation tail with a decay per
            band, learned with the first chunk's atoms and held for the later chunks.
            With n_iters 0 nothing is fitted, and the file has no room.
        init: Where the atoms start (`INITS`): "encoder" (the amortized encoder's proposals,
            `splat.encoder`), "analysis" (onsets x strongest pitches, `splat.analysis`) or
            "random" (quiet atoms at random times and pitches). With n_iters 0 the fit
            returns the atoms the init placed, unchanged.
        polish_iters: Steps per chunk on the reference engine after the fast engine's (the
            rendered audio's real STFT distance, with the noise seeds fixed and the fields
            in `POLISH_FIXED` held). Fast engine only.
        perceptual_weight: Weight of the loss's ERB-band term (`splat.loss.SpectralTarget`).
        modes: Partial series (`splat.modes.MODES`) the fit may give an atom. Atoms start as strings;
            with others allowed, the fit tries them on every event at `SERIES_AT` (fast engine only).
            ("string",) keeps every atom harmonic.
        pitch_motion: Fit the glide and vibrato (`MOTION_FIELDS`, from a fixed pitch) of the atoms
            the init places on events (and of those restarted on hidden notes; with init "random",
            of all); False (the default) keeps every pitch fixed (the fast engine's fixed-pitch path alone).
    """

    n_atoms: int = 64
    n_iters: int = 180
    lr: float = 0.05
    seed: int = 0
    device: str = "cpu"
    engine: str = "fast"
    envelope: str = "gamma"
    sample_rate: int = 22050
    segment_s: float = 32768 / 22050
    n_partials: int = 64
    fft_sizes: tuple[int, ...] = (4096, 2048, 1024, 512)
    sparsity: float = 0.05
    prune_db: float = 50.0
    segments_per_chunk: int = 8
    grid_step: int = 64
    greedy: float = 0.0
    noise_floor: bool = False
    init: str = "analysis"
    room: bool = False
    polish_iters: int = 0
    perceptual_weight: float = 0.0
    modes: tuple[str, ...] = MODES
    pitch_motion: bool = False

    def validate(self) -> None:
        """Raises:
        ParameterError: naming the first option that is out of range.
        """
        checks = [
            (self.n_atoms >= 1, f"n_atoms={self.n_atoms} must be at least 1"),
            (self.n_iters >= 0, f"n_iters={self.n_iters} must be at least 0"),
            (self.init in INITS, f"init={self.init!r} must be one of {', '.join(INITS)}"),
            (
                not isinstance(self.modes, str) and "string" in self.modes and set(self.modes) <= set(MODES),
                f"modes={self.modes!r} must be a tuple of some of {', '.join(MODES)}, string among them",
            ),
            (0 < self.lr <= 1, f"lr={self.lr} must be in (0, 1]"),
            (self.engine in ENGINES, f"engine={self.engine!r} must be one of {', '.join(ENGINES)}"),
            (self.envelope in ENVELOPES, f"envelope={self.envelope!r} must be one of {', '.join(ENVELOPES)}"),
            (8000 <= self.sample_rate <= 192_000, f"sample_rate={self.sample_rate} must be in [8000, 192000] Hz"),
            (0.1 <= self.segment_s <= 30, f"segment_s={self.segment_s} must be in [0.1, 30] s"),
            (1 <= self.n_partials <= 512, f"n_partials={self.n_partials} must be in [1, 512]"),
            (len(self.fft_sizes) >= 1, "fft_sizes must not be empty"),
            (self.sparsity >= 0, f"sparsity={self.sparsity} must be >= 0"),
            (self.prune_db > 0, f"prune_db={self.prune_db} must be > 0"),
            (self.segments_per_chunk >= 1, f"segments_per_chunk={self.segments_per_chunk} must be >= 1"),
            (self.greedy >= 0, f"greedy={self.greedy} must be >= 0"),
            (self.polish_iters >= 0, f"polish_iters={self.polish_iters} must be at least 0"),
            (self.perceptual_weight >= 0, f"perceptual_weight={self.perceptual_weight} must be >= 0"),
            (
                self.grid_step >= 1 and not self.grid_step & (self.grid_step - 1),
                f"grid_step={self.grid_step} must be a power of two",
            ),
            (
                self.greedy == 0 or self.engine == "fast",
                f"greedy={self.greedy} needs the fast engine: use engine fast, or greedy 0",
            ),
            (
                self.polish_iters == 0 or self.engine == "fast",
                f"polish_iters={self.polish_iters} polishes the fast engine's fit: use engine fast, or polish 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ParameterError(message)
        for n_fft in self.fft_sizes:
            if n_fft < 4 * self.grid_step or n_fft & (n_fft - 1):
                raise ParameterError(f"fft size {n_fft} must be a power of two >= {4 * self.grid_step}")
        if self.segment_size > CHUNK_SAMPLES:
            longest_s = CHUNK_SAMPLES / self.sample_rate * CHUNK_ATOMS / max(self.n_atoms, CHUNK_ATOMS)
            most_atoms = CHUNK_SAMPLES * CHUNK_ATOMS // self.n_segment
            fewer_atoms = f"at most {most_atoms} atoms, " if most_atoms >= CHUNK_ATOMS else ""
            raise ParameterError(
                f"segment_s={self.segment_s} at sample_rate={self.sample_rate} Hz with n_atoms={self.n_atoms}"
                f" is more than a fit holds at once ({CHUNK_SAMPLES} samples at {CHUNK_ATOMS} atoms, ~1 KB per"
                f" sample): use {fewer_atoms}segments of at most {longest_s:.2f} s, or a lower sample rate"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ParameterError(f"device={self.device!r} requested but CUDA is not available; use --device cpu")

    @property
    def n_segment(self) -> int:
        """Samples per segment: segment_s rounded to a multiple of the longest FFT."""
        unit = max(self.fft_sizes)
        return max(unit, round(self.segment_s * self.sample_rate / unit) * unit)

    @property
    def segment_size(self) -> int:
        """A segment's share of `CHUNK_SAMPLES`: its samples, times n_atoms / `CHUNK_ATOMS` above that."""
        return self.n_segment * max(self.n_atoms, CHUNK_ATOMS) // CHUNK_ATOMS

    @property
    def chunk_segments(self) -> int:
        """Segments fitted together: `segments_per_chunk`, or fewer if more would exceed `CHUNK_SAMPLES`."""
        return max(1, min(self.segments_per_chunk, CHUNK_SAMPLES // self.segment_size))


@dataclass(frozen=True)
class FitProgress:
    """Reported after every optimiser step (the polish's steps follow the fast engine's)."""

    chunk: int
    n_chunks: int
    step: int
    n_steps: int
    loss: float
    n_active: int


@dataclass
class FitResult:
    """Atoms, their rendering at the input's level, and the loss history per chunk (the polish's
    steps, if any, last: their distance is the rendered audio's)."""

    atoms: AtomSet
    reconstruction: np.ndarray
    losses: list[list[float]] = field(default_factory=list)


def fit(
    audio: np.ndarray,
    sample_rate: int,
    config: FitConfig,
    *,
    callback: Callable[[FitProgress], None] | None = None,
    init: str | None = None,
    encoder: Encoder | None = None,
    checkpoint: Callable[[FitState], None] | None = None,
    resume: FitState | None = None,
) -> FitResult:
    """Fit atoms to mono audio.

    Args:
        audio: Mono audio at `sample_rate`, shape (samples,).
        sample_rate: Must equal `config.sample_rate` (resample first; see `splat.audio`).
        config: Fit settings.
        callback: Called with a `FitProgress` after every step.
        init: Shorthand for `config.init` (replaces it when given).
        encoder: The encoder to start from with init "encoder" (default: `Encoder.load()`, the shipped weights).
        checkpoint: Called with the `FitState` after every chunk but the last (e.g. to save it).
        resume: A state `checkpoint` was given for this audio and config: the fit goes on
            from there, and returns exactly what an uninterrupted fit returns.

    Returns:
        A `FitResult`; `reconstruction` is `render_atom_set(result.atoms)`.

    Raises:
        ParameterError: on an invalid config, a sample-rate mismatch, or a `resume` state of
            another number of chunks.
        AudioError: on audio that is not mono, empty, too short (under one frame of the shortest STFT),
            silent, too loud (peak above 1e6) or non-finite.
        SplatError: with init "encoder", if the shipped weights are missing or corrupt.
    """
    if init is not None:
        config = replace(config, init=init)
    config.validate()
    if sample_rate != config.sample_rate:
        raise ParameterError(f"audio is at {sample_rate} Hz but config.sample_rate={config.sample_rate}; resample")
    samples = np.asarray(audio, dtype=np.float64)
    if sum(n > 1 for n in samples.shape) > 1:  # (samples, channels) would be read interleaved
        raise AudioError(
            f"the audio has shape {samples.shape}: fit takes mono audio of shape (samples,); mix it down"
            " first (e.g. audio.mean(axis=1)), or read it with splat.load_audio, which does"
        )
    samples = samples.reshape(-1)
    if samples.size == 0:
        raise AudioError("the audio is empty: nothing to fit")
    shortest = min(config.fft_sizes)
    if samples.size < shortest:
        raise AudioError(
            f"the audio is too short to fit: {samples.size} sample{'s' * (samples.size != 1)}, less than one"
            f" frame of the loss's shortest STFT ({shortest} samples, {1000 * shortest / sample_rate:.0f} ms)"
        )
    if not np.all(np.isfinite(samples)):
        raise AudioError("the audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(samples)))
    if peak < 1e-6:
        raise AudioError("the audio is silent (peak below -120 dBFS): nothing to fit")
    gain = NORMALISED_PEAK / peak
    if gain < GAIN_RANGE[0]:
        raise AudioError(
            f"the audio's peak is {peak:.3g}, above the {NORMALISED_PEAK / GAIN_RANGE[0]:.0g} an atoms file can"
            " record; scale it down first"
        )
    device = torch.device(config.device)
    target = torch.tensor(samples * gain, dtype=torch.float32, device=device)

    bounds = Bounds.for_sample_rate(sample_rate)
    spec = ModelSpec(
        sample_rate=sample_rate,
        envelope=config.envelope,
        n_partials=config.n_partials,
        resolutions=spectral.resolutions_for(config.fft_sizes),
        grid_step=config.grid_step,
    )
    n = samples.size
    seg = config.n_segment
    n_segments = math.ceil(n / seg)
    chunks = [
        list(range(lo, min(lo + config.chunk_segments, n_segments)))
        for lo in range(0, n_segments, config.chunk_segments)
    ]
    proposals = None
    provenance: dict[str, str] = {}
    if config.init == "encoder":
        encoder = encoder if encoder is not None else Encoder.load()
        proposals = encoder.proposals(samples * gain, sample_rate, max_atoms=config.n_atoms * n_segments, bounds=bounds)
        provenance = {"encoder_sha256": encoder.sha256}
    rng = np.random.default_rng(config.seed)
    atoms: list[Atom] = []
    floors: list[FloorSegment] = []
    losses: list[list[float]] = []
    previous: tuple[AtomParams, Tensor | None, Tensor] | None = None
    # The room once the first chunk has fitted it, and how what sounded so far rings on in it.
    room: Room | None = None
    room_states: list[Tensor] | None = None
    previous_modes: Tensor | None = None
    if resume is not None:
        if resume.n_chunks != len(chunks):
            raise ParameterError(f"cannot resume: the state has {resume.n_chunks} chunks, this fit {len(chunks)}")
        rng.bit_generator.state = resume.rng_state
        atoms, floors, losses = list(resume.atoms), list(resume.floors), [list(h) for h in resume.losses]
        previous = resume.background(device)
        room = resume.room
        room_states = None if resume.room_states is None else [s.to(device) for s in resume.room_states]
        previous_modes = None if resume.tail_modes is None else resume.tail_modes.to(device)
    for c, segments in enumerate(chunks):
        if resume is not None and c < resume.n_done:
            continue
        region = _region(segments, seg, n, last=c == len(chunks) - 1)
        chunk = _fit_chunk(
            target,
            region,
            spec,
            bounds,
            config,
            rng,
            previous,
            previous_modes,
            (atoms, floors),
            proposals,
            (room, room_states),
            chunk=c,
            n_chunks=len(chunks),
            callback=callback,
        )
        losses.append(chunk.history)
        atoms.extend(_export(chunk.params, chunk.seeds, bounds, duration_s=n / sample_rate, modes=chunk.modes))
        floors.extend(_export_floor(chunk, region, n, sample_rate))
        if room is None and chunk.room is not None:
            room = chunk.room.export()
        room_states = None if chunk.room is None else chunk.room.states
        # Only the last segment's window (two segments long) reaches into the next chunk.
        last_segment = AtomParams(**{k: v[-1:] for k, v in vars(chunk.params).items()})
        last_floor = None if chunk.floor_db is None else chunk.floor_db[-1:]
        previous = (last_segment, last_floor, torch.tensor(region.segment_starts[-1:], device=device))
        previous_modes = chunk.modes[-1:]
        if checkpoint is not None and c < len(chunks) - 1:
            checkpoint(
                FitState(
                    n_done=c + 1,
                    n_chunks=len(chunks),
                    rng_state=rng.bit_generator.state,
                    atoms=tuple(atoms),
                    floors=tuple(floors),
                    losses=tuple(tuple(h) for h in losses),
                    tail=last_segment,
                    tail_floor_db=last_floor,
                    tail_start=region.segment_starts[-1],
                    room=room,
                    room_states=None if room_states is None else tuple(room_states),
                    tail_modes=previous_modes,
                )
            )

    atom_set = AtomSet(
        atoms=(),
        sample_rate=sample_rate,
        duration_s=n / sample_rate,
        gain=gain,
        envelope=config.envelope,
        n_partials=config.n_partials,
        seed=config.seed,
        config=asdict(config) | provenance,
        floor=tuple(floors),
        room=room,
    ).with_atoms(atoms)
    return FitResult(atoms=atom_set, reconstruction=synth.render_atom_set(atom_set), losses=losses)


def _region(segments: list[int], seg: int, n: int, *, last: bool) -> Region:
    start = segments[0] * seg
    look_ahead = 0 if last else seg // 2
    return Region(
        start=start,
        n_samples=len(segments) * seg + look_ahead,
        segment_starts=tuple(s * seg for s in segments),
        n_segment=seg,
    )


def _onset_windows(region: Region, n: int, sample_rate: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Start and length (s) of each segment's onset window, shapes (segments, 1); clipped to the file."""
    starts = torch.tensor(region.segment_starts, dtype=torch.float32, device=device).unsqueeze(-1)
    lengths = (torch.clamp(n - 1 - starts, max=region.n_segment)).clamp_min(1.0)
    return starts / sample_rate, lengths / sample_rate


@dataclass
class StartingAtoms:
    """Where a chunk's atoms start.

    Attributes:
        values: Physical starting value of every field, each of shape (segments, atoms).
        noise_seeds: The atoms' noise seeds, shape (segments, atoms).
        onsets_s: Onsets the init found, in seconds from the region's start, shape (onsets,).
        placed: Atoms the init put on an event (the others start quiet, anywhere), shape (segments, atoms).
        modes: The atoms' partial series, indices into `MODES`, shape (segments, atoms): strings, but for
            the encoder's proposals of another series.
    """

    values: dict[str, np.ndarray]
    noise_seeds: np.ndarray
    onsets_s: np.ndarray
    placed: np.ndarray
    modes: np.ndarray


def initial_params(
    target: np.ndarray,
    region: Region,
    sample_rate: int,
    n_atoms: int,
    bounds: Bounds,
    rng: np.random.Generator,
    *,
    tone_peak_db: float,
    init: str = "analysis",
    proposals: Proposals | None = None,
    allowed_modes: tuple[str, ...] = MODES,
) -> StartingAtoms:
    """Starting atoms of a chunk.

    Every atom first gets a quiet start at a random time and pitch; then, in each
    segment, the first ones go to the events the init found: the analysis' strongest
    (onset, pitch) seeds (time, f0 and level; the other fields from `START_SHAPE`), or
    the encoder's proposals, strongest first (every field; the spare atoms then start at the
    bottom of the gain range; a proposal's series is kept if `allowed_modes` has it). With
    init "random", none.

    Args:
        target: The normalised file, shape (samples,).
        region: The chunk.
        sample_rate: In Hz.
        n_atoms: Atoms per segment.
        bounds: Physical ranges.
        rng: Draws the random starts and the noise seeds.
        tone_peak_db: Peak level of a 0 dB atom with the starting shape (`_tone_peak_db`).
        init: One of `INITS`.
        proposals: The encoder's proposals for the whole file (init "encoder").
        allowed_modes: The series the fit may give an atom (`FitConfig.modes`).
    """
    seg = region.n_segment
    lo = region.start
    hi = min(region.segment_starts[-1] + seg, target.size)
    n_seg = len(region.segment_starts)
    shape = (n_seg, n_atoms)
    values = {name: np.full(shape, value) for name, value in START_SHAPE.items()}
    values["noise_center_hz"] = np.exp(rng.uniform(np.log(300.0), np.log(6000.0), shape))
    values["noise_center_hz"] = np.minimum(values["noise_center_hz"], bounds.noise_center_hz.hi)
    starts = np.array(region.segment_starts) / sample_rate
    length_s = np.minimum(seg, target.size - np.array(region.segment_starts)) / sample_rate
    time_s = starts[:, None] + rng.uniform(0.0, 1.0, shape) * length_s[:, None]
    f0_hz = np.exp(rng.uniform(np.log(55.0), np.log(1760.0), shape))
    level_db = np.full(shape, analysis.QUIET_DB)
    placed = np.zeros(shape, dtype=bool)
    modes = np.full(shape, STRING, dtype=np.int64)
    used = np.zeros(n_seg, dtype=int)
    onsets_s = np.zeros(0)
    if init == "analysis":
        onsets_s, seeds = analysis.analyse(target[lo:hi].astype(np.float32), sample_rate, file_start=lo == 0)
        for s in seeds:
            t = lo / sample_rate + s.time_s
            i = int((t * sample_rate - region.start) // seg)
            if not 0 <= i < n_seg or used[i] >= n_atoms:
                continue
            j = used[i]
            time_s[i, j] = max(t - 0.002, starts[i])
            f0_hz[i, j] = min(max(s.f0_hz, bounds.f0_hz.lo * 1.01), bounds.f0_hz.hi * 0.99)
            level_db[i, j] = s.level_db
            placed[i, j] = True
            used[i] += 1
    values["time_s"] = np.minimum(time_s, starts[:, None] + length_s[:, None] * 0.999)
    values["f0_hz"] = f0_hz
    values["gain_db"] = np.clip(level_db - tone_peak_db, bounds.gain_db.lo + 1, bounds.gain_db.hi - 1)
    values["duration_s"] = np.zeros(shape)
    if init == "encoder" and proposals is not None:
        # The spare atoms start at the bottom of the gain range, not at QUIET_DB: grown from -45 dB they
        # became extra events around the proposals (note F1 0.85 -> 0.88, drum onset F1 0.74 -> 0.91 at
        # 300 iterations; docs/encoder.md).
        values["gain_db"] = np.full(shape, bounds.gain_db.lo + 1)
        proposed = proposals.modes.cpu().numpy()
        proposed = np.where(np.isin(proposed, [MODES.index(name) for name in allowed_modes]), proposed, STRING)
        onsets_s = _place_proposals(values, placed, modes, used, proposals, proposed, region, sample_rate, length_s)
    values["duration_s"] = np.where(
        placed & (init == "encoder"),
        values["duration_s"],
        starting_durations(values["time_s"], lo / sample_rate + onsets_s),
    )
    noise_seeds = rng.integers(0, 2**62, size=shape)
    return StartingAtoms(values, noise_seeds, onsets_s, placed, modes)


def _place_proposals(
    values: dict[str, np.ndarray],
    placed: np.ndarray,
    modes: np.ndarray,
    used: np.ndarray,
    proposals: Proposals,
    series: np.ndarray,
    region: Region,
    sample_rate: int,
    length_s: np.ndarray,
) -> np.ndarray:
    """Put the encoder's proposals, with their partial `series`, into their segments' first atoms (in
    place: `values`, `placed`, `modes`, `used`); returns their onsets.

    Returns:
        The distinct onsets of the proposals inside the region, seconds from its start, shape (onsets,).
    """
    seg = region.n_segment
    starts = np.array(region.segment_starts) / sample_rate
    fields = {name: getattr(proposals.params, name)[0].double().cpu().numpy() for name in FIELDS}
    n_atoms = placed.shape[1]
    onsets = []
    for k in range(len(proposals)):
        t = float(fields["time_s"][k])
        i = int((t * sample_rate - region.start) // seg)
        if not 0 <= i < len(starts) or used[i] >= n_atoms:
            continue
        j = used[i]
        for name in FIELDS:
            values[name][i, j] = fields[name][k]
        values["time_s"][i, j] = min(max(t, starts[i]), starts[i] + length_s[i] * 0.999)
        modes[i, j] = series[k]
        placed[i, j] = True
        used[i] += 1
        onsets.append(values["time_s"][i, j] - region.start / sample_rate)
    return np.unique(np.array(onsets, dtype=np.float64))


def starting_durations(time_s: np.ndarray, onsets_s: np.ndarray) -> np.ndarray:
    """Starting `duration_s` of atoms at `time_s`: a little past the next onset the analysis found.

    Args:
        time_s: Atom onsets in seconds, any shape.
        onsets_s: Detected onsets in seconds (same time origin), shape (onsets,).

    Returns:
        START_OVERLAP times the seconds from each atom's onset to the first detected
        onset at least MIN_START_DURATION_S later (LAST_START_DURATION_S if there is
        none), shape of `time_s`.
    """
    later = np.asarray(onsets_s, dtype=np.float64).reshape(-1) - time_s[..., None]
    later = np.where(later >= MIN_START_DURATION_S, later, np.inf)
    gap = later.min(axis=-1, initial=np.inf)
    return np.where(np.isfinite(gap), START_OVERLAP * gap, LAST_START_DURATION_S)


def _tone_peak_db(sample_rate: int, envelope: str) -> float:
    """Peak level (dB) of the resonance of a 0 dB atom with the starting shape (`START_SHAPE`)."""
    host = {"dtype": torch.float64, "device": "cpu"}
    u = torch.arange(int(0.5 * sample_rate), **host) / sample_rate
    one = torch.ones(1, 1, 1, **host)
    env = dsp.burst_envelope(
        u.view(1, 1, -1), one * START_SHAPE["attack_s"], one * START_SHAPE["spread_s"], shape=envelope
    )
    decays = torch.tensor([START_SHAPE["decay_s"], START_SHAPE["short_decay_s"]], **host)
    body, short = dsp.resonance_power(
        env.unsqueeze(-2) ** 2, decays.view(1, 1, 2, 1), step_samples=1, sample_rate=sample_rate
    ).unbind(-2)
    share = START_SHAPE["short_share"]
    return 10.0 * math.log10(START_SHAPE["mix"] * float(((1.0 - share) * body + share * short).max()))


@dataclass
class _ChunkFit:
    """What one chunk's optimisation returns.

    Attributes:
        params: Atoms, shape (segments, atoms); pruned ones muted.
        seeds: Their noise seeds, -1 for pruned atoms, shape (segments, atoms).
        floor_db: Noise-floor band levels, shape (segments, bands), or None (no floor).
        floor_seeds: The floors' noise seeds, shape (segments,), or None.
        history: The distance after every step.
        modes: The atoms' partial series, indices into `MODES`, shape (segments, atoms).
        room: The room as the chunk ended (its `states` at the next chunk's start), or None.
    """

    params: AtomParams
    seeds: Tensor
    floor_db: Tensor | None
    floor_seeds: Tensor | None
    history: list[float]
    modes: Tensor
    room: _RoomFit | None = None


@dataclass
class _FloorFit:
    """The noise floor being fitted in a chunk: levels = ceiling squashed sigmoid of raw0 + shift.

    Attributes:
        ceiling_db: Highest level of each band in every segment, shape (segments, bands):
            the level the segment's quietest frames hold (`floor.quiet_levels_db`).
        raw0: Starting raw values (FLOOR_START_DB under the ceiling), same shape.
        shift: What the optimiser moves, same shape.
        seeds: The floors' noise seeds, shape (segments,).
    """

    ceiling_db: Tensor
    raw0: Tensor
    shift: Tensor
    seeds: Tensor

    @classmethod
    def start(cls, target: Tensor, region: Region, sample_rate: int, rng: np.random.Generator) -> _FloorFit:
        quiet = [floor.quiet_levels_db(target[s : s + region.n_segment], sample_rate) for s in region.segment_starts]
        # Kept 1 dB inside the level range, so the sigmoid's interval is never empty.
        ceiling_db = torch.stack(quiet).clamp(FLOOR_LEVEL_DB.lo + 1.0, FLOOR_LEVEL_DB.hi)
        raw0 = floor_to_raw(ceiling_db - FLOOR_START_DB, ceiling_db)
        seeds = torch.tensor(rng.integers(0, 2**62, size=len(region.segment_starts)), dtype=torch.int64, device="cpu")
        return cls(ceiling_db, raw0, torch.zeros_like(raw0, requires_grad=True), seeds)

    def levels_db(self) -> Tensor:
        """Current band levels in dB, shape (segments, bands)."""
        return floor_to_physical(self.raw0 + self.shift, self.ceiling_db)


@dataclass
class _RoomFit:
    """The room in a chunk: learned from its start (the first chunk), or held as fitted (the later ones).

    Attributes:
        seed: The room's noise seed.
        raw0: Starting raw values, shape (bands + 1,), or None (held).
        shift: What the optimiser moves, same shape, or None (held).
        held: The fitted room, or None (learned).
        states: Fast engine: per resolution, how what sounded before the chunk rings into it
            (`FastEngine.room_states_at`), or None (silence, or the reference engine); at the
            chunk's end, the same at the next chunk's start.
    """

    seed: int
    raw0: Tensor | None = None
    shift: Tensor | None = None
    held: RoomParams | None = None
    states: list[Tensor] | None = None

    @classmethod
    def start(
        cls, room: Room | None, states: list[Tensor] | None, rng: np.random.Generator, device: torch.device
    ) -> _RoomFit:
        """The room to learn (`room` None: not fitted yet; its seed drawn from `rng`), or `room` held."""
        like = {"dtype": torch.float32, "device": device}
        if room is None:
            start = RoomParams(
                rt60_s=torch.full((ROOM_BANDS,), ROOM_START_RT60_S, **like),
                level_db=torch.tensor(ROOM_START_LEVEL_DB, **like),
            )
            raw0 = room_to_raw(start, RoomBounds())
            return cls(int(rng.integers(0, 2**62)), raw0, torch.zeros_like(raw0, requires_grad=True))
        held = RoomParams(torch.tensor(room.rt60_s, **like), torch.tensor(room.level_db, **like))
        return cls(room.noise_seed, held=held, states=states)

    def params(self) -> RoomParams:
        """The room now, shapes (bands,) and ()."""
        if self.held is not None:
            return self.held
        assert self.raw0 is not None and self.shift is not None
        return room_to_physical(self.raw0 + self.shift, RoomBounds())

    def export(self) -> Room:
        """The room as a `Room` record, clamped onto its valid ranges."""
        bounds = RoomBounds()
        with torch.no_grad():
            params = self.params()
            rt60_s = params.rt60_s.double().cpu().clamp(bounds.rt60_s.lo, bounds.rt60_s.hi)
            level_db = float(params.level_db.double().cpu().clamp(bounds.level_db.lo, bounds.level_db.hi))
        return Room(rt60_s=tuple(rt60_s.tolist()), level_db=level_db, noise_seed=self.seed)


def _fit_chunk(
    target: Tensor,
    region: Region,
    spec: ModelSpec,
    bounds: Bounds,
    config: FitConfig,
    rng: np.random.Generator,
    previous: tuple[AtomParams, Tensor | None, Tensor] | None,
    previous_modes: Tensor | None,
    so_far: tuple[list[Atom], list[FloorSegment]],
    proposals: Proposals | None,
    room_so_far: tuple[Room | None, list[Tensor] | None],
    *,
    chunk: int,
    n_chunks: int,
    callback: Callable[[FitProgress], None] | None,
) -> _ChunkFit:
    device = target.device
    n = target.numel()
    tone_peak_db = _tone_peak_db(spec.sample_rate, spec.envelope)
    starting = initial_params(
        target.cpu().numpy(),
        region,
        spec.sample_rate,
        config.n_atoms,
        bounds,
        rng,
        tone_peak_db=tone_peak_db,
        init=config.init,
        proposals=proposals,
        allowed_modes=config.modes,
    )
    values, noise_seeds, onsets_s = starting.values, starting.noise_seeds, starting.onsets_s
    # An onset at the file's first sample (it starts inside a sound, or with a strike): atoms there hold
    # notes struck at or before it, which a louder strike of the same note soon after does not repeat.
    starts_ringing = region.start == 0 and onsets_s.size > 0 and onsets_s[0] == 0.0
    held_until_s = analysis.START_ONSET_S if starts_ringing else -math.inf
    t0_s, span_s = _onset_windows(region, n, spec.sample_rate, device)
    start = AtomParams(**{k: torch.tensor(values[k], dtype=torch.float32, device=device) for k in FIELDS})
    raw0 = to_raw(start, bounds=bounds, t0_s=t0_s, span_s=span_s).detach()
    field_steps = torch.tensor([FIELD_STEP.get(name, 1.0) for name in FIELDS], device=device, dtype=raw0.dtype)
    motion_columns = torch.tensor([name in MOTION_FIELDS for name in FIELDS], device=device)
    # The atoms whose pitch motion is fitted: those the init put on an event, and later the restarts on a
    # hidden note (with init "random", all). The others keep a fixed pitch, which costs the fast engine
    # nothing, and cannot turn a quiet filler atom into a smear of glides.
    movable = torch.from_numpy(starting.placed | (config.init == "random")).to(device) & config.pitch_motion

    def step_scales() -> Tensor:
        """Each atom's step size per field, shape (segments, atoms, n_fields): 0 for a fixed pitch's motion."""
        return field_steps * ~(motion_columns & ~movable.unsqueeze(-1))

    # The optimiser moves `shift`; raw = raw0 + step_scales() * shift gives every field its own step size.
    shift = torch.zeros_like(raw0, requires_grad=True)
    seeds = torch.tensor(noise_seeds, dtype=torch.int64, device="cpu")
    # Every atom starts as a string (or as the encoder proposed); `choose_series` tries the others on the events.
    modes = torch.from_numpy(starting.modes).to(device)
    noise_floor = _FloorFit.start(target, region, spec.sample_rate, rng) if config.noise_floor else None

    def floor_levels() -> Tensor | None:
        return None if noise_floor is None else noise_floor.levels_db()

    # Without steps nothing is fitted: no room.
    room_fit = _RoomFit.start(*room_so_far, rng, device) if config.room and config.n_iters > 0 else None

    def room_now() -> RoomParams | None:
        return None if room_fit is None else room_fit.params()

    def earlier_audio() -> Tensor | None:
        """The earlier chunks' audio over this region's context, for the time-domain engine."""
        return context_background(so_far, region, spec, n_file=n, device=device, room=room_so_far[0])

    def reference_engine(noise_seeds: Tensor, background_audio: Tensor | None) -> ReferenceEngine:
        """The time-domain engine on this chunk (the fit's with `--engine reference`, and the polish's)."""
        return ReferenceEngine(
            target,
            region,
            spec,
            noise_seeds=noise_seeds,
            floor_seeds=None if noise_floor is None else noise_floor.seeds,
            room_seed=None if room_fit is None else room_fit.seed,
            background_audio=background_audio,
            perceptual_weight=config.perceptual_weight,
        )

    if config.engine == "fast":
        engine: FastEngine | ReferenceEngine = FastEngine(
            target,
            region,
            spec,
            background=previous,
            room_states=None if room_fit is None else room_fit.states,
            perceptual_weight=config.perceptual_weight,
            background_modes=previous_modes,
        )
    else:
        engine = reference_engine(seeds, earlier_audio())

    learned = [shift] + ([] if noise_floor is None else [noise_floor.shift])
    optimiser = Adam(learned + ([] if room_fit is None or room_fit.shift is None else [room_fit.shift]))
    # Without steps the fit is the init itself: only the atoms it placed on events.
    active = torch.ones(raw0.shape[:2], dtype=torch.bool, device=device)
    if config.n_iters == 0:
        active = torch.from_numpy(starting.placed).to(device)
    prune_steps = {max(1, round(f * config.n_iters)) for f in PRUNE_AT}
    reseed_steps = {max(1, round(f * config.n_iters)) for f in RESEED_AT}
    allowed = tuple(MODES.index(name) for name in config.modes)
    series_steps = {max(1, round(f * config.n_iters)) for f in SERIES_AT} if len(allowed) > 1 else set()
    history: list[float] = []
    for step in range(1, config.n_iters + 1):
        raw = raw0 + step_scales() * shift
        params = _masked(to_physical(raw, bounds=bounds, t0_s=t0_s, span_s=span_s), active)
        floor_db = floor_levels()
        if config.greedy > 0 and params.time_s.shape[1] > 1:
            lead, rest, split_modes, split_moving = _split_by_gain(params, modes, movable)
            distance, lead_distance = engine.lead_distances(
                lead, rest, floor_db, room_now(), modes=split_modes, moving=split_moving
            )
            fit_term = distance + config.greedy * lead_distance
        else:
            distance = fit_term = engine(params, floor_db, room_now(), modes=modes, moving=movable)
        weight = _sparsity_weight(step, config)
        # L1 on each atom's gain in dB above the floor (as a 0..1 share of the gain range):
        # a steady downward pull that only atoms the loss needs can resist.
        level = (params.gain_db - bounds.gain_db.lo) / (bounds.gain_db.hi - bounds.gain_db.lo)
        objective = fit_term + weight * (level * active).sum() / active.shape[0]
        optimiser.zero_grad()
        objective.backward()
        optimiser.step(config.lr * warmup_cosine(step - 1, config.n_iters))
        history.append(distance.item())
        if step in reseed_steps and step < config.n_iters:
            with torch.no_grad():
                raw = raw0 + step_scales() * shift
                current = _masked(to_physical(raw, bounds=bounds, t0_s=t0_s, span_s=span_s), active)
                model_powers = engine.model_powers(current, floor_levels(), room_now(), modes=modes, moving=movable)
                restart = residual_restarts(
                    current,
                    active,
                    model_powers,
                    engine.target.magnitudes,
                    onsets_s,
                    region,
                    spec,
                    bounds,
                    tone_peak_db=tone_peak_db,
                )
                if restart is not None:
                    replaced, new_raw = restart
                    new_raw = to_raw(new_raw, bounds=bounds, t0_s=t0_s, span_s=span_s)
                    raw0 = torch.where(replaced.unsqueeze(-1), new_raw, raw0)
                    modes.masked_fill_(replaced, STRING)  # a restart is a hidden note: a string
                    shift.masked_fill_(replaced.unsqueeze(-1), 0.0)
                    optimiser.forget(0, replaced.unsqueeze(-1))
                    movable |= replaced & config.pitch_motion
        if step in prune_steps:
            with torch.no_grad():
                gain_db = params.gain_db
                loudest = gain_db[active].max() if active.any() else gain_db.max()
                active &= gain_db > loudest - config.prune_db
                flagged, partner = duplicate_atoms(params, active, held_until_s=held_until_s)
                if flagged.any():
                    current = to_physical(raw0 + step_scales() * shift, bounds=bounds, t0_s=t0_s, span_s=span_s)
                    merged = replace(current, gain_db=_merged_gains(current.gain_db, flagged, partner))
                    raw0 = to_raw(merged, bounds=bounds, t0_s=t0_s, span_s=span_s) - step_scales() * shift.detach()
                active &= ~flagged
            if config.engine == "fast" and step < config.n_iters:
                # The fast engine keeps no per-atom state: drop pruned atoms from the tensors so
                # the remaining steps cost in proportion to the atoms still active.
                keep = _active_first(active)
                raw0, seeds, active = _take(raw0, keep), _take(seeds, keep.cpu()), _take(active, keep)
                modes, movable = _take(modes, keep), _take(movable, keep)
                shift = _take(shift.detach(), keep).requires_grad_(True)
                moments = optimiser.moments[0]
                optimiser.replace(0, shift, _take(moments.exp_avg, keep), _take(moments.exp_avg_sq, keep))
        if step in series_steps and isinstance(engine, FastEngine):
            with torch.no_grad():
                current = to_physical(raw0 + step_scales() * shift, bounds=bounds, t0_s=t0_s, span_s=span_s)
                per_level = _sparsity_weight(step, config) / active.shape[0]
                choice = choose_series(
                    engine,
                    current,
                    floor_levels(),
                    modes,
                    active,
                    allowed,
                    per_level,
                    bounds,
                    room=room_now(),
                    moving=movable,
                )
                modes, active = choice.modes, choice.active
                if choice.changed.any():
                    merged = to_raw(choice.params, bounds=bounds, t0_s=t0_s, span_s=span_s)
                    raw0 = torch.where(choice.changed.unsqueeze(-1), merged - step_scales() * shift.detach(), raw0)
        if callback is not None:
            callback(
                FitProgress(
                    chunk=chunk,
                    n_chunks=n_chunks,
                    step=step,
                    n_steps=config.n_iters + config.polish_iters,
                    loss=history[-1],
                    n_active=int(active.sum()),
                )
            )
    raw = (raw0 + step_scales() * shift).detach()
    if config.polish_iters > 0 and active.any():
        background = earlier_audio()

        def polish_engine(noise_seeds: Tensor) -> ReferenceEngine:
            return reference_engine(noise_seeds, background)

        room = None if room_fit is None else RoomParams(*(v.detach() for v in vars(room_fit.params()).values()))
        polish = _polish(
            polish_engine,
            raw,
            active,
            seeds,
            modes,
            movable,
            step_scales(),
            noise_floor,
            bounds,
            config,
            room,
            t0_s=t0_s,
            span_s=span_s,
        )
        for step, distance in polish:
            history.append(distance)
            if callback is not None:
                callback(
                    FitProgress(
                        chunk=chunk,
                        n_chunks=n_chunks,
                        step=config.n_iters + step,
                        n_steps=config.n_iters + config.polish_iters,
                        loss=distance,
                        n_active=int(active.sum()),
                    )
                )
    with torch.no_grad():
        final = _masked(to_physical(raw, bounds=bounds, t0_s=t0_s, span_s=span_s), active)
        final_floor = floor_levels()
        if room_fit is not None:
            # What the next chunk hears ringing in the room (the reference engine renders it instead).
            room_fit.states = None
            if isinstance(engine, FastEngine) and chunk < n_chunks - 1:
                n_carried = len(region.segment_starts) * region.n_segment
                room_fit.states = engine.room_states_at(
                    n_carried, final, final_floor, room_fit.params(), modes=modes, moving=movable
                )
    final_seeds = None if noise_floor is None else noise_floor.seeds
    return _ChunkFit(final, torch.where(active.cpu(), seeds, -1), final_floor, final_seeds, history, modes, room_fit)


def _polish(
    engine_for: Callable[[Tensor], ReferenceEngine],
    raw: Tensor,
    active: Tensor,
    seeds: Tensor,
    modes: Tensor,
    moving: Tensor,
    step_scale: Tensor,
    noise_floor: _FloorFit | None,
    bounds: Bounds,
    config: FitConfig,
    room: RoomParams | None,
    *,
    t0_s: Tensor,
    span_s: Tensor,
) -> Iterator[tuple[int, float]]:
    """Adam on the rendered audio's distance for `config.polish_iters` steps; updates `raw` in place.

    Only the active atoms are rendered, in onset order (`ReferenceEngine` renders each
    group over its own span), with their noise seeds; the fields in `POLISH_FIXED` stay
    put (they keep the fast engine's basins: a partial's phase makes the rendered
    distance ripple along f0 and onset). The objective is the fit's at its last step:
    the distance plus the sparsity penalty at full weight. A warm-up + cosine schedule
    peaks at `POLISH_LR` times `config.lr`: the atoms are near a minimum already.

    Args:
        engine_for: Builds the chunk's reference engine for atoms with these noise seeds,
            shape (1, atoms).
        raw: Raw parameters, shape (segments, atoms, fields); the active atoms' are updated.
        active: Shape (segments, atoms), bool.
        seeds: The atoms' noise seeds, shape (segments, atoms), on the CPU.
        modes: Their partial series (indices into `MODES`), shape (segments, atoms).
        moving: The atoms whose pitch motion is fitted, shape (segments, atoms), bool (as the fit's steps).
        step_scale: Step size of each atom's fields, shape (segments, atoms, fields) (`FIELD_STEP`; 0 for
            the motion of an atom that does not move).
        noise_floor: The chunk's noise floor (its levels are polished too), or None.
        bounds: Physical ranges.
        config: Fit settings.
        room: The file's room as the fast steps left it (held), or None.
        t0_s, span_s: Each segment's onset window, shapes (segments, 1).

    Yields:
        (step from 1, distance before that step's update).
    """
    rows, cols = torch.nonzero(active, as_tuple=True)
    onsets_s = to_physical(raw, bounds=bounds, t0_s=t0_s, span_s=span_s).time_s[rows, cols]
    order = torch.argsort(onsets_s)
    rows, cols = rows[order], cols[order]
    engine = engine_for(seeds[rows.cpu(), cols.cpu()].unsqueeze(0))
    base = raw[rows, cols].unsqueeze(0)  # (1, active atoms, fields)
    atom_modes, atom_moving = modes[rows, cols].unsqueeze(0), moving[rows, cols].unsqueeze(0)
    atom_t0, atom_span = t0_s[rows].T, span_s[rows].T  # (1, active atoms)
    free = torch.tensor([name not in POLISH_FIXED for name in FIELDS], device=raw.device)
    steps = step_scale[rows, cols].unsqueeze(0) * free
    shift = torch.zeros_like(base, requires_grad=True)
    optimiser = Adam([shift] if noise_floor is None else [shift, noise_floor.shift])
    gain_range = bounds.gain_db.hi - bounds.gain_db.lo
    n_segments = active.shape[0]
    for step in range(1, config.polish_iters + 1):
        params = to_physical(base + steps * shift, bounds=bounds, t0_s=atom_t0, span_s=atom_span)
        floor_db = None if noise_floor is None else noise_floor.levels_db()
        distance = engine(params, floor_db, room, modes=atom_modes, moving=atom_moving)
        level = (params.gain_db - bounds.gain_db.lo) / gain_range
        objective = distance + config.sparsity * level.sum() / n_segments
        optimiser.zero_grad()
        objective.backward()
        optimiser.step(POLISH_LR * config.lr * warmup_cosine(step - 1, config.polish_iters))
        yield step, distance.item()
    raw[rows, cols] = (base + steps * shift).detach()[0]


def context_background(
    so_far: tuple[list[Atom], list[FloorSegment]],
    region: Region,
    spec: ModelSpec,
    *,
    n_file: int,
    device: torch.device,
    room: Room | None = None,
) -> Tensor | None:
    """Earlier chunks' atoms and floors over a region's context (`ReferenceEngine.context_span`).

    Without a room, only what sounds there is rendered (each atom over its support, as
    `synth.render_atom_set` renders it), so the cost does not grow with what was fitted
    before. With a room, its tail of everything before rings on: the earlier chunks are
    rendered whole (`synth.render_atom_set`) and cut to the context.

    Args:
        so_far: The atoms and floor segments of the chunks before, at the normalised level.
        region: The chunk.
        spec: Model settings.
        n_file: Samples in the file.
        device: Where the audio goes.
        room: The file's room as the earlier chunks fitted it, or None.

    Returns:
        Audio, shape (n_samples + 2 * pad,), float32; None if nothing was fitted before.
    """
    atoms, floors = so_far
    if not atoms and not floors:
        return None
    sr = spec.sample_rate
    first, end = ReferenceEngine.context_span(region, spec)
    earlier = AtomSet(
        atoms=tuple(atoms),
        sample_rate=sr,
        duration_s=n_file / sr,
        envelope=spec.envelope,
        n_partials=spec.n_partials,
        floor=tuple(floors),
        room=room,
    )
    if room is not None:
        whole = torch.from_numpy(synth.render_atom_set(earlier))
        out = torch.zeros(end - first, dtype=torch.float32, device="cpu")
        lo, hi = max(first, 0), min(end, n_file)
        out[lo - first : hi - first] = whole[lo:hi]
        return out.to(device)
    params, _ = earlier.to_params()
    reaching = torch.nonzero(((params.time_s + synth.support_s(params)) * sr > first)[0]).flatten().tolist()
    out = torch.zeros(end - first, dtype=torch.float64, device="cpu")

    def add(lo: int, audio: Tensor) -> None:
        a, b = max(lo, first), min(lo + audio.numel(), end)
        if b > a:
            out[a - first : b - first] += audio[a - lo : b - lo]

    for _, lo, audio in synth.atom_signals(earlier, reaching):
        add(lo, audio)
    for segment in floors:
        lo, hi = floor.support(segment.start_s, segment.end_s, sample_rate=sr, n_samples=n_file)
        if hi > first and lo < end:
            level_db = torch.tensor(segment.level_db, dtype=torch.float64, device="cpu")
            start_s, end_s, seed = segment.start_s, segment.end_s, segment.noise_seed
            add(*synth.render_floor_segment(level_db, start_s, end_s, seed, sample_rate=sr, n_file=n_file))
    return out.float().to(device)


def _sparsity_weight(step: int, config: FitConfig) -> float:
    """Weight of the gain penalty at a step: off for the first 20 % of steps, then ramped to full by 70 %."""
    return config.sparsity * min(1.0, max(0.0, (step / config.n_iters - 0.2) / 0.5))


@dataclass(frozen=True)
class SeriesChoice:
    """Atoms after `choose_series`, shapes (segments, atoms).

    Attributes:
        params: The atoms; one that absorbed another has the sum of both powers and flatter rolloffs.
        modes: Series, indices into `MODES`.
        active: Atoms still sounding (the absorbed ones are not).
        changed: Atoms whose parameters (not only their series) changed.
    """

    params: AtomParams
    modes: Tensor
    active: Tensor
    changed: Tensor


@dataclass(frozen=True)
class _Change:
    """A candidate step of `choose_series`: in one segment, atom `atoms[0]` takes series `mode`
    and absorbs atom `atoms[1]` (none if both are the same atom)."""

    segment: int
    atoms: tuple[int, int]
    mode: int

    @property
    def absorbs(self) -> bool:
        return self.atoms[0] != self.atoms[1]


def choose_series(
    engine: FastEngine,
    params: AtomParams,
    floor_db: Tensor | None,
    modes: Tensor,
    active: Tensor,
    allowed: tuple[int, ...],
    per_level: float,
    bounds: Bounds,
    *,
    room: RoomParams | None = None,
    moving: Tensor | None = None,
) -> SeriesChoice:
    """Discrete steps on the series of the events: each atom's, and whether simultaneous atoms are one strike.

    The series is not differentiable, so it is chosen by trying. The candidates are,
    for every event-level active atom (within `EVENT_WITHIN_DB` of the loudest): each
    other allowed series; and, if it starts within `_SAME_ONSET_S` of a louder atom,
    being absorbed by the loudest such one as a membrane or a bar (`STRIKE_MODES`;
    see `_candidate_atoms` for the absorbing atom's new power and rolloffs). Each
    candidate's objective (distance plus the gain penalty, `per_level` per unit of
    level share) is estimated alone (`FastEngine.replacement_distances`); the best
    improving ones whose atoms start `_INDEPENDENT_S` apart from each other's are
    made together if the objective itself (one evaluation) says they improve it, else
    the best one alone if it does, else none; then the candidates are formed again,
    for up to `_SERIES_ROUNDS` rounds: after all the picked changes were made, only
    around them (the events starting within `_INDEPENDENT_S` of their atoms: every
    other candidate was estimated not to improve, and is as it was).

    Args:
        engine: The chunk's fast engine.
        params: Current atoms (unmasked), shape (segments, atoms).
        floor_db: Noise-floor levels, shape (segments, bands), or None.
        modes: Their series, indices into `MODES`, shape (segments, atoms).
        active: Shape (segments, atoms), bool.
        allowed: Series the atoms may take (indices into `MODES`).
        per_level: Penalty per unit of an atom's level share (gain above the floor of its range, 0..1).
        bounds: Physical ranges.
        room: The file's room now, or None. The estimates leave it out (they rank the
            candidates); the objective that decides includes it.
        moving: The atoms whose pitch motion is fitted, shape (segments, atoms), or None (as the
            engine takes it). The estimates leave the motion out; the objective that decides models it.
    """
    state = (params, modes, active)
    changed = torch.zeros_like(active)
    strikes = tuple(m for m in allowed if MODES[m] in STRIKE_MODES)
    around: list[float] | None = None  # onsets near which to look again (None: everywhere)
    for _ in range(_SERIES_ROUNDS):
        current = _masked(state[0], state[2])
        changes = _series_candidates(current, state[1], state[2], allowed, strikes, around)
        if not changes:
            break
        segments, atoms, signs, atom_modes, penalties = _candidate_atoms(current, state[1], changes, per_level, bounds)
        now, distances = engine.replacement_distances(
            current, floor_db, state[1], segments=segments, atoms=atoms, signs=signs, atom_modes=atom_modes
        )
        picked = _independent(changes, (distances - now + penalties).tolist(), params.time_s)
        if not picked:
            break
        # The estimates rank the candidates; the objective itself decides.
        base = float(engine(current, floor_db, room, modes=state[1], moving=moving))
        for chosen in (picked, picked[:1]) if len(picked) > 1 else (picked,):
            trial = _apply(chosen, changes, atoms, *state)
            distance = float(engine(_masked(trial[0], trial[2]), floor_db, room, modes=trial[1], moving=moving))
            if distance - base + float(penalties[chosen].sum()) < 0.0:
                break
        else:
            break
        state = trial
        for i in chosen:
            changed[changes[i].segment, changes[i].atoms[0]] |= changes[i].absorbs
        around = [float(params.time_s[changes[i].segment, a]) for i in chosen for a in changes[i].atoms]
        if len(chosen) < len(picked):
            around = None  # some improving candidates elsewhere were left out: look at all again
    return SeriesChoice(*state, changed)


def _series_candidates(
    params: AtomParams,
    modes: Tensor,
    active: Tensor,
    allowed: tuple[int, ...],
    strikes: tuple[int, ...],
    around: list[float] | None = None,
) -> list[_Change]:
    """The candidate changes of `choose_series` (params muted where inactive), of the events
    starting within `_INDEPENDENT_S` of a time in `around` (all events if None)."""
    gain_db = torch.where(active, params.gain_db, -math.inf)
    events = active & (gain_db >= gain_db.max() - EVENT_WITHIN_DB)
    if around is not None:
        times = torch.tensor(around, dtype=params.time_s.dtype, device=params.time_s.device)
        events &= ((params.time_s.unsqueeze(-1) - times).abs() < _INDEPENDENT_S).any(-1)
    changes = []
    for s, j in torch.nonzero(events).tolist():
        changes += [_Change(s, (j, j), m) for m in allowed if m != int(modes[s, j])]
        together = active[s] & ((params.time_s[s] - params.time_s[s, j]).abs() < _SAME_ONSET_S)
        louder = together & (gain_db[s] > gain_db[s, j])
        if strikes and louder.any():
            partner = int(torch.where(louder, gain_db[s], -math.inf).argmax())
            changes += [_Change(s, (partner, j), m) for m in strikes]
    return changes


def _candidate_atoms(
    params: AtomParams, modes: Tensor, changes: list[_Change], per_level: float, bounds: Bounds
) -> tuple[Tensor, AtomParams, Tensor, Tensor, Tensor]:
    """Each change as signed atoms (`FastEngine.replacement_distances`), shape (changes, 3).

    The atoms are the changed atom as it is (sign -1), as it would be (+1) and the absorbed
    atom (-1; sign 0 if none). An atom that absorbs another takes the sum of both powers and
    keeps its first partial's: the absorbed power goes to its upper partials (the other modes
    of the strike), so each part's rolloff is flattened to keep the first partial's share of
    the merged power what it was, 1 - rho' = (1 - rho) P_a / (P_a + P_b) (rho: the power ratio
    of neighbouring partials, as for many partials).

    Returns:
        The segments, the atoms, their signs and series, and each change's change of the gain penalty.
    """
    device = modes.device
    segments = torch.tensor([c.segment for c in changes], device=device)
    index = torch.tensor([(c.atoms[0], c.atoms[0], c.atoms[1]) for c in changes], device=device)
    rows = segments.unsqueeze(-1)
    atoms = AtomParams(**{name: getattr(params, name)[rows, index] for name in FIELDS})
    gains = atoms.gain_db
    absorbs = index[:, 0] != index[:, 2]
    merged = 10.0 * torch.log10(torch.pow(10.0, gains[:, 0] / 10.0) + torch.pow(10.0, gains[:, 2] / 10.0))
    merged = merged.clamp(max=bounds.gain_db.hi)
    kept = torch.pow(10.0, (gains[:, 0] - merged) / 10.0)  # the absorbing atom's share of the merged power
    new = {"gain_db": merged}
    for name in ("rolloff_db", "short_rolloff_db"):
        rho = torch.pow(10.0, -getattr(atoms, name)[:, 0] / 10.0)
        flatter = -10.0 * torch.log10(1.0 - (1.0 - rho) * kept)
        new[name] = flatter.clamp(bounds.range_of(name).lo, bounds.range_of(name).hi)
    columns = {}
    for name, value in new.items():
        column = getattr(atoms, name).clone()
        column[:, 1] = torch.where(absorbs, value, column[:, 1])
        columns[name] = column
    atoms = replace(atoms, **columns)
    signs = torch.stack([-torch.ones_like(index[:, 0]), torch.ones_like(index[:, 0]), -absorbs.long()], dim=1)
    atom_modes = modes[rows, index]
    atom_modes[:, 1] = torch.tensor([c.mode for c in changes], device=device)
    # Level shares: (gain - lo) / span; an absorbed atom's share goes, the absorbing one's grows.
    span = bounds.gain_db.hi - bounds.gain_db.lo
    level_change = torch.where(absorbs, (merged - gains[:, 0] - gains[:, 2] + bounds.gain_db.lo) / span, 0.0)
    return segments, atoms, signs, atom_modes, (per_level * level_change).double()


def _independent(changes: list[_Change], gains: list[float], time_s: Tensor) -> list[int]:
    """Improving changes (objective change < 0), best first, whose atoms start `_INDEPENDENT_S` from the others'."""
    picked: list[int] = []
    taken: list[float] = []
    for i in sorted(range(len(changes)), key=lambda k: gains[k]):
        if gains[i] >= 0.0:
            break
        times = [float(time_s[changes[i].segment, a]) for a in changes[i].atoms]
        if all(abs(t - u) >= _INDEPENDENT_S for t in times for u in taken):
            picked.append(i)
            taken += times
    return picked


def _apply(
    picked: list[int], changes: list[_Change], atoms: AtomParams, params: AtomParams, modes: Tensor, active: Tensor
) -> tuple[AtomParams, Tensor, Tensor]:
    """Copies of (params, modes, active) with the picked changes made (`atoms` from `_candidate_atoms`)."""
    values = {name: getattr(params, name).clone() for name in FIELDS}
    modes, active = modes.clone(), active.clone()
    for i in picked:
        change = changes[i]
        s, (a, b) = change.segment, change.atoms
        modes[s, a] = change.mode
        if change.absorbs:
            for name in FIELDS:
                values[name][s, a] = getattr(atoms, name)[i, 1]
            active[s, b] = False
    return AtomParams(**values), modes, active


def residual_restarts(
    params: AtomParams,
    active: Tensor,
    model_powers: list[Tensor],
    target_magnitudes: list[Tensor],
    onsets_s: np.ndarray,
    region: Region,
    spec: ModelSpec,
    bounds: Bounds,
    *,
    tone_peak_db: float,
) -> tuple[Tensor, AtomParams] | None:
    """Restart the quietest atoms on notes that the fit so far leaves in the residual.

    The analysis cancels the harmonics of each pitch it picks, so a note whose
    partials are harmonics of a louder simultaneous note (a twelfth or two
    octaves up: block chords over a bass) gets no atom. Once the louder note's atom has a fitted,
    smooth partial envelope, such a note stands out in the rectified residual
    at the onset (`analysis.residual_seeds`, on the longest STFT of the loss).
    Each residual pitch that no atom near that onset already has (within a
    semitone and `_SAME_ONSET_S`) and that lies on the 3rd to 8th partial of
    an event-level atom starting there takes over the quietest atom of its
    segment that is not an event (more than `EVENT_WITHIN_DB` below the
    loudest), with the starting shape of the analysis' atoms.

    Args:
        params: Current atoms, tensors of shape (segments, atoms).
        active: Shape (segments, atoms), bool.
        model_powers: Model power per resolution, shape (frames, bins), region frames.
        target_magnitudes: Target magnitude per resolution, same shapes.
        onsets_s: Onsets in seconds from the region's start, shape (onsets,).
        region: The chunk being fitted.
        spec: Model settings (its resolutions match the two lists).
        bounds: Physical ranges.
        tone_peak_db: Peak level of a 0 dB atom with the starting shape (`_tone_peak_db`).

    Returns:
        None if nothing is restarted, else the mask of restarted atoms, shape
        (segments, atoms), and `params` with the restarted atoms' new values.
    """
    longest = max(range(len(spec.resolutions)), key=lambda i: spec.resolutions[i].n_fft)
    res = spec.resolutions[longest]
    sr = spec.sample_rate
    seeds = analysis.residual_seeds(
        target_magnitudes[longest].cpu().double().numpy(),
        model_powers[longest].clamp_min(0.0).sqrt().cpu().double().numpy(),
        onsets_s,
        hop=res.hop,
        sample_rate=sr,
    )
    if not seeds:
        return None
    device = active.device
    values = {name: getattr(params, name).detach().cpu().double().numpy().copy() for name in FIELDS}
    live = active.cpu().numpy()
    gain_db = np.where(live, values["gain_db"], -np.inf)
    loudest = gain_db.max()
    free = live & (gain_db < loudest - EVENT_WITHIN_DB)
    replaced = np.zeros_like(live)
    seg = region.n_segment
    for seed in seeds:
        t_s = (region.start / sr) + seed.time_s
        i = int((t_s * sr - region.start) // seg)
        if not 0 <= i < len(region.segment_starts) or not free[i].any():
            continue
        near = live & (np.abs(values["time_s"] - t_s) < _SAME_ONSET_S)
        interval = 12.0 * np.log2(seed.f0_hz / values["f0_hz"])
        if (near & (np.abs(interval) < 1.0)).any():
            continue  # that note has an atom already
        # Only a pitch on a partial (3rd to 8th) of an event-level note starting there can
        # have been cancelled by the analysis. Not the 2nd: a low piano note's 2nd partial
        # is often stronger than the atom's geometric rolloff gives it, which leaves a
        # residual an octave up without any note there.
        hidden = np.min(np.abs(interval[..., None] - _HIDING_INTERVALS), axis=-1) < 0.5
        if not (near & (gain_db >= loudest - EVENT_WITHIN_DB) & hidden).any():
            continue
        j = int(np.argmin(np.where(free[i], gain_db[i], np.inf)))
        free[i, j], replaced[i, j] = False, True
        values["time_s"][i, j] = max(t_s - 0.002, region.segment_starts[i] / sr)
        values["f0_hz"][i, j] = min(max(seed.f0_hz, bounds.f0_hz.lo * 1.01), bounds.f0_hz.hi * 0.99)
        values["gain_db"][i, j] = np.clip(seed.level_db - tone_peak_db, bounds.gain_db.lo + 1, bounds.gain_db.hi - 1)
        for name, value in START_SHAPE.items():
            values[name][i, j] = value
        values["duration_s"][i, j] = starting_durations(np.array(t_s), region.start / sr + onsets_s)
    if not replaced.any():
        return None
    new = AtomParams(**{k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in values.items()})
    return torch.from_numpy(replaced).to(device), new


def duplicate_atoms(params: AtomParams, active: Tensor, *, held_until_s: float = -math.inf) -> tuple[Tensor, Tensor]:
    """Active atoms that repeat a louder active atom's note, and the atom each repeats.

    A note is sometimes described by two atoms of the same pitch a few tens of
    ms apart (an attack and a slower swell); read as events they count the note
    twice. An atom is a duplicate if a louder active atom (in any segment) has
    an f0 within `DUPLICATE_CENTS` and an onset within `DUPLICATE_S`; its partner
    is the loudest such atom, which takes over its power (`_merged_gains`).
    Atoms that start before `held_until_s` are never duplicates: in a file that
    starts inside a sound they hold what was struck before its first sample,
    which a louder strike of the same note soon after does not repeat.

    Args:
        params: Atoms, tensors of shape (segments, atoms).
        active: Shape (segments, atoms), bool.
        held_until_s: Onset (s, file time) before which atoms are never duplicates.

    Returns:
        Duplicates, shape (segments, atoms), bool; and each atom's partner as an
        index into the flattened (segments * atoms) axis, shape (segments, atoms)
        (meaningful where flagged).
    """
    time_s, f0_hz, gain_db = (getattr(params, k).detach().reshape(-1) for k in ("time_s", "f0_hz", "gain_db"))
    live = active.reshape(-1)
    same_time = (time_s[:, None] - time_s[None, :]).abs() < DUPLICATE_S
    same_pitch = (1200.0 * torch.log2(f0_hz[:, None] / f0_hz[None, :])).abs() < DUPLICATE_CENTS
    index = torch.arange(live.numel(), device=live.device)
    # Partner j is louder than i (ties: the earlier index wins), so exactly one of a pair is flagged.
    louder = (gain_db[None, :] > gain_db[:, None]) | (
        (gain_db[None, :] == gain_db[:, None]) & (index[None, :] < index[:, None])
    )
    match = same_time & same_pitch & louder & live[None, :]
    flagged = match.any(dim=1) & live & (time_s >= held_until_s)
    partner = torch.where(match, gain_db[None, :], torch.full_like(same_time, -math.inf, dtype=gain_db.dtype)).argmax(1)
    return flagged.reshape(active.shape), partner.reshape(active.shape)


def _merged_gains(gain_db: Tensor, flagged: Tensor, partner: Tensor) -> Tensor:
    """Gains after each flagged atom's power is added to its partner's (shapes (segments, atoms)).

    The pruned duplicate's energy stays in the note (even at the last prune step,
    when no step is left to regrow it); only the partners' gains change.
    """
    power = torch.pow(10.0, gain_db.reshape(-1) / 10.0)
    moved = torch.where(flagged.reshape(-1), power, torch.zeros_like(power))
    received = torch.zeros_like(power).index_add(0, partner.reshape(-1), moved)
    merged = torch.where(received > 0, 10.0 * torch.log10(power + received), gain_db.reshape(-1))
    return merged.reshape(gain_db.shape)


def _split_by_gain(
    params: AtomParams, modes: Tensor, moving: Tensor
) -> tuple[AtomParams, AtomParams, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The louder half of each segment's atoms (by gain), and the rest; shapes (segments, ceil(atoms / 2)).

    Returns:
        The lead and the rest, then their series (`modes`, shape (segments, atoms), split alike) and
        their `moving` masks (shape (segments, atoms), split alike), each as (lead's, rest's) as
        `FastEngine.lead_distances` takes them.
    """
    order = torch.argsort(params.gain_db.detach(), dim=1, descending=True)
    ranked = AtomParams(**{name: torch.gather(value, 1, order) for name, value in vars(params).items()})
    ranked_modes, ranked_moving = torch.gather(modes, 1, order), torch.gather(moving, 1, order)
    n_lead = (params.time_s.shape[1] + 1) // 2
    lead, rest = ranked.select(slice(0, n_lead)), ranked.select(slice(n_lead, None))
    split_modes = (ranked_modes[:, :n_lead], ranked_modes[:, n_lead:])
    return lead, rest, split_modes, (ranked_moving[:, :n_lead], ranked_moving[:, n_lead:])


def _active_first(active: Tensor) -> Tensor:
    """Per segment, indices of its active atoms first; as many columns as the busiest segment needs.

    Args:
        active: Shape (segments, atoms), bool.

    Returns:
        Atom indices, shape (segments, max active per segment (at least 1)).
    """
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)
    return order[:, : max(1, int(active.sum(1).max()))]


def _take(values: Tensor, index: Tensor) -> Tensor:
    """values[s, index[s, j], ...] for tensors of shape (segments, atoms, ...)."""
    expanded = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return torch.gather(values, 1, expanded)


def _masked(params: AtomParams, active: Tensor) -> AtomParams:
    return replace(params, gain_db=torch.where(active, params.gain_db, torch.full_like(params.gain_db, MUTED_DB)))


def _export(
    params: AtomParams, seeds: Tensor, bounds: Bounds, *, duration_s: float, modes: Tensor | None = None
) -> list[Atom]:
    """Active atoms (seed >= 0) as `Atom` records, clamped onto their valid ranges.

    `modes` holds their partial series (indices into `MODES`, shape (segments, atoms)); None: strings.
    """
    values = params.stack().detach().double().cpu().numpy()
    out = []
    for s, a in zip(*np.nonzero(seeds.numpy() >= 0), strict=True):
        record = {}
        for i, name in enumerate(FIELDS):
            lo, hi = (0.0, duration_s) if name == "time_s" else (bounds.range_of(name).lo, bounds.range_of(name).hi)
            record[name] = float(np.clip(values[s, a, i], lo, hi))
        series = MODES[STRING if modes is None else int(modes[s, a])]
        out.append(Atom(**_short_part_second(record), noise_seed=int(seeds[s, a]), modes=series))
    return out


def _export_floor(chunk: _ChunkFit, region: Region, n: int, sample_rate: int) -> list[FloorSegment]:
    """The chunk's noise floors as `FloorSegment` records (none without a floor)."""
    if chunk.floor_db is None or chunk.floor_seeds is None:
        return []
    levels = chunk.floor_db.detach().double().cpu().clamp(FLOOR_LEVEL_DB.lo, FLOOR_LEVEL_DB.hi)
    return [
        FloorSegment(start_s, end_s, level_db=tuple(levels[j].tolist()), noise_seed=int(chunk.floor_seeds[j]))
        for j, (start_s, end_s) in enumerate(region.segment_spans_s(n, sample_rate))
    ]


def _short_part_second(record: dict[str, float]) -> dict[str, float]:
    """The atom with its two resonance parts ordered so that the short part decays first.

    The fit treats the parts alike, so either can end up the shorter one. Swapping
    them (decays, rolloffs, and the share s -> 1 - s) keeps every partial's power
    (1 - s) P_body + s P_short, i.e. the expected spectrogram; only the partials'
    phases move by a quarter period. Then `short_decay_s <= decay_s` in every
    exported atom, which is what a reader of the JSON expects.
    """
    if record["short_decay_s"] <= record["decay_s"]:
        return record
    return record | {
        "decay_s": record["short_decay_s"],
        "short_decay_s": record["decay_s"],
        "rolloff_db": record["short_rolloff_db"],
        "short_rolloff_db": record["rolloff_db"],
        "short_share": 1.0 - record["short_share"],
    }
