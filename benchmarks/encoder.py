"""What the encoder's proposals are worth: quality against wall time, per init and number of iterations.

    python benchmarks/encoder.py                       # everything (about 25 min on a 2-core machine)
    python benchmarks/encoder.py --iters 0 300 --inits encoder --skip-done --no-visqol

Part 1, the 2^15-sample clips of the shared audio folder (never trained on): for
init in {analysis, encoder} and iterations in {0, 30, 100, 300, 1000, 3000}, the
fit (`splat.fit`, defaults otherwise) is scored as `quality.py` scores it:
MR-STFT (auraloss), log-mel distance, ViSQOL, note F1 and event atoms per note
(piano and violin clips), drum onset F1; and timed in process (the fit alone,
after a warm-up fit so imports and the native kernels' build are not counted).
Part 2, the CLI's wall time for one clip at each setting (`splat fit` in a fresh
process: imports, reading, the init, the fit, writing). Part 3, the ~20 s piano
file: wall time, real-time factor and MR-STFT for analysis + 3000, encoder + 300
and encoder + 1000 iterations.

Results are stored as they finish (`encoder.json` beside the report; rerun with
--skip-done to resume), and the report and the PNG (quality against wall time,
one line per init) are rebuilt from everything stored.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from quality import CLIP_SAMPLES, MethodOutput, machine, score

from splat.encoder import Encoder, n_parameters
from splat.evaluate import load_ground_truth, mrstft_distance, note_events_from_atoms
from splat.files import write_text_atomic
from splat.fitting import FitConfig, fit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INITS = ("analysis", "encoder")
ITERS = (0, 30, 100, 300, 1000, 3000)
LONG = "piano_long_bach"
LONG_SETTINGS = (("analysis", 3000), ("encoder", 300), ("encoder", 1000))
CLI_CLIP = "piano_scale_ms"
KEYS = ("mrstft", "log_mel_db", "visqol_mos", "f1", "event_atoms_per_note", "onset_f1", "seconds")


def _fit_clip(audio: np.ndarray, sample_rate: int, init: str, n_iters: int, seed: int) -> tuple[MethodOutput, float]:
    config = FitConfig(n_iters=n_iters, init=init, seed=seed)
    start = time.perf_counter()
    result = fit(audio, sample_rate, config)
    seconds = time.perf_counter() - start
    output = MethodOutput(
        result.reconstruction.astype(np.float32), note_events_from_atoms(result.atoms), len(result.atoms.atoms)
    )
    return output, seconds


def _cli_seconds(path: Path, init: str, n_iters: int | None, seed: int) -> float:
    """Wall time of `splat fit` in a fresh process (default iterations when n_iters is None)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(ROOT / "cli.py"), "fit", str(path), "-o", out, "--quiet"]
        command += ["--init", init, "--seed", str(seed)]
        command += [] if n_iters is None else ["--iters", str(n_iters)]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - start


def _network(audio: np.ndarray) -> dict[str, Any]:
    """The shipped network's size and its inference time on one 2^15-sample clip (median of 20, after 3 warm-ups)."""
    import torch

    encoder = Encoder.load()
    times = []
    for i in range(23):
        start = time.perf_counter()
        encoder.outputs(audio)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {
        "parameters": n_parameters(encoder.net),
        "inference_ms": 1000 * float(np.median(times)),
        "threads": torch.get_num_threads(),
        "sha256": encoder.sha256,
    }


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(results: dict[str, Any], commands: list[str]) -> str:
    clips = results.get("clips", {})
    network = results.get("network", {})
    lines = [
        "# Encoder: quality against wall time",
        "",
        f"Generated {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} on {machine()}.",
        "",
        f"Shipped network: {network.get('parameters', 0):,} parameters, weights sha256 {network.get('sha256', '?')[:16]}...;"
        f" inference on one 1.49 s clip {network.get('inference_ms', float('nan')):.1f} ms (median of 20,"
        f" {network.get('threads', '?')} torch threads).",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "Means over the 2^15-sample clips of the shared audio folder (never trained on); `fit s` is the fit's wall",
        "time in process per clip (after a warm-up), `CLI s` a fresh `splat fit` of piano_scale_ms (start-up",
        "included). Note F1 over the piano and violin clips, onset F1 on the drums, events/note is event atoms",
        "(within 30 dB of the loudest) per true note.",
        f"`splat fit {CLI_CLIP}.wav` at the default {FitConfig().n_iters} iterations, in a fresh process: "
        + ", ".join(f"--init {init} {_fmt(results.get('cli', {}).get(f'{init}/default/0'), 2)} s" for init in INITS)
        + " (the faster of two runs).",
        "",
        "| init | iters | seed | clips | MR-STFT ↓ | log-mel dB ↓ | ViSQOL ↑ | note F1 ↑ | events/note | drum onset F1 ↑"
        " | fit s | CLI s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    settings = sorted({(r["init"], r["iters"], r["seed"]) for r in clips.values()}, key=lambda s: (s[0], s[1], s[2]))
    for init, iters, seed in settings:
        rows = [
            r["metrics"] | {"seconds": r["seconds"]}
            for r in clips.values()
            if (r["init"], r["iters"], r["seed"]) == (init, iters, seed)
        ]
        cli = results.get("cli", {}).get(f"{init}/{iters}/{seed}")
        lines.append(
            f"| {init} | {iters} | {seed} | {len(rows)} | {_fmt(_mean(rows, 'mrstft'))} | {_fmt(_mean(rows, 'log_mel_db'), 2)}"
            f" | {_fmt(_mean(rows, 'visqol_mos'), 2)} | {_fmt(_mean(rows, 'f1'), 2)}"
            f" | {_fmt(_mean(rows, 'event_atoms_per_note'), 2)} | {_fmt(_mean(rows, 'onset_f1'), 2)}"
            f" | {_fmt(_mean(rows, 'seconds'), 2)} | {_fmt(cli, 2)} |"
        )
    piano = (
        "piano_scale_ms",
        "piano_chords_fluidr3",
        "piano_bach_bwv772_ms",
        "piano_steinway_real",
        "piano_chorale_timgm",
    )
    lines += [
        "",
        "## Piano note F1 and events per note, per setting",
        "",
        "| init | iters | seed | piano F1 | worst events/note |",
        "|---|---:|---:|---:|---:|",
    ]
    for init, iters, seed in settings:
        rows = [
            r["metrics"]
            for r in clips.values()
            if (r["init"], r["iters"], r["seed"]) == (init, iters, seed) and r["clip"] in piano
        ]
        worst = max((r.get("event_atoms_per_note") or 0.0 for r in rows), default=None)
        lines.append(f"| {init} | {iters} | {seed} | {_fmt(_mean(rows, 'f1'), 3)} | {_fmt(worst, 2)} |")
    if results.get("long"):
        lines += ["", f"## {LONG} (20 s)", "", "| init | iters | wall s | RTF | MR-STFT |", "|---|---:|---:|---:|---:|"]
        for key in sorted(results["long"]):
            r = results["long"][key]
            lines.append(f"| {r['init']} | {r['iters']} | {r['seconds']:.1f} | {r['rtf']:.2f} | {r['mrstft']:.3f} |")
    lines += [
        "",
        "## Per clip",
        "",
        "| clip | init | iters | seed | MR-STFT | log-mel dB | ViSQOL | F1 | events/note | onset F1 | fit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(clips, key=lambda k: (clips[k]["clip"], clips[k]["init"], clips[k]["iters"], clips[k]["seed"])):
        r = clips[key]
        m = r["metrics"]
        lines.append(
            f"| {r['clip']} | {r['init']} | {r['iters']} | {r['seed']} | {_fmt(m.get('mrstft'))} | {_fmt(m.get('log_mel_db'), 2)}"
            f" | {_fmt(m.get('visqol_mos'), 2)} | {_fmt(m.get('f1'), 2)} | {_fmt(m.get('event_atoms_per_note'), 2)}"
            f" | {_fmt(m.get('onset_f1'), 2)} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Mean MR-STFT and note F1 against mean fit wall time, one line per init (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = results.get("clips", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for init in INITS:
        points = []
        for iters in ITERS:
            rows = [
                r["metrics"] | {"seconds": r["seconds"]}
                for r in clips.values()
                if (r["init"], r["iters"], r["seed"]) == (init, iters, 0)
            ]
            if rows:
                points.append((iters, _mean(rows, "seconds"), _mean(rows, "mrstft"), _mean(rows, "f1")))
        if not points:
            continue
        for ax, column, label in (
            (axes[0], 2, "mean MR-STFT (lower is better)"),
            (axes[1], 3, "mean note F1 (higher is better)"),
        ):
            xs = [max(p[1], 1e-2) for p in points]
            ys = [p[column] for p in points]
            ax.plot(xs, ys, marker="o", label=init)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(str(p[0]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("fit wall time per 1.49 s clip (s, log scale)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("splat fit: quality against wall time (labels: iterations)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--iters", nargs="+", type=int, default=list(ITERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", nargs="+", help="clip names (default: every 2^15-sample clip)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "encoder.md")
    parser.add_argument("--skip-done", action="store_true", help="keep stored results instead of recomputing them")
    parser.add_argument("--no-visqol", action="store_true")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI timings")
    parser.add_argument("--no-long", action="store_true", help="skip the 20 s file")
    args = parser.parse_args(argv)

    store = args.out.with_suffix(".json")
    results: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
    results.setdefault("clips", {})
    results.setdefault("cli", {})
    results.setdefault("long", {})
    command = shlex.join(["python", "benchmarks/encoder.py", *(sys.argv[1:] if argv is None else argv)])
    results["commands"] = sorted(set(results.get("commands", [])) | {command})
    all_clips = sorted(p.stem for p in args.audio_dir.glob("*.wav") if sf.info(str(p)).frames == CLIP_SAMPLES)
    clips = args.clips or all_clips

    def save() -> None:
        write_text_atomic(store, json.dumps(results, indent=1) + "\n")

    # Warm-up: imports, the native kernels' build, librosa's first onset detection, the encoder's weights.
    warm, rate = sf.read(str(args.audio_dir / f"{clips[0]}.wav"), dtype="float32")
    if "encoder" in args.inits:
        results["network"] = _network(warm)
        save()
    for init in args.inits:
        fit(warm, rate, FitConfig(n_iters=2, init=init))
    for clip in clips:
        audio, sample_rate = sf.read(str(args.audio_dir / f"{clip}.wav"), dtype="float32")
        truth_path = args.audio_dir / f"{clip}.json"
        truth = load_ground_truth(truth_path) if truth_path.exists() else None
        for init in args.inits:
            for n_iters in args.iters:
                key = f"{clip}/{init}/{n_iters}/{args.seed}"
                if args.skip_done and key in results["clips"]:
                    continue
                output, seconds = _fit_clip(audio, sample_rate, init, n_iters, args.seed)
                metrics = score(audio, output, sample_rate, truth, with_visqol=not args.no_visqol)
                results["clips"][key] = {
                    "clip": clip,
                    "init": init,
                    "iters": n_iters,
                    "seed": args.seed,
                    "metrics": metrics,
                    "seconds": seconds,
                }
                save()
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k in KEYS)
                print(f"{clip:22s} {init:9s} {n_iters:5d} {seconds:6.2f} s  {shown}", file=sys.stderr, flush=True)
    if not args.no_cli:
        for init in args.inits:
            for n_iters in args.iters:
                key = f"{init}/{n_iters}/{args.seed}"
                if args.skip_done and key in results["cli"]:
                    continue
                results["cli"][key] = _cli_seconds(args.audio_dir / f"{CLI_CLIP}.wav", init, n_iters, args.seed)
                save()
                print(f"CLI {key}: {results['cli'][key]:.2f} s", file=sys.stderr, flush=True)
    if not args.no_cli:
        for init in args.inits:
            key = f"{init}/default/{args.seed}"
            if not (args.skip_done and key in results["cli"]):
                # Twice: the first run of a fresh checkout also builds the native kernels.
                runs = [_cli_seconds(args.audio_dir / f"{CLI_CLIP}.wav", init, None, args.seed) for _ in range(2)]
                results["cli"][key] = min(runs)
                save()
    if not args.no_long:
        audio, sample_rate = sf.read(str(args.audio_dir / f"{LONG}.wav"), dtype="float32")
        for init, n_iters in LONG_SETTINGS:
            key = f"{init}/{n_iters}/{args.seed}"
            if init not in args.inits or (args.skip_done and key in results["long"]):
                continue
            start = time.perf_counter()
            result = fit(audio, sample_rate, FitConfig(n_iters=n_iters, init=init, seed=args.seed))
            seconds = time.perf_counter() - start
            results["long"][key] = {
                "init": init,
                "iters": n_iters,
                "seconds": seconds,
                "rtf": seconds / (audio.size / sample_rate),
                "mrstft": mrstft_distance(audio, result.reconstruction, sample_rate),
            }
            save()
            print(f"long {key}: {seconds:.1f} s", file=sys.stderr, flush=True)
    write_text_atomic(args.out, report(results, results["commands"]))
    plot(results, args.out.with_suffix(".png"))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
