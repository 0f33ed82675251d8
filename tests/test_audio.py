"""Tests for splat.audio: loading (mono mix, resampling, validation) and atomic writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from splat.audio import LoadedAudio, load_audio, output_format, write_audio
from splat.errors import AudioError, ParameterError


def _peak_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), d=1.0 / sample_rate)[np.argmax(spectrum)])


def _leftovers(folder: Path) -> list[str]:
    """Names of hidden temporary files `splat.files` would have created in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- load_audio: the happy path -------------------------------------------------------------


def test_mono_file_is_returned_unchanged(write_wav, make_sine):
    samples = make_sine(440.0, duration_s=0.2, sample_rate=22050)
    loaded = load_audio(write_wav("a.wav", samples), sample_rate=22050)
    assert isinstance(loaded, LoadedAudio)
    assert loaded.samples.dtype == np.float32
    assert loaded.samples.shape == samples.shape
    assert (loaded.sample_rate, loaded.source_sample_rate, loaded.n_channels) == (22050, 22050, 1)
    np.testing.assert_array_equal(loaded.samples, samples)
    assert loaded.duration_s == pytest.approx(0.2)


def test_stereo_is_averaged_to_mono(write_wav, make_sine):
    left = make_sine(440.0, duration_s=0.2, sample_rate=22050)
    right = make_sine(660.0, duration_s=0.2, sample_rate=22050, amplitude=0.2)
    loaded = load_audio(write_wav("stereo.wav", np.stack([left, right], axis=1)), sample_rate=22050)
    assert loaded.n_channels == 2
    assert loaded.samples.shape == left.shape
    np.testing.assert_allclose(loaded.samples, (left + right) / 2, atol=1e-7)


def test_multichannel_is_averaged_to_mono(write_wav, rng):
    frames = (0.1 * rng.standard_normal((1000, 4))).astype(np.float32)
    loaded = load_audio(write_wav("quad.wav", frames), sample_rate=22050)
    assert loaded.n_channels == 4
    np.testing.assert_allclose(loaded.samples, frames.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize(("source_hz", "target_hz"), [(44100, 22050), (16000, 22050), (48000, 8000)])
def test_resampling_changes_length_by_the_ratio_and_keeps_the_frequency(write_wav, make_sine, source_hz, target_hz):
    samples = make_sine(1000.0, duration_s=0.5, sample_rate=source_hz)
    loaded = load_audio(write_wav("tone.wav", samples, source_hz), sample_rate=target_hz)
    assert (loaded.sample_rate, loaded.source_sample_rate) == (target_hz, source_hz)
    assert loaded.samples.dtype == np.float32
    assert abs(len(loaded.samples) - len(samples) * target_hz / source_hz) <= 1
    # One FFT bin of a 0.5 s signal is 2 Hz.
    assert abs(_peak_hz(loaded.samples, target_hz) - 1000.0) <= 2.0
    # soxr_hq keeps the level of an in-band tone.
    assert np.max(np.abs(loaded.samples)) == pytest.approx(np.max(np.abs(samples)), rel=0.01)


def test_other_formats_are_read(tmp_path, make_sine):
    samples = make_sine(440.0, duration_s=0.2, sample_rate=22050)
    path = tmp_path / "a.flac"
    sf.write(path, samples, 22050, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(path, sample_rate=22050).samples, samples, atol=2**-22)


def test_falls_back_to_librosa_when_soundfile_cannot_read(write_wav, make_sine, monkeypatch):
    samples = make_sine(440.0, duration_s=0.2, sample_rate=22050)
    path = write_wav("a.wav", np.stack([samples, samples], axis=1))

    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(1, prefix="Error opening: ")

    monkeypatch.setattr(sf, "read", refuse)
    loaded = load_audio(path, sample_rate=22050)
    assert loaded.n_channels == 2
    np.testing.assert_allclose(loaded.samples, samples, atol=1e-7)


# --- load_audio: every way a file can be wrong ----------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "nope.wav", sample_rate=22050)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path, sample_rate=22050)


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(path, sample_rate=22050)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError, match="empty"):
        load_audio(path, sample_rate=22050)


def test_wav_without_samples(write_wav):
    with pytest.raises(AudioError, match="no samples"):
        load_audio(write_wav("empty.wav", np.zeros(0, dtype=np.float32)), sample_rate=22050)


@pytest.mark.parametrize("amplitude", [0.0, 9e-7])
def test_silent_file(write_wav, amplitude):
    with pytest.raises(AudioError, match="silent.*nothing to fit"):
        load_audio(write_wav("silent.wav", np.full(2000, amplitude, dtype=np.float32)), sample_rate=22050)


def test_quiet_but_not_silent_file_is_accepted(write_wav, make_sine):
    # -100 dBFS is quiet but above the -120 dBFS silence threshold.
    loaded = load_audio(
        write_wav("quiet.wav", make_sine(440.0, duration_s=0.1, sample_rate=22050, amplitude=1e-5)), sample_rate=22050
    )
    assert np.max(np.abs(loaded.samples)) > 1e-6


def test_file_that_only_has_content_above_the_new_nyquist(write_wav, make_sine):
    samples = make_sine(10_000.0, duration_s=0.5, sample_rate=44100)
    with pytest.raises(AudioError, match="after resampling to 8000 Hz"):
        load_audio(write_wav("high.wav", samples, 44100), sample_rate=8000)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_file(write_wav, make_sine, bad):
    samples = make_sine(440.0, duration_s=0.1, sample_rate=22050)
    samples[100] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(write_wav("bad.wav", samples), sample_rate=22050)


@pytest.mark.parametrize("sample_rate", [7999, 192_001, 0, -22050])
def test_sample_rate_out_of_range(write_wav, make_sine, sample_rate):
    path = write_wav("a.wav", make_sine(440.0, duration_s=0.1, sample_rate=22050))
    with pytest.raises(ParameterError, match="sample_rate"):
        load_audio(path, sample_rate=sample_rate)


# --- write_audio ------------------------------------------------------------------------------


def test_wav_round_trip_is_exact_float32_even_above_full_scale(tmp_path, rng):
    samples = (2.0 * rng.standard_normal(3000)).astype(np.float32)
    path = tmp_path / "out.wav"
    write_audio(path, samples, 22050)
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "FLOAT", 22050, 1)
    read, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(read, samples)
    assert _leftovers(tmp_path) == []


def test_flac_is_24_bit(tmp_path, make_sine):
    samples = make_sine(440.0, duration_s=0.1, sample_rate=22050)
    path = tmp_path / "out.flac"
    write_audio(path, samples, 22050)
    info = sf.info(path)
    assert (info.format, info.subtype) == ("FLAC", "PCM_24")
    np.testing.assert_allclose(sf.read(path, dtype="float32")[0], samples, atol=2**-22)


def test_written_file_loads_back(tmp_path, make_sine):
    samples = make_sine(440.0, duration_s=0.1, sample_rate=16000)
    write_audio(tmp_path / "out.wav", samples, 16000)
    np.testing.assert_array_equal(load_audio(tmp_path / "out.wav", sample_rate=16000).samples, samples)


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, np.full(100, 0.1, dtype=np.float32), 22050)
    write_audio(path, np.full(200, 0.2, dtype=np.float32), 22050)
    assert sf.info(path).frames == 200
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused_and_nothing_is_written(tmp_path, bad):
    samples = np.full(100, 0.1, dtype=np.float32)
    samples[10] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        write_audio(tmp_path / "out.wav", samples, 22050)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, np.full(100, 0.1, dtype=np.float32), 22050)
    with pytest.raises(AudioError):
        write_audio(path, np.full(100, np.nan, dtype=np.float32), 22050)
    assert sf.info(path).frames == 100
    assert _leftovers(tmp_path) == []


def test_crash_while_writing_leaves_no_temporary_file(tmp_path, monkeypatch):
    def crash(file, *args, **kwargs):
        Path(file).write_bytes(b"RIFF half a header")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_audio(tmp_path / "out.wav", np.full(100, 0.1, dtype=np.float32), 22050)
    assert list(tmp_path.iterdir()) == []


def test_flac_refuses_peaks_above_full_scale(tmp_path):
    with pytest.raises(AudioError, match=r"exceeds full scale.*\.wav"):
        write_audio(tmp_path / "out.flac", np.array([0.5, 1.5, -0.2], dtype=np.float32), 22050)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_empty_audio(tmp_path):
    with pytest.raises(AudioError, match="no samples"):
        write_audio(tmp_path / "out.wav", np.zeros(0, dtype=np.float32), 22050)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "samples", "sample_rate", "match"),
    [
        ("out.mp3", np.zeros(10, np.float32), 22050, "unsupported suffix"),
        ("out.wav", np.zeros((10, 2), np.float32), 22050, "shape"),
        ("out.wav", np.zeros(10, np.float32), 1000, "sample_rate"),
    ],
)
def test_write_refuses_bad_arguments(tmp_path, name, samples, sample_rate, match):
    with pytest.raises(ParameterError, match=match):
        write_audio(tmp_path / name, samples, sample_rate)
    assert list(tmp_path.iterdir()) == []


def test_sample_rate_none_keeps_the_files_rate(write_wav, make_sine):
    samples = make_sine(440.0, duration_s=0.1, sample_rate=16000)
    loaded = load_audio(write_wav("a.wav", samples, 16000), sample_rate=None)
    assert (loaded.sample_rate, loaded.source_sample_rate) == (16000, 16000)
    np.testing.assert_array_equal(loaded.samples, samples)


def test_sample_rate_none_refuses_a_file_rate_out_of_range(write_wav, make_sine):
    path = write_wav("low.wav", make_sine(440.0, duration_s=0.1, sample_rate=4000), 4000)
    with pytest.raises(AudioError, match="4000 Hz"):
        load_audio(path, sample_rate=None)
    # Asking for a supported rate resamples instead.
    assert load_audio(path, sample_rate=8000).sample_rate == 8000


@pytest.mark.parametrize(("name", "expected"), [("a.wav", ("WAV", "FLOAT")), ("B.FLAC", ("FLAC", "PCM_24"))])
def test_output_format(name, expected):
    assert output_format(name) == expected


def test_output_format_refuses_other_suffixes():
    with pytest.raises(ParameterError, match=r"unsupported suffix '\.ogg'"):
        output_format("a.ogg")
