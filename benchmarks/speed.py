"""Speed of the fitting engines, and the real-time factor of a whole-file fit.

    python benchmarks/speed.py [--ref-iters 20] [--fast-iters 3000] [--out benchmarks/results/speed.md]

Part 1, one 2^15-sample real piano clip (64 atoms): for each engine, iterations
per second, the time to 3000 iterations (extrapolated for the reference), the
multi-resolution STFT distance (auraloss) of the *rendered* reconstruction
after the same number of iterations, and peak memory (RSS of a fresh process,
up to the end of the fit: the scoring after it is not counted).
Speed is the median step time; a fit's prune and note-search steps (at 20, 40,
50, 75 and 100 % of the steps) do extra work, so short runs need enough steps
(the default 20) for the median to be an ordinary step. For the long run, the
median over the steps before the first prune is also given: all 64 atoms are
still being optimised there, while later steps carry only the surviving atoms.
Part 2, the ~20 s piano clip at the default settings: wall time, real-time
factor (wall time / audio duration) and peak memory, for its first 10 s, all of
it, and 60 s (the clip three times over: memory must stay bounded by the chunk
size, not grow with the file), and the time to render the fitted atoms again
(as `splat render` would).

Every measurement runs in its own subprocess so peak memory is its own. Speed
is reported as measured on this machine; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
CLIP = "piano_steinway_real.wav"
LONG = "piano_long_bach.wav"


def measure(audio_path: str, engine: str, n_iters: int, n_atoms: int, threads: int, seconds: float) -> dict:
    """Fit one file in this process; return timings, quality and peak memory.

    `seconds` > 0 fits that much of it: its start, or the file repeated end to end when it is shorter.
    """
    import soundfile as sf
    import torch

    from splat import synth
    from splat.evaluate import mrstft_distance
    from splat.fitting import PRUNE_AT, FitConfig, fit
    from splat.runtime import tune_allocator

    torch.set_num_threads(threads)
    tune_allocator()  # as `splat fit` does
    audio, sr = sf.read(audio_path, dtype="float32")
    if seconds > 0:
        n = int(seconds * sr)
        audio = np.tile(audio, -(-n // len(audio)))[:n]
    stamps: list[float] = []
    config = FitConfig(n_atoms=n_atoms, engine=engine)
    config = dataclasses.replace(config, n_iters=n_iters or config.n_iters)
    start = time.perf_counter()
    result = fit(audio, sr, config, callback=lambda _: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - start
    # Peak memory of the fit (its final render included), before the scoring below adds its own STFTs.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    synth.render_atom_set(result.atoms)  # what `splat render` of the fitted JSON costs (fit() did it once too)
    render_s = time.perf_counter() - start
    steps = np.diff(stamps)
    # Iteration speed from the steady state (the first step pays for set-up, chunk changes for analysis).
    step_s = float(np.median(steps)) if steps.size else float("nan")
    # Steps before the first prune: every atom still in the optimisation (diffs[i] is step i + 2).
    n_before = round(min(PRUNE_AT) * config.n_iters) - 2
    full_step_s = float(np.median(steps[:n_before])) if n_before >= 10 else float("nan")
    return {
        "engine": engine,
        "n_iters": config.n_iters,
        "step_s": step_s,
        "full_step_s": full_step_s,
        "wall_s": wall,
        "render_s": render_s,
        "duration_s": len(audio) / sr,
        "mrstft": mrstft_distance(audio, result.reconstruction, sr),
        "n_active": len(result.atoms.atoms),
        "peak_rss_mb": peak_rss_mb,
    }


def run_child(*args: str) -> dict:
    """Run `measure` in a fresh interpreter and parse its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    import torch

    return f"{os.cpu_count()} cores ({model}), torch {torch.__version__}, {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=6, metavar=("AUDIO", "ENGINE", "ITERS", "ATOMS", "THREADS", "SECONDS"))
    parser.add_argument("--ref-iters", type=int, default=20, help="iterations run by both engines for the comparison")
    parser.add_argument("--fast-iters", type=int, default=3000, help="iterations of the fast engine's full run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--audio-dir", type=Path, default=AUDIO)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.md")
    args = parser.parse_args()
    if args.child:
        path, engine, iters, atoms, threads, seconds = args.child
        print(json.dumps(measure(path, engine, int(iters), int(atoms), int(threads), float(seconds))))
        return

    clip, long = str(args.audio_dir / CLIP), str(args.audio_dir / LONG)
    t = str(args.threads)
    rows = [
        ("reference", run_child(clip, "reference", str(args.ref_iters), "64", t, "0")),
        ("fast", run_child(clip, "fast", str(args.ref_iters), "64", t, "0")),
        ("fast", run_child(clip, "fast", str(args.fast_iters), "64", t, "0")),
    ]
    half = run_child(long, "fast", "0", "64", t, "10")
    whole = run_child(long, "fast", "0", "64", t, "0")
    triple = run_child(long, "fast", "0", "64", t, str(3 * whole["duration_s"]))

    lines = [
        "# Speed",
        "",
        f"Machine: {machine()}; {args.threads} torch threads. Command: `python benchmarks/speed.py"
        f" --ref-iters {args.ref_iters} --fast-iters {args.fast_iters} --threads {args.threads}`"
        f" ({time.strftime('%Y-%m-%d')}).",
        "",
        f"## One segment: `{CLIP}` (2^15 samples, 1.49 s), 64 atoms",
        "",
        "| engine | iterations | it/s (median step) | it/s with all 64 atoms (before the first prune) "
        "| time to 3000 it | MR-STFT of render | active atoms | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, r in rows:
        full = "–" if math.isnan(r["full_step_s"]) else f"{1 / r['full_step_s']:.2f}"
        lines.append(
            f"| {engine} | {r['n_iters']} | {1 / r['step_s']:.2f} | {full} | {3000 * r['step_s']:.0f} s"
            f"{' (extrapolated)' if r['n_iters'] < 3000 else ''} | {r['mrstft']:.3f} | {r['n_active']} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    ratio = rows[0][1]["step_s"] / rows[1][1]["step_s"]
    lines += [
        "",
        f"Fast engine speed-up at equal iterations: {ratio:.0f}x.",
        "",
        f"## Whole file: `{LONG}` ({whole['duration_s']:.1f} s), default settings ({whole['n_iters']} iterations)",
        "",
        "| audio | wall time | real-time factor | peak RSS (MB) | MR-STFT | atoms | rendering the atoms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| first {half['duration_s']:.1f} s (measured) | {half['wall_s']:.0f} s | {half['wall_s'] / half['duration_s']:.2f} "
        f"| {half['peak_rss_mb']:.0f} | {half['mrstft']:.3f} | {half['n_active']} | {half['render_s']:.1f} s |",
        f"| {whole['duration_s']:.1f} s (measured) | {whole['wall_s']:.0f} s | {whole['wall_s'] / whole['duration_s']:.2f} "
        f"| {whole['peak_rss_mb']:.0f} | {whole['mrstft']:.3f} | {whole['n_active']} | {whole['render_s']:.1f} s |",
        f"| {triple['duration_s']:.1f} s (the file three times, measured) | {triple['wall_s']:.0f} s "
        f"| {triple['wall_s'] / triple['duration_s']:.2f} | {triple['peak_rss_mb']:.0f} | {triple['mrstft']:.3f} "
        f"| {triple['n_active']} | {triple['render_s']:.1f} s |",
        "",
        "Wall time includes the final render (fit() renders the reconstruction); the last column is that render alone,"
        " timed again on the fitted atoms (what `splat render` of the JSON costs, without starting Python).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
