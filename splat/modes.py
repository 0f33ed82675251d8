"""Partial series: the frequency ratios an atom's partials follow (the per-atom `modes` field).

An atom's partial k sits at f_k = r_k f0 sqrt(1 + B r_k^2) (`splat.dsp.partial_frequencies`),
with r_k the k-th ratio of its series and B its `inharmonicity`:

- "string": r_k = k, a (stiff) string or a voice: harmonic, stretched by B.
- "membrane": the ideal circular membrane. Its modes (m, n) ring at the zeros j_{m,n} of the
  Bessel functions J_m; r_k is the k-th smallest distinct zero over j_{0,1}
  (1, 1.594, 2.136, 2.296, 2.653, ...): drums, timpani.
- "bar": the free-free bar (Euler-Bernoulli beam). Mode n rings at x_n^2 with x_n the n-th
  positive root of cos(x) cosh(x) = 1; r_k = (x_k / x_1)^2 (1, 2.756, 5.404, 8.933, ...):
  xylophone, glockenspiel, bells of a celesta, a struck rod or rim.

B stretches every series alike (stiffness raises the upper modes of a membrane or a bar too,
and the fit may use it to follow a real drum's detuned modes); at B = 0 the ratios are exact.
Partial k keeps its place in the roll-off and formant whatever the series: only its frequency
changes. The ratio tables are computed here (scipy), not typed in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from splat.errors import ParameterError

#: The series, in the order of their indices in a `modes` tensor.
MODES: tuple[str, ...] = ("string", "membrane", "bar")
#: Index of the string series (every atom's before the fit chooses).
STRING = MODES.index("string")


def membrane_ratios(n: int) -> np.ndarray:
    """The n lowest distinct mode frequencies of an ideal circular membrane, over the lowest one.

    Mode (m, n) of a membrane fixed at its rim rings at j_{m,n} (the n-th positive zero of J_m);
    modes with m > 0 come in degenerate pairs (cos and sin in the angle) and count once. The
    zeros of all orders up to m_max with up to n_max zeros each are complete below
    min(j_{m_max + 1, 1}, j_{0, n_max + 1}) (j_{m,n} grows with both m and n), and the grid grows
    until that holds n of them. No two orders share a zero (Siegel), so all are distinct.

    Returns:
        Ratios j / j_{0,1}, strictly increasing, shape (n,), float64; the first is 1.
    """
    from scipy.special import jn_zeros

    m_max = n_max = 4
    while True:
        zeros = np.concatenate([jn_zeros(m, n_max) for m in range(m_max + 1)])
        order_limit, count_limit = jn_zeros(m_max + 1, 1)[0], jn_zeros(0, n_max + 1)[-1]
        found = np.sort(zeros[zeros < min(order_limit, count_limit)])
        if found.size >= n:
            return found[:n] / found[0]
        # Widen the grid where it cuts off first.
        if order_limit <= count_limit:
            m_max *= 2
        else:
            n_max *= 2


def bar_roots(n: int) -> np.ndarray:
    """The n smallest positive roots x of cos(x) cosh(x) = 1 (free-free bar modes).

    Written as cos(x) = 1 / cosh(x): the right side is positive and below 1e-1 from x = pi on,
    so cos changes sign exactly once between k pi and (k + 1) pi, which brackets root k
    (4.730, 7.853, 10.996, ... -> (2k + 1) pi / 2).

    Returns:
        Roots, shape (n,), float64.
    """
    from scipy.optimize import brentq

    def residual(x: float) -> float:
        return math.cos(x) - 2.0 * math.exp(-x) / (1.0 + math.exp(-2.0 * x))  # cos(x) - sech(x)

    return np.array([brentq(residual, k * math.pi, (k + 1) * math.pi, xtol=1e-14) for k in range(1, n + 1)])


def bar_ratios(n: int) -> np.ndarray:
    """The n lowest mode frequencies of a free-free bar over the lowest one: (x_k / x_1)^2.

    Returns:
        Ratios, strictly increasing, shape (n,), float64; the first is 1.
    """
    roots = bar_roots(n)
    return (roots / roots[0]) ** 2


@functools.cache
def _table(n_partials: int) -> np.ndarray:
    """Every series' first `n_partials` ratios, shape (len(MODES), n_partials), read-only."""
    table = np.stack([np.arange(1.0, n_partials + 1.0), membrane_ratios(n_partials), bar_ratios(n_partials)])
    table.setflags(write=False)
    return table


@functools.cache
def ratio_table(n_partials: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """The first `n_partials` ratios of every series, shape (len(MODES), n_partials); row i is `MODES[i]`.

    One tensor per (n_partials, dtype, device), shared by every caller (the fast engine asks for it
    at every step): read it, never write it.

    Raises:
        ParameterError: if `n_partials` is below 1.
    """
    if n_partials < 1:
        raise ParameterError(f"n_partials={n_partials} must be at least 1")
    return torch.tensor(_table(n_partials), dtype=dtype, device=device)


def partial_ratios(modes: Tensor, *, n_partials: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Each atom's ratios r_1..r_n: its row of `ratio_table`.

    Args:
        modes: Series indices into `MODES`, integer tensor of any shape (...).

    Returns:
        Ratios, shape (..., n_partials).
    """
    return ratio_table(n_partials, dtype=dtype, device=modes.device)[modes]


def mode_indices(names: Sequence[str], *, device: torch.device | str = "cpu") -> Tensor:
    """Series names as indices into `MODES`, int64 tensor of shape (len(names),).

    Raises:
        ParameterError: naming a name that is not in `MODES`.
    """
    for name in names:
        if name not in MODES:
            raise ParameterError(f"modes={name!r} must be one of {', '.join(MODES)}")
    return torch.tensor([MODES.index(name) for name in names], dtype=torch.int64, device=device)
