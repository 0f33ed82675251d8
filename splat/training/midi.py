"""Random note sequences rendered by fluidsynth from the soundfonts training may use.

Only these Debian packages' soundfonts are allowed (`SOUNDFONTS`): the benchmark
clips come from other packages, and must stay unseen. The notes follow
`synthetic.note_pattern` (no score corpus). A rendered clip knows its notes'
onsets, pitches and lengths, not the atoms' other fields, so only `time_s`,
`f0_hz` and `duration_s` are ground truth (`Clip.known`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from splat.errors import SplatError
from splat.params import FIELDS
from splat.training.synthetic import CLIP_RATE, CLIP_SAMPLES, UNKNOWN_SERIES, Clip, _midi_to_hz, note_pattern

#: Soundfont files training may use, by Debian package. Nothing else is read.
SOUNDFONTS = {
    "csound-soundfont": Path("/usr/share/sounds/sf2/sf_GMbank.sf2"),
    "opl3-soundfont": Path("/usr/share/sounds/sf2/OPL-3_FM_128M.sf2"),
}
#: General MIDI programs with a pitch and a clear onset, by the ranges they play in (MIDI notes).
PROGRAMS = {
    "piano": (range(0, 8), 28, 96),
    "chromatic percussion": (range(8, 16), 55, 96),
    "organ": (range(16, 21), 36, 84),
    "guitar": (range(24, 32), 40, 84),
    "bass": (range(32, 40), 28, 55),
    "strings": (range(40, 46), 43, 96),
    "ensemble": (range(48, 52), 43, 88),
    "brass": (range(56, 64), 40, 84),
    "reed": (range(64, 72), 46, 88),
    "pipe": (range(72, 80), 60, 96),
}
_TICKS_PER_BEAT = 500  # at the default 120 bpm, one tick = 1 ms
_KNOWN = tuple(name in ("time_s", "f0_hz", "duration_s") for name in FIELDS)


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(notes: list[tuple[float, float, int, int]], *, program: int) -> bytes:
    """A format-0 standard MIDI file: (onset s, offset s, pitch, velocity 1-127) notes on channel 0."""
    events = []
    for onset, offset, pitch, velocity in notes:
        events.append((round(onset * 1000), 1, bytes([0x90, pitch, velocity])))
        events.append((round(offset * 1000), 0, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = bytearray(b"\x00" + bytes([0xC0, program]))
    now = 0
    for tick, _, message in events:
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += _TICKS_PER_BEAT.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def available_soundfonts() -> dict[str, Path]:
    """The allowed soundfonts installed on this machine."""
    return {name: path for name, path in SOUNDFONTS.items() if path.is_file()}


def render_midi(midi: bytes, soundfont: Path, *, reverb: bool) -> np.ndarray:
    """Render MIDI with the fluidsynth command at `CLIP_RATE`; mono float32.

    Raises:
        SplatError: if fluidsynth is missing or fails.
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise SplatError("fluidsynth is not installed: apt-get install fluidsynth (make encoder does)")
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        mid.write_bytes(midi)
        command = [exe, "-n", "-i", "-q", "-g", "0.5", "-r", str(CLIP_RATE), "-T", "wav", "-F", str(wav)]
        command += ["-o", f"synth.reverb.active={int(reverb)}", "-o", "synth.chorus.active=0", str(soundfont), str(mid)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0 or not wav.exists():
            raise SplatError(f"fluidsynth failed on {soundfont.name}: {done.stderr.strip()[:200]}")
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != CLIP_RATE:
        raise SplatError(f"fluidsynth wrote {rate} Hz instead of {CLIP_RATE}")
    return audio.mean(axis=1)


def midi_clip(rng: np.random.Generator, soundfonts: dict[str, Path], *, n_samples: int = CLIP_SAMPLES) -> Clip | None:
    """One clip of random notes on a random program and soundfont; None if it came out silent."""
    duration_s = n_samples / CLIP_RATE
    family = list(PROGRAMS)[int(rng.integers(len(PROGRAMS)))]
    programs, lowest, highest = PROGRAMS[family]
    program = int(rng.choice(list(programs)))
    pattern = note_pattern(rng, span_s=duration_s, lowest=lowest, highest=highest)
    notes = []
    for onset, pitch, velocity in pattern:
        onset = max(0.0, onset)
        length = float(np.exp(rng.uniform(np.log(0.08), np.log(1.5))))
        if 0 <= pitch <= 127:
            notes.append((onset, onset + length, int(pitch), int(round(20 + 107 * velocity))))
    # One keyboard: a repeated pitch cuts the sounding note.
    notes.sort()
    for i, (onset, offset, pitch, velocity) in enumerate(notes):
        later = [o for o, _, p, _ in notes[i + 1 :] if p == pitch and o > onset]
        if later and later[0] < offset:
            notes[i] = (onset, later[0], pitch, velocity)
    notes = [n for n in notes if n[1] - n[0] > 0.02]
    if not notes:
        return None
    name = list(soundfonts)[int(rng.integers(len(soundfonts)))]
    audio = render_midi(midi_file(notes, program=program), soundfonts[name], reverb=bool(rng.random() < 0.5))
    audio = np.pad(audio, (0, max(0, n_samples - audio.size)))[:n_samples].astype(np.float64)
    peak = float(np.max(np.abs(audio)))
    if peak < 1e-4:
        return None
    rows = []
    for onset, offset, pitch, _ in notes:
        values = [0.0] * len(FIELDS)
        values[FIELDS.index("time_s")] = onset
        values[FIELDS.index("f0_hz")] = _midi_to_hz(pitch)
        values[FIELDS.index("duration_s")] = min(max(offset - onset, 0.02), 30.0)
        rows.append(values)
    table = np.array(rows, dtype=np.float32)
    known = np.tile(np.array(_KNOWN), (len(rows), 1))
    series = np.full(len(rows), UNKNOWN_SERIES, dtype=np.int8)  # what a soundfont's instrument rings with
    return Clip((audio / peak).astype(np.float32), table, known, series)
