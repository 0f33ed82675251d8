"""fit(): recovery of known atoms, reproducibility, segments without seams, input checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from splat import floor, spectral
from splat.atoms import Atom, AtomSet, FloorSegment
from splat.engines import ModelSpec, Region
from splat.errors import AudioError, ParameterError
from splat.fitting import (
    CHUNK_SAMPLES,
    LAST_START_DURATION_S,
    START_OVERLAP,
    START_SHAPE,
    FitConfig,
    FitProgress,
    _export,
    _merged_gains,
    _split_by_gain,
    context_background,
    duplicate_atoms,
    fit,
    residual_restarts,
    starting_durations,
)
from splat.loss import SpectralTarget, region_powers
from splat.params import FIELDS, AtomParams, Bounds
from splat.spectral import resolutions_for
from splat.synth import render_atom_set

SR = 22050
SMALL = dict(n_partials=24, fft_sizes=(2048, 1024, 512, 256))


def _tone(time_s: float, f0_hz: float, gain_db: float, seed: int, decay_s: float = 0.6) -> Atom:
    return Atom(
        time_s=time_s,
        gain_db=gain_db,
        attack_s=0.004,
        spread_s=0.003,
        noise_center_hz=2500.0,
        noise_bandwidth_hz=3000.0,
        f0_hz=f0_hz,
        inharmonicity=2e-4,
        rolloff_db=5.0,
        decay_s=decay_s,
        mix=0.9,
        noise_seed=seed,
    )


def _render(atoms: list[Atom], duration_s: float) -> np.ndarray:
    return render_atom_set(AtomSet(atoms=tuple(atoms), sample_rate=SR, duration_s=duration_s, n_partials=24))


@pytest.fixture(scope="module")
def four_notes():
    truth = [
        _tone(0.10, 220.0, -12, 1),
        _tone(0.30, 330.0, -14, 2),
        _tone(0.50, 523.25, -13, 3),
        _tone(0.68, 98.0, -12, 4),
    ]
    audio = _render(truth, 0.9)
    result = fit(audio, SR, FitConfig(n_atoms=8, n_iters=150, **SMALL))
    return truth, audio, result


def test_recovers_onsets_within_10_ms_and_f0_within_1_percent(four_notes):
    truth, _, result = four_notes
    loudest = max(a.gain_db for a in result.atoms.atoms)
    events = [a for a in result.atoms.atoms if a.gain_db > loudest - 30]
    for t in truth:
        best = min(events, key=lambda a: abs(a.time_s - t.time_s) / 0.01 + abs(np.log(a.f0_hz / t.f0_hz)) / 0.01)
        assert abs(best.time_s - t.time_s) < 0.010, (t, best)
        assert abs(best.f0_hz / t.f0_hz - 1) < 0.01, (t, best)


def test_render_of_the_json_equals_the_fit_reconstruction(four_notes, tmp_path):
    _, audio, result = four_notes
    path = tmp_path / "x.atoms.json"
    result.atoms.save(path)
    again = render_atom_set(AtomSet.load(path))
    np.testing.assert_array_equal(again, result.reconstruction)
    assert result.reconstruction.shape == audio.shape


def test_atoms_are_at_most_n_atoms_per_segment_and_loss_falls(four_notes):
    _, _, result = four_notes
    assert 4 <= len(result.atoms.atoms) <= 8
    history = result.losses[0]
    assert len(history) == 150 and history[-1] < 0.6 * history[0]


def test_same_seed_same_atoms_other_seed_other_noise():
    audio = _render([_tone(0.05, 300.0, -10, 7)], 0.4)
    config = FitConfig(n_atoms=3, n_iters=20, **SMALL)
    first, second = fit(audio, SR, config), fit(audio, SR, config)
    assert first.atoms.to_dict() == second.atoms.to_dict()
    other = fit(audio, SR, dataclasses.replace(config, seed=1))
    assert [a.noise_seed for a in other.atoms.atoms] != [a.noise_seed for a in first.atoms.atoms]


def test_sparsity_keeps_fewer_atoms():
    audio = _render([_tone(0.05, 300.0, -10, 7), _tone(0.25, 450.0, -12, 8)], 0.5)
    counts = []
    for sparsity in (0.0, 0.5):
        config = FitConfig(n_atoms=12, n_iters=80, sparsity=sparsity, prune_db=65.0, **SMALL)
        counts.append(len(fit(audio, SR, config).atoms.atoms))
    assert counts[1] < counts[0]


@pytest.mark.parametrize(
    ("changes", "kernels"),
    [
        ({"noise_floor": True, "greedy": 0.5, "room": True, "polish_iters": 2, "perceptual_weight": 0.5}, True),
        ({"noise_floor": True, "greedy": 0.5, "room": True, "polish_iters": 2, "perceptual_weight": 0.5}, False),
        ({"engine": "reference", "noise_floor": True, "room": True}, True),
    ],
    ids=["fast", "fast-pytorch-only", "reference"],
)
def test_the_fit_does_not_depend_on_torchs_default_device_or_dtype(changes, kernels, request):
    """What `--device cuda` needs, checked on the CPU: no tensor is made where or as torch's defaults say.

    With the default device set to "meta" (tensors without data), a tensor made
    without saying where (a `torch.arange` with no device) is a meta tensor, and
    the first operation mixing it with the fit's CPU tensors fails, as a CPU
    tensor would next to CUDA ones; with the default dtype float64, one made
    without a dtype fails the float32 products, or changes the result. Two chunks,
    a floor, a room, the greedy loss, the perceptual term, reseeds and prunes, the
    polish and the final render all run, with the native kernels and without them (the
    code a GPU runs).
    """
    if not kernels:
        request.getfixturevalue("pytorch_only")
    audio = _render([_tone(0.05, 300.0, -10, 7), _tone(0.3, 450.0, -12, 8)], 0.6)
    config = FitConfig(n_atoms=3, n_iters=5, segment_s=0.2, segments_per_chunk=2, **SMALL, **changes)
    expected = fit(audio, SR, config)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            result = fit(audio, SR, config)
    finally:
        torch.set_default_dtype(default_dtype)
    assert result.atoms.atoms and result.atoms.to_dict() == expected.atoms.to_dict()
    np.testing.assert_array_equal(result.reconstruction, expected.reconstruction)


@pytest.mark.parametrize("segments_per_chunk", [1, 8])
def test_no_seam_at_segment_boundaries(segments_per_chunk):
    """Residual energy next to segment boundaries is no worse than inside segments."""
    segment_s = 8192 / SR
    notes = [_tone(0.05 + 0.17 * i, 200.0 * 1.19**i, -12, i, decay_s=0.9) for i in range(8)]
    audio = _render(notes, 4 * segment_s)
    config = FitConfig(n_atoms=6, n_iters=120, segment_s=segment_s, segments_per_chunk=segments_per_chunk, **SMALL)
    residual = fit(audio, SR, config).reconstruction - audio
    frame = 512
    err = (residual[: len(residual) // frame * frame].reshape(-1, frame) ** 2).sum(1)
    ref = (audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2).sum(1)
    ratio = err / np.maximum(ref, 1e-12)
    boundary = [b * 8192 // frame + k for b in (1, 2, 3) for k in (-1, 0)]
    inside = [i for i in range(len(ratio)) if all(abs(i - b) > 2 for b in boundary)]
    assert np.median(ratio[boundary]) <= max(2.0 * np.median(ratio[inside]), 0.05), (
        ratio[boundary],
        np.median(ratio[inside]),
    )


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.full(300, 0.5, dtype=np.float32), "too short"),
        (np.full((4000, 2), 0.5, dtype=np.float32), "mono"),
        (np.full(4000, 2e6, dtype=np.float32), "scale it down"),
        (np.zeros(4000, dtype=np.float32), "silent"),
        (np.full(4000, np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_audio_is_refused(audio, message):
    with pytest.raises(AudioError, match=message):
        fit(audio, SR, FitConfig(n_iters=1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_atoms": 0}, "n_atoms"),
        ({"engine": "warp"}, "engine"),
        ({"envelope": "square"}, "envelope"),
        ({"lr": 0.0}, "lr"),
        ({"fft_sizes": (1000,)}, "fft size"),
        ({"grid_step": 48}, "grid_step"),
        ({"segment_s": 30.0, "sample_rate": 192000}, "segments of at most 5.46 s"),
        ({"n_atoms": 4096}, "use at most 2048 atoms, segments of at most 0.74 s, or a lower sample rate"),
        ({"device": "cuda"}, "CUDA"),
        ({"polish_iters": -1}, "polish_iters"),
        ({"polish_iters": 5, "engine": "reference"}, "polishes the fast engine's fit"),
        ({"perceptual_weight": -0.5}, "perceptual_weight"),
    ],
)
def test_bad_config_is_refused(changes, message):
    if changes.get("device") == "cuda":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    with pytest.raises(ParameterError, match=message):
        fit(np.ones(4000, dtype=np.float32), SR, dataclasses.replace(FitConfig(), **changes))


@pytest.mark.parametrize(
    ("changes", "per_chunk"),
    [
        ({}, 8),
        ({"sample_rate": 44100}, 8),
        ({"sample_rate": 96000}, 7),
        ({"segment_s": 10.0}, 4),
        ({"segment_s": 30.0}, 1),
        ({"n_atoms": 16}, 8),
        ({"n_atoms": 1024}, 2),
    ],
)
def test_chunks_hold_at_most_chunk_samples(changes, per_chunk):
    config = dataclasses.replace(FitConfig(), **changes)
    assert config.chunk_segments == per_chunk
    assert config.chunk_segments * config.segment_size <= CHUNK_SAMPLES or config.chunk_segments == 1


def test_sample_rate_mismatch_is_refused():
    with pytest.raises(ParameterError, match="resample"):
        fit(np.ones(4000, dtype=np.float32), 44100, FitConfig())


def test_duplicate_atoms_flags_the_quieter_of_two_atoms_on_one_note():
    # (time_s, f0_hz, gain_db, active) in two segments of three atoms.
    atoms = [
        [(0.10, 233.0, -6.0, True), (0.16, 234.0, -20.0, True), (0.10, 293.7, -10.0, True)],
        [(0.60, 233.0, -8.0, True), (0.62, 233.5, -2.0, False), (0.65, 440.0, -30.0, True)],
    ]
    base = dict(
        attack_s=0.01, spread_s=0.01, noise_center_hz=1000.0, noise_bandwidth_hz=500.0,
        inharmonicity=1e-4, rolloff_db=4.0, decay_s=1.0, mix=0.9,
        short_share=0.3, short_decay_s=0.2, short_rolloff_db=1.5, duration_s=0.5, release_s=0.2,
        formant_hz=2000.0, formant_db=6.0, f0_glide_cents_per_s=0.0, vibrato_hz=5.5, vibrato_cents=0.0,
    )  # fmt: skip
    shape = (2, 3)
    fields = {k: torch.full(shape, v) for k, v in base.items()}
    for name, index in (("time_s", 0), ("f0_hz", 1), ("gain_db", 2)):
        fields[name] = torch.tensor([[a[index] for a in row] for row in atoms])
    active = torch.tensor([[a[3] for a in row] for row in atoms])
    flagged, partner = duplicate_atoms(AtomParams(**fields), active)
    # Only the second atom: same pitch (7 cents) 60 ms after a louder one. The third has
    # another pitch, the fourth starts 500 ms later, and its louder twin is inactive.
    assert flagged.tolist() == [[False, True, False], [False, False, False]]
    assert int(partner[0, 1]) == 0
    # Its power moves to the first atom: -6 dB and -20 dB add to -5.83 dB; the others keep theirs.
    merged = _merged_gains(fields["gain_db"], flagged, partner)
    assert float(merged[0, 0]) == pytest.approx(10 * np.log10(10**-0.6 + 10**-2.0), abs=1e-4)
    assert torch.equal(merged[0, 1:], fields["gain_db"][0, 1:]) and torch.equal(merged[1], fields["gain_db"][1])


def test_an_atom_holding_a_note_struck_before_the_file_is_not_its_duplicate():
    # One segment: a quiet A3 at 0 s (rung on from before the file) and the same note struck 60 ms later.
    fields = {k: torch.full((1, 2), v) for k, v in START_SHAPE.items()}
    fields.update(
        time_s=torch.tensor([[0.0, 0.06]]),
        f0_hz=torch.tensor([[220.0, 221.0]]),
        gain_db=torch.tensor([[-26.0, -6.0]]),
        noise_center_hz=torch.full((1, 2), 1000.0),
        duration_s=torch.full((1, 2), 0.5),
    )
    params, active = AtomParams(**fields), torch.ones(1, 2, dtype=torch.bool)
    assert duplicate_atoms(params, active)[0].tolist() == [[True, False]]
    assert duplicate_atoms(params, active, held_until_s=0.02)[0].tolist() == [[False, False]]


def test_a_file_cut_inside_a_note_is_not_rendered_silent_before_its_first_strike():
    # The file starts 0.3 s after an A3 was struck (it still rings), and the A3 is struck again 80 ms in.
    full = _render([_tone(0.05, 220.0, -18, 1, decay_s=1.0), _tone(0.38, 220.0, -6, 2)], 0.9)
    audio = full[int(0.3 * SR) :]
    result = fit(audio, SR, FitConfig(n_atoms=4, n_iters=60, **SMALL))
    head = slice(0, int(0.06 * SR))

    def level_db(x: np.ndarray) -> float:
        return 10 * np.log10(np.mean(x[head].astype(np.float64) ** 2) + 1e-20)

    assert abs(level_db(result.reconstruction) - level_db(audio)) < 6.0
    assert min(a.time_s for a in result.atoms.atoms) < 0.02


def test_residual_restarts_only_notes_hidden_on_partials_of_a_note_starting_there(make_harmonic_spectrum):
    n_fft = 4096
    hop, n_frames, onset_frame = n_fft // 4, 16, 4
    onset_s = (onset_frame * hop + hop // 2) / SR
    f2, c4, b3 = 87.31, 261.63, 246.94  # C4 is F2's 3rd partial; B3 is on no partial of F2
    bass, hidden, other = (
        make_harmonic_spectrum(f0, n_fft=n_fft, sample_rate=SR, amplitude=a)
        for f0, a in ((f2, 2.0), (c4, 1.0), (b3, 1.0))
    )
    target = np.zeros((n_frames, n_fft // 2 + 1))
    target[onset_frame + 1 :] = bass + hidden + other
    model = np.zeros_like(target)
    model[onset_frame + 1 :] = bass
    # One segment, four atoms: the bass (loud, at the onset) and three quiet leftovers.
    rows = [(onset_s, f2, 0.0), (0.9, 700.0, -60.0), (1.1, 900.0, -55.0), (0.2, 1500.0, -50.0)]
    tone = dataclasses.asdict(_tone(0.0, 100.0, 0.0, 0))
    fields = {k: torch.full((1, 4), tone[k]) for k in FIELDS}
    for name, index in (("time_s", 0), ("f0_hz", 1), ("gain_db", 2)):
        fields[name] = torch.tensor([[r[index] for r in rows]], dtype=torch.float32)
    spec = ModelSpec(
        sample_rate=SR, envelope="gamma", n_partials=24, resolutions=resolutions_for((n_fft,)), grid_step=32
    )
    region = Region(start=0, n_samples=n_frames * hop, segment_starts=(0,), n_segment=n_frames * hop)
    restart = residual_restarts(
        AtomParams(**fields),
        torch.ones(1, 4, dtype=torch.bool),
        [torch.tensor(model**2)],
        [torch.tensor(target)],
        np.array([onset_s]),
        region,
        spec,
        Bounds.for_sample_rate(SR),
        tone_peak_db=0.0,
    )
    assert restart is not None
    replaced, new = restart
    assert replaced.tolist() == [[False, True, False, False]]  # the quietest leftover
    assert abs(12 * math.log2(float(new.f0_hz[0, 1]) / c4)) < 0.5
    assert abs(float(new.time_s[0, 1]) - onset_s) < 0.005


def test_split_by_gain_puts_the_louder_half_of_each_segment_first():
    gains = torch.tensor([[-30.0, -5.0, -20.0], [0.0, -40.0, -10.0]])
    params = AtomParams(
        **{name: torch.arange(6.0).reshape(2, 3) for name in FIELDS if name != "gain_db"}, gain_db=gains
    )
    moving = torch.tensor([[True, False, False], [False, True, True]])
    lead, rest, (lead_modes, rest_modes), (lead_moving, rest_moving) = _split_by_gain(
        params, torch.arange(6).reshape(2, 3), moving
    )
    assert lead.gain_db.tolist() == [[-5.0, -20.0], [0.0, -10.0]]
    assert rest.gain_db.tolist() == [[-30.0], [-40.0]]
    # Every field travels with its atom, and so do its partial series and its mask.
    assert lead.f0_hz.tolist() == [[1.0, 2.0], [3.0, 5.0]]
    assert lead_modes.tolist() == [[1, 2], [3, 5]] and rest_modes.tolist() == [[0], [4]]
    assert lead_moving.tolist() == [[False, False], [False, True]]
    assert rest_moving.tolist() == [[True], [True]]


def test_export_puts_the_shorter_resonance_part_second_without_changing_the_spectrogram():
    values = {
        "time_s": [0.1, 0.3],
        "gain_db": [-6.0, -10.0],
        "attack_s": [0.005, 0.01],
        "spread_s": [0.004, 0.02],
        "noise_center_hz": [1000.0, 3000.0],
        "noise_bandwidth_hz": [500.0, 2000.0],
        "f0_hz": [220.0, 330.0],
        "inharmonicity": [1e-4, 3e-4],
        "rolloff_db": [8.0, 3.0],
        "decay_s": [0.4, 2.0],
        "mix": [0.9, 0.7],
        "short_share": [0.7, 0.2],
        "short_decay_s": [3.0, 0.1],  # the first atom's "short" part is the longer one
        "short_rolloff_db": [2.0, 6.0],
        "duration_s": [0.3, 30.0],
        "release_s": [0.1, 0.3],
        "formant_hz": [1500.0, 3000.0],
        "formant_db": [9.0, 0.0],
        "f0_glide_cents_per_s": [0.0, 50.0],
        "vibrato_hz": [5.5, 6.0],
        "vibrato_cents": [0.0, 20.0],
    }
    params = AtomParams(**{k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()})
    bounds = Bounds.for_sample_rate(22050)
    first, second = _export(params, torch.tensor([[1, 2]]), bounds, duration_s=1.0)
    assert (first.decay_s, first.short_decay_s, first.rolloff_db, first.short_rolloff_db) == (3.0, 0.4, 2.0, 8.0)
    assert first.short_share == pytest.approx(0.3)
    assert (second.decay_s, second.short_decay_s, second.short_share) == (2.0, 0.1, 0.2)  # already in order
    exported, _ = AtomSet(atoms=(first, second), sample_rate=22050, duration_s=1.0).to_params()
    grid = spectral.Grid(n_window=8192, step=64, pad=1024)
    plan = spectral.Plan(grid, resolutions_for((2048, 512)), sample_rate=22050, device=torch.device("cpu"))
    plan.time_kernels = [k.double() for k in plan.time_kernels]
    start = torch.zeros(1, 1, dtype=torch.float64)
    for before, after in zip(
        spectral.expected_power(params, start, plan, envelope="gamma", n_partials=16),
        spectral.expected_power(exported, start, plan, envelope="gamma", n_partials=16),
        strict=True,
    ):
        torch.testing.assert_close(after.total, before.total, rtol=1e-9, atol=1e-12 * float(before.total.max()))


def test_fit_recovers_a_noise_floor_under_a_tone():
    duration_s = 16384 / SR
    truth = AtomSet(
        atoms=(_tone(0.05, 220.0, -6.0, 1),),
        sample_rate=SR,
        duration_s=duration_s,
        n_partials=16,
        floor=(FloorSegment(0.0, duration_s, (-50.0,) * floor.N_BANDS, noise_seed=4),),
    )
    audio = render_atom_set(truth)
    config = FitConfig(n_atoms=3, n_iters=60, n_partials=16, fft_sizes=(2048, 1024, 512, 256), noise_floor=True)
    result = fit(audio, SR, config).atoms
    assert [(f.start_s, f.end_s) for f in result.floor] == [(0.0, pytest.approx(duration_s))]
    # The fit's levels are in normalised units: the input was scaled by result.gain.
    fitted = np.array(result.floor[0].level_db) - 20 * np.log10(result.gain)
    # Bands above ~300 Hz hold many bins; their levels come back within a few dB.
    assert np.abs(fitted[8:] + 50.0).mean() < 3.0, fitted
    assert fit(audio, SR, dataclasses.replace(config, noise_floor=False, n_iters=2)).atoms.floor == ()
    # One floor per segment, end to end, also across chunks (the first chunk's floor is the second's background).
    chunked = fit(audio, SR, dataclasses.replace(config, segment_s=8192 / SR, segments_per_chunk=1, n_iters=3))
    spans = [(f.start_s, f.end_s) for f in chunked.atoms.floor]
    assert spans == [(0.0, 8192 / SR), (8192 / SR, pytest.approx(duration_s))]


def test_a_floor_fitted_over_a_last_segment_of_100_samples_renders():
    # Its floor spans 100 samples, where the lowest bands have no bin: they must stay silent, not NaN.
    audio = _render([_tone(0.05, 220.0, -6.0, 1)], (8192 + 100) / SR)
    config = FitConfig(n_atoms=2, n_iters=3, segment_s=8192 / SR, noise_floor=True, **SMALL)
    result = fit(audio, SR, config)
    assert len(result.atoms.floor) == 2 and np.all(np.isfinite(result.reconstruction))


def test_starting_durations_run_past_the_next_onset_at_least_0_1_s_later():
    onsets = np.array([0.10, 0.15, 0.50, 0.90])
    times = np.array([[0.10, 0.50], [0.95, 0.45]])
    # 0.10 -> 0.50 (0.15 is too close), 0.50 -> 0.90, 0.95 -> none (2 s), 0.45 -> 0.90 (0.50 is too close).
    gaps = np.array([[0.40, 0.40], [np.nan, 0.45]])
    expected = np.where(np.isnan(gaps), LAST_START_DURATION_S, START_OVERLAP * gaps)
    np.testing.assert_allclose(starting_durations(times, onsets), expected)


def test_fit_recovers_where_a_note_is_released():
    # Two legato notes that would ring for 2 s; the first is let go 0.25 s after its onset (at
    # 0.35 s, 20 ms before the second) and falls 60 dB in 80 ms.
    first = dataclasses.replace(_tone(0.10, 330.0, -10, 1, decay_s=2.0), duration_s=0.25, release_s=0.08)
    audio = _render([first, _tone(0.37, 392.0, -10, 2, decay_s=2.0)], 0.8)
    result = fit(audio, SR, FitConfig(n_atoms=4, n_iters=150, **SMALL))
    note = max((a for a in result.atoms.atoms if abs(a.f0_hz / 330.0 - 1) < 0.02), key=lambda a: a.gain_db)
    # The release point within 30 ms (a third of the longest loss window, 93 ms, which blurs it).
    assert abs(note.time_s + note.duration_s - 0.35) < 0.03, note
    # And the fitted atom is let go: by 0.6 s its release has taken it at least 20 dB down. (The fast
    # engine fits a slower fall than the truth's: see the README's limitations.)
    fall_db = 60.0 * (0.6 - note.time_s - note.duration_s) / note.release_s
    assert fall_db > 20.0, note


def _rendered_distance(audio: np.ndarray, reconstruction: np.ndarray, fft_sizes: tuple[int, ...]) -> float:
    """The loss's multi-resolution STFT distance between two signals (the polish's objective, on the whole file)."""
    resolutions = resolutions_for(fft_sizes)
    n_region = audio.size // max(fft_sizes) * max(fft_sizes)
    target = SpectralTarget(region_powers(torch.tensor(audio), 0, n_region, resolutions))
    return float(target.distance(region_powers(torch.tensor(reconstruction), 0, n_region, resolutions)))


@pytest.fixture(scope="module")
def polished():
    """Four notes over two segments, fitted one segment per chunk, without and with the polish."""
    segment_s = 8192 / SR
    notes = [_tone(0.05 + 0.17 * i, 200.0 * 1.19**i, -12, i, decay_s=0.9) for i in range(4)]
    audio = _render(notes, 2 * segment_s)
    config = FitConfig(n_atoms=4, n_iters=60, segment_s=segment_s, segments_per_chunk=1, **SMALL)
    plain = fit(audio, SR, config)
    steps: list[FitProgress] = []
    result = fit(audio, SR, dataclasses.replace(config, polish_iters=8), callback=steps.append)
    return audio, config, plain, result, steps


def test_the_polish_lowers_the_rendered_distance(polished):
    audio, config, plain, result, _ = polished
    before = _rendered_distance(audio, plain.reconstruction, config.fft_sizes)
    after = _rendered_distance(audio, result.reconstruction, config.fft_sizes)
    assert after < 0.99 * before, (before, after)


def test_the_polish_moves_neither_onsets_nor_pitches_and_writes_valid_json(polished, tmp_path):
    audio, config, plain, result, _ = polished
    # The first chunk's fast steps are the same in both fits; the polish then holds time and f0.
    first = [a for a in plain.atoms.atoms if a.time_s < config.n_segment / SR]
    again = [a for a in result.atoms.atoms if a.time_s < config.n_segment / SR]
    assert [(a.time_s, a.f0_hz) for a in again] == [(a.time_s, a.f0_hz) for a in first]
    assert [a.gain_db for a in again] != [a.gain_db for a in first]
    path = tmp_path / "polished.atoms.json"
    result.atoms.save(path)
    loaded = AtomSet.load(path)
    assert loaded.config["polish_iters"] == 8
    np.testing.assert_array_equal(render_atom_set(loaded), result.reconstruction)


def test_the_polish_steps_are_reported_after_the_fast_ones(polished):
    _, config, _, result, steps = polished
    n_steps = config.n_iters + 8
    assert all(s.n_steps == n_steps for s in steps)
    assert [s.step for s in steps if s.chunk == 1] == list(range(1, n_steps + 1))
    assert [len(h) for h in result.losses] == [n_steps, n_steps]
    # The last 8 entries are the rendered distance: they fall as the polish goes.
    assert result.losses[0][-1] < result.losses[0][config.n_iters]


def test_context_background_renders_the_earlier_atoms_and_floors_over_the_context():
    n = 3 * 4096
    floors = [FloorSegment(0.0, 4096 / SR, tuple([-50.0] * floor.N_BANDS), noise_seed=5)]
    earlier = AtomSet(
        atoms=(_tone(0.02, 220.0, -10, 1, decay_s=2.0), _tone(0.12, 330.0, -8, 2, decay_s=0.05)),
        sample_rate=SR,
        duration_s=n / SR,
        n_partials=24,
        floor=tuple(floors),
    )
    spec = ModelSpec(SR, "gamma", 24, resolutions_for((1024, 512)), 32)
    region = Region(start=4096, n_samples=4096, segment_starts=(4096,), n_segment=4096)
    audio = context_background((list(earlier.atoms), floors), region, spec, n_file=n, device=torch.device("cpu"))
    whole = render_atom_set(earlier)
    first, end = 4096 - 512, 8192 + 512
    np.testing.assert_allclose(audio.numpy(), whole[first:end], atol=1e-6)
    assert context_background(([], []), region, spec, n_file=n, device=torch.device("cpu")) is None


def test_the_polish_also_fits_the_noise_floor():
    audio = _render([_tone(0.05, 300.0, -10, 7)], 0.4) + 0.003 * np.random.default_rng(0).standard_normal(8820)
    config = FitConfig(n_atoms=3, n_iters=20, noise_floor=True, **SMALL)
    plain, polished = (fit(audio, SR, dataclasses.replace(config, polish_iters=n)) for n in (0, 3))
    assert [a.time_s for a in polished.atoms.atoms] == [a.time_s for a in plain.atoms.atoms]
    assert polished.atoms.floor[0].level_db != plain.atoms.floor[0].level_db
    np.testing.assert_array_equal(render_atom_set(polished.atoms), polished.reconstruction)
