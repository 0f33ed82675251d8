"""The encoder's training loop: a plain function over a `TrainConfig`, with a progress callback.

Batches are drawn from a `TrainingSet` (clips with known events), augmented by a
random level (the events' gains move with it) and by mixing two clips (the
events of both), then compared with `targets.losses`. A checkpoint (network,
optimiser, step, random state) is written atomically every `checkpoint_every`
steps; a run with the same config resumes from it. At the end the decoding
threshold that finds events best on held-out clips is chosen, and the weights
and their card are written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from splat.encoder import (
    ENCODER_RATE,
    HOP,
    N_FFTS,
    SERIES_CHANNELS,
    Encoder,
    EncoderConfig,
    EncoderNet,
    decode,
    features,
    log_frequency_filters,
    n_parameters,
)
from splat.errors import ParameterError
from splat.files import atomic_path
from splat.optim import warmup_cosine
from splat.params import FIELDS, Bounds
from splat.training.data import TrainingSet, refuse_benchmark_path
from splat.training.targets import build_targets, losses

#: Event matching for the threshold search: onsets within this many seconds, pitches within a quarter tone.
_MATCH_S = 0.05
_MATCH_SEMITONES = 0.5
_THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (recorded in the weights' card).

    Attributes:
        n_steps: Optimiser steps.
        batch_size: Clips per step.
        lr: Peak AdamW learning rate (warm-up, then cosine to 5 %).
        weight_decay: AdamW's.
        seed: Seed of initialisation, batches and augmentation.
        regression_weight: Weight of the regression loss next to the detection loss.
        series_weight: Weight of the partial-series loss next to the detection loss.
        mix_probability: Share of batch items that are two clips mixed.
        level_db: Range of the random level given to a clip (dB, <= 0).
        held_out: Share of the clips kept aside to choose the threshold and report metrics.
        checkpoint_every: Steps between checkpoints.
        threads: Torch threads (0: leave torch's default).
        network: Shape of the network.
    """

    n_steps: int = 2500
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    regression_weight: float = 1.0
    series_weight: float = 0.5
    mix_probability: float = 0.3
    level_db: tuple[float, float] = (-18.0, 0.0)
    held_out: float = 0.03
    checkpoint_every: int = 200
    threads: int = 0
    network: EncoderConfig = field(default_factory=EncoderConfig)

    def validate(self) -> None:
        """Raises:
        ParameterError: naming the first setting out of range.
        """
        checks = [
            (self.n_steps >= 1, f"n_steps={self.n_steps} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (0 < self.lr <= 1, f"lr={self.lr} must be in (0, 1]"),
            (0 <= self.mix_probability <= 1, f"mix_probability={self.mix_probability} must be in [0, 1]"),
            (0 < self.held_out < 0.5, f"held_out={self.held_out} must be in (0, 0.5)"),
            (self.checkpoint_every >= 1, f"checkpoint_every={self.checkpoint_every} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ParameterError(message)


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every step."""

    step: int
    n_steps: int
    loss: float
    detection: float
    regression: float
    series: float


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        weights: Path of the weights (their card beside them, `.json`).
        losses: Loss after every step of this run (not of resumed steps).
        metrics: Held-out metrics: event precision, recall, F1 at the chosen threshold, and how
            often the series is right at the events whose series is known.
        seconds: Wall time of this run.
    """

    weights: Path
    losses: list[float]
    metrics: dict[str, float]
    seconds: float


def _split(data: TrainingSet, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(data.counts))
    n_test = max(1, int(round(held_out * order.size)))
    return order[n_test:], order[:n_test]


def _batch(
    data: TrainingSet, pool: np.ndarray, config: TrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Audio (batch, samples), events, which are known, counts and series, augmented (see the module docstring)."""
    gain_col = FIELDS.index("gain_db")
    n_events = data.events.shape[1]
    audio, events, known, counts, series = [], [], [], [], []
    for _ in range(config.batch_size):
        picks = [int(rng.choice(pool))]
        if rng.random() < config.mix_probability:
            picks.append(int(rng.choice(pool)))
        levels = [0.0] + [float(rng.uniform(-12.0, 0.0)) for _ in picks[1:]]
        mix = sum(data.audio[i].astype(np.float64) * 10.0 ** (db / 20.0) for i, db in zip(picks, levels, strict=True))
        peak = max(float(np.max(np.abs(mix))), 1e-9)
        level = float(rng.uniform(*config.level_db))
        scale = 10.0 ** (level / 20.0) / peak
        rows, masks, kinds = [], [], []
        for i, db in zip(picks, levels, strict=True):
            n = int(data.counts[i])
            ev = data.events[i, :n].copy()
            ev[:, gain_col] += db + 20.0 * math.log10(scale)
            rows.append(ev)
            masks.append(data.known[i, :n])
            kinds.append(data.series[i, :n])
        ev, kn, kind = np.concatenate(rows), np.concatenate(masks), np.concatenate(kinds)
        order = np.argsort(-np.where(kn[:, gain_col], ev[:, gain_col], 0.0), kind="stable")[:n_events]
        padded_ev = np.zeros((n_events, ev.shape[1]), dtype=np.float32)
        padded_kn = np.zeros((n_events, ev.shape[1]), dtype=bool)
        padded_kind = np.full(n_events, -1, dtype=np.int8)
        padded_ev[: order.size], padded_kn[: order.size], padded_kind[: order.size] = ev[order], kn[order], kind[order]
        audio.append((mix * scale).astype(np.float32))
        events.append(padded_ev)
        known.append(padded_kn)
        counts.append(order.size)
        series.append(padded_kind)
    return torch.from_numpy(np.stack(audio)), np.stack(events), np.stack(known), np.array(counts), np.stack(series)


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.stem + ".checkpoint.pt")


def _config_doc(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def train(
    data: TrainingSet,
    out: str | Path,
    config: TrainConfig,
    *,
    callback: Callable[[TrainProgress], None] | None = None,
    data_note: str = "",
) -> TrainResult:
    """Train an encoder on `data`; write its weights to `out` (and the card beside it).

    Resumes from `<out stem>.checkpoint.pt` when it exists and was written by the same config.

    Raises:
        ParameterError: on an invalid config, or `out` under the benchmark audio folder.
    """
    config.validate()
    out = Path(out)
    refuse_benchmark_path(out)
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    net = EncoderNet(config.network)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, config.n_steps))
    rng = np.random.default_rng(config.seed)
    first_step = 0
    checkpoint = _checkpoint_path(out)
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("config") == json.dumps(_config_doc(config), sort_keys=True):
            net.load_state_dict(state["net"])
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["schedule"])
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            first_step = int(state["step"])
    train_pool, test_pool = _split(data, config.held_out, config.seed)
    filters = [log_frequency_filters(n) for n in N_FFTS]
    history: list[float] = []
    net.train()
    for step in range(first_step + 1, config.n_steps + 1):
        audio, events, known, counts, series = _batch(data, train_pool, config, rng)
        outputs = net(features(audio, filters))
        targets = build_targets(events, known, counts, series, n_frames=outputs.shape[2])
        detection, regression, series_loss = losses(outputs, targets)
        loss = detection + config.regression_weight * regression + config.series_weight * series_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
        if callback is not None:
            parts = (float(detection.detach()), float(regression.detach()), float(series_loss.detach()))
            callback(TrainProgress(step, config.n_steps, history[-1], *parts))
        if step % config.checkpoint_every == 0 and step < config.n_steps:
            _save_checkpoint(checkpoint, net, optimiser, schedule, rng, step, config)
    net.eval()
    threshold, metrics = choose_threshold(net, config.network, data, test_pool)
    encoder = Encoder(net, config.network, threshold=threshold)
    seconds = time.perf_counter() - started
    encoder.save(
        out,
        parameters=n_parameters(net),
        training=_config_doc(config),
        data=data_note,
        held_out_metrics=metrics,
        train_seconds=round(seconds, 1),
        torch_threads=torch.get_num_threads(),
    )
    checkpoint.unlink(missing_ok=True)
    return TrainResult(out, history, metrics, seconds)


def _save_checkpoint(path: Path, net, optimiser, schedule, rng: np.random.Generator, step: int, config) -> None:
    state = {
        "net": net.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "step": step,
        "config": json.dumps(_config_doc(config), sort_keys=True),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _matches(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> int:
    """Events matched one to one (onset within _MATCH_S, pitch within _MATCH_SEMITONES), greedily."""
    used = set()
    hits = 0
    for t, p in found:
        for j, (tt, pp) in enumerate(truth):
            if j not in used and abs(t - tt) <= _MATCH_S and abs(p - pp) <= _MATCH_SEMITONES:
                used.add(j)
                hits += 1
                break
    return hits


@torch.no_grad()
def choose_threshold(
    net: EncoderNet, network: EncoderConfig, data: TrainingSet, pool: np.ndarray
) -> tuple[float, dict[str, float]]:
    """The decoding threshold with the best event F1 on held-out clips, its precision, recall, F1, and the
    share of events with a known series whose cell names that series."""
    bounds = Bounds.for_sample_rate(ENCODER_RATE)
    filters = [log_frequency_filters(n) for n in N_FFTS]
    totals = {t: [0, 0, 0] for t in _THRESHOLDS}  # hits, found, truth
    series_right, series_known = 0, 0
    time_col, f0_col = FIELDS.index("time_s"), FIELDS.index("f0_hz")
    for i in pool:
        outputs = net(features(torch.from_numpy(data.audio[i][None]), filters))[0]
        n = int(data.counts[i])
        truth = [(float(e[time_col]), 69 + 12 * math.log2(float(e[f0_col]) / 440.0)) for e in data.events[i, :n]]
        targets = build_targets(
            data.events[i : i + 1],
            data.known[i : i + 1],
            data.counts[i : i + 1],
            data.series[i : i + 1],
            n_frames=outputs.shape[1],
        )
        labelled = targets.series[0] >= 0
        series_right += int((outputs[SERIES_CHANNELS].argmax(0) == targets.series[0])[labelled].sum())
        series_known += int(labelled.sum())
        for t in _THRESHOLDS:
            peaks = decode(outputs, threshold=t, max_atoms=256, bounds=bounds)
            pairs = zip(peaks.time_s, peaks.f0_hz, strict=True)
            found = [(float(a), 69 + 12 * math.log2(float(f) / 440.0)) for a, f in pairs]
            totals[t][0] += _matches(found, truth)
            totals[t][1] += len(found)
            totals[t][2] += len(truth)

    def f1(t: float) -> float:
        hits, found, truth = totals[t]
        return 2.0 * hits / max(found + truth, 1)

    best = max(_THRESHOLDS, key=f1)
    hits, found, truth = totals[best]
    metrics = {
        "threshold": best,
        "precision": hits / max(found, 1),
        "recall": hits / max(truth, 1),
        "f1": f1(best),
        "series_accuracy": series_right / max(series_known, 1),
        "clips": int(len(pool)),
        "frame_s": HOP / ENCODER_RATE,
    }
    return best, metrics
