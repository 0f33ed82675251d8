"""Tests for splat.params: the raw <-> physical maps, Bounds and AtomParams.

The maps are checked against their definitions (sigmoid onto a declared range,
linear or logarithmic), not against their own output: round trips in float64,
the geometric mean at raw 0, range membership, and gradients by finite
differences (`torch.autograd.gradcheck`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splat.errors import ParameterError
from splat.params import FIELDS, N_FIELDS, AtomParams, Bounds, Range, to_physical, to_raw

SAMPLE_RATE = 22050
SPAN_S = 0.5
LOG_FIELDS = [name for name in FIELDS[1:] if Bounds().range_of(name).log]
LINEAR_FIELDS = [name for name in FIELDS[1:] if not Bounds().range_of(name).log]


def _raw(rng: np.random.Generator, batch: int = 3, atoms: int = 5, scale: float = 6.0) -> torch.Tensor:
    """Raw parameters uniform in [-scale, scale], float64, shape (batch, atoms, n_fields)."""
    return torch.from_numpy(rng.uniform(-scale, scale, size=(batch, atoms, N_FIELDS)))


def _t0(batch: int = 3) -> torch.Tensor:
    """Each batch item's window start: 0, 0.5, 1.0, ... s, shape (batch, 1)."""
    return (SPAN_S * torch.arange(batch, dtype=torch.float64)).unsqueeze(-1)


def test_field_order_matches_the_atom_params_dataclass():
    assert N_FIELDS == len(FIELDS) == 21
    assert FIELDS[0] == "time_s"
    assert tuple(AtomParams.__dataclass_fields__) == FIELDS


# --- raw -> physical -> raw ----------------------------------------------------------------


def test_raw_to_physical_to_raw_is_the_identity(rng):
    raw = _raw(rng)
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    phys = to_physical(raw, bounds=bounds, t0_s=_t0(), span_s=SPAN_S)
    back = to_raw(phys, bounds=bounds, t0_s=_t0(), span_s=SPAN_S)
    assert back.shape == raw.shape
    assert back.dtype == torch.float64
    # sigmoid(6) = 1 - 2.5e-3, so logit loses at most ~eps / 2.5e-3 ~ 1e-13 in float64.
    torch.testing.assert_close(back, raw, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", FIELDS)
def test_each_field_round_trips_on_its_own(rng, name):
    raw = _raw(rng)
    bounds = Bounds()
    phys = to_physical(raw, bounds=bounds, t0_s=_t0(), span_s=SPAN_S)
    back = to_raw(phys, bounds=bounds, t0_s=_t0(), span_s=SPAN_S)
    i = FIELDS.index(name)
    torch.testing.assert_close(back[..., i], raw[..., i], rtol=0, atol=1e-9)


def test_physical_to_raw_to_physical_is_the_identity(rng):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    # Physical values drawn uniformly inside each range (not produced by to_physical).
    cols = [torch.from_numpy(_t0().numpy() + SPAN_S * rng.uniform(0.01, 0.99, size=(3, 4)))]
    for name in FIELDS[1:]:
        r = bounds.range_of(name)
        width = r.hi - r.lo
        cols.append(torch.from_numpy(rng.uniform(r.lo + 0.01 * width, r.hi - 0.01 * width, size=(3, 4))))
    phys = AtomParams.unstack(torch.stack(cols, dim=-1))
    again = to_physical(
        to_raw(phys, bounds=bounds, t0_s=_t0(), span_s=SPAN_S), bounds=bounds, t0_s=_t0(), span_s=SPAN_S
    )
    for name in FIELDS:
        torch.testing.assert_close(getattr(again, name), getattr(phys, name), rtol=1e-12, atol=1e-12)


def test_physical_values_lie_inside_their_ranges_and_the_time_window(rng):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    raw = _raw(rng, scale=30.0)  # far into the sigmoid's tails
    t0 = _t0()
    phys = to_physical(raw, bounds=bounds, t0_s=t0, span_s=SPAN_S)
    assert phys.time_s.shape == (3, 5)
    assert bool(((phys.time_s >= t0) & (phys.time_s <= t0 + SPAN_S)).all())
    for name in FIELDS[1:]:
        r = bounds.range_of(name)
        value = getattr(phys, name)
        assert value.shape == (3, 5)
        assert bool(((value >= r.lo) & (value <= r.hi)).all()), name


def test_raw_extremes_approach_the_range_ends():
    bounds = Bounds()
    raw = torch.stack([torch.full((1, 1, N_FIELDS), -40.0), torch.full((1, 1, N_FIELDS), 40.0)]).squeeze(1)
    t0 = torch.zeros(2, 1, dtype=torch.float32)
    phys = to_physical(raw, bounds=bounds, t0_s=t0, span_s=SPAN_S)
    assert phys.time_s[0, 0].item() == pytest.approx(0.0, abs=1e-9)
    assert phys.time_s[1, 0].item() == pytest.approx(SPAN_S, rel=1e-6)
    for name in FIELDS[1:]:
        r = bounds.range_of(name)
        low, high = getattr(phys, name)[:, 0].tolist()
        assert low == pytest.approx(r.lo, rel=1e-5, abs=1e-9), name
        assert high == pytest.approx(r.hi, rel=1e-5), name


@pytest.mark.parametrize("name", LOG_FIELDS)
def test_log_fields_map_raw_zero_to_the_geometric_mean(name):
    bounds = Bounds()
    r = bounds.range_of(name)
    phys = to_physical(torch.zeros(1, 1, N_FIELDS, dtype=torch.float64), bounds=bounds, t0_s=_t0(1), span_s=SPAN_S)
    assert getattr(phys, name).item() == pytest.approx(math.sqrt(r.lo * r.hi), rel=1e-12)


@pytest.mark.parametrize("name", LINEAR_FIELDS)
def test_linear_fields_map_raw_zero_to_the_midpoint(name):
    bounds = Bounds()
    r = bounds.range_of(name)
    phys = to_physical(torch.zeros(1, 1, N_FIELDS, dtype=torch.float64), bounds=bounds, t0_s=_t0(1), span_s=SPAN_S)
    assert getattr(phys, name).item() == pytest.approx((r.lo + r.hi) / 2, rel=1e-12, abs=1e-15)


def test_raw_zero_puts_the_onset_mid_window():
    t0 = torch.tensor([[0.25]], dtype=torch.float64)
    phys = to_physical(torch.zeros(1, 1, N_FIELDS, dtype=torch.float64), bounds=Bounds(), t0_s=t0, span_s=SPAN_S)
    assert phys.time_s.item() == pytest.approx(0.25 + SPAN_S / 2, rel=1e-12)


def test_log_fields_are_uniform_in_log_space():
    # Equal raw-sigmoid steps multiply a log field by a constant factor.
    bounds = Bounds()
    r = bounds.range_of("f0_hz")
    unit = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    raw = torch.zeros(1, 3, N_FIELDS, dtype=torch.float64)
    raw[0, :, FIELDS.index("f0_hz")] = torch.logit(unit)
    f0 = to_physical(raw, bounds=bounds, t0_s=_t0(1), span_s=SPAN_S).f0_hz[0]
    expected = [r.lo * (r.hi / r.lo) ** u for u in unit.tolist()]
    torch.testing.assert_close(f0, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_values_on_a_bound_map_to_finite_raw_values_just_inside():
    bounds = Bounds()
    t0 = _t0(1)
    values = {"time_s": torch.tensor([[0.0, SPAN_S]], dtype=torch.float64)}
    for name in FIELDS[1:]:
        r = bounds.range_of(name)
        values[name] = torch.tensor([[r.lo, r.hi]], dtype=torch.float64)
    raw = to_raw(AtomParams(**values), bounds=bounds, t0_s=t0, span_s=SPAN_S)
    assert bool(torch.isfinite(raw).all())
    again = to_physical(raw, bounds=bounds, t0_s=t0, span_s=SPAN_S)
    for name in FIELDS:
        r = Range(0.0, SPAN_S) if name == "time_s" else bounds.range_of(name)
        # Pulled inside by 1e-6 of the range; on a log scale that is a factor (hi/lo)^1e-6,
        # i.e. at most 1e-6 * log(hi/lo) * hi in absolute terms.
        width = math.log(r.hi / r.lo) * r.hi if r.log else r.hi - r.lo
        torch.testing.assert_close(getattr(again, name), values[name], rtol=0, atol=2e-6 * width)


# --- Bounds and Range ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 44100, 96000])
def test_bounds_for_sample_rate_cap_frequencies_below_nyquist(sample_rate):
    bounds = Bounds.for_sample_rate(sample_rate)
    default = Bounds()
    top = 0.45 * sample_rate
    assert bounds.f0_hz.hi <= top
    assert bounds.noise_center_hz.hi <= top
    assert bounds.f0_hz.hi == min(default.f0_hz.hi, top)
    assert bounds.noise_center_hz.hi == min(default.noise_center_hz.hi, top)
    # A band's width is not a position: it may span the band from 0 to 0.9 * sr.
    assert bounds.noise_bandwidth_hz.hi == min(default.noise_bandwidth_hz.hi, 2 * top)
    for name in ("f0_hz", "noise_center_hz", "noise_bandwidth_hz"):
        assert bounds.range_of(name).lo == default.range_of(name).lo
        assert bounds.range_of(name).log
    for name in ("gain_db", "attack_s", "spread_s", "inharmonicity", "rolloff_db", "decay_s", "mix"):
        assert bounds.range_of(name) == default.range_of(name)


def test_bounds_at_8000_hz_are_actually_capped():
    bounds = Bounds.for_sample_rate(8000)
    assert bounds.f0_hz.hi == pytest.approx(3600.0)
    assert bounds.noise_center_hz.hi == pytest.approx(3600.0)
    assert bounds.noise_bandwidth_hz.hi == pytest.approx(7200.0)


@pytest.mark.parametrize("sample_rate", [7999, 4000, 0, -22050])
def test_bounds_reject_sample_rates_below_8000(sample_rate):
    with pytest.raises(ParameterError, match=f"sample_rate={sample_rate}"):
        Bounds.for_sample_rate(sample_rate)


@pytest.mark.parametrize(
    ("lo", "hi", "log"), [(1.0, 1.0, False), (2.0, 1.0, False), (0.0, 1.0, True), (-1.0, 1.0, True)]
)
def test_invalid_ranges_are_rejected(lo, hi, log):
    with pytest.raises(ParameterError, match="invalid range"):
        Range(lo, hi, log=log)


# --- AtomParams ---------------------------------------------------------------------------------


def test_stack_and_unstack_round_trip(rng):
    values = torch.from_numpy(rng.standard_normal((2, 3, N_FIELDS)))
    params = AtomParams.unstack(values)
    for i, name in enumerate(FIELDS):
        assert torch.equal(getattr(params, name), values[..., i])
    assert torch.equal(params.stack(), values)


def test_unstack_rejects_the_wrong_number_of_fields():
    with pytest.raises(ParameterError, match=f"expected {N_FIELDS} fields.*got 7"):
        AtomParams.unstack(torch.zeros(1, 2, 7))


def test_select_picks_atoms_in_every_field(rng):
    values = torch.from_numpy(rng.standard_normal((2, 4, N_FIELDS)))
    picked = AtomParams.unstack(values).select(torch.tensor([3, 1]))
    assert torch.equal(picked.stack(), values[:, [3, 1]])


# --- gradients ----------------------------------------------------------------------------------


def test_to_physical_passes_gradcheck(rng):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    raw = _raw(rng, batch=2, atoms=2, scale=3.0).requires_grad_(True)
    t0 = _t0(2)

    def physical(r: torch.Tensor) -> torch.Tensor:
        return to_physical(r, bounds=bounds, t0_s=t0, span_s=SPAN_S).stack()

    assert torch.autograd.gradcheck(physical, (raw,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_to_raw_passes_gradcheck(rng):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    t0 = _t0(2)
    phys = to_physical(_raw(rng, batch=2, atoms=2, scale=3.0), bounds=bounds, t0_s=t0, span_s=SPAN_S)
    values = phys.stack().detach().requires_grad_(True)

    def raw_of(v: torch.Tensor) -> torch.Tensor:
        return to_raw(AtomParams.unstack(v), bounds=bounds, t0_s=t0, span_s=SPAN_S)

    # gradcheck's step is absolute: 1e-8 is small next to every field (the smallest, attack_s, is >= 5e-4 s)
    # and large enough next to the largest (~1e4 Hz) for float64 differences.
    assert torch.autograd.gradcheck(raw_of, (values,), eps=1e-8, atol=1e-5, rtol=1e-4)


def test_every_field_gets_a_finite_nonzero_gradient(rng):
    bounds = Bounds.for_sample_rate(SAMPLE_RATE)
    raw = _raw(rng, batch=2, atoms=3).requires_grad_(True)
    phys = to_physical(raw, bounds=bounds, t0_s=_t0(2), span_s=SPAN_S)
    # A loss that touches every field, each scaled to order 1.
    loss = sum(
        (getattr(phys, name) / (SPAN_S if name == "time_s" else bounds.range_of(name).hi)).square().sum()
        for name in FIELDS
    )
    loss.backward()
    grad = raw.grad
    assert grad is not None
    assert bool(torch.isfinite(grad).all())
    for i, name in enumerate(FIELDS):
        assert bool((grad[..., i].abs() > 0).all()), name
