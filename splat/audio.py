"""Audio file input and output at splat's boundary: read, validate, mix to mono, resample, write.

Every problem with a file is reported as one `AudioError` whose message says what
is wrong and what to do, so the CLI can print it as a single line. Nothing here
prints: `LoadedAudio` carries the channel count and source sample rate so the
caller can tell the user about mixing and resampling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from splat.atoms import SAMPLE_RATE_RANGE
from splat.errors import AudioError, ParameterError
from splat.files import write_atomic

#: Peak amplitude below which a file counts as silent (-120 dBFS).
SILENCE_PEAK = 1e-6

#: Output container and sample encoding per file suffix. WAV keeps 32-bit float so
#: a reconstruction louder than full scale is stored without clipping.
_WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "FLOAT"),
    ".flac": ("FLAC", "PCM_24"),
}


@dataclass(frozen=True)
class LoadedAudio:
    """A validated mono recording.

    Attributes:
        samples: Mono audio, float32, shape (n_samples,), finite and not silent.
        sample_rate: Sample rate of `samples` in Hz (the one asked for).
        source_sample_rate: Sample rate of the file in Hz; differs from
            `sample_rate` when the audio was resampled.
        n_channels: Number of channels in the file; above 1 the channels were
            averaged into `samples`.
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    n_channels: int

    @property
    def duration_s(self) -> float:
        """Length of `samples` in seconds."""
        return len(self.samples) / self.sample_rate


def load_audio(path: str | Path, *, sample_rate: int | None) -> LoadedAudio:
    """Read an audio file as validated mono float32 audio at `sample_rate`.

    Anything soundfile reads (WAV, FLAC, OGG, MP3, AIFF, ...) is read directly;
    other files go through `librosa.load` (audioread, which needs ffmpeg or
    similar). Channels are averaged to mono, then the audio is resampled with
    soxr (`soxr_hq`) if the file's rate differs from `sample_rate`.

    Args:
        path: Audio file to read.
        sample_rate: Sample rate in Hz to return the audio at, in [8000, 192000];
            None keeps the file's own rate.

    Returns:
        `LoadedAudio` with samples of shape (n_samples,).

    Raises:
        ParameterError: If `sample_rate` is out of range.
        AudioError: If the file is missing, not readable audio, empty, contains
            NaN or infinite samples, or is silent (peak below -120 dBFS), or if
            `sample_rate` is None and the file's rate is out of range.
    """
    if sample_rate is not None:
        _check_sample_rate(sample_rate)
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path} does not exist; check the path")
    if not path.is_file():
        raise AudioError(f"{path} is not a file; pass an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); pass a non-empty audio file")

    frames, source_sample_rate = _read(path)
    if sample_rate is None:
        lo, hi = SAMPLE_RATE_RANGE
        if not lo <= source_sample_rate <= hi:
            raise AudioError(f"{path} has a sample rate of {source_sample_rate} Hz, outside [{lo}, {hi}]; resample it")
        sample_rate = source_sample_rate
    n_samples, n_channels = frames.shape
    if n_samples == 0:
        raise AudioError(f"{path} contains no samples; pass a recording with audio in it")
    if not np.isfinite(frames).all():
        raise AudioError(f"{path} contains NaN or infinite samples; re-export it from its source")
    mono = frames.mean(axis=1, dtype=np.float32)
    _check_not_silent(mono, f"{path} is silent (peak below -120 dBFS): nothing to fit")

    if source_sample_rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=source_sample_rate, target_sr=sample_rate, res_type="soxr_hq")
        _check_not_silent(
            mono,
            f"{path} is silent after resampling to {sample_rate} Hz (all its content lies above "
            f"{sample_rate // 2} Hz); use a higher sample rate",
        )
    return LoadedAudio(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        sample_rate=sample_rate,
        source_sample_rate=source_sample_rate,
        n_channels=n_channels,
    )


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono audio atomically: 32-bit float WAV for `.wav`, 24-bit FLAC for `.flac`.

    The file appears at `path` only once it is complete; on any error `path` is
    left untouched and no temporary file remains.

    Args:
        path: Output file; its suffix (.wav or .flac) picks the format.
        samples: Mono audio, shape (n_samples,), at the original level. FLAC
            cannot store a peak above 1.0 (full scale); WAV can.
        sample_rate: Sample rate in Hz, in [8000, 192000].

    Raises:
        ParameterError: If the suffix, the shape of `samples` or `sample_rate` is unsupported.
        AudioError: If `samples` is empty, contains NaN or infinite values, or
            exceeds full scale for FLAC.
    """
    path = Path(path)
    container, subtype = output_format(path)
    _check_sample_rate(sample_rate)
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ParameterError(f"expected mono samples of shape (n_samples,), got shape {samples.shape}")
    if samples.size == 0:
        raise AudioError(f"refusing to write {path}: there are no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"refusing to write {path}: the audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(samples)))
    if subtype.startswith("PCM") and peak > 1.0:
        # libsndfile does not clip when converting float to integer samples, so
        # an over-full-scale peak would wrap around into loud clicks.
        raise AudioError(
            f"refusing to write {path}: peak {peak:.3f} exceeds full scale (1.0), which {container} "
            "cannot store; write a .wav file (32-bit float) instead"
        )
    # The temporary file keeps the suffix, but pass the format anyway so the
    # output never depends on how the temporary file happens to be named.
    write_atomic(
        path,
        lambda tmp: sf.write(tmp, samples.astype(np.float32), sample_rate, format=container, subtype=subtype),
    )


def output_format(path: str | Path) -> tuple[str, str]:
    """The (container, subtype) `write_audio` uses for `path`, e.g. ("WAV", "FLOAT").

    Lets a caller reject an output name before doing any expensive work.

    Raises:
        ParameterError: If the suffix is not one `write_audio` supports (.wav, .flac).
    """
    path = Path(path)
    try:
        return _WRITE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ParameterError(
            f"cannot write {path}: unsupported suffix {path.suffix!r}; use one of {', '.join(_WRITE_FORMATS)}"
        ) from None


def zero_padded(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """`samples` (shape (samples,)) with zeros appended up to `n_samples`, for an FFT longer than a short clip.

    Centred STFT frames pad each end by half an FFT, which a shorter signal cannot
    reflect (torch refuses, librosa warns); silence after the clip changes no frame
    that covers it. Clips already that long come back unchanged.
    """
    return np.pad(samples, (0, max(n_samples - samples.size, 0)))


def _check_sample_rate(sample_rate: int) -> None:
    lo, hi = SAMPLE_RATE_RANGE
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not lo <= sample_rate <= hi:
        raise ParameterError(f"sample_rate={sample_rate!r} Hz is out of range; use an integer in [{lo}, {hi}]")


def _check_not_silent(samples: np.ndarray, message: str) -> None:
    if samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioError(message)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Decode `path` to float32 frames of shape (n_samples, n_channels) and its sample rate."""
    try:
        frames, source_sample_rate = sf.read(path, dtype="float32", always_2d=True)
        return frames, int(source_sample_rate)
    except sf.LibsndfileError as sf_exc:
        soundfile_reason = sf_exc.error_string.rstrip(".")
    try:
        with warnings.catch_warnings():
            # soundfile has just failed, so librosa's "PySoundFile failed. Trying
            # audioread instead." and its audioread deprecation notice say nothing new.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            audio, source_sample_rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    # audioread's backends raise unrelated types (EOFError, DecodeError, OSError,
    # ...); any of them means the same thing to the user: this is not readable audio.
    except Exception as exc:
        raise AudioError(
            f"{path} is not a readable audio file ({soundfile_reason}); "
            "convert it to WAV or FLAC, or install ffmpeg for other formats"
        ) from exc
    # librosa returns (n_samples,) for mono and (n_channels, n_samples) otherwise.
    frames = np.atleast_2d(audio).T
    return frames, int(source_sample_rate)
