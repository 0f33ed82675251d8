"""The amortized encoder: audio -> atom proposals, so that a fit starts near its answer.

A dense map, as detectors of events at times and pitches do (CenterNet,
Onsets and Frames), rather than a fixed set of unordered slots:

- input: the log power of two STFTs (1024 and 4096 points, hop 256 at 22050 Hz: one
  sharp in time, one in pitch), read on a log-frequency axis of 3 bins per semitone,
  and stacked with copies of itself shifted by the intervals of harmonics 1/2 to 5
  (a harmonic stack: a pitch's partials line up in one column of channels);
- a small fully convolutional network over (frames x pitch bins): a strided stem down
  to one bin per semitone, residual blocks dilated in time (about +-0.35 s of
  context: a note already ringing is not new), one block that reads each pitch at musical
  intervals (fifths, octaves, twelfths: where doubled and hidden notes show);
- output per cell (frame m, semitone k): the logit of "an atom starts here", the
  onset's and the f0's offsets within the cell, the other 16 fields in the raw
  (unconstrained) space of `splat.params`, which maps them to physical units, and the
  logits of the atom's partial series (`splat.modes.MODES`: string, membrane, bar);
- decoding: cells that are the largest of their 3 x 3 neighbourhood and above a
  threshold, strongest first.

The whole file is read in one pass (in overlapping blocks for long files), so an
atom's context (the tails of what was struck before it) is the audio before it,
as the fit's background is. Weights ship in the package (`splat/weights/`),
loaded without pickle and checked against the hash in their card.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from splat.atoms import Atom, AtomSet
from splat.errors import ParameterError, SplatError
from splat.files import atomic_path, write_text_atomic
from splat.modes import MODES
from splat.params import FIELDS, MOTION_FIELDS, AtomParams, Bounds, to_physical

#: The encoder's own sample rate; other rates are resampled to it.
ENCODER_RATE = 22050
HOP = 256
N_FFTS = (1024, 4096)
BINS_PER_SEMITONE = 3
#: MIDI number of the lowest pitch bin (A0, 27.5 Hz).
LOWEST_MIDI = 21
#: Pitch bins of the output map, one per semitone: MIDI 21 .. 111 (27.5 Hz .. 4.98 kHz).
N_PITCHES = 91
HARMONICS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
#: Pitch offsets (semitones) the interval block reads: unison, fifths, octaves, twelfths, two octaves.
INTERVALS = (-24, -19, -12, -7, 0, 7, 12, 19, 24)
#: The fields regressed in raw units (all but the onset and f0, which come from the cell, and the
#: pitch motion, which the network was not trained on: its proposals have a fixed pitch, `MOTION_START`).
RAW_FIELDS = tuple(name for name in FIELDS if name not in ("time_s", "f0_hz", *MOTION_FIELDS))
#: The pitch motion of every proposal: none (`Atom`'s defaults, with which the pitch stays fixed).
MOTION_START = {name: getattr(Atom, name) for name in MOTION_FIELDS}
#: Output channels: logit, onset offset (frames), f0 offset (semitones), RAW_FIELDS, then a logit per series.
SERIES_CHANNELS = slice(3 + len(RAW_FIELDS), 3 + len(RAW_FIELDS) + len(MODES))
N_OUTPUTS = SERIES_CHANNELS.stop
#: Floor of the input's log power, dB.
FLOOR_DB = -100.0
#: Frames read at once, and frames of context on each side of a block (beyond the receptive field).
BLOCK_FRAMES = 2048
CONTEXT_FRAMES = 64
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the network. Recorded with its weights.

    Attributes:
        channels: Feature channels of the trunk.
        dilations: Time dilation of each residual block (their sum sets the context: +-31 frames,
            0.36 s, by default).
    """

    channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        return cls(channels=int(data["channels"]), dilations=tuple(int(d) for d in data["dilations"]))


def _n_input_bins() -> int:
    top_shift = round(12 * BINS_PER_SEMITONE * math.log2(max(HARMONICS)))
    return N_PITCHES * BINS_PER_SEMITONE + top_shift


def log_frequency_filters(n_fft: int, *, sample_rate: int = ENCODER_RATE) -> Tensor:
    """Triangular filters from STFT bins onto the log-frequency axis, shape (n_fft/2 + 1, input bins).

    Bin j is centred on MIDI LOWEST_MIDI - 1/3 + j/3 (its outermost edges one log bin
    away); a filter is at least two STFT bins wide, so at low pitches it interpolates
    between bins and at high ones it averages them. Each filter sums to 1 (a mean of
    power); filters above Nyquist are empty.
    """
    n_bins = _n_input_bins()
    midi = LOWEST_MIDI - 1.0 / BINS_PER_SEMITONE + torch.arange(n_bins, dtype=torch.float64) / BINS_PER_SEMITONE
    centre = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    step = sample_rate / n_fft
    half = torch.clamp(centre * (2.0 ** (1.0 / (12 * BINS_PER_SEMITONE)) - 1.0), min=step)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * step
    weights = (1.0 - (freqs[:, None] - centre[None, :]).abs() / half[None, :]).clamp_min(0.0)
    weights = torch.where(centre[None, :] < sample_rate / 2, weights, torch.zeros_like(weights))
    total = weights.sum(0, keepdim=True)
    return (weights / torch.where(total > 0, total, torch.ones_like(total))).float()


def harmonic_stack(log_power: Tensor) -> Tensor:
    """Copies of a log-frequency map shifted so that harmonic h of bin j sits at bin j.

    Args:
        log_power: Shape (batch, channels, frames, input bins), on the scale of `features`.

    Returns:
        Shape (batch, channels * len(HARMONICS), frames, N_PITCHES * BINS_PER_SEMITONE).
    """
    width = N_PITCHES * BINS_PER_SEMITONE
    floor = _scaled(torch.tensor(FLOOR_DB))
    out = []
    for h in HARMONICS:
        shift = round(12 * BINS_PER_SEMITONE * math.log2(h))
        if shift >= 0:
            out.append(log_power[..., shift : shift + width])
        else:
            pad = torch.full(
                (*log_power.shape[:-1], -shift), float(floor), dtype=log_power.dtype, device=log_power.device
            )
            out.append(torch.cat([pad, log_power[..., : width + shift]], dim=-1))
    return torch.cat(out, dim=1)


def _scaled(db: Tensor) -> Tensor:
    """dB -> the network's input scale (about -3 .. 2)."""
    return (db + 30.0) / 20.0


def features(audio: Tensor, filters: list[Tensor]) -> Tensor:
    """The network's input: log power of each STFT on the log-frequency axis.

    Args:
        audio: Shape (batch, samples) at ENCODER_RATE, normalised as the fit's target.
        filters: `log_frequency_filters` of each of N_FFTS.

    Returns:
        Shape (batch, len(N_FFTS), frames, input bins), frames = samples // HOP + 1
        (frame m centred on sample m * HOP).
    """
    maps = []
    for n_fft, bank in zip(N_FFTS, filters, strict=True):
        window = torch.hann_window(n_fft, device=audio.device, dtype=audio.dtype)
        spec = torch.stft(audio, n_fft, hop_length=HOP, window=window, center=True, return_complex=True)
        # Scaled so that a full-scale sinusoid peaks at 1/4 of power whatever n_fft.
        power = spec.real.square() + spec.imag.square()
        power = power / (window.sum() ** 2)
        maps.append(torch.einsum("bft,fj->btj", power, bank))
    db = 10.0 * torch.log10(torch.stack(maps, dim=1).clamp_min(10.0 ** (FLOOR_DB / 10.0)))
    return _scaled(db)


class _Block(nn.Module):
    """Residual block: x + 1x1(gelu(conv(norm(x)))), a 3 x 3 convolution dilated in time."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels, channels, 3, dilation=(dilation, 1), padding=(dilation, 1))
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(torch.nn.functional.gelu(self.conv(self.norm(x))))


class _IntervalBlock(nn.Module):
    """Residual block that sees the same frame at musical intervals above and below each pitch.

    A convolution along pitch with taps only at `INTERVALS` semitones (octaves,
    fifths, twelfths...): where an octave-doubled or hidden note shows. As cheap as
    a kernel of len(INTERVALS) taps, with the reach of two octaves.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels * len(INTERVALS), channels, 1)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        reach = max(INTERVALS)
        padded = torch.nn.functional.pad(h, (reach, reach))
        width = h.shape[-1]
        shifted = torch.cat([padded[..., reach + i : reach + i + width] for i in INTERVALS], dim=1)
        return x + self.mix(torch.nn.functional.gelu(self.conv(shifted)))


class EncoderNet(nn.Module):
    """Features -> per-cell outputs; see the module docstring.

    Input (batch, len(N_FFTS), frames, input bins); output (batch, N_OUTPUTS, frames, N_PITCHES).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config.channels
        n_in = len(N_FFTS) * len(HARMONICS)
        k = 3 * BINS_PER_SEMITONE
        self.stem = nn.Conv2d(n_in, c, (3, k), stride=(1, BINS_PER_SEMITONE), padding=(1, BINS_PER_SEMITONE))
        blocks: list[nn.Module] = [_Block(c, d) for d in config.dilations]
        blocks.insert(len(blocks) // 2, _IntervalBlock(c))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.GroupNorm(1, c), nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, N_OUTPUTS, 1))
        # Start rare: an atom at a cell is unlikely a priori (CenterNet's prior on the logit).
        nn.init.constant_(self.head[-1].bias, 0.0)
        with torch.no_grad():
            self.head[-1].bias[0] = -4.0
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        stacked = harmonic_stack(x).contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(self.stem(stacked)))


@dataclass(frozen=True)
class Proposals:
    """Atoms proposed for a file, strongest first.

    Attributes:
        params: Physical fields, tensors of shape (1, atoms).
        modes: Partial series of each, indices into `splat.modes.MODES`, shape (atoms,), int64.
        score: Detection probability of each, shape (atoms,).
    """

    params: AtomParams
    modes: Tensor
    score: Tensor

    def __len__(self) -> int:
        return int(self.score.numel())


@dataclass(frozen=True)
class Peaks:
    """Decoded events, strongest first.

    Attributes:
        time_s: Onsets in seconds (at ENCODER_RATE's frame grid), shape (atoms,).
        f0_hz: Pitches in Hz, shape (atoms,).
        raw: Raw values of RAW_FIELDS, shape (atoms, len(RAW_FIELDS)).
        modes: The most likely partial series, indices into MODES, shape (atoms,), int64.
        score: Detection probabilities, shape (atoms,).
    """

    time_s: Tensor
    f0_hz: Tensor
    raw: Tensor
    modes: Tensor
    score: Tensor


def decode(outputs: Tensor, *, threshold: float, max_atoms: int, bounds: Bounds) -> Peaks:
    """Peaks of the event map and their fields.

    Args:
        outputs: Shape (N_OUTPUTS, frames, N_PITCHES), one item of `EncoderNet`'s output.
        threshold: Least detection probability kept.
        max_atoms: Most peaks kept (the strongest).
        bounds: Physical ranges (f0 is clipped inside them).
    """
    prob = torch.sigmoid(outputs[0])
    peak = torch.nn.functional.max_pool2d(prob[None, None], 3, stride=1, padding=1)[0, 0]
    keep = (prob >= peak) & (prob >= threshold)
    frames, pitches = torch.nonzero(keep, as_tuple=True)
    score = prob[frames, pitches]
    order = torch.argsort(score, descending=True)[:max_atoms]
    frames, pitches, score = frames[order], pitches[order], score[order]
    cell = outputs[:, frames, pitches]  # (N_OUTPUTS, atoms)
    offset_t = torch.tanh(cell[1]) * 0.5
    offset_p = torch.tanh(cell[2]) * 0.5
    time_s = (frames.to(outputs.dtype) + offset_t) * HOP / ENCODER_RATE
    midi = (pitches.to(outputs.dtype) + LOWEST_MIDI) + offset_p
    f0_hz = (440.0 * 2.0 ** ((midi - 69.0) / 12.0)).clamp(bounds.f0_hz.lo * 1.01, bounds.f0_hz.hi * 0.99)
    raw = cell[3 : SERIES_CHANNELS.start].T
    return Peaks(time_s.clamp_min(0.0), f0_hz, raw, cell[SERIES_CHANNELS].argmax(0), score)


def weights_hash(path: Path) -> str:
    """sha256 of a weights file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Encoder:
    """A trained `EncoderNet` and what it needs to propose atoms for audio.

    Use `Encoder.load()` for the shipped weights; `propose` gives an `AtomSet`,
    `proposals` what `splat.fit` starts from.
    """

    def __init__(self, net: EncoderNet, config: EncoderConfig, *, sha256: str = "untrained", threshold: float = 0.3):
        self.net = net.eval()
        self.config = config
        self.sha256 = sha256
        self.threshold = threshold
        self._filters = [log_frequency_filters(n) for n in N_FFTS]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Encoder:
        """Load weights (default: the shipped ones) without pickle, checked against their card.

        The card (`<weights>.json`) holds the network's shape, the weights' sha256 and
        the decoding threshold.

        Raises:
            SplatError: if the weights or their card are missing, do not match their
                recorded hash (truncated or altered), or do not fit the network.
        """
        weights = Path(path) if path is not None else WEIGHTS_DIR / "encoder.pt"
        card_path = weights.with_suffix(".json")
        if not weights.is_file() or not card_path.is_file():
            raise SplatError(
                f"encoder weights not found ({weights} and its card {card_path.name}): reinstall splat, or run"
                " `make encoder`, or fit with --init analysis"
            )
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            config = EncoderConfig.from_dict(card["config"])
            expected, threshold = str(card["sha256"]), float(card["threshold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SplatError(f"the encoder card {card_path} is malformed ({exc}); reinstall splat") from exc
        actual = weights_hash(weights)
        if actual != expected:
            raise SplatError(
                f"the encoder weights {weights} are corrupt (sha256 {actual[:12]}... is not the card's"
                f" {expected[:12]}...): reinstall splat or run `make encoder`"
            )
        net = EncoderNet(config)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, ValueError, OSError, KeyError, pickle.UnpicklingError) as exc:
            # weights_only: a pickle that names anything but tensors is refused, never run.
            raise SplatError(f"the encoder weights {weights} do not fit the network: {str(exc)[:120]}") from exc
        return cls(net, config, sha256=actual, threshold=threshold)

    def save(self, path: str | Path, **card: object) -> None:
        """Write weights (`torch.save` of the state dict) and their card, each atomically.

        Saved through a buffer, not to the file: `torch.save` names the archive inside after the
        file, and the atomic write's temporary name would make equal weights hash differently.
        """
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        doc = {"config": asdict(self.config), "sha256": weights_hash(path), "threshold": self.threshold} | card
        write_text_atomic(path.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")

    @torch.no_grad()
    def outputs(self, audio: np.ndarray) -> Tensor:
        """The network's output over a whole file, shape (N_OUTPUTS, frames, N_PITCHES).

        Args:
            audio: Mono audio at ENCODER_RATE, shape (samples,), normalised as the fit's target.
        """
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, -1)
        feats = features(x, self._filters)
        n_frames = feats.shape[2]
        parts = []
        for first in range(0, n_frames, BLOCK_FRAMES):
            lo = max(0, first - CONTEXT_FRAMES)
            hi = min(n_frames, first + BLOCK_FRAMES + CONTEXT_FRAMES)
            out = self.net(feats[:, :, lo:hi])[0]
            parts.append(out[:, first - lo : first - lo + min(BLOCK_FRAMES, n_frames - first)])
        return torch.cat(parts, dim=1)

    def proposals(self, audio: np.ndarray, sample_rate: int, *, max_atoms: int, bounds: Bounds) -> Proposals:
        """Atoms proposed for mono audio (normalised to peak 1 as `fit` does), strongest first.

        Args:
            audio: Shape (samples,).
            sample_rate: Its rate in Hz (resampled to ENCODER_RATE for the network).
            max_atoms: Most atoms returned.
            bounds: Physical ranges at `sample_rate`.
        """
        if sample_rate != ENCODER_RATE:
            from scipy.signal import resample_poly

            g = math.gcd(sample_rate, ENCODER_RATE)
            audio = resample_poly(np.asarray(audio, dtype=np.float64), ENCODER_RATE // g, sample_rate // g)
        peaks = decode(self.outputs(audio), threshold=self.threshold, max_atoms=max_atoms, bounds=bounds)
        raw = torch.zeros(1, peaks.score.numel(), len(FIELDS))
        for i, name in enumerate(RAW_FIELDS):
            raw[0, :, FIELDS.index(name)] = peaks.raw[:, i]
        phys = to_physical(raw, bounds=bounds, t0_s=torch.zeros(1, 1), span_s=1.0)
        fixed = {"time_s": peaks.time_s[None], "f0_hz": peaks.f0_hz[None]}
        fixed |= {name: torch.full_like(peaks.f0_hz[None], value) for name, value in MOTION_START.items()}
        params = AtomParams(**(vars(phys) | fixed))
        return Proposals(params, peaks.modes, peaks.score)

    def propose(self, audio: np.ndarray, sample_rate: int, *, max_atoms: int = 4096, seed: int = 0) -> AtomSet:
        """Proposed atoms for audio as an `AtomSet` (what `splat fit --iters 0` writes, in one call).

        Args:
            audio: Mono audio, shape (samples,), any level (normalised to peak 1 here).
            sample_rate: Its rate in Hz, 8000-192000.
            max_atoms: Most atoms in the set.
            seed: Seed of the atoms' noise.

        Raises:
            ParameterError: on audio that is empty, silent or not finite.
        """
        samples = np.asarray(audio, dtype=np.float64).reshape(-1)
        if samples.size == 0 or not np.all(np.isfinite(samples)) or np.max(np.abs(samples)) < 1e-6:
            raise ParameterError("audio must be non-empty, finite and not silent")
        gain = 1.0 / float(np.max(np.abs(samples)))
        bounds = Bounds.for_sample_rate(sample_rate)
        found = self.proposals(samples * gain, sample_rate, max_atoms=max_atoms, bounds=bounds)
        duration_s = samples.size / sample_rate
        rng = np.random.default_rng(seed)
        atoms = []
        for j in range(len(found)):
            record = {name: float(getattr(found.params, name)[0, j]) for name in FIELDS}
            record["time_s"] = min(record["time_s"], duration_s)
            modes = MODES[int(found.modes[j])]
            atoms.append(Atom(**record, modes=modes, noise_seed=int(rng.integers(0, 2**62))))
        return AtomSet(
            atoms=tuple(atoms),
            sample_rate=sample_rate,
            duration_s=duration_s,
            gain=gain,
            config={"init": "encoder", "encoder_sha256": self.sha256},
        )


def n_parameters(net: nn.Module) -> int:
    """Number of trainable numbers in a network."""
    return sum(p.numel() for p in net.parameters())
