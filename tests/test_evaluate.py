"""Checks of the evaluation metrics against closed-form values and hand-made atoms."""

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch

from splat.atoms import Atom, AtomSet
from splat.errors import FormatError, ParameterError, SplatError
from splat.evaluate import (
    EvalReport,
    evaluate_pair,
    load_ground_truth,
    log_mel_distance_db,
    missed_onset_share,
    mrstft_distance,
    note_events_from_atoms,
    onset_f_measure,
    tonal_residual_share,
    transcription_scores,
    visqol_mos,
)

SR = 22050


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def noise(rng):
    # White noise: every mel cell is far above the -100 dB floor.
    return (0.1 * rng.standard_normal(8192)).astype(np.float32)


def _atom(time_s, f0_hz, gain_db=0.0):
    return Atom(
        time_s=time_s,
        gain_db=gain_db,
        attack_s=0.005,
        spread_s=0.01,
        noise_center_hz=1000.0,
        noise_bandwidth_hz=500.0,
        f0_hz=f0_hz,
        inharmonicity=0.0,
        rolloff_db=6.0,
        decay_s=0.5,
        mix=0.5,
        noise_seed=0,
    )


def _atom_set(atoms):
    return AtomSet(atoms=tuple(atoms), sample_rate=SR, duration_s=1.0)


def _hz(midi):
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _rms(x):
    return np.sqrt(np.mean(np.square(x, dtype=np.float64)))


REF_NOTES = (np.array([0.1, 0.5]), np.array([60.0, 67.0]))


def test_identical_signals_are_at_distance_zero(noise):
    assert mrstft_distance(noise, noise, SR) == pytest.approx(0.0, abs=1e-6)
    assert log_mel_distance_db(noise, noise, SR) == 0.0


def test_louder_copy_is_20log10_2_db_away(noise):
    # Power x4 in every mel cell: 10*log10(4) = 6.0206 dB everywhere.
    assert log_mel_distance_db(noise, 2 * noise, SR) == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_mrstft_grows_with_the_error(noise, rng):
    slightly = mrstft_distance(noise, noise + 0.01 * rng.standard_normal(noise.size).astype(np.float32), SR)
    very = mrstft_distance(noise, noise + 0.1 * rng.standard_normal(noise.size).astype(np.float32), SR)
    assert 0 < slightly < very


def test_shorter_reconstruction_counts_as_silence_at_the_end(noise):
    cut = noise[:4096]
    padded = np.concatenate([cut, np.zeros(noise.size - cut.size, dtype=np.float32)])
    assert log_mel_distance_db(noise, cut, SR) == log_mel_distance_db(noise, padded, SR)


def test_signals_shorter_than_one_fft_are_scored(noise):
    short = noise[:300]  # the distances' centred 2048-point frames cannot reflect-pad this
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mrstft_distance(short, short, SR) == pytest.approx(0.0, abs=1e-6)
        assert log_mel_distance_db(short, short, SR) == 0.0
        assert mrstft_distance(short, 0.5 * short, SR) > 0.1
        assert log_mel_distance_db(short, 0.5 * short, SR) > 1.0


def test_bad_signal_is_refused():
    with pytest.raises(ParameterError, match="NaN"):
        log_mel_distance_db(np.array([0.0, np.nan]), np.zeros(2), SR)


def test_exact_hits_score_one():
    atoms = _atom_set([_atom(0.1, _hz(60)), _atom(0.5, _hz(67))])
    scores = transcription_scores(REF_NOTES, *note_events_from_atoms(atoms))
    assert scores == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "event_atoms_per_note": 1.0}


@pytest.mark.parametrize(
    "late_s,cents,hit",
    [(0.030, 0.0, True), (0.060, 0.0, False), (0.0, 60.0, False), (0.0, 40.0, True)],
)
def test_onset_and_pitch_tolerances(late_s, cents, hit):
    atoms = _atom_set([_atom(0.1, _hz(60)), _atom(0.5 + late_s, _hz(67) * 2 ** (cents / 1200))])
    scores = transcription_scores(REF_NOTES, *note_events_from_atoms(atoms))
    assert scores["f1"] == (1.0 if hit else 0.5)


def test_quiet_atom_is_not_an_event():
    loud, quiet = _atom(0.1, _hz(60), gain_db=-3.0), _atom(0.5, _hz(67), gain_db=-40.0)
    onsets_s, f0_hz = note_events_from_atoms(_atom_set([quiet, loud]))
    np.testing.assert_allclose(onsets_s, [0.1])
    scores = transcription_scores(REF_NOTES, onsets_s, f0_hz)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5 and scores["event_atoms_per_note"] == 0.5
    # 29 dB below the loudest still counts.
    assert note_events_from_atoms(_atom_set([loud, _atom(0.5, 400.0, gain_db=-32.0)]))[0].size == 2


def test_two_atoms_on_one_note_cost_precision():
    atoms = _atom_set([_atom(0.1, _hz(60)), _atom(0.11, _hz(60)), _atom(0.5, _hz(67))])
    scores = transcription_scores(REF_NOTES, *note_events_from_atoms(atoms))
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(2 / 3)
    assert scores["event_atoms_per_note"] == 1.5


def test_onset_f_measure_window():
    ref = np.array([0.04, 0.04, 0.5])
    assert onset_f_measure(ref, np.array([0.5, 0.07, 0.04])) == 1.0
    assert onset_f_measure(ref, np.array([0.56])) == 0.0
    assert onset_f_measure(ref, np.array([])) == 0.0


def test_load_ground_truth_notes_and_events(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"notes": [{"onset": 0.5, "pitch": 64}, {"onset": 0.04, "pitch": 60}]}))
    truth = load_ground_truth(notes)
    assert truth.onsets_s == (0.04, 0.5) and truth.pitches_midi == (60.0, 64.0) and truth.has_pitch
    events = tmp_path / "events.json"
    events.write_text(json.dumps({"events": [{"onset": 0.3, "sample": "kick.flac"}]}))
    assert load_ground_truth(events).pitches_midi is None


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"onsets": []}), "'notes' or 'events'"),
        (json.dumps({"notes": [{"onset": 0.1}]}), r"notes\[0\]\.pitch"),
        (json.dumps({"events": [{"onset": -1}]}), r"events\[0\]\.onset=-1"),
    ],
)
def test_load_ground_truth_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FormatError, match=message):
        load_ground_truth(path)


def test_evaluate_pair_scores_notes_inside_the_clip(noise, tmp_path):
    duration_s = noise.size / SR  # 0.37 s: the note at 0.5 s lies beyond the clip
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"notes": [{"onset": 0.1, "pitch": 60}, {"onset": 0.5, "pitch": 67}]}))
    atoms = AtomSet(atoms=(_atom(0.1, _hz(60)),), sample_rate=SR, duration_s=duration_s)
    report = evaluate_pair(noise, noise, SR, atom_set=atoms, notes_path=notes)
    assert report.visqol_mos is None  # shorter than ViSQOL's 0.96 s minimum
    assert report.f1 == 1.0 and report.n_atoms == 1 and report.onset_f1 is None
    names = [name for name, _ in report.rows()]
    assert "note F1 (50 ms, 50 cents)" in names and not any("ViSQOL" in n for n in names)


def test_report_rows_skip_missing_metrics():
    assert EvalReport(mrstft=0.5, log_mel_db=3.0).rows() == [
        ("MR-STFT distance", "0.500"),
        ("log-mel distance (dB)", "3.00"),
    ]


def _plucked_notes(n_samples):
    """Four decaying harmonic notes, one every 0.25 s (a pure tone is too sparse for ViSQOL)."""
    t = np.arange(n_samples) / SR
    x = np.zeros(n_samples)
    for onset_s, f0_hz in [(0.0, 220.0), (0.25, 330.0), (0.5, 277.0), (0.75, 440.0)]:
        since_s = np.clip(t - onset_s, 0.0, None)
        partials = sum(np.sin(2 * np.pi * h * f0_hz * since_s) / h for h in range(1, 20) if h * f0_hz < 10_000)
        x += (t >= onset_s) * np.exp(-since_s / 0.2) * partials
    return (0.2 * x).astype(np.float32)


@pytest.mark.slow  # about 1 s; up to 10 s on the first run while numba compiles ViSQOL
def test_visqol_drops_with_added_noise(rng):
    x = _plucked_notes(SR)
    noise = rng.standard_normal(SR).astype(np.float32)
    noisy = x + noise * (0.1 * _rms(x) / _rms(noise))  # 20 dB SNR
    identical = visqol_mos(x, x, SR)
    assert identical > 4.5
    assert 1.0 <= visqol_mos(x, noisy, SR) < identical - 1.0


@pytest.mark.slow  # about 1 s
def test_visqol_keeps_torch_thread_count(rng):
    # Once torch's thread pool is up, ViSQOL's native code resets its size (to 2 on a 2-core
    # machine), so every fit after the first score of a benchmark run used more threads than asked.
    x = rng.standard_normal(SR + SR // 2).astype(np.float32)
    y = rng.standard_normal(x.size).astype(np.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate_pair(x, y, SR, with_visqol=False)  # starts torch's thread pool
        visqol_mos(x, y, SR)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_visqol_refuses_short_audio(noise):
    with pytest.raises(ParameterError, match="at least 0.96 s"):
        visqol_mos(noise, noise, SR)


def test_missing_eval_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mir_eval.onset", None)  # makes the import fail
    with pytest.raises(SplatError, match=r"pip install splat\[eval\]"):
        onset_f_measure(np.array([0.1]), np.array([0.1]))


# Residual checks.


def _missing(residual: np.ndarray) -> float:
    """Tonal share when the reconstruction lacks exactly `residual` (silence against it)."""
    return tonal_residual_share(residual, np.zeros_like(residual), SR)


@pytest.mark.parametrize("f0_hz", [440.0, 1234.5, 5000.0])
def test_a_missing_steady_sine_is_all_tonal(f0_hz):
    t = np.arange(16384) / SR
    assert _missing(np.sin(2 * np.pi * f0_hz * t)) > 0.98


def test_a_missing_gliding_sine_is_tonal():
    # 300 Hz rising 400 Hz/s: 0.86 bin per frame, so its peak changes bin every other frame.
    t = np.arange(16384) / SR
    assert _missing(np.sin(2 * np.pi * (300.0 * t + 200.0 * t * t))) > 0.98


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_missing_white_noise_is_not_tonal(seed):
    assert _missing(np.random.default_rng(seed).standard_normal(2 * SR)) < 0.005


def test_a_sine_missing_from_noise_is_tonal_and_another_noise_draw_is_not(rng):
    """The original is a sine in noise; the reconstruction another draw of that noise, with or without the sine.

    Without the sine, the deficit is the sine plus the cells where this draw of the noise
    happens to be weaker: mostly the sine. With it, mostly those noise cells; a little stays
    at the sine's bins, where it beats with either draw of the noise differently.
    """
    t = np.arange(4 * SR) / SR
    sine = np.sqrt(2.0) * np.sin(2 * np.pi * 1000.0 * t)  # power 1
    original = sine + rng.standard_normal(t.size)
    other = rng.standard_normal(t.size)
    assert tonal_residual_share(original, other, SR) > 0.6
    assert tonal_residual_share(original, other + sine, SR) < 0.1


def test_a_partial_drawn_with_another_phase_leaves_no_tonal_residual():
    t = np.arange(16384) / SR
    original = np.sin(2 * np.pi * 440.0 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    shifted = np.sin(2 * np.pi * 440.0 * t + 2.0)
    assert tonal_residual_share(original, shifted, SR) < 0.05


def test_short_peaks_and_nothing_missing_are_not_tonal():
    t = np.arange(2048) / SR  # a 93 ms tone burst: shorter than TONAL_MIN_S once framed
    burst = np.zeros(16384)
    burst[8000 : 8000 + t.size] = np.hanning(t.size) * np.sin(2 * np.pi * 1000.0 * t)
    assert _missing(burst) < 0.05
    assert tonal_residual_share(burst, burst, SR) == 0.0


def _two_hits(n_samples, second=True):
    """Two identical decaying noise hits, at 0.1 s and 0.5 s (the second left out if not `second`)."""
    rng = np.random.default_rng(3)
    x = np.zeros(n_samples)
    for onset_s in (0.1, 0.5) if second else (0.1,):
        start = int(onset_s * SR)
        hit = rng.standard_normal(4000) * np.exp(-np.arange(4000) / 600.0)
        x[start : start + 4000] += hit
    return x


def test_missed_onset_share_is_0_for_a_perfect_reconstruction_and_1_for_silence():
    x = _two_hits(SR)
    assert missed_onset_share(x, x, SR) == 0.0
    assert missed_onset_share(x, np.zeros_like(x), SR) == 1.0
    # 6 dB quieter: only what its rises out of the -80 dB floor lose (~6 of their ~80 dB) is missed.
    assert 0.0 < missed_onset_share(x, 0.5 * x, SR) < 0.1


def test_missing_one_of_two_equal_hits_misses_about_half_the_onset_strength():
    share = missed_onset_share(_two_hits(SR), _two_hits(SR, second=False), SR)
    assert 0.4 < share < 0.6


def test_evaluate_pair_reports_the_residual_checks(noise):
    report = evaluate_pair(noise, np.zeros_like(noise), SR, with_visqol=False)
    assert report.tonal_residual_share == tonal_residual_share(noise, np.zeros_like(noise), SR)
    assert report.missed_onset_share == 1.0
    names = [name for name, _ in report.rows()]
    assert "tonal share of residual energy" in names and "missed share of onset strength" in names


def test_residual_checks_refuse_bad_input():
    with pytest.raises(ParameterError, match="original"):
        tonal_residual_share(np.array([1.0, np.nan]), np.ones(2), SR)
    with pytest.raises(ParameterError, match="sample_rate"):
        tonal_residual_share(np.ones(100), np.ones(100), 0)
    with pytest.raises(ParameterError, match="reconstruction"):
        missed_onset_share(np.ones(100), np.ones((2, 50)), SR)
