"""Partial series (splat.modes): the ratio tables against their closed forms, membrane and bar atoms in
the renderer and the fast engine, the fit's choice of a series, and the `modes` field in the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import jn_zeros, jv
from test_cli import TINY_FIT, assert_one_error_line, hand_made_atom_set, run
from test_synth import REFERENCE_ATOMS, SAMPLE_RATE, _reference

from splat import dsp, loss, modes, native, spectral, synth
from splat.atoms import Atom, AtomSet
from splat.checkpoint import FitState
from splat.edit import select
from splat.engines import FastEngine, ModelSpec, Region
from splat.errors import ParameterError
from splat.fitting import FitConfig, _candidate_atoms, _masked, _series_candidates, fit
from splat.params import N_FIELDS, Bounds, to_physical
from splat.synth import render_atom_set

#: As usually quoted (rounded: the tenth is 3.6475 to four digits).
MEMBRANE_PUBLISHED = [1.0, 1.594, 2.136, 2.296, 2.653, 2.918, 3.156, 3.501, 3.600, 3.652]
BAR_PUBLISHED = [1.0, 2.756, 5.404, 8.933]


def _membrane_from_scratch(n: int) -> np.ndarray:
    """The n lowest zeros over all J_m (a grid far larger than needed), over j_01."""
    zeros = np.sort(np.concatenate([jn_zeros(m, 40) for m in range(81)]))
    return zeros[:n] / zeros[0]


# --- the ratio tables -----------------------------------------------------------------------------


def test_membrane_ratios_are_the_lowest_bessel_zeros_over_the_first():
    ratios = modes.membrane_ratios(200)
    np.testing.assert_allclose(ratios[:10], MEMBRANE_PUBLISHED, atol=5e-3)  # as published, to 2-3 digits
    assert np.all(np.diff(ratios) > 0)
    # Each one is a zero of some J_m (the closed form), and none is missed below the largest.
    x = ratios * jn_zeros(0, 1)[0]
    assert np.min(np.abs([jv(m, x) for m in range(60)]), axis=0).max() < 1e-10
    np.testing.assert_allclose(ratios, _membrane_from_scratch(200), rtol=1e-12)


def test_bar_ratios_come_from_the_roots_of_cos_cosh_equal_one():
    roots = modes.bar_roots(100)
    np.testing.assert_allclose(roots[:3], [4.730041, 7.853205, 10.995608], atol=1e-6)
    # cos(x) cosh(x) = 1, as cos(x) = 1 / cosh(x); root k between k pi and (k + 1) pi, tending to (2k + 1) pi / 2.
    assert np.abs(np.cos(roots) - 1.0 / np.cosh(roots)).max() < 1e-12
    k = np.arange(1, 101)
    assert np.all((k * np.pi < roots) & (roots < (k + 1) * np.pi))
    np.testing.assert_allclose(roots[4:], (2 * k[4:] + 1) * np.pi / 2, atol=1e-5)
    np.testing.assert_allclose(modes.bar_ratios(4), BAR_PUBLISHED, atol=6e-4)
    np.testing.assert_allclose(modes.bar_ratios(100), (roots / roots[0]) ** 2, rtol=1e-14)


def test_the_table_has_a_row_per_series_and_atoms_index_it():
    table = modes.ratio_table(12)
    assert modes.MODES == ("string", "membrane", "bar") and table.shape == (3, 12)
    assert table[0].tolist() == [float(k) for k in range(1, 13)]
    np.testing.assert_allclose(table[1].numpy(), _membrane_from_scratch(12), rtol=1e-12)
    index = modes.mode_indices(["bar", "string", "membrane"])
    assert index.tolist() == [2, 0, 1]
    torch.testing.assert_close(modes.partial_ratios(index.reshape(1, 3), n_partials=12)[0], table[[2, 0, 1]])
    with pytest.raises(ParameterError, match=r"^modes='drum' must be one of string, membrane, bar$"):
        modes.mode_indices(["drum"])


@pytest.mark.parametrize("series", [0, 1, 2])
def test_audible_partials_are_those_below_nyquist(series):
    f0 = torch.tensor([[[30.0], [700.0], [3000.0], [11000.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.0], [0.01], [1e-4], [0.0]]], dtype=torch.float64)
    ratios = modes.partial_ratios(torch.full((1, 4), series), n_partials=64)
    counts = dsp.n_audible_partials(f0, b, nyquist_hz=11025.0, n_partials=64, ratios=ratios)
    below = dsp.partial_frequencies(f0, b, ratios) < 11025.0
    assert counts.squeeze(-1).tolist() == below.sum(-1).double().tolist()
    if series == 0:  # the closed form for strings agrees
        torch.testing.assert_close(dsp.n_audible_partials(f0, b, nyquist_hz=11025.0, n_partials=64), counts)


# --- the renderer -------------------------------------------------------------------------------


@pytest.mark.parametrize("series", ["membrane", "bar"])
@pytest.mark.parametrize("atom", REFERENCE_ATOMS[:2], ids=["mid", "inharmonic-released-formant"])
def test_a_membrane_or_bar_atom_matches_the_numpy_reference(atom, series):
    # The reference takes its ratios from the closed forms directly, not from splat.modes.
    roots = np.array(
        [brentq(lambda x: math.cos(x) * math.cosh(x) - 1.0, k * math.pi, (k + 1) * math.pi) for k in range(1, 25)]
    )
    ratios = _membrane_from_scratch(24) if series == "membrane" else (roots / roots[0]) ** 2
    n_samples, n_partials = round(0.4 * SAMPLE_RATE), 24
    atom = replace(atom, modes=series)
    params, seeds = AtomSet(atoms=(atom,), sample_rate=SAMPLE_RATE, duration_s=1.0).to_params()
    white = synth.white_noise(seeds, n_samples=synth.noise_length(SAMPLE_RATE)).unsqueeze(0).double()
    rendered = synth.render_atoms(
        params,
        white,
        n_samples=n_samples,
        sample_rate=SAMPLE_RATE,
        start=0,
        envelope="gamma",
        n_partials=n_partials,
        modes=modes.mode_indices([series]).reshape(1, 1),
    )[0, 0].numpy()
    expected = _reference(
        atom,
        white[0, 0].numpy(),
        n_samples=n_samples,
        envelope="gamma",
        n_partials=n_partials,
        noise_freqs_hz=np.fft.rfftfreq(white.shape[-1], d=1.0 / SAMPLE_RATE),
        ratios=ratios,
    )
    peak = np.abs(expected).max()
    assert peak > 0.01
    np.testing.assert_allclose(rendered, expected, rtol=0, atol=1e-8 * peak)
    # The series is heard: the same atom as a string is another sound.
    as_string = _reference(
        atom,
        white[0, 0].numpy(),
        n_samples=n_samples,
        envelope="gamma",
        n_partials=n_partials,
        noise_freqs_hz=np.fft.rfftfreq(white.shape[-1], d=1.0 / SAMPLE_RATE),
    )
    assert np.abs(as_string - expected).max() > 0.1 * peak


# --- the fast engine ------------------------------------------------------------------------------

SR = 22050
N = 16384


def _hit(series: str, seed: int = 1, **changes) -> Atom:
    values = dict(
        time_s=0.05,
        gain_db=-6.0,
        attack_s=0.002,
        spread_s=0.004,
        noise_center_hz=2500.0,
        noise_bandwidth_hz=3000.0,
        f0_hz=180.0,
        inharmonicity=0.0,
        rolloff_db=3.0,
        decay_s=0.4,
        mix=0.9,
        noise_seed=seed,
        short_share=0.3,
        short_decay_s=0.08,
        short_rolloff_db=3.0,
        modes=series,
    )
    return Atom(**(values | changes))


@pytest.mark.parametrize("series", ["membrane", "bar"])
def test_the_fast_engine_puts_the_power_at_the_modes(series):
    """The expected spectrogram of a ringing atom against the mean spectrogram of 16 renders (16 noise seeds).

    Past the onset (frames from 8 on), per mode, the power within a bin of it summed over the frames,
    as a share of all the power: within 2 % of the expected share (the engine's offset from a render,
    ~3 % of a steady tone's power, is the same at every mode). The string that the same atom would be
    puts almost nothing at its second mode.
    """
    atom = _hit(series, mix=0.7, f0_hz=300.0, decay_s=3.0, short_share=0.0)
    res = spectral.resolutions_for((2048,))
    spec = ModelSpec(SR, "gamma", 24, res, 32)
    region = Region(start=0, n_samples=N, segment_starts=(0,), n_segment=N)
    one = AtomSet(atoms=(atom,), sample_rate=SR, duration_s=N / SR, n_partials=24)
    renders = [render_atom_set(one.with_atoms([replace(atom, noise_seed=seed)])) for seed in range(16)]
    measured = torch.stack([loss.region_powers(torch.tensor(r), 0, N, res)[0] for r in renders]).mean(0)[8:].sum(0)
    params, _ = one.to_params(dtype=torch.float32)
    engine = FastEngine(torch.tensor(renders[0]), region, spec)
    expected = engine.model_powers(params, modes=one.to_modes())[0][8:].sum(0)
    as_string = engine.model_powers(params)[0][8:].sum(0)
    total = float(measured.sum() / expected.sum())
    assert total == pytest.approx(1.0, abs=0.05)
    bin_hz = SR / 2048
    ratios = modes.ratio_table(6)[modes.MODES.index(series)].tolist()
    for ratio in ratios:
        near = slice(round(ratio * atom.f0_hz / bin_hz) - 1, round(ratio * atom.f0_hz / bin_hz) + 2)
        assert float(measured[near].sum() / expected[near].sum()) == pytest.approx(total, rel=0.02), ratio
    second = slice(round(ratios[1] * atom.f0_hz / bin_hz) - 1, round(ratios[1] * atom.f0_hz / bin_hz) + 2)
    assert float(as_string[second].sum()) < 0.01 * float(expected[second].sum())


@pytest.fixture
def pytorch_or_native(request, monkeypatch):
    """Runs a test with the native kernels, then with PyTorch alone."""
    if request.param == "pytorch":
        monkeypatch.setenv("SPLAT_NATIVE", "0")
    native.forget()
    yield request.param
    native.forget()


@pytest.mark.parametrize("pytorch_or_native", ["native", "pytorch"], indirect=True)
def test_resonance_spectra_of_every_series_match_a_float64_evaluation(pytorch_or_native, rng):
    """Mixed series in one call: the float32 spectra and the gradients of a random weighting of them
    against a float64 evaluation (float32 positions of partials near bin 1000 are ~1e-4 bins off)."""
    plan = spectral.Plan(
        spectral.Grid(n_window=8192, step=64, pad=1024),
        spectral.resolutions_for((2048, 512)),
        sample_rate=SR,
        device=torch.device("cpu"),
    )
    raw = torch.tensor(rng.normal(size=(2, 6, N_FIELDS)), dtype=torch.float32)
    params = to_physical(raw, bounds=Bounds.for_sample_rate(SR), t0_s=torch.zeros(2, 1), span_s=0.3)
    series = torch.tensor([[0, 1, 2, 1, 2, 0], [1, 1, 2, 2, 0, 0]])
    weights = [
        torch.rand(2, 12, r.n_bins, generator=torch.Generator().manual_seed(i)) for i, r in enumerate(plan.resolutions)
    ]

    def weighted(values, plan_):
        leaves = {k: v.clone().requires_grad_(True) for k, v in vars(values).items()}
        out = spectral.resonance_spectra(type(values)(**leaves), plan_, n_partials=32, modes=series)
        sum((o * w.to(o.dtype)).sum() for o, w in zip(out, weights, strict=True)).backward()
        return [o.detach().double() for o in out], {k: v.grad.double() for k, v in leaves.items() if v.grad is not None}

    spectra, grads = weighted(params, plan)
    plan64 = spectral.Plan(plan.grid, plan.resolutions, sample_rate=SR, device=torch.device("cpu"))
    plan64.bin_hz, plan64.taps, plan64.last_bin = plan.bin_hz.double(), plan.taps.double(), plan.last_bin.double()
    double = type(params)(**{k: v.double() for k, v in vars(params).items()})
    exact, exact_grads = weighted(double, plan64)
    for a, b in zip(spectra, exact, strict=True):
        assert (a - b).abs().max() < 2e-3 * b.abs().max()
    assert set(grads) == set(spectral._PARTIAL_FIELDS)
    for name, grad in grads.items():
        assert (grad - exact_grads[name]).abs().max() <= 2e-3 * exact_grads[name].abs().max() + 1e-9, name
    # Each atom's spectrum is its own series': a membrane's second mode, not a string's second partial.
    first = spectral.resonance_spectra(params, plan, n_partials=32, modes=torch.zeros_like(series))[0]
    assert (first - spectra[0].float()).abs().max() > 0.1


# --- choosing the series in the fit -------------------------------------------------------------


@pytest.mark.parametrize("n_segments", [1, 2])
def test_replacement_distances_are_the_distances_after_each_change(n_segments, float32_products):
    """Every candidate of `choose_series` (series switches, absorptions) in one call, against a full
    evaluation of each (float32 products in both). Equal up to float32 rounding: where the atoms taken
    out held nearly all of a cell's power, the remainder is known only to ~1e-7 of it, and the log
    term sees that (3e-4 of the distance at most here). The estimates take every pitch as fixed."""
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(2 * N, generator=gen) * 0.1
    seg = N // 2
    spec = ModelSpec(SR, "gamma", 24, spectral.resolutions_for((1024, 512, 256)), 32)
    look = seg // 2 if n_segments == 2 else 0
    region = Region(0, n_segments * seg + look, tuple(seg * i for i in range(n_segments)), seg)
    engine = FastEngine(audio, region, spec)
    raw = torch.randn(n_segments, 6, N_FIELDS, generator=gen)
    starts = torch.tensor([[0.0], [seg / SR]])[:n_segments]
    params = to_physical(raw, bounds=Bounds.for_sample_rate(SR), t0_s=starts, span_s=0.04)
    params = replace(params, gain_db=torch.linspace(-20.0, -5.0, 6).expand(n_segments, 6).contiguous())
    series = torch.tensor([[0, 1, 2, 0, 1, 0]] * n_segments)
    active = torch.ones(n_segments, 6, dtype=torch.bool)
    changes = _series_candidates(params, series, active, (0, 1, 2), (1, 2))
    assert any(c.absorbs for c in changes) and any(not c.absorbs for c in changes)
    segments, atoms, signs, atom_modes, _ = _candidate_atoms(params, series, changes, 0.0, Bounds.for_sample_rate(SR))
    now, estimates = engine.replacement_distances(
        params, None, series, segments=segments, atoms=atoms, signs=signs, atom_modes=atom_modes
    )
    fixed = torch.zeros(n_segments, 6, dtype=torch.bool)  # the random atoms' glides and vibratos left out
    assert float(now) == pytest.approx(float(engine(params, modes=series, moving=fixed)), rel=1e-5)
    for i, change in enumerate(changes):
        s, (a, b) = change.segment, change.atoms
        values = {name: getattr(params, name).clone() for name in vars(params)}
        for name in values:
            values[name][s, a] = getattr(atoms, name)[i, 1]
        after_modes, after_active = series.clone(), active.clone()
        after_modes[s, a] = change.mode
        after_active[s, b] = not change.absorbs
        full = engine(_masked(type(params)(**values), after_active), modes=after_modes, moving=fixed)
        assert float(estimates[i]) == pytest.approx(float(full), rel=3e-4), change


@pytest.mark.parametrize("pytorch_or_native", ["native", "pytorch"], indirect=True)
def test_changed_error_sums_are_the_error_sums_of_the_changed_powers(pytorch_or_native, rng):
    def uniform(*shape: int) -> torch.Tensor:
        return torch.tensor(rng.uniform(0, 1, shape), dtype=torch.float32)

    tonal, noise, magnitude = uniform(12, 65) ** 3, uniform(12, 65) ** 3, uniform(12, 65) ** 1.5
    frames_t, spectra_t = uniform(5, 12, 3) - 0.5, uniform(5, 3, 65)
    frames_n, spectra_n = uniform(5, 12, 2) - 0.5, uniform(5, 2, 65)
    frames_t[:, :4], frames_n[:, :4] = 0.0, 0.0  # frames the changes leave alone: taken as they are
    frames_t[:, 4:6] = 0.0  # and a frame only the noise changes
    sums = loss.changed_error_sums(
        tonal, noise, magnitude, magnitude.log(), (frames_t, spectra_t), (frames_n, spectra_n)
    )
    for c in range(5):
        changed_t, changed_n = tonal + frames_t[c] @ spectra_t[c], noise + frames_n[c] @ spectra_n[c]
        x = (changed_t + math.pi / 4 * changed_n).clamp_min(loss.POWER_FLOOR).sqrt()
        z2 = (changed_t + math.log(2.0) * changed_n).clamp_min(loss.POWER_FLOOR)
        squares = float(((x - magnitude).double() ** 2).sum())
        logs = float((magnitude.log() - 0.5 * z2.log()).double().abs().sum())
        assert sums[c].tolist() == pytest.approx([squares, logs], rel=1e-5)


def _fit_one_hit(hit: Atom, seed: int = 0) -> list[Atom]:
    audio = render_atom_set(AtomSet(atoms=(hit,), sample_rate=SR, duration_s=0.6, n_partials=24))
    config = FitConfig(n_atoms=4, n_iters=60, seed=seed, n_partials=24, fft_sizes=(2048, 1024, 512, 256))
    return list(fit(audio, SR, config).atoms.atoms)


@pytest.mark.parametrize(
    ("hit", "f0_hz"),
    [
        (_hit("membrane"), 180.0),
        (_hit("bar", f0_hz=400.0), 400.0),
        (_hit("string", f0_hz=220.0, rolloff_db=5.0), 220.0),
    ],
    ids=["membrane", "bar", "string"],
)
def test_a_fit_of_one_hit_ends_with_one_event_atom_of_its_series(hit, f0_hz):
    """Starting from harmonic atoms (the analysis' pitches), the fit finds that one atom of the hit's
    series explains it: the others are absorbed (their power in its upper modes) or pruned."""
    atoms = _fit_one_hit(hit)
    loudest = max(a.gain_db for a in atoms)
    events = [a for a in atoms if a.gain_db >= loudest - 30.0]  # the evaluation's event rule
    assert [a.modes for a in events] == [hit.modes]
    assert abs(1200 * math.log2(events[0].f0_hz / f0_hz)) < 50
    assert abs(events[0].time_s - hit.time_s) < 0.01


def test_with_strings_only_a_membrane_hit_takes_several_harmonic_atoms():
    audio = render_atom_set(AtomSet(atoms=(_hit("membrane"),), sample_rate=SR, duration_s=0.6, n_partials=24))
    config = FitConfig(n_atoms=4, n_iters=60, n_partials=24, fft_sizes=(2048, 1024, 512, 256), modes=("string",))
    atoms = fit(audio, SR, config).atoms.atoms
    loudest = max(a.gain_db for a in atoms)
    assert {a.modes for a in atoms} == {"string"}
    assert sum(a.gain_db >= loudest - 30.0 for a in atoms) >= 2


@pytest.mark.parametrize("value", [("membrane",), ("string", "drum"), "string"])
def test_fit_config_modes_must_be_known_and_include_strings(value):
    with pytest.raises(ParameterError, match="modes="):
        FitConfig(modes=value).validate()


# --- the CLI ------------------------------------------------------------------------------------


def _drum_set() -> AtomSet:
    atom_set = hand_made_atom_set()
    return atom_set.with_atoms([replace(a, modes=m) for a, m in zip(atom_set.atoms, modes.MODES, strict=True)])


def test_info_all_shows_each_atoms_series(tmp_path):
    path = tmp_path / "drums.atoms.json"
    _drum_set().save(path)
    result = run("info", path, "--all")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [[word for word in row if word in modes.MODES] for row in rows] == [[m] for m in modes.MODES]
    assert [r["modes"] for r in json.loads(run("info", path, "--json").stdout)] == list(modes.MODES)


def test_edit_selects_atoms_by_series(tmp_path):
    atom_set = _drum_set()
    assert select(atom_set, 'modes == "membrane"') == [1]
    assert select(atom_set, "modes != 'string'") == [1, 2]
    path, out = tmp_path / "drums.atoms.json", tmp_path / "quiet.atoms.json"
    atom_set.save(path)
    result = run("edit", path, "-o", out, "--where", 'modes == "bar"', "--gain", "-6")
    assert result.exit_code == 0, result.output
    edited = AtomSet.load(out).atoms
    assert [b.gain_db - a.gain_db for a, b in zip(atom_set.atoms, edited, strict=True)] == [0.0, 0.0, -6.0]


def test_fit_refuses_unknown_series(write_wav, clip):
    path = write_wav("clip.wav", clip)
    assert_one_error_line(run("fit", path, *TINY_FIT, "--modes", "string,drum"), mentions="modes=")
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.wav"]


def test_a_checkpoint_keeps_the_tail_atoms_series():
    tail = to_physical(
        torch.zeros(1, 3, N_FIELDS), bounds=Bounds.for_sample_rate(SR), t0_s=torch.zeros(1, 1), span_s=1.0
    )
    state = FitState(
        n_done=1,
        n_chunks=2,
        rng_state={"state": 1},
        atoms=(),
        floors=(),
        losses=((1.0,),),
        tail=tail,
        tail_floor_db=None,
        tail_start=0,
        tail_modes=torch.tensor([[1, 0, 2]]),
    )
    doc = json.loads(json.dumps(state.to_dict()))
    assert FitState.from_dict(doc).tail_modes.tolist() == [[1, 0, 2]]
    del doc["tail_modes"]  # a checkpoint written before the series: its tail is strings
    assert FitState.from_dict(doc).tail_modes is None
