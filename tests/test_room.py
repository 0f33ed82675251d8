"""The room: its impulse response, the rendered reverberation, the fast engine's expected wet power,
the fit of a known room, the JSON, and the commands that show, edit and split it."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from splat import loss, native, room, spectral
from splat.atoms import Atom, AtomSet, FloorSegment, Room
from splat.cli import app
from splat.edit import Edit, edit
from splat.engines import FastEngine, ModelSpec, ReferenceEngine, Region
from splat.errors import FormatError, ParameterError
from splat.fitting import FitConfig, fit
from splat.listen import ROOM_STEM, render_subset, stems
from splat.params import RoomBounds, RoomParams, room_to_physical, room_to_raw
from splat.synth import dry_signal, render_atom_set

SR = 22050


def _room_params(rt60_s: tuple[float, ...], level_db: float, dtype: torch.dtype = torch.float64) -> RoomParams:
    return RoomParams(torch.tensor(rt60_s, dtype=dtype), torch.tensor(level_db, dtype=dtype))


def _atom(time_s: float, f0_hz: float, gain_db: float, seed: int, mix: float = 0.9, decay_s: float = 0.15) -> Atom:
    return Atom(
        time_s=time_s,
        gain_db=gain_db,
        attack_s=0.003,
        spread_s=0.004,
        noise_center_hz=2500.0,
        noise_bandwidth_hz=4000.0,
        f0_hz=f0_hz,
        inharmonicity=1e-4,
        rolloff_db=4.0,
        decay_s=decay_s,
        mix=mix,
        noise_seed=seed,
    )


def _atom_set(room_record: Room | None, *, duration_s: float = 0.3) -> AtomSet:
    """Three atoms and a noise floor in `duration_s`, in `room_record`."""
    atoms = (_atom(0.02, 220.0, -8.0, 1), _atom(0.1, 330.0, -10.0, 2, mix=0.3), _atom(0.18, 523.0, -9.0, 3))
    floors = (FloorSegment(0.0, duration_s, (-60.0,) * 24, noise_seed=5),)
    return AtomSet(atoms, SR, duration_s, gain=1.5, n_partials=24, floor=floors, room=room_record)


# --- the impulse response and its render ----------------------------------------------------


def test_band_noises_add_up_to_white_noise_of_unit_variance():
    noises = room.band_noises(3, sample_rate=SR)
    assert noises.shape == (room.N_BANDS, room.ir_length(SR))
    total = noises.sum(0)
    assert float(total.var()) == pytest.approx(1.0, rel=0.02)
    # Flat: every octave above 125 Hz holds its share of the variance.
    power = torch.fft.rfft(total).abs() ** 2
    freqs = torch.fft.rfftfreq(total.numel(), d=1.0 / SR)
    octaves = [float(power[(freqs >= lo) & (freqs < 2 * lo)].mean()) for lo in (125.0, 500.0, 2000.0, 5000.0)]
    assert max(octaves) / min(octaves) < 1.1, octaves
    # Each band stays inside its crossovers: the lowest has nothing above the second centre.
    lowest = torch.fft.rfft(noises[0]).abs() ** 2
    assert float(lowest[freqs > room.BAND_HZ[1]].sum()) < 1e-20 * float(lowest.sum())
    # The same seed draws the same noises.
    assert torch.equal(noises, room.band_noises(3, sample_rate=SR))


def test_impulse_response_is_its_formula_and_holds_the_level_in_energy():
    noises = room.band_noises(4, sample_rate=SR)
    rt60_s = (0.8, 1.0, 1.2, 1.5, 1.0, 0.7)
    level_db = -6.0
    ir = room.impulse_response(_room_params(rt60_s, level_db), noises, sample_rate=SR, n_samples=SR)
    assert ir.shape == (SR,)
    n = np.arange(SR)
    u = noises[:, :SR].numpy()
    expected = np.zeros(SR)
    for b, rt60 in enumerate(rt60_s):
        q = math.exp(-2 * math.log(1000) / (rt60 * SR))
        expected += math.sqrt(1 - q) * q ** (n / 2) * u[b]
    np.testing.assert_allclose(ir.numpy(), 10 ** (level_db / 20) * expected, rtol=1e-9, atol=1e-12)
    # Over the whole response (TAIL_DB past the slowest decay) the energy is the level.
    whole = room.impulse_response(_room_params(rt60_s, level_db), noises, sample_rate=SR, n_samples=10**9)
    assert whole.numel() == room.ir_length(SR)
    assert float((whole**2).sum()) == pytest.approx(10 ** (level_db / 10), rel=0.05)


def test_reverberate_is_a_direct_convolution(rng):
    dry = torch.tensor(rng.standard_normal(3000))
    ir = torch.tensor(rng.standard_normal(700)) * torch.exp(-torch.arange(700) / 100.0)
    expected = np.convolve(dry.numpy(), ir.numpy())[:3000]
    np.testing.assert_allclose(room.reverberate(dry, ir).numpy(), expected, atol=1e-10)
    # An impulse response longer than the audio is used only as far as the audio reaches.
    long_ir = torch.tensor(rng.standard_normal(5000))
    np.testing.assert_allclose(
        room.reverberate(dry, long_ir).numpy(), np.convolve(dry.numpy(), long_ir.numpy())[:3000], atol=1e-9
    )


def test_render_adds_the_rooms_reverberation_of_atoms_and_floor():
    """render = dry + dry convolved with the impulse response, checked by a NumPy direct convolution."""
    record = Room((0.12, 0.15, 0.2, 0.18, 0.14, 0.1), level_db=-3.0, noise_seed=9)
    with_room, without = _atom_set(record), _atom_set(None)
    dry = render_atom_set(without).astype(np.float64) * without.gain
    noises = room.band_noises(9, sample_rate=SR)
    params = _room_params(record.rt60_s, record.level_db)
    ir = room.impulse_response(params, noises, sample_rate=SR, n_samples=dry.size).numpy()
    expected = (dry + np.convolve(dry, ir)[: dry.size]) / with_room.gain
    rendered = render_atom_set(with_room)
    np.testing.assert_allclose(rendered, expected, atol=2e-6 * np.abs(expected).max())
    assert np.abs(rendered - render_atom_set(without)).max() > 1e-3 * np.abs(rendered).max()


# --- the fast engine's expected wet power ---------------------------------------------------


def _bands(n_fft: int) -> tuple[spectral.Resolution, room.RoomBands, torch.Tensor]:
    res = spectral.Resolution(n_fft, n_fft // 4)
    bins_hz = torch.arange(res.n_bins, dtype=torch.float64) * (SR / n_fft)
    return res, room.RoomBands.for_bins(bins_hz, hop=res.hop, sample_rate=SR), bins_hz


def test_expected_wet_power_is_the_mean_of_rendered_reverberations():
    """Decaying noise bursts in a room: the expected wet spectrogram against the mean of 12 rooms' renders."""
    n = 1 << 15
    t = torch.arange(n, dtype=torch.float64) / SR
    dry = torch.zeros(n, dtype=torch.float64)
    for seed, onset_s in enumerate((0.05, 0.3, 0.6)):
        u = (t - onset_s).clamp_min(0.0)
        white = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        dry += (t >= onset_s) * white * torch.exp(-u / 0.03)
    params = _room_params((0.3, 0.4, 0.6, 0.8, 0.5, 0.3), 0.0)
    res, bands, bins_hz = _bands(1024)
    expected = bands.wet(loss.region_powers(dry, 0, n, (res,))[0], params)
    renders = []
    for seed in range(12):
        ir = room.impulse_response(params, room.band_noises(seed, sample_rate=SR), sample_rate=SR, n_samples=n)
        renders.append(loss.region_powers(room.reverberate(dry, ir), 0, n, (res,))[0])
    measured = torch.stack(renders).mean(0)
    assert float(measured.sum() / expected.sum()) == pytest.approx(1.0, abs=0.03)
    # In every octave from 355 Hz up (~30+ bins each: the lower ones hold too few for the mean of 12 to
    # settle) and every eighth of the clip where the wet is audible, the power and so its decay agree.
    n_frames = expected.shape[0]
    loud = expected.sum() / (n_frames * res.n_bins) * 1e-2
    ratios = []
    for lo in (355.0, 710.0, 1420.0, 2840.0, 5680.0):
        in_octave = (bins_hz >= lo) & (bins_hz < 2 * lo)
        for m in range(0, n_frames, n_frames // 8):
            cells = expected[m : m + n_frames // 8][:, in_octave]
            if cells.mean() > loud:
                ratios.append(float(measured[m : m + n_frames // 8][:, in_octave].sum() / cells.sum()))
    assert len(ratios) > 20 and max(abs(r - 1.0) for r in ratios) < 0.2, ratios


def test_a_region_continues_from_the_state_the_region_before_carried():
    """The wet power of frames [k, F) from the state at frame k equals that of the whole run."""
    g = torch.Generator().manual_seed(0)
    _, bands, _ = _bands(512)
    dry = torch.rand(200, 257, generator=g, dtype=torch.float64) ** 4
    params = _room_params((0.3, 0.5, 1.0, 2.0, 0.7, 0.2), -4.0)
    whole = bands.wet(dry, params)
    state = bands.carry(dry, params, n_frames=120)
    np.testing.assert_allclose(bands.wet(dry[120:], params, state=state).numpy(), whole[120:].numpy(), rtol=1e-10)
    # Chained twice, through a state that started from another one.
    first = bands.carry(dry, params, n_frames=50)
    second = bands.carry(dry[50:], params, n_frames=70, state=first)
    np.testing.assert_allclose(second.numpy(), state.numpy(), rtol=1e-10)


@pytest.mark.parametrize("with_state", [False, True])
def test_native_and_pytorch_wet_agree_with_their_gradients(with_state, monkeypatch):
    if not native.usable(torch.zeros(1)):
        pytest.skip("no native kernels here")
    g = torch.Generator().manual_seed(1)
    _, bands, _ = _bands(1024)
    bands = replace(bands, share=bands.share.float())
    dry = (torch.rand(90, 513, generator=g) ** 4).requires_grad_(True)
    raw = torch.tensor([0.1, -0.5, 0.3, 0.0, -1.0, 0.2, -0.4], requires_grad=True)
    state = torch.rand(2, 513, generator=g) * 0.01 if with_state else None
    weights = torch.rand(90, 513, generator=g)
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("SPLAT_NATIVE", setting)
        native.forget()
        dry.grad = raw.grad = None
        wet = bands.wet(dry, room_to_physical(raw, RoomBounds()), state=state)
        (wet * weights).sum().backward()
        results.append((wet.detach(), dry.grad, raw.grad))
    native.forget()
    for fast, reference in zip(*results, strict=True):
        np.testing.assert_allclose(fast.numpy(), reference.numpy(), rtol=2e-4, atol=1e-6 * float(reference.abs().max()))
    assert (results[0][2] != 0).all()


def test_room_raw_values_round_trip():
    raw = torch.linspace(-4.0, 4.0, room.N_BANDS + 1, dtype=torch.float64)
    physical = room_to_physical(raw, RoomBounds())
    assert ((physical.rt60_s > 0.1) & (physical.rt60_s < 8.0)).all() and -60.0 < float(physical.level_db) < 12.0
    torch.testing.assert_close(room_to_raw(physical, RoomBounds()), raw)


# --- the engines ----------------------------------------------------------------------------


def test_both_engines_have_the_rooms_minimum_at_the_truth():
    """Atoms in a room: scaling every band's decay, both losses bottom out at the truth; moving the level,
    the reference engine's (which renders the truth's own reverberation) does, and the fast engine's within 2 dB.

    The fast engine cannot know the realisation: like the reference engine rendering another room
    seed, it prefers the wet a little quieter (-6 dB here), because where a partial and its
    reverberation share a cell, the loss's noise statistics (`splat.loss`) overrate the mix's magnitude.
    """
    n = 16384
    record = Room((0.4,) * room.N_BANDS, level_db=-4.0, noise_seed=3)
    truth = AtomSet((_atom(0.05, 220.0, -6.0, 1), _atom(0.3, 330.0, -8.0, 2, mix=0.2)), SR, n / SR, room=record)
    params, seeds = truth.to_params(dtype=torch.float32)
    target = torch.tensor(render_atom_set(truth))
    spec = ModelSpec(SR, "gamma", 64, spectral.resolutions_for((2048, 1024, 512, 256)), 32)
    region = Region(start=0, n_samples=n, segment_starts=(0,), n_segment=n)
    engines = {
        "fast": FastEngine(target, region, spec),
        "reference": ReferenceEngine(target, region, spec, noise_seeds=seeds.view(1, -1), room_seed=3),
    }
    factors = np.geomspace(0.5, 2.0, 7)
    levels = np.linspace(-10.0, 2.0, 7)
    middle = 3
    for name, engine in engines.items():
        by_decay = [float(engine(params, None, _room_params((0.4 * f,) * 6, -4.0, torch.float32))) for f in factors]
        by_level = [float(engine(params, None, _room_params((0.4,) * 6, float(v), torch.float32))) for v in levels]
        assert int(np.argmin(by_decay)) == middle, (name, by_decay)
        best = int(np.argmin(by_level))
        assert best == middle if name == "reference" else abs(best - middle) <= 1, (name, by_level)
        # Without the room, the model is worse.
        assert float(engine(params)) > min(by_level), name


def test_the_room_carried_into_the_next_region_is_the_room_of_one_region():
    """Two segments fitted as one region, or one after the other with the room's state carried across."""
    seg = 8192
    atoms = (_atom(0.02, 220.0, -6.0, 1, decay_s=0.05), _atom(0.2, 440.0, -8.0, 2, decay_s=0.05))
    later = tuple(replace(a, time_s=a.time_s + seg / SR, noise_seed=a.noise_seed + 2) for a in atoms)
    truth = AtomSet(atoms + later, SR, 3 * seg / SR)
    target = torch.tensor(render_atom_set(truth))
    spec = ModelSpec(SR, "gamma", 64, spectral.resolutions_for((1024, 512)), 32)
    first, second = (AtomSet(a, SR, 3 * seg / SR).to_params(dtype=torch.float32)[0] for a in (atoms, later))
    both = AtomSet(atoms, SR, 1.0).to_params(dtype=torch.float32)[0]
    both = type(both)(**{k: torch.cat([getattr(first, k), getattr(second, k)]) for k in vars(both)})
    params = _room_params((0.6, 0.8, 1.0, 0.9, 0.7, 0.5), -3.0, torch.float32)
    whole = FastEngine(target, Region(0, 2 * seg + seg // 2, (0, seg), seg), spec)
    one = FastEngine(target, Region(0, seg + seg // 2, (0,), seg), spec)
    states = one.room_states_at(seg, first, None, params)
    two = FastEngine(
        target,
        Region(seg, seg + seg // 2, (seg,), seg),
        spec,
        background=(first, None, torch.tensor([0])),
        room_states=states,
    )
    for res, joint, apart in zip(
        spec.resolutions, whole.model_powers(both, None, params), two.model_powers(second, None, params), strict=True
    ):
        frames = seg // res.hop
        np.testing.assert_allclose(
            apart[:frames].numpy(), joint[frames : 2 * frames].numpy(), rtol=5e-3, atol=1e-6 * float(joint.max())
        )


def test_lead_distances_with_a_room_are_the_distances_of_all_atoms_and_of_the_lead_alone():
    n = 16384
    truth = AtomSet(tuple(_atom(0.05 + 0.1 * i, 220.0 * (i + 1), -6.0 - i, i) for i in range(4)), SR, n / SR)
    params, _ = truth.to_params(dtype=torch.float32)
    spec = ModelSpec(SR, "gamma", 64, spectral.resolutions_for((1024, 512)), 32)
    engine = FastEngine(torch.tensor(render_atom_set(truth)), Region(0, n, (0,), n), spec)
    lead, rest = params.select(slice(0, 2)), params.select(slice(2, None))
    room_params = _room_params((0.5,) * 6, -5.0, torch.float32)
    full, lead_only = engine.lead_distances(lead, rest, None, room_params)
    assert float(full) == pytest.approx(float(engine(params, None, room_params)), rel=1e-5)
    assert float(lead_only) == pytest.approx(float(engine(lead, None, room_params)), rel=1e-5)


# --- fitting --------------------------------------------------------------------------------


def test_fit_recovers_the_decay_of_a_known_room():
    """Short notes and noise bursts rendered in a room of 0.6 s: the fitted room decays as fast, 500 Hz-4 kHz."""
    record = Room((0.6,) * room.N_BANDS, level_db=-3.0, noise_seed=7)
    atoms = (
        _atom(0.05, 220.0, -6.0, 1),
        _atom(0.35, 330.0, -8.0, 2, mix=0.0),
        _atom(0.6, 440.0, -7.0, 3),
        _atom(0.9, 294.0, -9.0, 4, mix=0.5),
    )
    audio = render_atom_set(AtomSet(atoms, SR, 32768 / SR, n_partials=32, room=record))
    fitted = fit(audio, SR, FitConfig(n_atoms=6, n_iters=120, n_partials=32, room=True)).atoms.room
    assert fitted is not None
    mid = np.array(fitted.rt60_s[2:])
    assert np.all(np.abs(mid / 0.6 - 1.0) < 0.15), fitted
    assert abs(fitted.level_db - record.level_db) < 4.0, fitted


def test_a_fit_without_the_room_or_without_steps_has_none():
    audio = render_atom_set(AtomSet((_atom(0.05, 220.0, -6.0, 1),), SR, 8192 / SR, n_partials=16))
    small = FitConfig(n_atoms=2, n_iters=3, n_partials=16, fft_sizes=(1024, 512))
    assert fit(audio, SR, small).atoms.room is None
    assert fit(audio, SR, replace(small, room=True, n_iters=0)).atoms.room is None
    assert fit(audio, SR, replace(small, room=True)).atoms.room is not None


def test_a_room_fitted_by_the_reference_engine_renders_as_its_json():
    audio = render_atom_set(AtomSet((_atom(0.05, 220.0, -6.0, 1),), SR, 8192 / SR, n_partials=16))
    config = FitConfig(n_atoms=2, n_iters=3, n_partials=16, fft_sizes=(1024, 512), engine="reference", room=True)
    result = fit(audio, SR, config)
    assert result.atoms.room is not None
    np.testing.assert_array_equal(result.reconstruction, render_atom_set(AtomSet.from_dict(result.atoms.to_dict())))


# --- the JSON -------------------------------------------------------------------------------


def test_the_room_round_trips_through_json(tmp_path):
    record = Room((0.5, 0.6, 0.7, 0.8, 0.9, 1.0), level_db=-12.5, noise_seed=2**62)
    atom_set = _atom_set(record)
    path = tmp_path / "a.atoms.json"
    atom_set.save(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 6
    assert doc["room"] == {"band_hz": list(room.BAND_HZ), "rt60_s": list(record.rt60_s), "level_db": -12.5,
                           "noise_seed": 2**62}  # fmt: skip
    assert AtomSet.load(path) == atom_set
    assert "room" not in _atom_set(None).to_dict()


@pytest.mark.parametrize("version", [3, 4, 5])
def test_older_versions_load_without_a_room_and_render_as_before(version):
    """An old file (no room) loads dry and renders exactly its atoms and floor, as before."""
    doc = _atom_set(None).to_dict()
    doc["version"] = version
    if version < 5:
        for atom in doc["atoms"]:
            del atom["formant_hz"], atom["formant_db"]
    loaded = AtomSet.from_dict(doc)
    assert loaded.room is None
    before = (dry_signal(loaded) / loaded.gain).float().numpy()
    np.testing.assert_array_equal(render_atom_set(loaded), before)


def _doc_with_room(**changes) -> dict:
    doc = _atom_set(Room((0.5,) * room.N_BANDS, -10.0, 3)).to_dict()
    doc["room"] |= changes
    return doc


ROOM_ERRORS = {
    "not an object": (lambda: _atom_set(None).to_dict() | {"room": [1]}, r"^room must be an object, got list$"),
    "unknown field": (lambda: _doc_with_room(predelay_s=0.01), r"^room has unknown field\(s\) \['predelay_s'\]"),
    "moved bands": (lambda: _doc_with_room(band_hz=[100, 250, 500, 1000, 2000, 4000]), r"^room\.band_hz must be"),
    "too few decays": (lambda: _doc_with_room(rt60_s=[0.5] * 5), r"^room\.rt60_s must be a list of 6 numbers"),
    "decay too long": (
        lambda: _doc_with_room(rt60_s=[0.5, 0.5, 9.0, 0.5, 0.5, 0.5]),
        r"^room\.rt60_s\[2\]=9 is out of range \[0\.1, 8\]$",
    ),
    "decay not a number": (lambda: _doc_with_room(rt60_s=[0.5] * 5 + ["1"]), r"^room\.rt60_s\[5\]='1' must be a"),
    "level too high": (lambda: _doc_with_room(level_db=20), r"^room\.level_db=20 is out of range \[-60, 12\]$"),
    "missing seed": (
        lambda: {k: v for k, v in _doc_with_room().items()} | {"room": {"rt60_s": [0.5] * 6, "level_db": -3.0}},
        r"^room\.noise_seed=None must be an integer$",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", ROOM_ERRORS.values(), ids=ROOM_ERRORS.keys())
def test_a_bad_room_is_one_error_naming_the_field(case):
    make, message = case
    with pytest.raises(FormatError, match=message):
        AtomSet.from_dict(make())


# --- listening, editing, the command line ---------------------------------------------------


def test_stems_include_the_room_and_sum_to_the_render():
    atom_set = _atom_set(Room((0.2,) * room.N_BANDS, -6.0, 4))
    parts = list(stems(atom_set))
    assert [p.name for p in parts[-2:]] == ["floor", ROOM_STEM]
    total = np.sum([p.audio for p in parts], axis=0)
    rendered = render_atom_set(atom_set)
    np.testing.assert_allclose(total, rendered, atol=1e-6 * np.abs(rendered).max())
    assert all(p.name != ROOM_STEM for p in stems(atom_set, [0, 1]))
    # A solo plays in the room: the atom alone, reverberated.
    solo = render_subset(atom_set, [0])
    alone = render_subset(replace(atom_set, room=None), [0])
    assert not np.allclose(solo, alone)
    np.testing.assert_allclose(solo, render_atom_set(replace(atom_set, atoms=atom_set.atoms[:1], floor=())), atol=1e-7)


def test_edit_sets_the_room_level_or_removes_the_room():
    atom_set = _atom_set(Room((0.2,) * room.N_BANDS, -6.0, 4))
    louder = edit(atom_set, [Edit("room_level", -2.0)], where="index == 0")
    assert louder.room == replace(atom_set.room, level_db=-2.0) and louder.atoms == atom_set.atoms
    assert edit(atom_set, [Edit("dry")]).room is None
    with pytest.raises(ParameterError, match=r"room_level 20 is out of the room's level range \[-60, 12\]"):
        edit(atom_set, [Edit("room_level", 20.0)])
    assert edit(atom_set, [Edit("room_level", 20.0)], clamp=True).room.level_db == 12.0
    with pytest.raises(ParameterError, match="the file has no room"):
        edit(_atom_set(None), [Edit("room_level", -3.0)])


def _run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_cli_shows_edits_and_renders_the_room(tmp_path):
    path = tmp_path / "a.atoms.json"
    _atom_set(Room((0.25, 0.5, 1.0, 1.2, 0.8, 0.4), -9.0, 4)).save(path)
    info = _run("info", path)
    assert info.exit_code == 0, info.output
    assert (
        "room: level -9.0 dB, rt60 (s) 125 Hz 0.25, 250 Hz 0.50, 500 Hz 1.00, 1 kHz 1.20, 2 kHz 0.80, 4 kHz 0.40"
        in (info.stdout)
    )
    edited = tmp_path / "b.atoms.json"
    result = _run("edit", path, "-o", edited, "--room-level", "-3")
    assert result.exit_code == 0, result.output
    assert AtomSet.load(edited).room.level_db == -3.0
    assert _run("edit", path, "-o", tmp_path / "dry.atoms.json", "--dry").exit_code == 0
    assert "room:" not in _run("info", tmp_path / "dry.atoms.json").stdout
    stems_dir = tmp_path / "stems"
    result = _run("render", edited, "-o", tmp_path / "out.wav", "--stems", stems_dir)
    assert result.exit_code == 0, result.output
    assert (stems_dir / f"{ROOM_STEM}.wav").exists()
    audio, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == SR
    np.testing.assert_allclose(audio, render_atom_set(AtomSet.load(edited)), atol=1e-7)


def test_cli_fit_with_room_writes_it(write_wav, clip):
    wav = write_wav("clip.wav", clip)
    result = _run("fit", wav, "--atoms", "4", "--iters", "10", "--room", "--quiet")
    assert result.exit_code == 0, result.output
    fitted = AtomSet.load(wav.with_name("clip.atoms.json"))
    assert fitted.room is not None and fitted.config["room"] is True
