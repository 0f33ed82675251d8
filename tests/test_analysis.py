"""Initial-atom analysis: pitches that are new at an onset, and notes left in the fit's residual."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from splat.analysis import analyse, onset_pitches, residual_seeds, rings_at_start

SR = 22050
N_FFT = 4096
F2, C4, F4, A4 = 87.31, 261.63, 349.23, 440.0


@pytest.fixture
def tone(make_harmonic_spectrum):
    """`tone(f0_hz, amplitude=1.0, n_harmonics=16)`: magnitude spectrum at N_FFT and SR."""
    return functools.partial(make_harmonic_spectrum, n_fft=N_FFT, sample_rate=SR)


def _semitones(a_hz: float, b_hz: float) -> float:
    return abs(12.0 * np.log2(a_hz / b_hz))


def test_notes_over_a_held_bass_are_found_instead_of_the_bass(tone):
    # C4, F4 and A4 are the 3rd, 4th and 5th harmonics of the held F2 below them, so F2
    # collects the largest harmonic sum; but F2's fundamental is not new at this onset.
    new = sum(tone(f) for f in (C4, F4, A4))
    after = new + tone(F2, amplitude=2.0)
    found = [f0 for f0, _ in onset_pitches(new, after, SR, max_pitches=4)]
    assert all(_semitones(f0, F2) > 1.0 for f0 in found)
    for note in (C4, F4, A4):
        assert any(_semitones(f0, note) < 0.5 for f0 in found), (note, found)


def test_a_new_bass_with_new_notes_on_its_harmonics_is_found_first(tone):
    new = tone(F2, amplitude=2.0) + tone(A4)
    found = [f0 for f0, _ in onset_pitches(new, new, SR, max_pitches=4)]
    assert _semitones(found[0], F2) < 0.5


def test_residual_seeds_find_the_note_hidden_in_the_bass_harmonics(tone):
    # Frames centred every hop samples; the onset lies mid-clip, silence before it.
    hop = N_FFT // 4
    n_frames, onset_frame = 12, 4
    bass, hidden = tone(F2, amplitude=2.0), tone(C4)
    target = np.zeros((n_frames, N_FFT // 2 + 1))
    target[onset_frame + 1 :] = bass + hidden
    model = np.zeros_like(target)
    model[onset_frame + 1 :] = bass  # the fitted bass explains its own partials only
    onsets_s = np.array([(onset_frame * hop + hop // 2) / SR])
    seeds = residual_seeds(target, model, onsets_s, hop=hop, sample_rate=SR)
    assert len(seeds) == 1
    assert _semitones(seeds[0].f0_hz, C4) < 0.5
    assert seeds[0].time_s == onsets_s[0]
    # A model that explains everything leaves nothing to seed.
    assert residual_seeds(target, target, onsets_s, hop=hop, sample_rate=SR) == []


def test_a_subharmonic_without_its_fundamental_is_not_a_note(tone):
    # G3 C4 E4 G4 C5 (4 partials each) are partials 3-6 and 8 of C2, which is not played;
    # a weak broadband floor (2 % of the partials' peaks) is new too, so no bin is silent.
    c2 = 65.41
    notes = [h * c2 for h in (3, 4, 5, 6, 8)]
    new = sum(tone(f, n_harmonics=4) for f in notes) + 0.02 * N_FFT / 4
    found = [f0 for f0, _ in onset_pitches(new, new, SR, max_pitches=4)]
    assert min(found) > notes[0] * 2 ** (-1 / 12), found
    for note in notes[:3]:
        assert any(_semitones(f0, note) < 0.5 for f0 in found), (note, found)


def test_a_pitch_below_the_first_bin_is_not_refined_onto_dc():
    # At 192 kHz a 4096-point bin is 47 Hz: the lowest candidates (27.5 Hz up) sit within
    # one bin of DC, whose magnitude here leads their harmonic sums.
    sample_rate, n_fft = 192000, 4096
    new = np.zeros(n_fft // 2 + 1)
    new[:3] = [1.0, 0.6, 0.3]
    found = [f0 for f0, _ in onset_pitches(new, np.zeros_like(new), sample_rate, max_pitches=4)]
    assert found and min(found) > 0.0, found


def _decaying_note(f0_hz: float, t_s: np.ndarray, amplitude: float, decay_s: float) -> np.ndarray:
    """Six harmonics (1/k amplitudes) decaying exponentially from t_s = 0; zero before it."""
    partials = sum(np.sin(2 * np.pi * k * f0_hz * t_s) / k for k in range(1, 7))
    return np.where(t_s >= 0, amplitude * np.exp(-t_s / decay_s) * partials, 0.0)


def test_a_file_cut_inside_a_note_gets_an_onset_at_0_s_with_that_note():
    # A C4 struck 0.3 s before the file begins still rings at -14 dB; an A4 is struck at 0.25 s.
    t_s = np.arange(int(0.6 * SR)) / SR
    audio = (_decaying_note(C4, t_s + 0.3, 0.2, 0.5) + _decaying_note(A4, t_s - 0.25, 0.8, 0.5)).astype(np.float32)
    assert rings_at_start(audio)
    onsets, seeds = analyse(audio, SR, file_start=True)
    assert onsets[0] == 0.0
    assert any(s.time_s == 0.0 and _semitones(s.f0_hz, C4) < 0.5 for s in seeds), seeds
    # Later in a file the earlier atoms' tails hold that note: no onset at 0 s there.
    onsets_mid, _ = analyse(audio, SR, file_start=False)
    assert onsets_mid[0] > 0.2
    # A file that starts in silence (the C4 struck 40 ms in) does not ring at its start.
    late = _decaying_note(C4, t_s - 0.04, 0.2, 0.5).astype(np.float32)
    assert not rings_at_start(late)
    assert not rings_at_start(np.zeros(SR, dtype=np.float32))


def test_a_clip_shorter_than_one_fft_is_analysed_without_warnings():
    t_s = np.arange(300) / SR  # 14 ms: shorter than both librosa FFTs (2048, 4096)
    audio = _decaying_note(A4, t_s - 0.002, 0.8, 0.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onsets, seeds = analyse(audio, SR, file_start=True)
    assert np.all(onsets < t_s[-1]) and all(s.time_s < t_s[-1] for s in seeds)


def test_onsets_and_pitches_do_not_depend_on_the_sample_rate():
    # An F2 and then an A4; at 192 kHz a 4096-point FFT would resolve neither F2 nor its neighbours.
    def clip(rate: int) -> np.ndarray:
        t_s = np.arange(int(0.7 * rate)) / rate
        return (_decaying_note(F2, t_s - 0.05, 0.5, 0.6) + _decaying_note(A4, t_s - 0.35, 0.4, 0.6)).astype(np.float32)

    onsets, seeds = analyse(clip(SR), SR)
    for rate in (48000, 192000):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            onsets_at, seeds_at = analyse(clip(rate), rate)
        assert onsets_at.shape == onsets.shape and np.allclose(onsets_at, onsets, atol=0.012), (rate, onsets_at)
        for note in (F2, A4):
            assert any(_semitones(s.f0_hz, note) < 0.5 for s in seeds_at), (rate, note, seeds_at)
    assert all(any(_semitones(s.f0_hz, note) < 0.5 for s in seeds) for note in (F2, A4)), seeds
