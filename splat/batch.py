"""Fit many files: inputs, outputs, the run record, skipping, checkpoints and worker processes.

`fit_many` takes files, folders (searched recursively for audio) and `@list.txt`
manifests, and writes each input's `<stem>.atoms.json` and `<stem>.recon.wav`
under the output folder at the input's place in the tree (relative to the inputs'
common folder). As each file finishes, one JSON line is appended to
`splat-run.jsonl` in the output folder (the whole file is rewritten atomically,
so it never holds half a line).

Reruns are idempotent: a file whose outputs exist and record the same input hash
and config hash (in the JSON's `config`) is skipped. A fit writes a checkpoint
(`<stem>.partial.json`) after every chunk, so an interrupted file resumes where
it stopped and ends with the same bytes as an uninterrupted fit.

Work runs in this process (`jobs=1`), in `jobs` worker processes, or as Ray
tasks (`backend="ray"`, `splat.backends.ray`); in every case this process owns
the run record and the progress events (`callback`). Nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from splat import fitting
from splat.audio import load_audio, write_audio
from splat.checkpoint import FitState, read_checkpoint, write_checkpoint
from splat.errors import AudioError, ParameterError, SplatError
from splat.files import atomic_path
from splat.fitting import FitConfig, FitProgress

logger = logging.getLogger(__name__)

#: Suffixes of the files a folder is searched for (lower case).
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a", ".opus"})
RUN_RECORD_NAME = "splat-run.jsonl"
BACKENDS = ("local", "ray")
#: How long the parent waits for a worker's event before checking that the workers live (s).
_POLL_S = 0.2


@dataclass(frozen=True)
class BatchInput:
    """One audio file to fit.

    Attributes:
        path: The file.
        relative: Its path below the inputs' common folder; its outputs go to the same
            place below the output folder.
    """

    path: Path
    relative: Path


@dataclass(frozen=True)
class OutputPaths:
    """Where one input's outputs go."""

    atoms_json: Path
    recon_wav: Path
    checkpoint: Path

    @classmethod
    def beside(cls, folder: Path, stem: str) -> OutputPaths:
        """`<stem>.atoms.json`, `<stem>.recon.wav` and `<stem>.partial.json` in `folder`."""
        return cls(folder / f"{stem}.atoms.json", folder / f"{stem}.recon.wav", folder / f"{stem}.partial.json")


@dataclass(frozen=True)
class FileJob:
    """One file's work; picklable, so it can run in a worker process or a Ray task.

    Attributes:
        index: Position of the input in the batch.
        input_path: The audio file.
        outputs: Where its outputs and checkpoint go.
        config: Fit settings.
        input_sha256: The file's content hash, if already known.
        n_threads: Torch threads to fit with (set in worker processes and Ray tasks); None: leave as is.
    """

    index: int
    input_path: Path
    outputs: OutputPaths
    config: FitConfig
    input_sha256: str | None = None
    n_threads: int | None = None


@dataclass(frozen=True)
class RunRecord:
    """One line of `splat-run.jsonl`: what became of one input.

    Attributes:
        input: The input file's path.
        input_sha256: SHA-256 of its bytes (None if it could not be read).
        config_sha256: SHA-256 of the fit settings (`config_sha256`).
        status: "ok" (fitted), "skipped" (outputs up to date) or "failed".
        n_atoms: Atoms in the output, or None.
        duration_s: Length of the audio in seconds, or None.
        wall_s: Seconds spent on the file (fitting, or checking that it is up to date).
        final_loss: The fit's distance after its last step (None unless fitted, or fitted with 0 iterations).
        error: Why the file failed, or None.
        resumed_chunks: Chunks taken from a checkpoint instead of being fitted again.
        atoms_json: The output JSON's path, or None.
        finished_utc: When the file finished, ISO 8601 in UTC.
    """

    input: str
    input_sha256: str | None
    config_sha256: str
    status: str
    n_atoms: int | None = None
    duration_s: float | None = None
    wall_s: float = 0.0
    final_loss: float | None = None
    error: str | None = None
    resumed_chunks: int = 0
    atoms_json: str | None = None
    finished_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Progress events, from wherever the file is being fitted to `fit_many`'s callback.


@dataclass(frozen=True)
class BatchStart:
    """The inputs are known: `n_files` in all; the run record goes to `record_path`."""

    n_files: int
    record_path: Path


@dataclass(frozen=True)
class FileStep:
    """File `index` (`path`) made an optimiser step."""

    index: int
    path: Path
    progress: FitProgress


@dataclass(frozen=True)
class ChunkKept:
    """File `index` has `n_done` of its `n_chunks` chunks in its checkpoint."""

    index: int
    n_done: int
    n_chunks: int


@dataclass(frozen=True)
class FileNote:
    """Something the user may want to know about file `index` (a conversion, an ignored checkpoint)."""

    index: int
    path: Path
    message: str


@dataclass(frozen=True)
class FileDone:
    """File `index` is finished (fitted, skipped or failed)."""

    index: int
    record: RunRecord


BatchEvent = BatchStart | FileStep | ChunkKept | FileNote | FileDone


class ChunkTally:
    """Counts, from the events, the chunks kept in checkpoints of the files not yet finished.

    What an interrupted run tells the user ("N of M chunks kept").
    """

    def __init__(self) -> None:
        self._open: dict[int, tuple[int, int]] = {}

    def __call__(self, event: BatchEvent) -> None:
        if isinstance(event, ChunkKept):
            self._open[event.index] = (event.n_done, event.n_chunks)
        elif isinstance(event, FileStep):
            n_done = self._open.get(event.index, (0, 0))[0]
            self._open[event.index] = (n_done, event.progress.n_chunks)
        elif isinstance(event, FileDone):
            self._open.pop(event.index, None)

    def kept(self) -> tuple[int, int]:
        """(chunks kept, chunks in all) over the files started but not finished."""
        return sum(d for d, _ in self._open.values()), sum(n for _, n in self._open.values())


class BatchInterrupted(KeyboardInterrupt):
    """A batch stopped by Ctrl-C (still a KeyboardInterrupt), with what it kept.

    Attributes:
        records: Records of the files finished before the interrupt.
        n_files: Inputs in the batch.
        n_chunks_kept: Chunks kept in checkpoints of the unfinished files.
        n_chunks: Chunks of those files in all.
    """

    def __init__(self, records: list[RunRecord], *, n_files: int, n_chunks_kept: int, n_chunks: int) -> None:
        super().__init__(f"interrupted: {n_chunks_kept} of {n_chunks} chunks kept")
        self.records = records
        self.n_files = n_files
        self.n_chunks_kept = n_chunks_kept
        self.n_chunks = n_chunks


def collect_inputs(sources: Sequence[str | Path]) -> list[BatchInput]:
    """The audio files named by `sources`, each with its place below their common folder.

    A source is a file, a folder (searched recursively for `AUDIO_SUFFIXES`, in sorted
    order) or `@list.txt`: a manifest with one file or folder per line (relative to the
    manifest's folder; blank lines and lines starting with # are skipped). A path that
    does not exist is kept as an input, so that it is reported as a failed file. The
    same file named twice is fitted once.

    Args:
        sources: Paths and `@manifest` names.

    Returns:
        The inputs in the order given.

    Raises:
        ParameterError: if a manifest cannot be read, no audio file is found, or two
            inputs would write the same outputs (same folder and stem).
    """
    paths: list[Path] = []
    roots: list[Path] = []
    for source in _expand_manifests(sources):
        if source.is_dir():
            found = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            paths.extend(found)
            roots.append(source)
        else:
            paths.append(source)
            roots.append(source.parent)
    if not paths:
        suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
        raise ParameterError(f"no audio files ({suffixes}) found in {', '.join(map(str, sources))}")
    root = Path(os.path.commonpath([os.path.abspath(r) for r in roots]))
    inputs: dict[Path, BatchInput] = {}
    owners: dict[Path, Path] = {}
    for path in paths:
        absolute = Path(os.path.abspath(path))
        if absolute in inputs:
            continue
        relative = absolute.relative_to(root)
        key = relative.with_suffix("")
        if key in owners:
            raise ParameterError(f"{owners[key]} and {path} would write the same outputs ({key}.*); rename one")
        owners[key] = path
        inputs[absolute] = BatchInput(path, relative)
    return list(inputs.values())


def _expand_manifests(sources: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for source in sources:
        text = str(source)
        if not text.startswith("@"):
            out.append(Path(text))
            continue
        manifest = Path(text[1:])
        try:
            lines = manifest.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"cannot read the list {manifest}: {exc}") from exc
        entries = [line.strip() for line in lines]
        out.extend(manifest.parent / entry for entry in entries if entry and not entry.startswith("#"))
    return out


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex.

    Raises:
        AudioError: if the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def config_sha256(config: FitConfig) -> str:
    """SHA-256 of the fit settings (every `FitConfig` field, as the JSON `config` records them).

    With init "encoder" the shipped weights' own hash is part of it: retrained weights refit a batch.
    """
    settings = asdict(config)
    if config.init == "encoder":
        from splat.encoder import WEIGHTS_DIR, weights_hash

        weights = WEIGHTS_DIR / "encoder.pt"
        settings["encoder_sha256"] = weights_hash(weights) if weights.is_file() else None
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def fit_file(
    job: FileJob,
    *,
    on_event: Callable[[BatchEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunRecord:
    """Fit one file, resuming from its checkpoint if it has one; write its outputs atomically.

    After every chunk the checkpoint is rewritten; once both outputs are written it is
    removed. The output JSON's `config` also records `input_sha256` and `config_sha256`.

    Args:
        job: The file, its outputs and settings.
        on_event: Receives `FileNote`, `ChunkKept` and `FileStep` events.
        should_stop: Polled after every step; True stops the fit with KeyboardInterrupt
            (as Ctrl-C would), keeping the checkpoint.

    Returns:
        The file's record (status "ok").

    Raises:
        SplatError: on unreadable, silent or otherwise unfittable audio, or bad settings.
        OSError: if an output cannot be written.
        KeyboardInterrupt: on Ctrl-C or when `should_stop` says so.
    """
    started = time.perf_counter()

    def emit(event: BatchEvent) -> None:
        if on_event is not None:
            on_event(event)

    job.config.validate()
    loaded = load_audio(job.input_path, sample_rate=job.config.sample_rate)
    if loaded.n_channels > 1:
        channels = "stereo" if loaded.n_channels == 2 else f"{loaded.n_channels}-channel"
        emit(FileNote(job.index, job.input_path, f"{channels} input mixed to mono"))
    if loaded.source_sample_rate != loaded.sample_rate:
        message = f"resampled from {loaded.source_sample_rate} Hz to {loaded.sample_rate} Hz"
        emit(FileNote(job.index, job.input_path, message))
    hashes = {
        "input_sha256": job.input_sha256 or file_sha256(job.input_path),
        "config_sha256": config_sha256(job.config),
    }
    found = read_checkpoint(job.outputs.checkpoint, **hashes)
    if found.note is not None:
        emit(FileNote(job.index, job.input_path, found.note))
    if found.state is not None:
        kept = f"{found.state.n_done} of {found.state.n_chunks} chunks"
        emit(FileNote(job.index, job.input_path, f"resuming from {job.outputs.checkpoint}: {kept} kept"))
        emit(ChunkKept(job.index, found.state.n_done, found.state.n_chunks))

    def on_step(progress: FitProgress) -> None:
        emit(FileStep(job.index, job.input_path, progress))
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt

    def keep(state: FitState) -> None:
        write_checkpoint(job.outputs.checkpoint, state, **hashes)
        emit(ChunkKept(job.index, state.n_done, state.n_chunks))

    result = fitting.fit(
        loaded.samples, loaded.sample_rate, job.config, callback=on_step, checkpoint=keep, resume=found.state
    )
    atom_set = replace(result.atoms, config={**result.atoms.config, **hashes})
    # Both files appear together or not at all.
    with atomic_path(job.outputs.atoms_json) as json_tmp, atomic_path(job.outputs.recon_wav) as wav_tmp:
        atom_set.save(json_tmp)
        write_audio(wav_tmp, result.reconstruction, loaded.sample_rate)
    job.outputs.checkpoint.unlink(missing_ok=True)
    return RunRecord(
        input=str(job.input_path),
        status="ok",
        n_atoms=len(atom_set.atoms),
        duration_s=loaded.duration_s,
        wall_s=time.perf_counter() - started,
        # No step at all with n_iters 0 (the init's atoms as they are): no loss to report.
        final_loss=result.losses[-1][-1] if result.losses and result.losses[-1] else None,
        resumed_chunks=0 if found.state is None else found.state.n_done,
        atoms_json=str(job.outputs.atoms_json),
        **hashes,
    )


def run_job(
    job: FileJob,
    *,
    on_event: Callable[[BatchEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunRecord:
    """`fit_file`, with any failure turned into a "failed" record (KeyboardInterrupt still propagates).

    A batch of hundreds of files must not stop at one bad file: errors a user can fix
    (`SplatError`, `OSError`) are recorded with their message, and anything else (a bug,
    out of memory) is logged with its traceback and recorded too.
    """
    started = time.perf_counter()
    try:
        return fit_file(job, on_event=on_event, should_stop=should_stop)
    except (SplatError, OSError) as exc:
        error = str(exc)
    except Exception as exc:  # see the docstring
        logger.exception("fitting %s failed", job.input_path)
        error = f"{type(exc).__name__}: {exc}"
    return RunRecord(
        input=str(job.input_path),
        input_sha256=job.input_sha256,
        config_sha256=config_sha256(job.config),
        status="failed",
        wall_s=time.perf_counter() - started,
        error=error.replace("\n", " "),
    )


def up_to_date(outputs: OutputPaths, *, input_sha256: str, config_sha256: str) -> dict[str, Any] | None:
    """The existing output JSON if both outputs exist and record these hashes, else None."""
    if not (outputs.atoms_json.is_file() and outputs.recon_wav.is_file()):
        return None
    try:
        doc = json.loads(outputs.atoms_json.read_text(encoding="utf-8"))
        config = doc["config"]
        if config.get("input_sha256") == input_sha256 and config.get("config_sha256") == config_sha256:
            return doc
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        pass  # unreadable or foreign: not up to date, so it is fitted again
    return None


def append_record(path: str | Path, record: RunRecord) -> None:
    """Append one JSON line to the run record; the file is replaced atomically, never half-written."""
    path = Path(path)
    before = path.read_bytes() if path.exists() else b""
    with atomic_path(path) as tmp:
        tmp.write_bytes(before + (json.dumps(record.to_dict()) + "\n").encode())


def worker_threads(jobs: int) -> int:
    """Torch threads per worker when `jobs` files are fitted at once: the cores shared out, at least 1.

    More threads than cores slow OpenMP 10-100x, so the workers never ask for more in all.
    """
    return max(1, _n_cores() // jobs)


def _n_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fit_many(
    paths: Sequence[str | Path],
    out_dir: str | Path | None,
    config: FitConfig,
    *,
    jobs: int = 1,
    backend: str = "local",
    force: bool = False,
    n_threads: int | None = None,
    ray_address: str | None = None,
    callback: Callable[[BatchEvent], None] | None = None,
) -> list[RunRecord]:
    """Fit every audio file named by `paths`; skip those already fitted with the same input and config.

    Args:
        paths: Files, folders and `@list.txt` manifests (see `collect_inputs`).
        out_dir: Output folder (the input tree is mirrored below it, and `splat-run.jsonl`
            written in it); None: each input's outputs beside it, the run record in the
            inputs' common folder.
        config: Fit settings, the same for every file.
        jobs: Files fitted at once: in worker processes with the "local" backend
            (1: in this process), and Ray tasks' CPU share with "ray".
        backend: "local" or "ray" (needs `pip install splat[ray]`; see `splat.backends.ray`).
        force: Fit files whose outputs are up to date too.
        n_threads: Torch threads per file (per Ray task: its CPUs); default `worker_threads(jobs)`
            (with `jobs=1` locally: torch's own default; a value given is then set in this process).
        ray_address: Address of a running Ray cluster; None starts Ray on this machine
            unless it is already started in this process.
        callback: Receives every `BatchEvent`, in this process.

    Returns:
        One record per input, in input order; each was also appended to the run record.

    Raises:
        ParameterError: on bad settings or sources (see `collect_inputs`).
        BatchInterrupted: on Ctrl-C, once the workers have stopped (checkpoints are kept).
    """
    config.validate()
    if jobs < 1:
        raise ParameterError(f"jobs={jobs} must be at least 1")
    if backend not in BACKENDS:
        raise ParameterError(f"backend={backend!r} must be one of {', '.join(BACKENDS)}")
    if n_threads is not None and n_threads < 1:
        raise ParameterError(f"n_threads={n_threads} must be at least 1")
    inputs = collect_inputs(paths)
    if out_dir is None:
        record_path = Path(os.path.commonpath([os.path.abspath(i.path.parent) for i in inputs])) / RUN_RECORD_NAME
    else:
        record_path = Path(out_dir) / RUN_RECORD_NAME
    tally = ChunkTally()
    records: dict[int, RunRecord] = {}

    def emit(event: BatchEvent) -> None:
        tally(event)
        if callback is not None:
            callback(event)

    def finish(index: int, record: RunRecord) -> None:
        append_record(record_path, record)
        records[index] = record
        emit(FileDone(index, record))

    emit(BatchStart(len(inputs), record_path))
    threads = n_threads if n_threads is not None or (jobs == 1 and backend == "local") else worker_threads(jobs)
    to_fit: list[FileJob] = []
    for index, item in enumerate(inputs):
        folder = item.path.parent if out_dir is None else Path(out_dir) / item.relative.parent
        outputs = OutputPaths.beside(folder, item.path.stem)
        job = FileJob(index, item.path, outputs, config, n_threads=threads)
        checked = time.perf_counter()
        try:
            input_sha256 = file_sha256(item.path) if item.path.is_file() else None
        except AudioError as exc:
            finish(index, replace(failed_record(job, str(exc)), wall_s=time.perf_counter() - checked))
            continue
        job = replace(job, input_sha256=input_sha256)
        existing = None if force or input_sha256 is None else up_to_date(outputs, **_hashes(job))
        if existing is None:
            to_fit.append(job)
            continue
        skipped = RunRecord(
            input=str(item.path),
            status="skipped",
            n_atoms=len(existing.get("atoms", [])),
            duration_s=existing.get("duration_s"),
            wall_s=time.perf_counter() - checked,
            atoms_json=str(outputs.atoms_json),
            **_hashes(job),
        )
        finish(index, skipped)
    try:
        for index, record in _run(to_fit, backend=backend, jobs=jobs, ray_address=ray_address, emit=emit):
            finish(index, record)
    except KeyboardInterrupt:
        n_kept, n_chunks = tally.kept()
        done = [records[i] for i in sorted(records)]
        raise BatchInterrupted(done, n_files=len(inputs), n_chunks_kept=n_kept, n_chunks=n_chunks) from None
    return [records[i] for i in sorted(records)]


def _hashes(job: FileJob) -> dict[str, Any]:
    return {"input_sha256": job.input_sha256, "config_sha256": config_sha256(job.config)}


def failed_record(job: FileJob, error: str) -> RunRecord:
    """The record of a job that failed with `error` (a one-line message)."""
    return RunRecord(input=str(job.input_path), status="failed", error=error, **_hashes(job))


def _run(
    jobs_to_run: list[FileJob], *, backend: str, jobs: int, ray_address: str | None, emit: Callable[[BatchEvent], None]
) -> Iterator[tuple[int, RunRecord]]:
    """(index, record) of each job as it finishes, from the chosen backend."""
    if not jobs_to_run:
        return
    if backend == "ray":
        from splat.backends.ray import run_on_ray  # ray is an optional extra

        yield from run_on_ray(jobs_to_run, address=ray_address)
    elif jobs == 1:
        for job in jobs_to_run:
            if job.n_threads is not None:
                torch.set_num_threads(job.n_threads)
            yield job.index, run_job(job, on_event=emit)
    else:
        yield from _run_in_workers(jobs_to_run, n_workers=min(jobs, len(jobs_to_run)), emit=emit)


def _run_in_workers(
    jobs_to_run: list[FileJob], *, n_workers: int, emit: Callable[[BatchEvent], None]
) -> Iterator[tuple[int, RunRecord]]:
    """Run the jobs in `n_workers` processes; forward their events; replace a worker that dies.

    The workers ignore SIGINT: on Ctrl-C this process sets `stop`, every worker stops
    its fit at the next step (its checkpoint stays), and the KeyboardInterrupt goes on
    once they have all exited.
    """
    # spawn, not fork: a forked copy of a process that has run torch's OpenMP threads can hang.
    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    events = context.Queue()
    stop = context.Event()
    for job in jobs_to_run:
        tasks.put(job)
    by_index = {job.index: job for job in jobs_to_run}
    holding: dict[int, int | None] = {}  # worker pid -> index of the job it is fitting
    workers: list[Any] = []

    def start_worker() -> None:
        tasks.put(None)  # its stop mark: after every job, as the jobs were all queued first
        worker = context.Process(target=_worker_loop, args=(tasks, events, stop), daemon=True)
        worker.start()
        workers.append(worker)
        holding[worker.pid] = None

    for _ in range(n_workers):
        start_worker()
    remaining = set(by_index)
    try:
        while remaining:
            try:
                kind, pid, payload = events.get(timeout=_POLL_S)
            except queue.Empty:
                for worker in [w for w in workers if not w.is_alive()]:
                    workers.remove(worker)
                    lost = holding.pop(worker.pid, None)
                    if lost is not None and lost in remaining:
                        remaining.discard(lost)
                        error = f"the worker process died (exit code {worker.exitcode}; out of memory?)"
                        yield lost, failed_record(by_index[lost], error)
                    if worker.exitcode != 0 and remaining:
                        start_worker()
                if not workers:  # cannot happen unless a job went missing in transit
                    for index in sorted(remaining):
                        yield index, failed_record(by_index[index], "no worker process took it")
                    return
                continue
            if kind == "start":
                holding[pid] = payload
            elif kind == "event":
                emit(payload)
            else:
                holding[pid] = None
                remaining.discard(payload.index)
                yield payload.index, payload.record
    except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C here, or in the caller while it holds a record
        stop.set()
        _forward_until_exit(workers, events, emit)
        raise
    finally:
        for worker in workers:
            worker.join(timeout=10)


def _forward_until_exit(workers: list[Any], events: Any, emit: Callable[[BatchEvent], None]) -> None:
    """Forward the workers' progress events until they have all exited.

    The queue must be read while they exit: a process does not end before its queued
    items are in the pipe, and a full pipe would block it.
    """
    while True:
        try:
            kind, _, payload = events.get(timeout=_POLL_S)
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                return
            continue
        if kind == "event":
            emit(payload)


def _worker_loop(tasks: Any, events: Any, stop: Any) -> None:
    """A worker process: fit jobs from `tasks` until the stop mark (None), posting events to `events`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`
    from splat.runtime import tune_allocator

    tune_allocator()  # this process exists only to fit, as the CLI's own does
    pid = os.getpid()
    while not stop.is_set() and (job := tasks.get()) is not None:
        if job.n_threads is not None:
            torch.set_num_threads(job.n_threads)
        events.put(("start", pid, job.index))
        try:
            record = run_job(job, on_event=lambda e: events.put(("event", pid, e)), should_stop=stop.is_set)
        except KeyboardInterrupt:
            return
        events.put(("done", pid, FileDone(job.index, record)))
