"""What one fast-engine step costs: native kernels, PyTorch alone (eager and `torch.compile`d), bfloat16.

    python benchmarks/step_options.py [--threads 2] [--repeats 8]

The step is the speed benchmark's: `piano_steinway_real.wav` (2^15 samples), its
64 starting atoms, forward and backward through the fast engine. It prints:

- the step as `splat fit` runs it (native kernels, `splat.native`), also with
  only the first 16 and 2 atoms (what a step costs whatever the atoms);
- the step with the kernels but float32 products (`SPLAT_BFLOAT16=0`, what runs
  on a CPU without bfloat16 instructions);
- the step on PyTorch alone (`SPLAT_NATIVE=0`, what runs without a C compiler),
  eager and under `torch.compile` (and the compile's first-call time), and the
  tensor operations one step dispatches either way;
  every variant is timed in alternating batches (fastest batch of each);
- the step's twelve matrix products (per resolution: the forward products and
  their backward products, all three branches at once) in float32 and in
  bfloat16, on their own.

Numbers only. Compare the ratios within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from splat import native
from splat.engines import FastEngine, ModelSpec, Region
from splat.fitting import FitConfig, _onset_windows, _tone_peak_db, initial_params
from splat.params import FIELDS, AtomParams, Bounds, to_physical, to_raw
from splat.runtime import tune_allocator
from splat.spectral import resolutions_for

CLIP = Path(__file__).resolve().parent.parent.parent / "shared" / "audio" / "piano_steinway_real.wav"
N = 2**15


def _step_problem() -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The loss as a function of the raw parameters, and the starting raw parameters."""
    audio, sr = sf.read(CLIP, dtype="float32")
    audio = audio[:N] / np.abs(audio[:N]).max()
    config = FitConfig()
    resolutions = resolutions_for(config.fft_sizes)
    spec = ModelSpec(sr, config.envelope, config.n_partials, resolutions, config.grid_step)
    region = Region(0, N, (0,), N)
    bounds = Bounds.for_sample_rate(sr)
    values = initial_params(
        audio, region, sr, config.n_atoms, bounds, np.random.default_rng(0), tone_peak_db=_tone_peak_db(sr, "gamma")
    ).values
    t0, span = _onset_windows(region, N, sr, torch.device("cpu"))
    start = AtomParams(**{k: torch.tensor(values[k], dtype=torch.float32) for k in FIELDS})
    raw = to_raw(start, bounds=bounds, t0_s=t0, span_s=span).detach().requires_grad_(True)
    engine = FastEngine(torch.from_numpy(audio), region, spec)

    def loss(raw_values: torch.Tensor) -> torch.Tensor:
        return engine(to_physical(raw_values, bounds=bounds, t0_s=t0, span_s=span))

    return loss, raw


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Within the block, these environment variables are set (and `splat.native` reads them again)."""
    os.environ.update(variables)
    native.forget()
    try:
        yield
    finally:
        for name in variables:
            del os.environ[name]
        native.forget()


PYTORCH_ONLY = {"SPLAT_NATIVE": "0"}
FLOAT32_PRODUCTS = {"SPLAT_BFLOAT16": "0"}


def _fastest(run: Callable[[], None], *, batch: int, repeats: int) -> float:
    """Seconds per call: the fastest of `repeats` batches of `batch` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batch):
            run()
        best = min(best, (time.perf_counter() - start) / batch)
    return best


class _OperationCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += 1
        return func(*args, **(kwargs or {}))


def _count_operations(loss: Callable[[torch.Tensor], torch.Tensor], raw: torch.Tensor) -> tuple[int, int]:
    """Tensor operations of one step: (forward, backward)."""
    with _OperationCounter() as forward:
        value = loss(raw)
    with _OperationCounter() as backward:
        value.backward()
    raw.grad = None
    return forward.count, backward.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=8, help="timed batches of 20 calls per variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()  # as `splat fit` does

    def step(fn: Callable[[torch.Tensor], torch.Tensor], raw: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            fn(raw).backward()
            raw.grad = None

        return run

    loss, raw = _step_problem()
    # Each variant: (step, the environment it runs in).
    steps = {"native kernels (as fitted)": (step(loss, raw), {})}
    for n_atoms in (16, 2):
        first = raw[:, :n_atoms].detach().clone().requires_grad_(True)
        steps[f"native kernels, first {n_atoms} atoms"] = (step(loss, first), {})
    steps["native kernels, float32 products (SPLAT_BFLOAT16=0)"] = (step(loss, raw), FLOAT32_PRODUCTS)
    steps["PyTorch alone, eager (SPLAT_NATIVE=0)"] = (step(loss, raw), PYTORCH_ONLY)
    n_ops = {"native kernels": _count_operations(loss, raw)}
    with _environment(PYTORCH_ONLY):
        n_ops["PyTorch alone"] = _count_operations(loss, raw)
        compiled = torch.compile(loss, dynamic=False)
        start = time.perf_counter()
        step(compiled, raw)()
        compile_s = time.perf_counter() - start
    steps[f"PyTorch alone, torch.compile (first call {compile_s:.0f} s)"] = (step(compiled, raw), PYTORCH_ONLY)
    step_s = dict.fromkeys(steps, float("inf"))
    for _ in range(args.repeats):  # alternate, so all see the same host load
        for key, (run, variables) in steps.items():
            with _environment(variables):
                step_s[key] = min(step_s[key], _fastest(run, batch=20, repeats=1))

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
    for variant, seconds in step_s.items():
        print(f"| {variant} | {seconds * 1e3:.2f} | {1 / seconds:.0f} |")
    print()
    for variant, (forward, backward) in n_ops.items():
        print(f"One step with {variant} dispatches {forward + backward} tensor operations ({forward} + {backward}).")
    native_s = step_s["native kernels (as fitted)"]
    print(
        f"\nPyTorch alone / native kernels: {step_s['PyTorch alone, eager (SPLAT_NATIVE=0)'] / native_s:.2f}x eager",
        end="",
    )
    print(f", {min(v for k, v in step_s.items() if 'compile' in k) / native_s:.2f}x compiled")
    print()
    print("| the step's 12 products | ms |")
    print("|---|---:|")
    for dtype, seconds in product_s.items():
        print(f"| {str(dtype).removeprefix('torch.')} | {seconds * 1e3:.2f} |")
    print(f"\nbfloat16 / float32 speed-up: {product_s[torch.float32] / product_s[torch.bfloat16]:.2f}x")


if __name__ == "__main__":
    main()
