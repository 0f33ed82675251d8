"""Tests for the `splat` command line (splat.cli), run in-process with Typer's CliRunner inside tmp_path.

The fits are tiny (a few atoms, 20 steps, 0.3 s of audio) so the suite stays fast;
they check the plumbing (files, messages, exit codes), not fit quality.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.main import get_command
from typer.testing import CliRunner, Result

from splat.atoms import ENVELOPES, Atom, AtomSet
from splat.batch import BACKENDS
from splat.cli import Backend, Engine, Envelope, app
from splat.fitting import ENGINES
from splat.synth import render_atom_set

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = ["--atoms", "4", "--iters", "20"]


def run(*args: object) -> Result:
    # A wide terminal keeps every table row and help entry on one line.
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def assert_one_error_line(result: Result, *, mentions: str = "") -> str:
    """The run failed with exit code 1 and printed exactly one `error:` line and no traceback."""
    lines = result.output.rstrip("\n").splitlines()  # a blank line before the error counts as a line
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert mentions in lines[0]
    assert result.stdout == "", "errors go to stderr"
    return lines[0]


def files_in(folder: Path) -> set[str]:
    """Every name in `folder`, hidden temporary files included."""
    return {p.name for p in folder.iterdir()}


def hand_made_atom_set(n_atoms: int = 3) -> AtomSet:
    """A small valid AtomSet written by hand: n_atoms tones 0.08 s apart in 0.3 s at 22050 Hz."""
    atoms = [
        Atom(
            time_s=0.02 + 0.08 * i,
            gain_db=-12.0 - 3 * i,
            attack_s=0.002,
            spread_s=0.01,
            noise_center_hz=2000.0,
            noise_bandwidth_hz=1000.0,
            f0_hz=220.0 * (i + 1),
            inharmonicity=0.0001,
            rolloff_db=6.0,
            decay_s=0.1,
            mix=0.8,
            noise_seed=10 + i,
        )
        for i in range(n_atoms)
    ]
    return AtomSet(atoms=tuple(atoms), sample_rate=22050, duration_s=0.3, gain=2.0)


@pytest.fixture
def atoms_json(tmp_path: Path) -> Path:
    path = tmp_path / "hand.atoms.json"
    hand_made_atom_set().save(path)
    return path


@pytest.fixture
def clip_wav(write_wav, clip) -> Path:
    return write_wav("clip.wav", clip)


@pytest.fixture
def fitted(clip_wav: Path) -> tuple[Path, Path]:
    """(atoms JSON, reconstruction WAV) of a tiny fit of `clip_wav`."""
    result = run("fit", clip_wav, *TINY_FIT, "--quiet")
    assert result.exit_code == 0, result.output
    return clip_wav.with_name("clip.atoms.json"), clip_wav.with_name("clip.recon.wav")


# --- top level ------------------------------------------------------------------------------


def test_help_says_what_splat_is():
    result = run("--help")
    assert result.exit_code == 0
    assert "editable sound events" in result.output
    for command in ("fit", "render", "info", "plot", "eval"):
        assert command in result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("splat ")
    assert result.stdout.split()[1][0].isdigit()


def test_every_fit_option_states_its_default():
    fit_command = get_command(app).commands["fit"]
    options = [p for p in fit_command.params if p.param_type_name == "option" and p.name != "help"]
    help_text = run("fit", "--help").output
    assert len(options) >= 10
    for option in options:
        if option.is_flag:
            continue
        line = next(line for line in help_text.splitlines() if option.opts[0] + " " in line)
        assert "[default:" in line, line


def test_choices_match_the_library():
    assert get_args(Envelope) == ENVELOPES
    assert get_args(Engine) == ENGINES
    assert get_args(Backend) == BACKENDS


def test_shim_runs_from_a_checkout():
    result = subprocess.run(
        [sys.executable, "cli.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout and "render" in result.stdout


# --- fit ----------------------------------------------------------------------------------


def test_fit_writes_atoms_and_reconstruction(clip_wav, clip):
    result = run("fit", clip_wav, *TINY_FIT)
    assert result.exit_code == 0, result.output
    json_path, wav_path = clip_wav.with_name("clip.atoms.json"), clip_wav.with_name("clip.recon.wav")
    atom_set = AtomSet.load(json_path)
    assert 0 < len(atom_set.atoms) <= 4  # 0.3 s is a single segment
    assert (atom_set.sample_rate, atom_set.n_samples) == (22050, len(clip))
    info = sf.info(wav_path)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (22050, 1, len(clip), "FLOAT")
    assert str(json_path) in result.stdout and str(wav_path) in result.stdout
    assert files_in(clip_wav.parent) == {"clip.wav", "clip.atoms.json", "clip.recon.wav"}


def test_fit_quiet_prints_nothing(clip_wav):
    result = run("fit", clip_wav, *TINY_FIT, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_fit_says_once_that_it_mixed_and_resampled(write_wav, clip):
    source = np.stack([clip, 0.5 * clip], axis=1)
    path = write_wav("stereo.wav", np.repeat(source, 2, axis=0), 44100)
    result = run("fit", path, *TINY_FIT)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("stereo input mixed to mono") == 1
    assert result.stderr.count("resampled from 44100 Hz to 22050 Hz") == 1
    assert sf.info(path.with_name("stereo.recon.wav")).samplerate == 22050


def test_fit_out_dir(clip_wav, tmp_path):
    out_dir = tmp_path / "results" / "run1"
    result = run("fit", clip_wav, *TINY_FIT, "--quiet", "--out-dir", out_dir)
    assert result.exit_code == 0, result.output
    assert files_in(out_dir) == {"clip.atoms.json", "clip.recon.wav"}
    assert files_in(tmp_path) == {"clip.wav", "results"}


def test_fit_refuses_to_overwrite_without_force(fitted, clip_wav):
    json_path, wav_path = fitted
    before = json_path.read_bytes(), wav_path.read_bytes()
    assert_one_error_line(run("fit", clip_wav, *TINY_FIT), mentions="pass --force to overwrite")
    assert (json_path.read_bytes(), wav_path.read_bytes()) == before

    result = run("fit", clip_wav, *TINY_FIT, "--seed", "1", "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert files_in(clip_wav.parent) == {"clip.wav", "clip.atoms.json", "clip.recon.wav"}


def test_fit_refuses_when_only_one_output_exists(clip_wav):
    clip_wav.with_name("clip.recon.wav").write_bytes(b"an older render")
    assert_one_error_line(run("fit", clip_wav, *TINY_FIT), mentions="clip.recon.wav exists")
    assert not clip_wav.with_name("clip.atoms.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_fit_on_cuda_without_cuda_fails_up_front(clip_wav):
    assert_one_error_line(run("fit", clip_wav, *TINY_FIT, "--device", "cuda"), mentions="--device cpu")
    assert files_in(clip_wav.parent) == {"clip.wav"}


@pytest.mark.parametrize(("option", "value"), [("--lr", "0"), ("--lr", "2"), ("--segment-s", "0.01")])
def test_fit_config_is_checked_before_fitting(clip_wav, option, value):
    assert_one_error_line(run("fit", clip_wav, *TINY_FIT, option, value), mentions=option.lstrip("-").replace("-", "_"))
    assert files_in(clip_wav.parent) == {"clip.wav"}


def _text_file(folder: Path) -> Path:
    path = folder / "song.wav"
    path.write_text("these are lyrics, not audio\n")
    return path


def _zero_byte_file(folder: Path) -> Path:
    path = folder / "song.wav"
    path.touch()
    return path


def _no_samples_file(folder: Path) -> Path:
    path = folder / "song.wav"
    sf.write(path, np.zeros(0, np.float32), 22050, subtype="FLOAT")
    return path


def _silent_file(folder: Path) -> Path:
    path = folder / "song.wav"
    sf.write(path, np.zeros(4000, np.float32), 22050, subtype="FLOAT")
    return path


def _too_short_file(folder: Path) -> Path:
    path = folder / "song.wav"
    sf.write(path, np.full(300, 0.1, np.float32), 22050, subtype="FLOAT")
    return path


def _nan_file(folder: Path) -> Path:
    samples = np.full(4000, 0.1, np.float32)
    samples[123] = np.nan
    path = folder / "song.wav"
    sf.write(path, samples, 22050, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    ("make_input", "mentions"),
    [
        (_text_file, "not a readable audio file"),
        (_zero_byte_file, "empty"),
        (_no_samples_file, "no samples"),
        (_silent_file, "silent"),
        (_too_short_file, "too short"),
        (_nan_file, "NaN"),
        (lambda folder: folder / "missing.wav", "does not exist"),
    ],
)
def test_fit_bad_input(tmp_path, make_input, mentions):
    path = make_input(tmp_path)
    before = files_in(tmp_path)
    assert_one_error_line(run("fit", path, *TINY_FIT), mentions=mentions)
    assert files_in(tmp_path) == before


def test_fit_greedy_loss_with_the_reference_engine_is_refused_up_front(clip_wav):
    assert_one_error_line(
        run("fit", clip_wav, *TINY_FIT, "--greedy", "0.5", "--engine", "reference"), mentions="greedy"
    )
    assert files_in(clip_wav.parent) == {"clip.wav"}


def test_fit_with_the_greedy_loss_writes_both_outputs(clip_wav):
    result = run("fit", clip_wav, *TINY_FIT, "--greedy", "0.5")
    assert result.exit_code == 0, result.output
    assert files_in(clip_wav.parent) == {"clip.wav", "clip.atoms.json", "clip.recon.wav"}


def test_fit_records_the_polish_and_the_perceptual_weight(clip_wav):
    result = run("fit", clip_wav, *TINY_FIT, "--polish", "2", "--perceptual", "1.5")
    assert result.exit_code == 0, result.output
    config = json.loads((clip_wav.parent / "clip.atoms.json").read_text())["config"]
    assert (config["polish_iters"], config["perceptual_weight"]) == (2, 1.5)


def test_fit_polish_with_the_reference_engine_is_refused_up_front(clip_wav):
    assert_one_error_line(run("fit", clip_wav, *TINY_FIT, "--polish", "2", "--engine", "reference"), mentions="polish")
    assert files_in(clip_wav.parent) == {"clip.wav"}


def test_fit_bad_option_value_is_a_usage_error(clip_wav):
    result = run("fit", clip_wav, "--atoms", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert files_in(clip_wav.parent) == {"clip.wav"}


# --- info -------------------------------------------------------------------------------


def test_info_lists_every_atom_with_units(atoms_json):
    result = run("info", atoms_json)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "22050 Hz" in lines[0] and "0.300 s" in lines[0] and "3 atoms" in lines[0]
    for header in ("time (s)", "f0 (Hz)", "gain (dB)", "decay (s)", "noise center (Hz)", "mix"):
        assert header in result.stdout
    for atom in hand_made_atom_set().atoms:
        assert sum(f"{atom.time_s:.3f}" in line and f"{atom.f0_hz:.4g}" in line for line in lines) == 1


def test_info_never_cuts_numbers_on_a_narrow_terminal(atoms_json):
    result = CliRunner().invoke(app, ["info", str(atoms_json), "--all"], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert "noise bandwidth (Hz)" in result.stdout


def test_info_fits_100_columns_by_default_and_names_the_notes(tmp_path):
    many = hand_made_atom_set()
    many = replace(many, atoms=many.atoms * 400)  # 1200 atoms: a four-digit index
    path = tmp_path / ("a-long-folder-name" * 4) / "many.atoms.json"
    path.parent.mkdir()
    many.save(path)
    result = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) > 1200
    assert max(len(line) for line in lines) <= 100
    assert sum(" A3 " in line and " 220.0 " in line for line in lines) == 400
    wide = run("info", path, "--all").stdout
    assert max(len(line) for line in wide.splitlines()) > 100
    assert "noise bandwidth (Hz)" in wide and "noise bandwidth (Hz)" not in result.stdout


def test_info_json_and_csv_hold_every_field(atoms_json):
    rows = json.loads(run("info", atoms_json, "--json").stdout)
    atoms = hand_made_atom_set().atoms
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["note"] for r in rows] == ["A3", "A4", "E5"]
    derived = ("index", "note", "midi", "rank", "n_atoms")
    assert [Atom(**{k: v for k, v in r.items() if k not in derived}) for r in rows] == list(atoms)
    lines = run("info", atoms_json, "--csv").stdout.splitlines()
    assert lines[0].split(",")[:6] == ["index", "note", "midi", "rank", "n_atoms", "time_s"]
    assert len(lines) == 4 and lines[1].startswith("0,A3,57,0,3,0.02,")
    assert_one_error_line(run("info", atoms_json, "--json", "--csv"), mentions="one of --json and --csv")


def test_info_after_fit_lists_the_fitted_atoms(fitted):
    json_path, _ = fitted
    n_atoms = len(AtomSet.load(json_path).atoms)
    result = run("info", json_path)
    assert result.exit_code == 0, result.output
    assert f"{n_atoms} atoms" in result.stdout.splitlines()[0]


# --- render -----------------------------------------------------------------------------


def test_render_writes_exactly_what_the_library_renders(atoms_json, tmp_path):
    out = tmp_path / "out.wav"
    result = run("render", atoms_json, "-o", out)
    assert result.exit_code == 0, result.output
    audio, sample_rate = sf.read(out, dtype="float32")
    assert sample_rate == 22050
    np.testing.assert_array_equal(audio, render_atom_set(AtomSet.load(atoms_json)))
    assert str(out) in result.stdout


def test_render_flac(atoms_json, tmp_path):
    out = tmp_path / "out.flac"
    assert run("render", atoms_json, "-o", out).exit_code == 0
    assert sf.info(out).subtype == "PCM_24"


def test_render_of_fitted_json_reproduces_the_reconstruction(fitted, tmp_path):
    json_path, wav_path = fitted
    out = tmp_path / "rerendered.wav"
    result = run("render", json_path, "-o", out)
    assert result.exit_code == 0, result.output
    recon, _ = sf.read(wav_path, dtype="float32")
    rendered, _ = sf.read(out, dtype="float32")
    assert rendered.shape == recon.shape
    np.testing.assert_allclose(rendered, recon, atol=1e-5)


def test_render_refuses_to_overwrite_without_force(atoms_json, tmp_path):
    out = tmp_path / "out.wav"
    out.write_bytes(b"precious")
    assert_one_error_line(run("render", atoms_json, "-o", out), mentions="pass --force")
    assert out.read_bytes() == b"precious"
    assert run("render", atoms_json, "-o", out, "--force").exit_code == 0
    assert sf.info(out).frames == hand_made_atom_set().n_samples


def test_render_refuses_an_unknown_suffix_before_rendering(atoms_json, tmp_path):
    before = files_in(tmp_path)
    assert_one_error_line(run("render", atoms_json, "-o", tmp_path / "out.mp3"), mentions="unsupported suffix")
    assert files_in(tmp_path) == before


def test_render_into_an_unwritable_place_is_one_error_line(atoms_json, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    before = files_in(tmp_path)
    assert_one_error_line(run("render", atoms_json, "-o", blocker / "out.wav"), mentions="not_a_folder")
    assert files_in(tmp_path) == before


def _write_doc(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _out_of_range(folder: Path) -> Path:
    doc = hand_made_atom_set().to_dict()
    doc["atoms"][1]["f0_hz"] = -5
    return _write_doc(folder / "bad.atoms.json", doc)


def _unknown_version(folder: Path) -> Path:
    doc = hand_made_atom_set().to_dict()
    doc["version"] = 99
    return _write_doc(folder / "bad.atoms.json", doc)


def _truncated(folder: Path) -> Path:
    path = folder / "bad.atoms.json"
    path.write_text(json.dumps(hand_made_atom_set().to_dict())[:-40])
    return path


def _not_json(folder: Path) -> Path:
    path = folder / "bad.atoms.json"
    path.write_bytes(b"RIFF\x00\x00\xff\xfe binary")
    return path


BAD_JSON = [
    (_out_of_range, "atoms[1].f0_hz=-5 is out of range"),
    (_unknown_version, "version=99"),
    (_truncated, "not valid JSON"),
    (_not_json, "bad.atoms.json"),
    (lambda folder: folder / "missing.atoms.json", "missing.atoms.json"),
]


@pytest.mark.parametrize(("make_json", "mentions"), BAD_JSON)
def test_render_bad_json(tmp_path, make_json, mentions):
    path = make_json(tmp_path)
    before = files_in(tmp_path)
    assert_one_error_line(run("render", path, "-o", tmp_path / "out.wav"), mentions=mentions)
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(("make_json", "mentions"), BAD_JSON)
def test_info_bad_json(tmp_path, make_json, mentions):
    assert_one_error_line(run("info", make_json(tmp_path)), mentions=mentions)


# --- eval -------------------------------------------------------------------------------


def test_eval_prints_the_report(atoms_json, clip_wav, tmp_path):
    recon = tmp_path / "hand.wav"
    assert run("render", atoms_json, "-o", recon).exit_code == 0
    result = run("eval", clip_wav, recon, "--atoms", atoms_json)
    assert result.exit_code == 0, result.output
    assert "MR-STFT distance" in result.stdout
    assert "log-mel distance (dB)" in result.stdout
    assert any([cell.strip() for cell in line.split("│")[1:3]] == ["atoms", "3"] for line in result.stdout.splitlines())
    rows = {cells[0]: cells[1] for line in result.stdout.splitlines() if len(cells := _cells(line)) == 2}
    for name in ("tonal share of residual energy", "missed share of onset strength"):
        assert 0.0 <= float(rows[name]) <= 1.0, result.stdout


def _cells(line: str) -> list[str]:
    """The cells of a table row printed by rich (between its vertical bars)."""
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_eval_after_fit(fitted, clip_wav):
    _, wav_path = fitted
    result = run("eval", clip_wav, wav_path)
    assert result.exit_code == 0, result.output
    assert "MR-STFT distance" in result.stdout


def test_eval_says_when_the_lengths_differ(clip_wav, clip, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, clip[: clip.size // 2], 22050, subtype="FLOAT")
    result = run("eval", clip_wav, short, "--no-visqol")
    assert result.exit_code == 0, result.output
    assert "note: the reconstruction lasts 0.150 s and the original 0.300 s" in result.stderr
    assert "note:" not in run("eval", clip_wav, clip_wav, "--no-visqol").stderr


def test_eval_of_a_clip_shorter_than_one_fft(tmp_path):
    path = _too_short_file(tmp_path)  # 300 samples: too short to fit, not to score
    result = run("eval", path, path)
    assert result.exit_code == 0, result.output
    assert "MR-STFT distance" in result.stdout and "Traceback" not in result.output


def test_eval_notes_needs_atoms(clip_wav, tmp_path):
    notes = _write_doc(tmp_path / "truth.json", {"notes": []})
    assert_one_error_line(run("eval", clip_wav, clip_wav, "--notes", notes), mentions="--atoms")


def test_eval_bad_audio(clip_wav, tmp_path):
    assert_one_error_line(run("eval", clip_wav, _text_file(tmp_path)), mentions="not a readable audio file")


def test_fit_with_floor_writes_it_and_info_summarises_it(clip_wav):
    result = run("fit", clip_wav, *TINY_FIT, "--floor", "--quiet")
    assert result.exit_code == 0, result.output
    atom_set = AtomSet.load(clip_wav.with_name("clip.atoms.json"))
    assert len(atom_set.floor) == 1 and atom_set.floor[0].start_s == 0.0
    info = run("info", clip_wav.with_name("clip.atoms.json"))
    assert info.exit_code == 0, info.output
    assert "noise floor: 1 segment(s), total level" in info.stdout


def test_info_of_a_file_without_floor_does_not_mention_one(atoms_json):
    assert "noise floor" not in run("info", atoms_json).stdout


# --- plot -------------------------------------------------------------------------------


def test_plot_writes_a_png_over_the_given_audio_or_the_render(atoms_json, tmp_path):
    audio_path = tmp_path / "original.wav"
    sf.write(audio_path, render_atom_set(hand_made_atom_set()), 22050)
    for extra in ([], ["--audio", audio_path]):
        out = tmp_path / f"atoms{len(extra)}.png"
        result = run("plot", atoms_json, "-o", out, *extra)
        assert result.exit_code == 0, result.output
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "drew 3 atoms" in result.stdout and str(out) in result.stdout


def test_plot_refuses_other_suffixes_and_existing_files_and_writes_nothing(atoms_json, tmp_path):
    before = files_in(tmp_path)
    assert_one_error_line(run("plot", atoms_json, "-o", tmp_path / "atoms.jpg"), mentions="must end in .png")
    assert files_in(tmp_path) == before
    out = tmp_path / "atoms.png"
    out.write_bytes(b"precious")
    assert_one_error_line(run("plot", atoms_json, "-o", out), mentions="pass --force")
    assert out.read_bytes() == b"precious"


def test_plot_of_a_bad_atoms_file_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.atoms.json"
    bad.write_text('{"format": "splat.atoms", "version": 99}')
    assert_one_error_line(run("plot", bad, "-o", tmp_path / "x.png"), mentions="version=99")
    assert not (tmp_path / "x.png").exists()
