"""The native kernels (`splat.native`, `kernels.c`) against the PyTorch code they replace.

Each test evaluates one function twice in float32, with the kernels and with
`SPLAT_NATIVE=0` (PyTorch alone, the reference), and compares the values and
the gradients of a random weighting of the outputs. Both sum the same float32
terms in different orders, so they agree to a few float32 roundings (relative
1e-5), except where a tolerance says why not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat import dsp, loss, native, spectral
from splat.params import FIELDS, MOTION_FIELDS, AtomParams, Bounds

SR = 22050


@pytest.fixture(autouse=True)
def _fresh_library(monkeypatch):
    """Every test starts and ends with the library looked up again (the environment may change)."""
    native.forget()
    yield
    native.forget()


def _both(monkeypatch, run):
    """`run()` with the native kernels, then with PyTorch alone: (native result, reference result)."""
    assert native.library() is not None, "the C compiler should build the kernels on this machine"
    with_kernels = run()
    monkeypatch.setenv("SPLAT_NATIVE", "0")
    native.forget()
    assert native.library() is None
    reference = run()
    monkeypatch.delenv("SPLAT_NATIVE")
    native.forget()
    return with_kernels, reference


def _weights(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal within rtol of the largest magnitude (elements near zero have no relative precision)."""
    scale = expected.abs().max().clamp_min(1e-30)
    assert ((actual - expected).abs().max() / scale).item() < rtol


def _params(rng: np.random.Generator, shape=(2, 5), *, moving: bool = False) -> dict[str, torch.Tensor]:
    """float32 values of every field spread over its whole range (time within the first 0.4 s); the
    pitch fixed (no glide, no vibrato depth) unless `moving`."""
    bounds = Bounds.for_sample_rate(SR)
    values = {"time_s": rng.uniform(0.0, 0.4, shape)}
    for name in FIELDS[1:]:
        rng_ = bounds.range_of(name)
        unit = rng.uniform(0.0, 1.0, shape)
        values[name] = (
            np.exp(np.log(rng_.lo) + unit * np.log(rng_.hi / rng_.lo))
            if rng_.log
            else rng_.lo + unit * (rng_.hi - rng_.lo)
        )
    if not moving:
        values["f0_glide_cents_per_s"] = values["vibrato_cents"] = np.zeros(shape)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


@pytest.fixture
def plan() -> spectral.Plan:
    grid = spectral.Grid(n_window=8192, step=64, pad=1024)
    return spectral.Plan(grid, spectral.resolutions_for((2048, 1024, 512)), sample_rate=SR, device=torch.device("cpu"))


def _gradients(values: dict[str, torch.Tensor], outputs_of) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs of `outputs_of(params)` and the gradient of a fixed random weighting of them per field."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    outputs = outputs_of(AtomParams(**leaves))
    sum((out * _weights(out.shape, seed=i)).sum() for i, out in enumerate(outputs)).backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return [o.detach() for o in outputs], grads


@pytest.mark.parametrize("envelope", ["gamma", "gaussian"])
def test_branch_powers_match_pytorch(monkeypatch, rng, plan, envelope):
    values = _params(rng)
    window_start_s = torch.tensor([[0.0], [0.25]])

    def run():
        return _gradients(
            values,
            lambda p: [
                spectral.branch_powers(
                    p, plan.cell_s, window_start_s, grid=plan.grid, sample_rate=SR, envelope=envelope
                ).contiguous()
            ],
        )

    (out, grads), (ref_out, ref_grads) = _both(monkeypatch, run)
    _assert_close(out[0], ref_out[0])
    assert set(grads) == set(ref_grads) == set(spectral._BRANCH_FIELDS)
    for name in grads:
        _assert_close(grads[name], ref_grads[name], rtol=2e-5)


def test_frame_powers_match_pytorch(monkeypatch, plan):
    powers = torch.rand(3, 7, plan.grid.n_cells)

    def run():
        leaf = powers.clone().requires_grad_(True)
        frames = plan.frame_powers(leaf)
        sum((f * _weights(f.shape, seed=i)).sum() for i, f in enumerate(frames)).backward()
        return [f.detach() for f in frames], leaf.grad

    (frames, grad), (ref_frames, ref_grad) = _both(monkeypatch, run)
    for a, b in zip(frames, ref_frames, strict=True):
        _assert_close(a, b)
    _assert_close(grad, ref_grad)


def test_noise_spectra_match_pytorch(monkeypatch, rng, plan):
    values = _params(rng)
    # Bands at DC and at Nyquist, narrow and wide: the normalisation's erf terms at both ends.
    values["noise_center_hz"][0, :3] = torch.tensor([20.0, SR / 2 - 5.0, 3000.0])
    values["noise_bandwidth_hz"][0, :3] = torch.tensor([20.0, 20.0, 8000.0])

    (spectra, grads), (ref_spectra, ref_grads) = _both(
        monkeypatch, lambda: _gradients(values, lambda p: spectral.noise_spectra(p, plan))
    )
    for a, b in zip(spectra, ref_spectra, strict=True):
        _assert_close(a, b)
    assert set(grads) == set(ref_grads) == {"noise_center_hz", "noise_bandwidth_hz"}
    for name in grads:
        _assert_close(grads[name], ref_grads[name])


def test_resonance_spectra_match_pytorch_to_the_precision_of_a_float32_position(monkeypatch, rng, plan):
    """Both paths round f_k / bin_hz to float32: a partial at bin ~1000 is placed to ~1e-4 bins, and
    the kernel's slope (~3 per bin) turns that into ~3e-4 of a share. So both are compared with a
    float64 evaluation, and the kernels must be as close to it as PyTorch's float32 is."""
    values = _params(rng)
    values["f0_hz"][0, :3] = torch.tensor([SR / 2 - 100.0, 40.0, SR / 4096 * 16])  # one partial; many; on a bin

    def run():
        return _gradients(values, lambda p: spectral.resonance_spectra(p, plan, n_partials=64))

    (spectra, grads), (ref_spectra, ref_grads) = _both(monkeypatch, run)
    double = {k: v.double() for k, v in values.items()}
    plan64 = spectral.Plan(plan.grid, plan.resolutions, sample_rate=SR, device=torch.device("cpu"))
    plan64.bin_hz, plan64.taps, plan64.last_bin = plan.bin_hz.double(), plan.taps.double(), plan.last_bin.double()
    exact, exact_grads = _gradients(double, lambda p: spectral.resonance_spectra(p, plan64, n_partials=64))
    for a, b, c in zip(spectra, ref_spectra, exact, strict=True):
        assert (a.double() - c).abs().max() <= 2 * (b.double() - c).abs().max() + 1e-7
    assert set(grads) == set(ref_grads) == set(spectral._PARTIAL_FIELDS)
    for name in grads:
        error = (grads[name].double() - exact_grads[name]).abs().max()
        assert (
            error
            <= 2 * (ref_grads[name].double() - exact_grads[name]).abs().max() + 1e-6 * exact_grads[name].abs().max()
        )


def test_moving_partials_match_pytorch_to_the_precision_of_float32(monkeypatch, rng, plan):
    """The frame-by-frame splats of moving pitches (`spectral.moving_resonance_power`): glides and
    vibratos over their whole ranges, one atom swept past MAX_SWEEP_BINS, one held at its pitch (the
    plain Hann kernel), every partial series, frames of random powers. Both paths read the moving
    positions and sweeps in float32 (a vibrato's sine of ~1e3 rad loses ~1e-4 rad), so both are compared
    with a float64 evaluation, and the kernels must be as close to it as PyTorch's float32 is."""
    values = _params(rng, moving=True)
    values["f0_glide_cents_per_s"][0, 0], values["vibrato_cents"][0, 0] = 0.0, 0.0
    values["vibrato_cents"][1, 0], values["vibrato_hz"][1, 0], values["f0_hz"][1, 0] = 150.0, 12.0, 2000.0
    frames = [
        torch.rand(2, plan.grid.n_window // res.hop, 10, generator=torch.Generator().manual_seed(2)) * 100.0
        for res in plan.resolutions
    ]
    window_start_s = torch.tensor([[0.0], [0.25]])
    series = torch.tensor([[0, 1, 2, 1, 0], [2, 0, 1, 2, 1]])  # strings, membranes and bars (`splat.modes`)

    def run(dtype=torch.float32):
        plan_d = spectral.Plan(plan.grid, plan.resolutions, sample_rate=SR, device=torch.device("cpu"))
        plan_d.pitch_nodes = [tuple(t.to(dtype) for t in nodes) for nodes in plan.pitch_nodes]

        def outputs(p):
            motion = spectral.pitch_scales(p, window_start_s.to(dtype), plan_d)
            return [
                spectral.moving_resonance_power(
                    frames[i].to(dtype), p, *motion[i], plan_d, i, n_partials=32, modes=series
                )
                for i in range(len(plan.resolutions))
            ]

        return _gradients({k: v.to(dtype) for k, v in values.items()}, outputs)

    (spectra, grads), (ref_spectra, ref_grads) = _both(monkeypatch, run)
    exact, exact_grads = run(torch.float64)
    for a, b, c in zip(spectra, ref_spectra, exact, strict=True):
        assert (a.double() - c).abs().max() <= 2 * (b.double() - c).abs().max() + 1e-6 * c.abs().max()
    assert set(grads) == set(ref_grads) == {*spectral._PARTIAL_FIELDS, *MOTION_FIELDS, "time_s", "duration_s"}
    for name in grads:
        error = (grads[name].double() - exact_grads[name]).abs().max()
        reference = (ref_grads[name].double() - exact_grads[name]).abs().max()
        assert error <= 2 * reference + 1e-5 * exact_grads[name].abs().max(), name


def test_silent_partials_get_no_share(monkeypatch, plan):
    """A partial at or above Nyquist is silent: an atom whose f0 is above Nyquist has no resonance."""
    values = _params(np.random.default_rng(0), shape=(1, 1))
    values["f0_hz"][:] = SR / 2 + 1.0
    params = AtomParams(**values)
    spectra, reference = _both(monkeypatch, lambda: spectral.resonance_spectra(params, plan, n_partials=8))
    for a, b in zip(spectra, reference, strict=True):
        assert a.abs().max() == 0.0 and b.abs().max() == 0.0


@pytest.mark.parametrize("with_noise", [False, True])
def test_spectral_distance_matches_pytorch(monkeypatch, rng, with_noise):
    shapes = [(16, 513), (32, 257)]
    target = loss.SpectralTarget([torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes])
    powers = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes]
    noises = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes]
    powers[0][0, :10] = noises[0][0, :10] = 0.0  # below the power floor: no gradient there

    def run():
        leaves = [p.clone().requires_grad_(True) for p in powers + noises]
        value = target.distance(leaves[:2], leaves[2:] if with_noise else None)
        (3.0 * value).backward()  # an incoming gradient other than 1
        return value.detach(), [leaf.grad for leaf in leaves[: 4 if with_noise else 2]]

    (value, grads), (ref_value, ref_grads) = _both(monkeypatch, run)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_close(a, b)
    assert grads[0][0, :10].abs().max() == 0.0


@pytest.mark.parametrize("with_noise", [False, True])
def test_band_distance_matches_pytorch(monkeypatch, rng, with_noise):
    """The perceptual term (`SpectralTarget.band_distance`): native kernel against autograd on PyTorch."""
    shapes = [(16, 513), (32, 257)]
    target = loss.SpectralTarget(
        [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes], sample_rate=SR
    )
    powers = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes]
    noises = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes]
    powers[0][0] = noises[0][0] = 0.0  # a silent frame: below the power floor, no gradient there

    def run():
        leaves = [p.clone().requires_grad_(True) for p in powers + noises]
        value = target.band_distance(leaves[:2], leaves[2:] if with_noise else None)
        (3.0 * value).backward()  # an incoming gradient other than 1
        return value.detach(), [leaf.grad for leaf in leaves[: 4 if with_noise else 2]]

    (value, grads), (ref_value, ref_grads) = _both(monkeypatch, run)
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_close(a, b)
    assert grads[0][0].abs().max() == 0.0 and grads[0][1].abs().max() > 0.0


def test_the_band_distance_of_bfloat16_powers_is_that_of_their_float32_values(rng):
    """As for the per-bin distance: bfloat16 powers read as they are, their gradients rounded to bfloat16."""
    shapes = [(16, 513), (32, 257)]
    target = loss.SpectralTarget(
        [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes], sample_rate=SR
    )
    halves = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32).bfloat16() for s in 2 * shapes]

    def run(dtype):
        leaves = [h.to(dtype).clone().requires_grad_(True) for h in halves]
        value = target.band_distance(leaves[:2], leaves[2:])
        value.backward()
        return value.item(), [leaf.grad for leaf in leaves]

    value, grads = run(torch.bfloat16)
    single_value, single_grads = run(torch.float32)
    assert value == pytest.approx(single_value, rel=1e-6)
    for half, single in zip(grads, single_grads, strict=True):
        assert half.dtype == torch.bfloat16 and torch.equal(half, single.bfloat16())


def test_the_distance_of_bfloat16_powers_is_that_of_their_float32_values(rng):
    """The loss kernel reads the bfloat16 products as they are and writes their gradients rounded:
    the same value as for those powers in float32, and the float32 gradients rounded to bfloat16."""
    shapes = [(16, 513), (32, 257)]
    target = loss.SpectralTarget([torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32) for s in shapes])
    halves = [torch.tensor(rng.uniform(0, 1, s) ** 4, dtype=torch.float32).bfloat16() for s in 2 * shapes]

    def run(dtype):
        leaves = [h.to(dtype).clone().requires_grad_(True) for h in halves]
        value = target.distance(leaves[:2], leaves[2:])
        value.backward()
        return value.item(), [leaf.grad for leaf in leaves]

    value, grads = run(torch.bfloat16)
    single_value, single_grads = run(torch.float32)
    assert value == pytest.approx(single_value, rel=1e-6)
    for half, single in zip(grads, single_grads, strict=True):
        assert half.dtype == torch.bfloat16 and torch.equal(half, single.bfloat16())


def test_decayed_sum_matches_pytorch(monkeypatch, rng):
    x = torch.tensor(rng.uniform(0, 1, (2, 3, 1, 500)) ** 3, dtype=torch.float32)
    log_q = torch.tensor(-rng.uniform(1e-3, 0.5, (2, 3, 2, 1)), dtype=torch.float32)

    def run():
        leaves = x.clone().requires_grad_(True), log_q.clone().requires_grad_(True)
        r = dsp.decayed_sum(*leaves)
        (r * _weights(r.shape)).sum().backward()
        return r.detach(), [leaf.grad for leaf in leaves]

    (r, grads), (ref_r, ref_grads) = _both(monkeypatch, run)
    _assert_close(r, ref_r)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_close(a, b, rtol=1e-4)


def test_bfloat16_products_are_float32_products_to_bfloat16_precision(rng):
    """Values and gradients within bf16's rounding of the factors (2^-9 each, summed in float32)
    of the float32 products, pointing the same way."""
    frames = torch.tensor(rng.uniform(0, 1, (2, 16, 12)), dtype=torch.float32)
    noise = torch.tensor(rng.uniform(0, 1, (2, 4, 129)), dtype=torch.float32)
    tonal = torch.tensor(rng.uniform(0, 1, (2, 8, 129)), dtype=torch.float32)

    def run(products):
        leaves = [t.clone().requires_grad_(True) for t in (frames, noise, tonal)]
        noisy, partials = products(*leaves)
        ((noisy * _weights(noisy.shape)).sum() + (partials * _weights(partials.shape, seed=2)).sum()).backward()
        return [noisy.detach(), partials.detach()], [leaf.grad for leaf in leaves]

    values, grads = run(spectral._BFloat16Products.apply)
    ref_values, ref_grads = run(lambda f, n, t: (torch.bmm(f[..., :4], n), torch.bmm(f[..., 4:], t)))
    # The products stay bfloat16 (the loss reads them so); the inputs' gradients are float32.
    assert [v.dtype for v in values] == [torch.bfloat16] * 2 and [g.dtype for g in grads] == [torch.float32] * 3
    for a, b in zip([v.float() for v in values] + grads, ref_values + ref_grads, strict=True):
        _assert_close(a, b, rtol=1e-2)
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999
        assert not torch.equal(a, b)  # bfloat16 did round (the test would pass on float32 products)


def test_the_fast_engine_gives_the_same_distance_and_gradient(monkeypatch, rng):
    """The whole objective of a two-segment chunk with a background, through every kernel at once."""
    from splat.engines import FastEngine, ModelSpec, Region
    from splat.params import to_physical

    n = 2 * 4096
    target = torch.tensor(rng.normal(0, 0.1, 3 * n), dtype=torch.float32)
    spec = ModelSpec(SR, "gamma", 16, spectral.resolutions_for((1024, 512)), 64)
    region = Region(start=n, n_samples=2 * n, segment_starts=(n, n + n // 2), n_segment=n // 2)
    background_params = AtomParams(**{k: v[:1] for k, v in _params(rng, shape=(1, 3)).items()})
    background = (background_params, None, torch.tensor([0]))
    raw = torch.tensor(rng.normal(0, 1, (2, 4, len(FIELDS))), dtype=torch.float32)
    bounds = Bounds.for_sample_rate(SR)
    t0, span = torch.tensor([[0.35], [0.5]]), 0.2

    def run():
        engine = FastEngine(target, region, spec, background=background)
        leaf = raw.clone().requires_grad_(True)
        value = engine(to_physical(leaf, bounds=bounds, t0_s=t0, span_s=span))
        value.backward()
        return value.detach(), leaf.grad

    (value, grad), (ref_value, ref_grad) = _both(monkeypatch, run)
    # bfloat16 products (see the test above): the same distance to 1e-4, the same gradient direction.
    assert value.item() == pytest.approx(ref_value.item(), rel=1e-4)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.9999
    _assert_close(grad, ref_grad, rtol=1e-2)


def test_without_a_compiler_the_engine_runs_on_pytorch(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger="splat.native"):
        assert native.library() is None
    assert "PyTorch alone" in caplog.text
    assert not native.usable(torch.zeros(3))
    assert list(tmp_path.iterdir()) == [tmp_path / "splat"]  # no half-built library left behind
    assert list((tmp_path / "splat").iterdir()) == []


def test_the_library_is_built_once_and_then_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.library() is not None
    (built,) = (tmp_path / "splat").iterdir()
    stamp = built.stat().st_mtime_ns
    native.forget()
    assert native.library() is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "splat").iterdir()] == [stamp]


def test_only_float32_cpu_tensors_take_the_kernels():
    assert native.usable(torch.zeros(2))
    assert not native.usable(torch.zeros(2, dtype=torch.float64))
    assert not native.usable(torch.zeros(2), torch.zeros(2, dtype=torch.float64))


def test_bfloat16_products_only_where_the_cpu_has_them():
    assert native.has_bfloat16_matmul("flags\t\t: fpu sse avx2 avx512f avx512_bf16 vaes\n")
    assert native.has_bfloat16_matmul("flags\t: fpu amx_bf16 amx_tile\n")
    assert not native.has_bfloat16_matmul("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not native.has_bfloat16_matmul("model name\t: avx512_bf16 in a name\n")
    assert not native.has_bfloat16_matmul("")


def test_without_bfloat16_the_products_are_float32(monkeypatch, rng, plan):
    """On a CPU without bf16 instructions the engine's products are PyTorch's float32 ones."""
    monkeypatch.setattr(native, "has_bfloat16_matmul", lambda cpuinfo: False)
    assert not native.bfloat16_products()
    params = AtomParams(**_params(rng))
    window_start_s = torch.tensor([[0.0], [0.25]])

    def run():
        return spectral.expected_power(params, window_start_s, plan, envelope="gamma", n_partials=16)

    powers, reference = _both(monkeypatch, run)
    for a, b in zip(powers, reference, strict=True):
        _assert_close(a.noise, b.noise, rtol=1e-5)
        # The partials carry the float32 positions' differences (test_resonance_spectra_match_...).
        _assert_close(a.tonal, b.tonal, rtol=1e-3)


@pytest.mark.parametrize("function", ["frame_powers", "noise_spectra", "resonance_spectra"])
def test_bfloat16_outputs_are_the_float32_ones_rounded_and_take_their_gradients_alike(rng, plan, function):
    """What the kernels write for the bfloat16 products: each output summed in float32 and
    rounded once (to nearest even, as PyTorch rounds), and the gradient of a bfloat16 output
    the one the float32 output would get from the same incoming values."""
    values = _params(rng)
    powers = torch.rand(2, 15, plan.grid.n_cells, generator=torch.Generator().manual_seed(3))

    def run(dtype):
        leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
        grid = powers.clone().requires_grad_(True)
        params = AtomParams(**leaves)
        if function == "frame_powers":
            outputs = plan.frame_powers(grid, dtype=dtype)
        elif function == "noise_spectra":
            outputs = spectral.noise_spectra(params, plan, dtype=dtype)
        else:
            outputs = spectral.resonance_spectra(params, plan, n_partials=32, dtype=dtype)
        # Incoming gradients that bfloat16 holds exactly, so that both runs get the same values.
        weights = [_weights(out.shape, seed=i).bfloat16() for i, out in enumerate(outputs)]
        sum((out.float() * w.float()).sum() for out, w in zip(outputs, weights, strict=True)).backward()
        grads = [grid.grad] if function == "frame_powers" else [v.grad for v in leaves.values() if v.grad is not None]
        return [out.detach() for out in outputs], grads

    halves, half_grads = run(torch.bfloat16)
    singles, single_grads = run(torch.float32)
    for half, single in zip(halves, singles, strict=True):
        assert half.dtype == torch.bfloat16 and torch.equal(half, single.bfloat16())
    assert len(half_grads) == len(single_grads) > 0
    for a, b in zip(half_grads, single_grads, strict=True):
        _assert_close(a, b, rtol=1e-6)
