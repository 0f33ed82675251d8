"""What one fast-engine step costs, eager and under `torch.compile`, and what bfloat16 would save.

    python benchmarks/step_options.py [--threads 2] [--repeats 8]

The step is the speed benchmark's: `piano_steinway_real.wav` (2^15 samples), its
64 starting atoms, forward and backward through the fast engine. It prints:

- the eager step and the `torch.compile`d step, timed in alternating batches
  (fastest batch of each), and the compile's first-call time;
- the step's twelve matrix products (per resolution: the forward product and
  its two backward products, all three branches at once) in float32 and in
  bfloat16, on their own.

Numbers only: nothing here is used by `splat`. Compare the ratios within a run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from splat.engines import FastEngine, ModelSpec, Region
from splat.fitting import FitConfig, _onset_windows, _tone_peak_db, initial_params
from splat.params import FIELDS, AtomParams, Bounds, to_physical, to_raw
from splat.spectral import resolutions_for

CLIP = Path(__file__).resolve().parent.parent.parent / "shared" / "audio" / "piano_steinway_real.wav"
N = 2**15


def _step_problem() -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The loss as a function of the raw parameters, and the starting raw parameters."""
    audio, sr = sf.read(CLIP, dtype="float32")
    audio = audio[:N] / np.abs(audio[:N]).max()
    config = FitConfig()
    spec = ModelSpec(sr, config.envelope, config.n_partials, resolutions_for(config.fft_sizes), config.grid_step)
    region = Region(0, N, (0,), N)
    bounds = Bounds.for_sample_rate(sr)
    values, _, _ = initial_params(
        audio, region, sr, config.n_atoms, bounds, np.random.default_rng(0), tone_peak_db=_tone_peak_db(sr, "gamma")
    )
    t0, span = _onset_windows(region, N, sr, torch.device("cpu"))
    start = AtomParams(**{k: torch.tensor(values[k], dtype=torch.float32) for k in FIELDS})
    raw = to_raw(start, bounds=bounds, t0_s=t0, span_s=span).detach().requires_grad_(True)
    engine = FastEngine(torch.from_numpy(audio), region, spec)

    def loss(raw_values: torch.Tensor) -> torch.Tensor:
        return engine(to_physical(raw_values, bounds=bounds, t0_s=t0, span_s=span))

    return loss, raw


def _fastest(run: Callable[[], None], *, batch: int, repeats: int) -> float:
    """Seconds per call: the fastest of `repeats` batches of `batch` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            run()
        best = min(best, (time.perf_counter() - start) / batch)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=8, help="timed batches of 20 calls per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loss, raw = _step_problem()
    compiled = torch.compile(loss, dynamic=False)

    def step(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn(raw).backward()
            raw.grad = None

        return run

    start = time.perf_counter()
    step(compiled)()
    compile_s = time.perf_counter() - start
    eager_s, compiled_s = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate, so both see the same host load
        eager_s = min(eager_s, _fastest(step(loss), batch=20, repeats=1))
        compiled_s = min(compiled_s, _fastest(step(compiled), batch=20, repeats=1))

    config = FitConfig()
    shapes = [(N // (n // 4), n // 2 + 1) for n in config.fft_sizes]  # (frames, bins) per resolution
    rows = 3 * config.n_atoms
    product_s = {}
    for dtype in (torch.float32, torch.bfloat16):
        mats = [(torch.rand(1, f, rows, dtype=dtype), torch.rand(1, rows, b, dtype=dtype)) for f, b in shapes]
        grads = [torch.rand(1, f, b, dtype=dtype) for f, b in shapes]

        def products(mats=mats, grads=grads) -> None:
            for (a, s), g in zip(mats, grads, strict=True):
                torch.bmm(a, s), torch.bmm(g, s.transpose(1, 2)), torch.bmm(a.transpose(1, 2), g)

        product_s[dtype] = _fastest(products, batch=20, repeats=args.repeats)

    print(f"torch {torch.__version__}, {args.threads} threads, 64 atoms x 2^15 samples\n")
    print("| variant | ms per step | it/s |")
    print("|---|---:|---:|")
    print(f"| eager | {eager_s * 1e3:.1f} | {1 / eager_s:.0f} |")
    print(f"| torch.compile (first call {compile_s:.0f} s) | {compiled_s * 1e3:.1f} | {1 / compiled_s:.0f} |")
    print(f"\ncompiled / eager speed-up: {eager_s / compiled_s:.2f}x\n")
    print("| the step's 12 products | ms |")
    print("|---|---:|")
    for dtype, seconds in product_s.items():
        print(f"| {str(dtype).removeprefix('torch.')} | {seconds * 1e3:.2f} |")
    print(f"\nbfloat16 / float32 speed-up: {product_s[torch.float32] / product_s[torch.bfloat16]:.2f}x")


if __name__ == "__main__":
    main()
