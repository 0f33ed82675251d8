"""Reconstruction quality of splat and of reference methods on the shared clips.

    python benchmarks/quality.py                                   # everything
    python benchmarks/quality.py --methods mp64,ltas --clips piano_scale_ms
    python benchmarks/quality.py --methods splat --iters 200 --skip-done
    python benchmarks/quality.py --methods splat --clips guitar_real --polish 10 --out /tmp/q.md --no-plots

Methods, each on every 2^15-sample clip of the audio folder:

- ``splat``: `splat.fit` with `FitConfig()` defaults (``--iters``, ``--seed``, ``--floor``, ``--room``,
  ``--polish`` and ``--perceptual`` change n_iters, seed, noise_floor, room, polish_iters and perceptual_weight).
- ``mp64``: Gabor matching pursuit with 64 atoms (as many atoms as splat).
- ``mp_equal``: matching pursuit with as many numbers as 64 splat atoms (268 atoms).
- ``ltas``: noise with the clip's long-term spectrum and RMS (no time structure).
- ``random_phase``: the clip's STFT magnitudes with random phases.

Metrics: MR-STFT distance and log-mel distance (lower is better), ViSQOL MOS
(higher is better), the residual checks (the share of the residual's energy that is
tonal and the share of the original's onset strength the reconstruction misses; lower
is better; see `splat.evaluate`), and for splat and matching pursuit the atoms read as events
(30 dB rule; see `splat.evaluate`): note precision/recall/F1 and events per note
on clips with notes, onset F1 on the drums. A matching-pursuit atom's onset is
its window start (centre minus half its length), its pitch its frequency, its
level its energy in dB; 0 Hz atoms are never events.

Every finished (clip, method) result is stored at once in a JSON file beside
the report (``quality.json``), and the report is rebuilt from everything stored,
so runs can be split by clip or method and resumed with ``--skip-done``. Each
clip also gets ``<clip>.png``: its spectrogram with splat's atoms on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from baselines import (
    MatchingPursuitResult,
    gabor_atoms_for_splat_budget,
    gabor_matching_pursuit,
    ltas_noise,
    matching_pursuit_equal_numbers,
    random_phase_stft,
)

from splat.atoms import AtomSet
from splat.evaluate import (
    GroundTruth,
    evaluate_pair,
    events_by_level,
    load_ground_truth,
    note_events_from_atoms,
    onset_f_measure,
    transcription_scores,
    visqol_mos,
)
from splat.files import write_text_atomic
from splat.fitting import FitConfig, fit
from splat.params import N_FIELDS
from splat.plot import plot_atoms

CLIP_SAMPLES = 2**15
METHODS = ("splat", "mp64", "mp_equal", "ltas", "random_phase")
SEED = 0
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class MethodOutput:
    """Audio from one method, and its events if it has atoms."""

    audio: np.ndarray
    events: tuple[np.ndarray, np.ndarray] | None = None
    n_atoms: int | None = None
    atom_set: AtomSet | None = None


def _mp_output(result: MatchingPursuitResult) -> MethodOutput:
    pitched = [a for a in result.atoms if a.freq_hz > 0]
    events = events_by_level(
        np.array([a.time_s for a in pitched]),
        np.array([a.freq_hz for a in pitched]),
        np.array([a.level_db for a in pitched]),
    )
    return MethodOutput(result.audio, events, len(result.atoms))


def run_method(method: str, audio: np.ndarray, sample_rate: int, *, config: FitConfig) -> MethodOutput:
    """Reconstruct `audio` (shape (samples,)) with one method; `config` is splat's."""
    if method == "splat":
        result = fit(audio, sample_rate, config, callback=None)
        return MethodOutput(
            result.reconstruction.astype(np.float32),
            note_events_from_atoms(result.atoms),
            len(result.atoms.atoms),
            result.atoms,
        )
    if method == "mp64":
        return _mp_output(gabor_matching_pursuit(audio, sample_rate, n_atoms=64))
    if method == "mp_equal":
        return _mp_output(matching_pursuit_equal_numbers(audio, sample_rate, n_splat_atoms=64))
    if method == "ltas":
        return MethodOutput(ltas_noise(audio, sample_rate, seed=SEED))
    if method == "random_phase":
        return MethodOutput(random_phase_stft(audio, sample_rate, seed=SEED))
    raise ValueError(f"unknown method {method!r}")


def score(
    original: np.ndarray, output: MethodOutput, sample_rate: int, truth: GroundTruth | None, *, with_visqol: bool
) -> dict[str, Any]:
    """All metrics of one reconstruction, plus the ViSQOL run time in seconds."""
    report = evaluate_pair(original, output.audio, sample_rate, with_visqol=False)
    row: dict[str, Any] = {
        "mrstft": report.mrstft,
        "log_mel_db": report.log_mel_db,
        "tonal_residual": report.tonal_residual_share,
        "missed_onsets": report.missed_onset_share,
    }
    if with_visqol:
        start = time.perf_counter()
        row["visqol_mos"] = visqol_mos(original, output.audio, sample_rate)
        row["visqol_s"] = time.perf_counter() - start
    if output.events is not None:
        onsets_s, f0_hz = output.events
        row.update(n_atoms=output.n_atoms, n_events=int(onsets_s.size))
        if truth is not None and truth.pitches_midi is not None:
            ref = (np.array(truth.onsets_s), np.array(truth.pitches_midi))
            row.update(transcription_scores(ref, onsets_s, f0_hz))
        elif truth is not None:
            row["onset_f1"] = onset_f_measure(np.array(truth.onsets_s), onsets_s)
    return row


def machine() -> str:
    """CPU model, usable cores and torch threads of this machine."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}; nproc {len(os.sched_getaffinity(0))}; torch threads {torch.get_num_threads()}"


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


COLUMNS = (  # (key, header, digits)
    ("mrstft", "MR-STFT ↓", 3),
    ("log_mel_db", "log-mel dB ↓", 2),
    ("visqol_mos", "ViSQOL ↑", 2),
    ("tonal_residual", "tonal resid. ↓", 2),
    ("missed_onsets", "missed onsets ↓", 2),
    ("n_atoms", "atoms", 0),
    ("n_events", "events", 0),
    ("precision", "P", 2),
    ("recall", "R", 2),
    ("f1", "F1", 2),
    ("event_atoms_per_note", "events/note", 2),
    ("onset_f1", "onset F1", 2),
    ("seconds", "run s", 1),
    ("visqol_s", "ViSQOL s", 2),
)


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> list[str]:
    lines = [
        "| " + " | ".join([first] + [h for _, h, _ in COLUMNS]) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for label, row in rows:
        lines.append("| " + " | ".join([label] + [_fmt(row.get(k), d) for k, _, d in COLUMNS]) + " |")
    return lines


def report(results: dict[str, dict[str, Any]]) -> str:
    """The markdown report of every stored result."""
    per_clip = sorted(results.values(), key=lambda r: (r["clip"], METHODS.index(r["method"])))
    means = []
    for method in METHODS:
        rows = [{**r["metrics"], "seconds": r["seconds"]} for r in per_clip if r["method"] == method]
        if not rows:
            continue
        mean = {}
        for key, _, _ in COLUMNS:
            values = [row[key] for row in rows if row.get(key) is not None]
            if values:
                mean[key] = float(np.mean(values))
        means.append((f"{method} (n={len(rows)})", mean))
    commands = sorted({r["command"] for r in per_clip})
    lines = [
        "# Reconstruction quality on the dev clips",
        "",
        f"Generated {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} on {machine()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Commands that produced the stored results:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Methods: `splat` = `fit()` with `FitConfig()` defaults; `mp64` = Gabor matching pursuit, 64 atoms; "
        f"`mp_equal` = matching pursuit with the numbers of 64 splat atoms ({gabor_atoms_for_splat_budget(64)} atoms "
        f"= floor(64 x {N_FIELDS} / 5)); `ltas` = noise with the clip's long-term spectrum and RMS; `random_phase` = "
        "the clip's STFT magnitudes with random phases (RMS matched). Events are atoms within 30 dB of the "
        "loudest; notes are matched within 50 ms and 50 cents, offsets ignored. `tonal resid.` is the share of "
        "the residual's energy in spectral peaks that last 0.1 s or more, `missed onsets` the share of the "
        "original's onset strength (log-mel flux) the reconstruction lacks (`splat.evaluate`). `run s` is the "
        "method's wall time, `ViSQOL s` the time of one ViSQOL score.",
        "",
        "## Mean over clips, per method",
        "",
        "Each mean is over the clips the method has results for (n); compare methods only at equal n.",
        "",
        *_table(means, "method"),
        "",
        "## Per clip",
        "",
        *_table(
            [(f"{r['clip']} / {r['method']}", {**r["metrics"], "seconds": r["seconds"]}) for r in per_clip],
            "clip / method",
        ),
        "",
    ]
    for r in per_clip:
        if r["method"] == "splat" and r.get("settings"):
            lines.append(f"- {r['clip']} / splat settings: {r['settings']}")
    return "\n".join(lines) + "\n"


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [name for value in values for name in value.split(",") if name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--audio-dir", type=Path, default=HERE.parent.parent / "shared" / "audio")
    parser.add_argument("--clips", nargs="+", help="clip names (without .wav), space or comma separated")
    parser.add_argument("--methods", nargs="+", help=f"methods among {', '.join(METHODS)}")
    parser.add_argument("--iters", type=int, help="splat optimiser steps (FitConfig.n_iters; default: its default)")
    parser.add_argument("--seed", type=int, default=FitConfig().seed, help="splat's seed (FitConfig.seed)")
    parser.add_argument("--floor", action="store_true", help="fit splat with its noise floor (FitConfig.noise_floor)")
    parser.add_argument("--room", action="store_true", help="fit splat with the file's room (FitConfig.room)")
    parser.add_argument("--polish", type=int, default=0, help="splat's polish steps (FitConfig.polish_iters)")
    parser.add_argument("--perceptual", type=float, default=0.0, help="splat's FitConfig.perceptual_weight")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality.md")
    parser.add_argument("--skip-done", action="store_true", help="keep stored results instead of recomputing them")
    parser.add_argument("--no-visqol", action="store_true", help="skip ViSQOL")
    parser.add_argument("--no-plots", action="store_true", help="skip the per-clip PNGs")
    args = parser.parse_args(argv)

    all_clips = sorted(p.stem for p in args.audio_dir.glob("*.wav") if sf.info(str(p)).frames == CLIP_SAMPLES)
    if not all_clips:
        parser.error(f"no {CLIP_SAMPLES}-sample WAV clips in {args.audio_dir}")
    clips = _names(args.clips) or all_clips
    methods = _names(args.methods) or list(METHODS)
    for name in clips:
        if name not in all_clips:
            parser.error(f"unknown clip {name!r}; choose from {', '.join(all_clips)}")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; choose from {', '.join(METHODS)}")

    config = replace(
        FitConfig(),
        seed=args.seed,
        noise_floor=args.floor,
        room=args.room,
        polish_iters=args.polish,
        perceptual_weight=args.perceptual,
    )
    if args.iters is not None:
        config = replace(config, n_iters=args.iters)
    settings = f"n_iters={config.n_iters}"
    settings += f", seed={config.seed}" if config.seed != FitConfig().seed else ""
    settings += ", noise_floor=True" if config.noise_floor else ""
    settings += ", room=True" if config.room else ""
    settings += f", polish_iters={config.polish_iters}" if config.polish_iters != FitConfig().polish_iters else ""
    weight = config.perceptual_weight
    settings += f", perceptual_weight={weight:g}" if weight != FitConfig().perceptual_weight else ""
    store = args.out.with_suffix(".json")
    results: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.exists() else {}
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["quality.py", *argv])
    atoms_dir = args.out.parent / "atoms"

    for clip in clips:
        audio, sample_rate = sf.read(str(args.audio_dir / f"{clip}.wav"), dtype="float32")
        truth_path = args.audio_dir / f"{clip}.json"
        truth = load_ground_truth(truth_path) if truth_path.exists() else None
        for method in methods:
            key = f"{clip}/{method}"
            if args.skip_done and key in results:
                continue
            start = time.perf_counter()
            output = run_method(method, audio, sample_rate, config=config)
            seconds = time.perf_counter() - start
            metrics = score(audio, output, sample_rate, truth, with_visqol=not args.no_visqol)
            results[key] = {
                "clip": clip,
                "method": method,
                "metrics": metrics,
                "seconds": seconds,
                "command": command,
                "date": datetime.date.today().isoformat(),
                "settings": settings if method == "splat" else "",
            }
            if output.atom_set is not None:
                output.atom_set.save(atoms_dir / f"{clip}.atoms.json")
            write_text_atomic(store, json.dumps(results, indent=1) + "\n")
            shown = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in metrics.items())
            print(f"{clip:22s} {method:13s} {seconds:6.1f} s  {shown}", file=sys.stderr, flush=True)
        if not args.no_plots:
            atoms_path = atoms_dir / f"{clip}.atoms.json"
            atom_set = AtomSet.load(atoms_path) if atoms_path.exists() else None
            plot_atoms(args.out.parent / f"{clip}.png", audio, sample_rate, atom_set, truth=truth)

    text = report(results)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
