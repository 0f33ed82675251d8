"""Tests for fitting many files (splat.batch, splat.checkpoint, `splat fit` with several inputs).

Fits are tiny (2 atoms, a few steps, 0.3 s clips) and check the plumbing: outputs,
the run record, skipping, checkpoints and resuming, worker processes and Ray.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner, Result

from splat.batch import (
    RUN_RECORD_NAME,
    ChunkKept,
    FileDone,
    FileNote,
    append_record,
    collect_inputs,
    config_sha256,
    fit_many,
)
from splat.checkpoint import FitState, read_checkpoint
from splat.cli import app
from splat.errors import ParameterError
from splat.fitting import FitConfig, fit

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 22050
TINY = ["--atoms", "2", "--iters", "5", "--quiet"]
TINY_CONFIG = FitConfig(n_atoms=2, n_iters=5)


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def tone(f0_hz: float, duration_s: float = 0.3) -> np.ndarray:
    """A decaying tone with a few partials, shape (samples,), float32."""
    t_s = np.arange(round(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    partials = sum(np.sin(2 * np.pi * k * f0_hz * t_s) / k for k in range(1, 4))
    return (0.3 * partials * np.exp(-t_s / 0.15)).astype(np.float32)


def write_tone(path: Path, f0_hz: float, duration_s: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(f0_hz, duration_s), SAMPLE_RATE, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / RUN_RECORD_NAME).read_text().splitlines()]


def all_files(folder: Path) -> set[str]:
    """Every file below `folder` (hidden temporary files included), relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def outputs(folder: Path) -> dict[str, bytes]:
    """Each output below `folder`: a JSON's bytes, a WAV's samples' bytes.

    (libsndfile stamps a float WAV's PEAK chunk with the time it was written, so the samples are compared.)
    """
    out = {}
    for name in sorted(all_files(folder) - {RUN_RECORD_NAME}):
        path = folder / name
        out[name] = sf.read(path, dtype="float32")[0].tobytes() if path.suffix == ".wav" else path.read_bytes()
    return out


@pytest.fixture
def songs(tmp_path: Path) -> Path:
    """A folder with three good clips (one in a subfolder, one FLAC) and one text file named .wav."""
    folder = tmp_path / "songs"
    write_tone(folder / "a.wav", 220.0)
    write_tone(folder / "b.wav", 330.0)
    clip = tone(440.0)
    (folder / "live").mkdir()
    sf.write(folder / "live" / "c.flac", clip, SAMPLE_RATE)
    (folder / "notes.wav").write_text("not audio\n")
    return folder


GOOD_OUTPUTS = {
    "a.atoms.json",
    "a.recon.wav",
    "b.atoms.json",
    "b.recon.wav",
    "live/c.atoms.json",
    "live/c.recon.wav",
    RUN_RECORD_NAME,
}


# --- inputs ---------------------------------------------------------------------------------


def test_inputs_from_folders_files_and_lists(tmp_path, songs):
    other = write_tone(tmp_path / "elsewhere" / "d.wav", 110.0)
    manifest = tmp_path / "list.txt"
    manifest.write_text("# the set\nelsewhere/d.wav\n\nsongs/live\n")
    inputs = collect_inputs([songs, f"@{manifest}", other])
    assert [str(i.relative) for i in inputs] == [
        "songs/a.wav",
        "songs/b.wav",
        "songs/live/c.flac",
        "songs/notes.wav",
        "elsewhere/d.wav",
    ]
    assert [i.path.name for i in collect_inputs([songs])] == ["a.wav", "b.wav", "c.flac", "notes.wav"]
    assert [str(i.relative) for i in collect_inputs([songs])][2] == "live/c.flac"


def test_inputs_that_would_share_outputs_or_are_missing_are_refused(tmp_path, songs):
    write_tone(songs / "a.flac", 220.0)
    with pytest.raises(ParameterError, match=r"a\.flac and .*a\.wav would write the same outputs"):
        collect_inputs([songs])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError, match="no audio files"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(ParameterError, match="cannot read the list"):
        collect_inputs([f"@{tmp_path / 'missing.txt'}"])


def test_run_record_lines_accumulate(tmp_path):
    from splat.batch import RunRecord

    path = tmp_path / "out" / RUN_RECORD_NAME
    for status in ("ok", "failed"):
        append_record(path, RunRecord(input="x.wav", input_sha256="1", config_sha256="2", status=status))
    assert [r["status"] for r in read_records(path.parent)] == ["ok", "failed"]
    assert all_files(path.parent) == {RUN_RECORD_NAME}


def test_config_hash_follows_every_setting():
    assert config_sha256(TINY_CONFIG) == config_sha256(FitConfig(n_atoms=2, n_iters=5))
    assert config_sha256(TINY_CONFIG) != config_sha256(replace(TINY_CONFIG, seed=1))
    assert config_sha256(TINY_CONFIG) != config_sha256(replace(TINY_CONFIG, noise_floor=True))


# --- a folder: outputs, failures, reruns ----------------------------------------------------


def test_folder_with_a_bad_file_then_reruns(tmp_path, songs):
    out = tmp_path / "out"
    result = run("fit", songs, "-o", out, *TINY)
    assert result.exit_code == 1, result.output
    assert all_files(out) == GOOD_OUTPUTS  # no checkpoint, no temporary file
    assert "error:" in result.output and "notes.wav" in result.output
    records = {Path(r["input"]).name: r for r in read_records(out)}
    assert {name: r["status"] for name, r in records.items()} == {
        "a.wav": "ok",
        "b.wav": "ok",
        "c.flac": "ok",
        "notes.wav": "failed",
    }
    assert "not a readable audio file" in records["notes.wav"]["error"]
    first = records["a.wav"]
    assert first["n_atoms"] >= 1 and first["duration_s"] == pytest.approx(0.3) and first["final_loss"] > 0
    config = json.loads((out / "a.atoms.json").read_text())["config"]
    assert (config["input_sha256"], config["config_sha256"]) == (first["input_sha256"], first["config_sha256"])
    fitted = outputs(out)

    rerun = run("fit", songs, "-o", out, *TINY)
    assert rerun.exit_code == 1, rerun.output  # the bad file fails again
    assert [r["status"] for r in read_records(out)[4:]].count("skipped") == 3
    assert outputs(out) == fitted

    assert run("fit", songs, "-o", out, *TINY, "--force").exit_code == 1
    assert [r["status"] for r in read_records(out)[8:]].count("ok") == 3

    changed = run("fit", songs, "-o", out, *TINY, "--seed", "1")
    assert changed.exit_code == 1, changed.output
    assert [r["status"] for r in read_records(out)[12:]].count("ok") == 3
    assert json.loads((out / "a.atoms.json").read_text())["config"]["seed"] == 1
    assert all_files(out) == GOOD_OUTPUTS


def test_all_good_files_exit_zero_and_outputs_go_beside_the_inputs_without_out_dir(tmp_path):
    folder = tmp_path / "set"
    write_tone(folder / "a.wav", 220.0)
    write_tone(folder / "deep" / "b.wav", 330.0)
    result = run("fit", folder, *TINY)
    assert result.exit_code == 0, result.output
    assert all_files(folder) == {
        "a.wav",
        "a.atoms.json",
        "a.recon.wav",
        "deep/b.wav",
        "deep/b.atoms.json",
        "deep/b.recon.wav",
        RUN_RECORD_NAME,
    }


def test_a_checkpoint_of_another_config_is_ignored_with_a_note(tmp_path):
    clip = write_tone(tmp_path / "in" / "clip.wav", 220.0)
    out = tmp_path / "out"
    other = {"format": "splat.checkpoint", "version": 1, "input_sha256": "0" * 64, "config_sha256": "0" * 64}
    out.mkdir()
    (out / "clip.partial.json").write_text(json.dumps(other | {"state": {}}))
    events: list = []
    [record] = fit_many([clip], out, TINY_CONFIG, callback=events.append)
    assert record.status == "ok" and record.resumed_chunks == 0
    notes = [e.message for e in events if isinstance(e, FileNote)]
    assert any("written for another input or config" in n for n in notes), notes
    assert not (out / "clip.partial.json").exists()


def test_unreadable_checkpoints_are_ignored(tmp_path):
    path = tmp_path / "x.partial.json"
    path.write_text("{not json")
    found = read_checkpoint(path, input_sha256="a", config_sha256="b")
    assert found.state is None and "cannot resume" in (found.note or "")
    assert read_checkpoint(tmp_path / "none.json", input_sha256="a", config_sha256="b").note is None


# --- checkpoint and resume ------------------------------------------------------------------


@pytest.mark.parametrize(("noise_floor", "room"), [(False, False), (True, False), (False, True)])
def test_resuming_from_any_saved_state_gives_the_uninterrupted_fit(noise_floor, room):
    """The state after each chunk, through its JSON, resumes to exactly the uninterrupted result."""
    audio = np.concatenate([tone(220.0, 0.2), tone(330.0, 0.2), tone(262.0, 0.2)])
    config = FitConfig(n_atoms=2, n_iters=4, segment_s=0.1, segments_per_chunk=1, noise_floor=noise_floor, room=room)
    states: list[FitState] = []
    whole = fit(audio, SAMPLE_RATE, config, checkpoint=states.append)
    assert [s.n_done for s in states] == [1, 2, 3] and states[0].n_chunks == 4
    for state in states:
        restored = FitState.from_dict(json.loads(json.dumps(state.to_dict())))
        resumed = fit(audio, SAMPLE_RATE, config, resume=restored)
        assert json.dumps(resumed.atoms.to_dict()) == json.dumps(whole.atoms.to_dict())
        assert resumed.losses == whole.losses
        np.testing.assert_array_equal(resumed.reconstruction, whole.reconstruction)
    with pytest.raises(ParameterError, match="cannot resume"):
        fit(audio[: len(audio) // 2], SAMPLE_RATE, config, resume=states[0])


# The real command in a child process; the fit reports chunk starts to CHUNK_LOG and sends
# itself SIGINT in chunk INTERRUPT_CHUNK (as Ctrl-C would), so the interrupt lands in a known chunk.
_INTERRUPTING_SPLAT = """
import os, signal, sys
from splat import fitting
from splat.cli import app

original_fit = fitting.fit

def observed_fit(*args, callback, **kwargs):
    def step(progress):
        callback(progress)
        if progress.step == 1:
            with open(os.environ["CHUNK_LOG"], "a") as log:
                log.write(f"{progress.chunk}\\n")
        if str(progress.chunk) == os.environ.get("INTERRUPT_CHUNK") and progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
    return original_fit(*args, callback=step, **kwargs)

if __name__ == "__main__":
    fitting.fit = observed_fit
    app(sys.argv[1:], prog_name="splat")
"""


def test_ctrl_c_in_the_second_chunk_then_rerun_resumes_to_the_same_bytes(tmp_path):
    # 9 segments of 4096 samples (--segment-s 0.1 rounds up to the longest FFT): two chunks of <= 8.
    clip = write_tone(tmp_path / "clip.wav", 196.0, duration_s=1.6)
    script = tmp_path / "splat_observed.py"
    script.write_text(_INTERRUPTING_SPLAT)
    log = tmp_path / "chunks.log"
    options = ["--atoms", "2", "--iters", "6", "--segment-s", "0.1"]

    def splat(out: Path, *more: str, interrupt_chunk: str = "") -> subprocess.CompletedProcess:
        log.unlink(missing_ok=True)
        env = os.environ | {"CHUNK_LOG": str(log), "INTERRUPT_CHUNK": interrupt_chunk}
        command = [sys.executable, str(script), "fit", str(clip), "-o", str(out), *options, *more]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)

    whole = run("fit", clip, "-o", tmp_path / "whole", *options, "--quiet")
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "out"
    stopped = splat(out, "--quiet", interrupt_chunk="1")
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted: 1 of 2 chunks kept; run the same command to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert all_files(out) == {"clip.partial.json"}

    resumed = splat(out)
    assert resumed.returncode == 0, resumed.stderr
    assert log.read_text().split() == ["1"], "the rerun fits only the second chunk"
    assert "resuming from" in resumed.stderr and "1 of 2 chunks kept" in resumed.stderr
    assert all_files(out) == {"clip.atoms.json", "clip.recon.wav"}
    assert outputs(out) == outputs(tmp_path / "whole")


# --- workers and Ray ------------------------------------------------------------------------


def test_two_workers_write_what_one_process_writes(tmp_path, songs):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("fit", songs, "-o", one, *TINY).exit_code == 1
    result = run("fit", songs, "-o", two, *TINY, "--jobs", "2")
    assert result.exit_code == 1, result.output
    assert outputs(two) == outputs(one)
    assert all_files(two) == GOOD_OUTPUTS

    def summary(folder: Path) -> list[tuple]:
        return sorted((r["input"], r["status"], r["n_atoms"], r["final_loss"]) for r in read_records(folder))

    assert summary(two) == summary(one)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs for this module's Ray tests (no dashboard, no usage report)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        yield ray
        ray.shutdown()


def test_ray_backend_writes_the_records_and_outputs_of_local_workers(tmp_path, ray_cluster):
    clips = [write_tone(tmp_path / "in" / f"{name}.wav", f0) for name, f0 in (("a", 220.0), ("b", 330.0))]
    bad = tmp_path / "in" / "bad.wav"
    bad.write_bytes(b"RIFF....")
    local, remote = tmp_path / "local", tmp_path / "ray"
    expected = fit_many([*clips, bad], local, TINY_CONFIG)
    events: list = []
    records = fit_many([*clips, bad], remote, TINY_CONFIG, backend="ray", jobs=2, callback=events.append)
    assert ray_cluster.is_initialized(), "a Ray instance started by the caller is left running"

    def comparable(record) -> tuple:
        return record.input, record.input_sha256, record.config_sha256, record.status, record.n_atoms, record.error

    assert [comparable(r) for r in records] == [comparable(r) for r in expected]
    assert [r.status for r in records] == ["ok", "ok", "failed"]
    # The run record is in the order the files finished.
    written = sorted((r["input"], r["status"]) for r in read_records(remote))
    assert written == sorted((r.input, r.status) for r in records)
    assert sum(isinstance(e, FileDone) for e in events) == 3
    assert outputs(remote) == outputs(local)

    again = fit_many([*clips, bad], remote, TINY_CONFIG, backend="ray", jobs=2)
    assert [r.status for r in again] == ["skipped", "skipped", "failed"]


def test_interrupted_batch_reports_what_it_kept(tmp_path):
    """Ctrl-C while the second file fits: the first is recorded, the exception says what was kept."""
    from splat.batch import BatchInterrupted

    clips = [write_tone(tmp_path / f"{name}.wav", 220.0, 0.6) for name in ("a", "b")]
    config = FitConfig(n_atoms=2, n_iters=3, segment_s=0.1, segments_per_chunk=1)

    def interrupt(event) -> None:
        if isinstance(event, ChunkKept) and event.index == 1 and event.n_done == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises

    with pytest.raises(BatchInterrupted) as stopped:
        fit_many(clips, tmp_path / "out", config, callback=interrupt)
    assert (len(stopped.value.records), stopped.value.n_files) == (1, 2)
    assert (stopped.value.n_chunks_kept, stopped.value.n_chunks) == (2, 4)
    assert [r["status"] for r in read_records(tmp_path / "out")] == ["ok"]
    assert (tmp_path / "out" / "b.partial.json").exists()
