"""Throughput of fitting many files: one process per file, --jobs 1, --jobs 2, and --backend ray.

    python benchmarks/batch.py [--clips 20] [--iters N] [--out benchmarks/results/batch.md]

Copies `--clips` clips from ../shared/audio (every clip up to 6 s long, cycled)
into a temporary folder and fits them at the default settings (or `--iters`) in
four ways, each a fresh command: `splat fit clip.wav` once per file (a process,
and its start-up, per file), `splat fit folder --jobs 1`, `--jobs 2` (two worker
processes of one torch thread each) and `--backend ray --jobs 2` (Ray started on
this machine, one CPU per task). For each: files per minute, seconds of audio
fitted per second, and the peak memory of the largest process (the peak RSS,
VmHWM, of every process below the command, sampled every 0.1 s: per file, per
worker or per Ray task). Then the same `--jobs 1` command again, when every file
is up to date: the cost of the run record and skipping. Last, the hours a
34-hour dataset (MusicNet) would take at each rate, on one such machine and on
N of them (Ray across machines that share storage; assumes the rate scales).

The clips are short (1.5-5.5 s), so start-up weighs more here than on real
recordings of minutes; the audio-per-second rate of the batch modes is the one to
extrapolate from. The load average before and after is recorded: a busy machine
slows every mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT.parent / "shared" / "audio"
DATASET_HOURS = 34.0
MACHINES = (1, 4, 16)
LONGEST_CLIP_S = 6.0
SAMPLE_PERIOD_S = 0.1


@dataclass
class Measurement:
    mode: str
    n_files: int
    wall_s: float
    audio_s: float
    peak_mb: float

    @property
    def files_per_min(self) -> float:
        return 60.0 * self.n_files / self.wall_s

    @property
    def audio_per_s(self) -> float:
        return self.audio_s / self.wall_s

    def hours_for_dataset(self, n_machines: int) -> float:
        return DATASET_HOURS / self.audio_per_s / n_machines


def make_clips(folder: Path, n_clips: int) -> list[Path]:
    """Copy `n_clips` short clips of ../shared/audio into `folder` (clip_00.wav, ...), cycling through them."""
    sources = sorted(p for p in AUDIO.glob("*.wav") if sf.info(p).duration <= LONGEST_CLIP_S)
    if not sources:
        raise SystemExit(f"no clips of at most {LONGEST_CLIP_S} s in {AUDIO}")
    folder.mkdir(parents=True)
    clips = []
    for i in range(n_clips):
        clip = folder / f"clip_{i:02d}.wav"
        shutil.copyfile(sources[i % len(sources)], clip)
        clips.append(clip)
    return clips


def _children(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_commands(commands: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """Run the commands one after another; (wall seconds, peak RSS in MB of the largest process below them)."""
    peak_mb = 0.0
    started = time.perf_counter()
    for command in commands:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = threading.Event()
        peaks: dict[int, float] = {}

        def sample(root: int = process.pid, finished: threading.Event = done, seen: dict = peaks) -> None:
            while not finished.wait(SAMPLE_PERIOD_S):
                for pid in [root, *_children(root)]:
                    seen[pid] = max(seen.get(pid, 0.0), _peak_rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = process.communicate()
        done.set()
        sampler.join()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
        peak_mb = max(peak_mb, *peaks.values(), 0.0)
    return time.perf_counter() - started, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="clips to fit")
    parser.add_argument("--iters", type=int, default=None, help="--iters of every fit (default: splat's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch.md")
    args = parser.parse_args()

    splat = [sys.executable, str(ROOT / "cli.py"), "fit"]
    options = ["--quiet"] + ([] if args.iters is None else ["--iters", str(args.iters)])
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="splat-batch-") as tmp:
        work = Path(tmp)
        clips = make_clips(work / "in", args.clips)
        audio_s = sum(sf.info(c).duration for c in clips)
        modes = {
            "one process per file": [[*splat, str(c), "-o", str(work / "each"), *options] for c in clips],
            "--jobs 1": [[*splat, str(work / "in"), "-o", str(work / "jobs1"), *options]],
            "--jobs 2": [[*splat, str(work / "in"), "-o", str(work / "jobs2"), *options, "--jobs", "2"]],
            "--backend ray --jobs 2": [
                [*splat, str(work / "in"), "-o", str(work / "ray"), *options, "--backend", "ray", "--jobs", "2"]
            ],
        }
        results = []
        for mode, commands in modes.items():
            wall_s, peak_mb = run_commands(commands, env)
            results.append(Measurement(mode, len(clips), wall_s, audio_s, peak_mb))
            print(f"{mode}: {wall_s:.1f} s, peak {peak_mb:.0f} MB", file=sys.stderr)
        rerun_s, _ = run_commands(modes["--jobs 1"], env)
        records = [json.loads(line) for line in (work / "jobs1" / "splat-run.jsonl").read_text().splitlines()]
        skipped = records[len(clips) :]
        assert [r["status"] for r in skipped] == ["skipped"] * len(clips), skipped
        checking_s = sum(r["wall_s"] for r in skipped)
    load_after = os.getloadavg()
    write_report(args, results, rerun_s=rerun_s, checking_s=checking_s, load=(load_before, load_after))


def write_report(
    args: argparse.Namespace,
    results: list[Measurement],
    *,
    rerun_s: float,
    checking_s: float,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    n_cores = os.cpu_count() or 1
    busy = max(load[0][0], load[1][0]) > 0.5 * n_cores
    iters = "default settings" if args.iters is None else f"default settings but --iters {args.iters}"
    header = (
        "| mode | files | wall (s) | files/min | audio s per s | peak RSS per worker (MB) | "
        + " | ".join(f"34 h on {n} machine{'s' * (n > 1)} (h)" for n in MACHINES)
        + " |"
    )
    lines = [
        "# Batch fitting throughput",
        "",
        f"`python benchmarks/batch.py --clips {args.clips}"
        + ("" if args.iters is None else f" --iters {args.iters}")
        + f"`: {args.clips} clips of ../shared/audio ({results[0].audio_s:.1f} s of audio), {iters}, on"
        f" {platform.machine()} with {n_cores} cores, Python {platform.python_version()}.",
        "",
        f"Load average (1 min) before: {load[0][0]:.2f}, after: {load[1][0]:.2f}."
        + (
            " **The machine was busy** (other work on its cores): every mode ran slower than it would alone,"
            " and the ratios between modes are rough."
            if busy
            else ""
        ),
        "",
        header,
        "|" + "---|" * (6 + len(MACHINES)),
    ]
    for r in results:
        hours = " | ".join(f"{r.hours_for_dataset(n):.1f}" for n in MACHINES)
        lines.append(
            f"| {r.mode} | {r.n_files} | {r.wall_s:.1f} | {r.files_per_min:.1f} | {r.audio_per_s:.3f} |"
            f" {r.peak_mb:.0f} | {hours} |"
        )
    lines += [
        "",
        f"Rerun of the finished `--jobs 1` batch (every file up to date, skipped): {rerun_s:.1f} s for the whole"
        f" command, of which {checking_s:.3f} s hashing inputs and reading outputs ({1000 * checking_s / args.clips:.0f}"
        " ms per file); the rest is start-up (importing torch).",
        "",
        f"Torch threads: {n_cores} in the one fitting process of the first two modes (torch's default), 1 in"
        " each of the two workers or Ray tasks of the last two. On a busy machine the modes with more threads"
        " than free cores suffer most (OpenMP threads wait for each other).",
        "",
        "Peak RSS per worker: the largest peak RSS (VmHWM) among the command's processes: the one fitting process,"
        " a worker, or a Ray worker running a task. Hours for 34 h of audio: 34 h / (audio seconds fitted per"
        " second), divided by the machines (Ray on a cluster with shared storage; assumes the rate scales and"
        " files are long enough that start-up does not count).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
