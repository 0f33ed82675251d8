"""The fast engine's native CPU kernels (`kernels.c`): built on first use, called through ctypes.

On PyTorch alone a fit step is about a thousand small tensor operations. With
the kernels, everything but the matrix products is a few loops in C, each with
its gradient written out: the atoms' powers on the time grid, the frames'
window sums, the noise bands, the partials' splats, the room's reverberation
and the loss (and, for the renderer, the resonance recursion). The library is compiled once per machine
with the system's C compiler into the user's cache folder
(`$XDG_CACHE_HOME/splat`, else `~/.cache/splat`), keyed by a hash of the
source, the flags and the CPU, and loaded from there afterwards (~1 s the first
time).

Everything here is optional: without a C compiler, with `SPLAT_NATIVE=0` in the
environment, or for tensors that are not float32 on the CPU, `usable` is False
and callers run their PyTorch code, which is the reference the tests compare
the kernels with (and the code that runs on CUDA). `SPLAT_BFLOAT16=0` keeps the
kernels but the products in float32 (`bfloat16_products`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
#: -ffast-math lets the compiler vectorise expf/logf (glibc's libmvec) and reorder sums;
#: it is given to the compile step only, so the shared library does not switch the
#: whole process to flushing subnormals (GCC < 13 links crtfastmath.o for -ffast-math).
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-std=c11")
#: Threads, where the compiler has OpenMP (else the kernels run on one thread). The library
#: then needs libgomp.so.1, which PyTorch's CPU wheels have already loaded: the dynamic
#: loader reuses it, so the kernels share PyTorch's threads instead of starting a second
#: pool that would spin against them on the same cores.
OPENMP_FLAGS = ("-fopenmp",)
SERIAL_FLAGS = ("-fopenmp-simd",)

_F = ctypes.POINTER(ctypes.c_float)
_FF = ctypes.POINTER(_F)
_I = ctypes.c_int64
_II = ctypes.POINTER(ctypes.c_int64)
_V = ctypes.c_void_p
_D = ctypes.POINTER(ctypes.c_double)
_VV = ctypes.POINTER(ctypes.c_void_p)
#: What `moving_spectra` and its gradient take after their arrays: segments, atoms per segment,
#: partials, Nyquist, the series' ratios and each atom's series, frames, nodes, bin width, bins,
#: reach, the smallest splat, the kernel's standard deviation, the largest and the smallest sweep.
_MOVING_SETTINGS = [_I, _I, _I, ctypes.c_float, _F, _II, _I, _I, ctypes.c_float, _I, _I] + [ctypes.c_float] * 4
#: Each kernel's signature: (result type, argument types).
SIGNATURES = {
    "spectral_distance": (
        ctypes.c_double,
        [_V, _V, _F, _F, ctypes.c_float, _I] + [ctypes.c_float] * 4 + [_F, _F, _V, _V, ctypes.c_int],
    ),
    "band_distance": (
        ctypes.c_double,
        [_V, _V, _II, _F, _F, _I, _I, _I, ctypes.c_float, ctypes.c_float, _V, _V, ctypes.c_int],
    ),
    "changed_error_sums": (
        None,
        [_F, _F, _F, _F, _I, _I, _I, _F, _F, _I, _F, _F, _I] + [ctypes.c_float] * 3 + [_D, _D, _F],
    ),
    "decayed_sum": (None, [_F, _F, _I, _I, _F]),
    "decayed_sum_backward": (None, [_F, _F, _F, _I, _I, _F, _F]),
    "frame_powers": (None, [_F, _I, _I, _I, _FF, _II, _II, _II, _II, _I, _VV, ctypes.c_int, _F]),
    "frame_powers_backward": (None, [_VV, _I, _I, _I, _FF, _II, _II, _II, _II, _I, _F, ctypes.c_int]),
    "branch_powers": (None, [_F, _F, _F, _I, _I, _I, ctypes.c_float, ctypes.c_float, ctypes.c_int, _F, _F]),
    "branch_powers_backward": (
        None,
        [_F, _F, _F, _F, _F, _I, _I, _I, ctypes.c_float, ctypes.c_float, ctypes.c_int, _F, _F],
    ),
    "noise_spectra": (None, [_F, _F, _I, _F, _II, _I, ctypes.c_float, ctypes.c_float, _VV, ctypes.c_int]),
    "noise_spectra_backward": (
        None,
        [_VV, _F, _F, _I, _F, _II, _I, ctypes.c_float, ctypes.c_float, _F, _F, ctypes.c_int],
    ),
    "max_threads": (_I, []),
    "room_wet": (None, [_F, _F, _F, _F, _F, _I, _I, _F, _F]),
    "room_wet_backward": (None, [_F, _F, _F, _F, _F, _F, _I, _I, _F, _F, _F, _F]),
    "resonance_spectra": (
        None,
        [_F, _I, _I, _I, ctypes.c_float, _F, _II, _F, _II, _I, _I, _VV, ctypes.c_int, _F, _I],
    ),
    "resonance_spectra_backward": (
        None,
        [_VV, _F, _I, _I, _I, ctypes.c_float, _F, _II, _F, _II, _I, _I, _F, ctypes.c_int],
    ),
    "moving_spectra": (None, [_F] * 5 + _MOVING_SETTINGS + [_F, _F]),
    "moving_spectra_backward": (None, [_F] * 6 + _MOVING_SETTINGS + [_F] * 4),
}


def _cpuinfo() -> str:
    """Linux's /proc/cpuinfo ('' elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_fingerprint() -> str:
    """What -march=native compiles for: the CPU's model and flags where Linux tells them."""
    lines = [line for line in _cpuinfo().splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines))) or platform.processor()


def has_bfloat16_matmul(cpuinfo: str) -> bool:
    """Whether a CPU with this /proc/cpuinfo multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.cache
def bfloat16_products() -> bool:
    """Whether the fast engine's products run in bfloat16 here: with the kernels, on such a CPU,
    unless `SPLAT_BFLOAT16=0` is in the environment.

    Elsewhere bfloat16 products are emulated and slower than float32, so they stay float32.
    """
    wanted = os.environ.get("SPLAT_BFLOAT16", "1") != "0"
    return wanted and library() is not None and has_bfloat16_matmul(_cpuinfo())


def forget() -> None:
    """Look the library and the bfloat16 products up again on next use (after SPLAT_* changed)."""
    library.cache_clear()
    bfloat16_products.cache_clear()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "splat"


def _build(compiler: str, target: Path) -> None:
    """Compile `SOURCE` into the shared library `target` (atomically: built aside, then renamed).

    With OpenMP if the compiler has it, else without.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        obj, lib = Path(work) / "kernels.o", Path(work) / target.name
        for extra in (OPENMP_FLAGS, SERIAL_FLAGS):
            try:
                compile_ = [compiler, *COMPILE_FLAGS, *extra, "-c", str(SOURCE), "-o", str(obj)]
                subprocess.run(compile_, check=True, capture_output=True)
                link = [compiler, "-shared", *extra, str(obj), "-o", str(lib), "-lm"]
                subprocess.run(link, check=True, capture_output=True)
                break
            except subprocess.CalledProcessError:
                if extra is SERIAL_FLAGS:
                    raise
        os.replace(lib, target)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels, built if needed; None where they cannot be (logged once)."""
    if os.environ.get("SPLAT_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: the fast engine runs on PyTorch alone")
        return None
    key = hashlib.sha256(
        "\n".join(
            [SOURCE.read_text(), compiler, *COMPILE_FLAGS, *OPENMP_FLAGS, platform.machine(), _cpu_fingerprint()]
        ).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        failed_command = isinstance(error, subprocess.CalledProcessError)
        detail = error.stderr.decode(errors="replace").strip() if failed_command else error
        log.warning("native kernels unavailable (%s): the fast engine runs on PyTorch alone", detail)
        return None
    for name, (result, arguments) in SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    return lib


def usable(*tensors: Tensor, bfloat16: bool = False) -> bool:
    """Whether the kernels can take these tensors (float32, or also bfloat16 if allowed, on the CPU)."""
    dtypes = (torch.float32, torch.bfloat16) if bfloat16 else (torch.float32,)
    return all(t.device.type == "cpu" and t.dtype in dtypes for t in tensors) and library() is not None


def ptr(t: Tensor | None) -> ctypes.Array | None:
    """A float32 tensor's data as a C pointer (None for None). The tensor must be contiguous."""
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype == torch.float32, (t.shape, t.stride(), t.dtype)
    return ctypes.cast(t.data_ptr(), _F)


def int64_ptr(t: Tensor | None) -> ctypes.Array | None:
    """A contiguous int64 tensor's data as a C pointer (None for None)."""
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype == torch.int64, (t.shape, t.stride(), t.dtype)
    return ctypes.cast(t.data_ptr(), _II)


def double_ptr(t: Tensor) -> ctypes.Array:
    """A contiguous float64 tensor's data as a C pointer."""
    assert t.is_contiguous() and t.dtype == torch.float64, (t.shape, t.stride(), t.dtype)
    return ctypes.cast(t.data_ptr(), _D)


def data(t: Tensor | None) -> int | None:
    """A contiguous float32 or bfloat16 tensor's data address, for a kernel that takes either (None for None)."""
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype in (torch.float32, torch.bfloat16), (t.shape, t.stride(), t.dtype)
    return t.data_ptr()


def datas(tensors: list[Tensor]) -> ctypes.Array:
    """An array of the data addresses of contiguous float32 or bfloat16 tensors."""
    return (ctypes.c_void_p * len(tensors))(*map(data, tensors))


def ptrs(tensors: list[Tensor]) -> ctypes.Array:
    """An array of C pointers to contiguous float32 tensors' data."""
    return (_F * len(tensors))(*map(ptr, tensors))


def int64s(values: list[int]) -> ctypes.Array:
    """A C array of int64."""
    return (ctypes.c_int64 * len(values))(*values)
