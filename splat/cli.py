"""The `splat` command line: fit, render, info and eval, each a thin wrapper over one library call.

`splat fit` takes one file (`splat.batch.fit_file`) or many (`splat.batch.fit_many`:
files, folders, `@list.txt`), and draws the progress bars and the summary from
their events.

Every command reports the errors a user can fix (`SplatError`, bad option
values) as one `error: ...` line on stderr with exit code 1, and writes its
outputs atomically, so a failed run leaves no file behind.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from splat.atoms import SAMPLE_RATE_RANGE, AtomSet, Room
from splat.audio import load_audio, output_format, write_audio
from splat.errors import ParameterError, SplatError
from splat.evaluate import evaluate_pair, load_ground_truth
from splat.files import write_text_atomic
from splat.fitting import FitConfig, FitProgress
from splat.floor import band_centres_hz as floor_band_centres_hz
from splat.plot import plot_atoms
from splat.room import BAND_HZ as ROOM_BAND_HZ
from splat.runtime import tune_allocator
from splat.synth import render_atom_set
from splat.training.train import TrainConfig

if TYPE_CHECKING:
    from splat.batch import BatchEvent, RunRecord

# Choices, spelled out so `--help` lists them and a typo fails before any work;
# tests/test_cli.py checks they match the library's own lists. FitConfig types
# these fields as plain str, hence the casts of its defaults below.
Device = Literal["cpu", "cuda"]
Backend = Literal["local", "ray"]
Engine = Literal["fast", "reference"]
Envelope = Literal["gamma", "gaussian"]
Init = Literal["encoder", "analysis", "random"]

#: The option defaults are FitConfig's own (a frozen dataclass, so a constant), never restated here.
_FIT_DEFAULTS = FitConfig()
_DEFAULT_DEVICE = cast(Device, _FIT_DEFAULTS.device)
_DEFAULT_ENGINE = cast(Engine, _FIT_DEFAULTS.engine)
_DEFAULT_ENVELOPE = cast(Envelope, _FIT_DEFAULTS.envelope)
_DEFAULT_INIT = cast(Init, _FIT_DEFAULTS.init)
_TRAIN_DEFAULTS = TrainConfig()

#: Unit suffixes of atom field names and how a table header shows them.
_UNIT_SUFFIXES = (("_cents_per_s", "cents/s"), ("_cents", "cents"), ("_hz", "Hz"), ("_db", "dB"), ("_s", "s"))

app = typer.Typer(
    name="splat",
    no_args_is_help=True,
    add_completion=False,
    # Unexpected errors are bugs and keep their traceback, but without a dump
    # of local variables (audio arrays).
    pretty_exceptions_show_locals=False,
)


def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    return Console(stderr=True)


def _say(console: Console, text: str) -> None:
    """Print plain text: never parsed as markup (paths may hold "[...]"), never wrapped mid-path."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_table(console: Console, table: Table) -> None:
    """Print `table` at its natural width even if the console is narrower.

    Rich would otherwise squeeze the columns and cut numbers to "0.0…"; this way
    a terminal wraps the long lines and a pipe or file gets them whole.
    """
    unlimited = console.options.update_width(1_000_000)
    natural_width = Measurement.get(console, unlimited, table).maximum
    if natural_width > console.width:
        console = Console(file=console.file, width=natural_width)
    console.print(table)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Report errors a user can fix as one `error: ...` line on stderr and exit with code 1.

    These are splat's own errors, bad option values, and operating-system errors
    such as a folder that cannot be written. Anything else is a bug in splat and
    propagates with its traceback.
    """
    try:
        yield
    except (SplatError, OSError) as exc:
        message = str(exc)
    except typer.BadParameter as exc:
        message = exc.format_message()
    else:
        return
    # soft_wrap keeps the message on one line however narrow the terminal is;
    # a Text object is never parsed as rich markup (messages contain "[lo, hi]").
    _stderr().print(Text.assemble(("error:", "bold red"), " ", message.replace("\n", " ")), soft_wrap=True)
    raise typer.Exit(code=1)


def _refuse_to_overwrite(*paths: Path, force: bool) -> None:
    """Raise SplatError if any of `paths` exists and `force` is not set."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise SplatError(f"{path} exists; pass --force to overwrite")


def _version_callback(value: bool) -> None:
    if value:
        # The installed distribution's version, as click's own `version_option` reports it.
        _say(_stdout(), f"splat {installed_version('splat')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """splat fits a recording with a few editable sound events (atoms) and saves them as JSON.

    Edit the JSON by hand, then turn it back into audio with `splat render`.
    """


class _RateColumn(ProgressColumn):
    """Optimisation steps per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- it/s" if speed is None else f"{speed:.1f} it/s", style="progress.data.speed")


class _FitBars:
    """Rich progress bars fed by `fit`'s callback: an overall bar and one bar per chunk.

    A context manager; the bars appear with the first step, so a fit refused before it
    (too short, say) leaves only its error on the terminal.
    """

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._overall: TaskID | None = None
        self._chunks: dict[int, TaskID] = {}

    def __enter__(self) -> _FitBars:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._overall is not None:
            self._progress.stop()

    def __call__(self, update: FitProgress) -> None:
        loss = f"{update.loss:.4f}"
        if self._overall is None:
            self._progress.start()
            self._overall = self._progress.add_task(
                "overall", total=update.n_chunks * update.n_steps, loss="", n_active=""
            )
        if update.chunk not in self._chunks:
            self._chunks[update.chunk] = self._progress.add_task(
                f"chunk {update.chunk + 1}/{update.n_chunks}", total=update.n_steps, loss="", n_active=""
            )
        # `step` counts from 1 to n_steps; `chunk` from 0.
        self._progress.update(self._chunks[update.chunk], completed=update.step, loss=loss, n_active=update.n_active)
        self._progress.update(
            self._overall,
            completed=update.chunk * update.n_steps + update.step,
            loss=loss,
            n_active=update.n_active,
        )


class _BatchBars:
    """Rich progress bars fed by `fit_many`'s events: one over files, and one per file being fitted.

    Failed files are reported as `error: <file>: <why>` lines above the bars, also with --quiet.
    """

    def __init__(self, progress: Progress, *, quiet: bool) -> None:
        self._progress = progress
        self._quiet = quiet
        self._files: TaskID | None = None
        self._fitting: dict[int, TaskID] = {}
        self._done: dict[str, int] = {}
        self.record_path: Path | None = None

    def __enter__(self) -> _BatchBars:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def __call__(self, event: BatchEvent) -> None:
        from splat.batch import BatchStart, FileDone, FileNote, FileStep

        console = self._progress.console
        if isinstance(event, BatchStart):
            self.record_path = event.record_path
            self._files = self._progress.add_task("files", total=event.n_files, info="")
        elif isinstance(event, FileStep):
            update = event.progress
            description = f"{event.path.name} chunk {update.chunk + 1}/{update.n_chunks}"
            if event.index not in self._fitting:
                self._fitting[event.index] = self._progress.add_task(description, total=update.n_steps, info="")
            info = f"loss {update.loss:.4f}, {update.n_active} atoms"
            self._progress.update(self._fitting[event.index], description=description, completed=update.step, info=info)
        elif isinstance(event, FileNote) and not self._quiet:
            console.print(f"{event.path}: {event.message}", markup=False, highlight=False, soft_wrap=True)
        elif isinstance(event, FileDone):
            if event.index in self._fitting:
                self._progress.remove_task(self._fitting.pop(event.index))
            record = event.record
            self._done[record.status] = self._done.get(record.status, 0) + 1
            if self._files is not None:
                info = ", ".join(f"{n} {status}" for status, n in self._done.items())
                self._progress.update(self._files, advance=1, info=info)
            if record.status == "failed":
                error = record.error or ""
                message = error if record.input in error else f"{record.input}: {error}"
                console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def _progress_bars(console: Console, *, disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[n_active]} atoms"),
        _RateColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


@app.command("fit")
def fit_command(
    audio: Annotated[
        list[Path],
        typer.Argument(
            metavar="AUDIO...",
            help="Recordings to fit (WAV, FLAC, OGG, MP3, ...), folders (searched recursively) and @list.txt files"
            " (one path per line).",
        ),
    ],
    n_atoms: Annotated[
        int,
        typer.Option(
            "--atoms",
            min=1,
            help="Maximum number of atoms per segment (above 64, fewer segments are fitted at once, to bound memory).",
        ),
    ] = _FIT_DEFAULTS.n_atoms,
    n_iters: Annotated[
        int,
        typer.Option(
            "--iters",
            min=0,
            help="Optimiser steps per chunk (consecutive segments fit together); 0 writes the --init atoms unfitted.",
        ),
    ] = _FIT_DEFAULTS.n_iters,
    init: Annotated[
        Init,
        typer.Option(
            help="Where the atoms start: encoder (a trained network's proposals, shipped with splat), analysis"
            " (onset and pitch rules) or random (quiet atoms anywhere).",
        ),
    ] = _DEFAULT_INIT,
    lr: Annotated[
        float,
        typer.Option(help="Peak Adam learning rate in (0, 1], in units of the raw (unconstrained) parameters."),
    ] = _FIT_DEFAULTS.lr,
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed (integer) for initialisation and noise.")
    ] = _FIT_DEFAULTS.seed,
    device: Annotated[Device, typer.Option(help="Torch device to fit on.")] = _DEFAULT_DEVICE,
    engine: Annotated[
        Engine, typer.Option(help="Synthesis engine used while fitting: fast, or reference (slow, exact).")
    ] = _DEFAULT_ENGINE,
    envelope: Annotated[Envelope, typer.Option(help="Shape of each atom's burst envelope.")] = _DEFAULT_ENVELOPE,
    greedy: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight (>= 0) of a matching-pursuit-like second loss in which only the louder half of the atoms"
            " must explain the audio; 0 = the plain loss. Fast engine only.",
        ),
    ] = _FIT_DEFAULTS.greedy,
    polish_iters: Annotated[
        int,
        typer.Option(
            "--polish",
            min=0,
            metavar="N",
            help="Steps per chunk on the rendered audio (real STFT loss; seeds, onsets, pitches held) after the"
            " fast engine's; 10 steps about double a fit's time. Fast engine only.",
        ),
    ] = _FIT_DEFAULTS.polish_iters,
    perceptual_weight: Annotated[
        float,
        typer.Option(
            "--perceptual",
            min=0.0,
            metavar="W",
            help="Weight (>= 0) of a loss term on log magnitudes pooled into bands 1 ERB wide (all of the ear's"
            " bands count alike); 0 = the plain loss.",
        ),
    ] = _FIT_DEFAULTS.perceptual_weight,
    noise_floor: Annotated[
        bool,
        typer.Option(
            "--floor/--no-floor",
            help="Fit a stationary noise floor per segment (24 bands, levels in dB) under the atoms, for hiss,"
            " room and dense-mix wash that no atom should hold.",
        ),
    ] = _FIT_DEFAULTS.noise_floor,
    room: Annotated[
        bool,
        typer.Option(
            "--room/--no-room",
            help="Fit the file's room: one reverberation tail (a decay per octave band, 125 Hz-4 kHz, and a level)"
            " that everything plays in, so that atoms need not fake it with long decays.",
        ),
    ] = _FIT_DEFAULTS.room,
    modes: Annotated[
        str,
        typer.Option(
            "--modes",
            metavar="SERIES",
            help="Partial series an atom may take: string (harmonic), membrane (drums), bar (mallets).",
        ),
    ] = ",".join(_FIT_DEFAULTS.modes),
    pitch_motion: Annotated[
        bool,
        typer.Option(
            "--pitch-motion/--no-pitch-motion",
            help="Fit a glide and a vibrato for the atoms placed on events (steps 1.9-6x slower); off by default:"
            " every atom's pitch stays fixed.",
        ),
    ] = _FIT_DEFAULTS.pitch_motion,
    sample_rate: Annotated[
        int,
        typer.Option(
            "--sr",
            min=SAMPLE_RATE_RANGE[0],
            max=SAMPLE_RATE_RANGE[1],
            metavar="HZ",
            help="Sample rate in Hz to fit at; the input is resampled to it.",
        ),
    ] = _FIT_DEFAULTS.sample_rate,
    segment_s: Annotated[
        float,
        typer.Option(
            "--segment-s",
            metavar="SECONDS",
            help=(
                "Segment length in seconds, in [0.1, 30] and at most 2^20 samples at --sr (10.9 s at 96 kHz);"
                " each segment holds up to --atoms atoms."
            ),
            show_default=f"{_FIT_DEFAULTS.segment_s:.3f}",
        ),
    ] = _FIT_DEFAULTS.segment_s,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            "-o",
            file_okay=False,
            help="Folder for <stem>.atoms.json and <stem>.recon.wav; several inputs: their tree mirrored below it,"
            " and the run record splat-run.jsonl.",
            show_default="the input's folder",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing outputs (several inputs: refit up-to-date ones too).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Files fitted at once, each in its own worker process.")
    ] = 1,
    n_threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Torch threads per file (with --backend ray: CPUs per task).",
            show_default="cores // --jobs, at least 1",
        ),
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="Where files are fitted: local processes, or Ray tasks (pip install splat[ray]).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="ADDR",
            help="Address of a running Ray cluster (e.g. auto).",
            show_default="start Ray on this machine",
        ),
    ] = None,
) -> None:
    """Fit AUDIO with atoms; write <stem>.atoms.json and the reconstruction <stem>.recon.wav.

    Several inputs are a batch: files already fitted with the same input and settings are
    skipped, a file that fails is reported and the rest go on (exit code 1 at the end), and
    each finished file is appended to splat-run.jsonl. After every chunk a fit keeps a
    checkpoint (<stem>.partial.json): after Ctrl-C, run the same command to resume.
    """
    with _user_errors():
        config = FitConfig(
            n_atoms=n_atoms,
            n_iters=n_iters,
            lr=lr,
            seed=seed,
            device=device,
            engine=engine,
            envelope=envelope,
            greedy=greedy,
            polish_iters=polish_iters,
            perceptual_weight=perceptual_weight,
            noise_floor=noise_floor,
            room=room,
            modes=tuple(name.strip() for name in modes.split(",") if name.strip()),
            pitch_motion=pitch_motion,
            segment_s=segment_s,
            sample_rate=sample_rate,
            init=init,
        )
        single = len(audio) == 1 and not str(audio[0]).startswith("@") and not audio[0].is_dir()
        if single and backend == "local":
            _fit_one(audio[0], config, out_dir=out_dir, force=force, quiet=quiet)
            return
        # Catch a bad option (or a missing GPU) before reading audio and fitting.
        config.validate()
        tune_allocator()
        failed = _fit_batch(
            audio,
            config,
            out_dir=out_dir,
            force=force,
            quiet=quiet,
            jobs=jobs,
            n_threads=n_threads,
            backend=backend,
            ray_address=ray_address,
        )
    if failed:
        raise typer.Exit(code=1)


def _interrupted(n_chunks_kept: int, n_chunks: int, files: str = "") -> typer.Exit:
    """Say what an interrupted fit kept; the exit (code 130, as after SIGINT) to raise."""
    _say(_stderr(), f"interrupted: {n_chunks_kept} of {n_chunks} chunks kept{files}; run the same command to resume")
    return typer.Exit(code=130)


def _fit_one(audio: Path, config: FitConfig, *, out_dir: Path | None, force: bool, quiet: bool) -> None:
    """`splat fit AUDIO`: refuse to overwrite without --force; any problem is an error."""
    from splat.batch import ChunkTally, FileJob, FileNote, FileStep, OutputPaths, fit_file

    outputs = OutputPaths.beside(audio.parent if out_dir is None else out_dir, audio.stem)
    _refuse_to_overwrite(outputs.atoms_json, outputs.recon_wav, force=force)
    # Catch a bad option (or a missing GPU) before reading audio and fitting.
    config.validate()
    tune_allocator()
    log = _stderr()
    tally = ChunkTally()
    try:
        with _FitBars(_progress_bars(log, disable=quiet)) as bars:

            def on_event(event: BatchEvent) -> None:
                tally(event)
                if isinstance(event, FileStep):
                    bars(event.progress)
                elif isinstance(event, FileNote) and not quiet:
                    _say(log, event.message)

            record = fit_file(FileJob(0, audio, outputs, config), on_event=on_event)
    except KeyboardInterrupt:
        raise _interrupted(*tally.kept()) from None
    if not quiet:
        _say(
            _stdout(),
            f"atoms kept: {record.n_atoms} for {record.duration_s:.2f} s of audio\n"
            f"wrote {outputs.atoms_json}\nwrote {outputs.recon_wav}",
        )


def _fit_batch(
    sources: list[Path],
    config: FitConfig,
    *,
    out_dir: Path | None,
    force: bool,
    quiet: bool,
    jobs: int,
    n_threads: int | None,
    backend: str,
    ray_address: str | None,
) -> bool:
    """`splat fit` of several inputs: a bar over files, bars for the files being fitted, a summary.

    Returns:
        Whether any file failed.
    """
    from splat.batch import BatchInterrupted, fit_many

    log = _stderr()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=log,
        disable=quiet,
    )
    bars = _BatchBars(progress, quiet=quiet)
    try:
        with bars:
            records = fit_many(
                [str(s) for s in sources],
                out_dir,
                config,
                jobs=jobs,
                backend=backend,
                force=force,
                n_threads=n_threads,
                ray_address=ray_address,
                callback=bars,
            )
    except BatchInterrupted as stop:
        raise _interrupted(
            stop.n_chunks_kept, stop.n_chunks, f" ({len(stop.records)} of {stop.n_files} files done)"
        ) from None
    if not quiet:
        _print_table(_stdout(), _batch_summary(records))
        _say(_stdout(), f"run record: {bars.record_path}")
    return any(r.status == "failed" for r in records)


def _batch_summary(records: list[RunRecord]) -> Table:
    """One row per status: files, seconds of audio, seconds of work."""
    table = Table("status")
    for column in ("files", "audio (s)", "wall (s)"):
        table.add_column(column, justify="right")
    for status in ("ok", "skipped", "failed"):
        group = [r for r in records if r.status == status]
        if group:
            audio_s = sum(r.duration_s or 0.0 for r in group)
            table.add_row(status, str(len(group)), f"{audio_s:.1f}", f"{sum(r.wall_s for r in group):.1f}")
    return table


@app.command("render")
def render_command(
    atoms_json: Annotated[Path, typer.Argument(metavar="ATOMS.json", help="Atoms file written by `splat fit`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="OUT.wav", help="Audio file to write (.wav: 32-bit float, .flac).")
    ],
    solo: Annotated[
        str | None,
        typer.Option(metavar="I,J,...", help="Render only these atoms (indices as `splat info` lists them)."),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(metavar="EXPR", help='Render only the atoms this expression selects, e.g. "f0_hz < 200".'),
    ] = None,
    stems_dir: Annotated[
        Path | None,
        typer.Option(
            "--stems",
            metavar="DIR",
            file_okay=False,
            help="Also write one WAV per atom (whole-file length, so they line up) named index_note_onset,"
            " plus floor.wav for the noise floor and room.wav for the room's reverberation.",
        ),
    ] = None,
    original: Annotated[
        Path | None,
        typer.Option(
            "--residual",
            metavar="ORIGINAL",
            help="Also write OUT's stem + .residual.wav: ORIGINAL minus the render, at ORIGINAL's rate and length.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
) -> None:
    """Render an atoms JSON file to audio, using nothing but the JSON; or a subset, stems, the residual."""
    from splat.listen import render_subset, residual, stems

    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        output_format(out)
        atom_set = AtomSet.load(atoms_json)
        indices = _chosen_atoms(atom_set, solo, where)
        audio = render_atom_set(atom_set) if indices is None else render_subset(atom_set, indices)
        residual_path = out.with_name(f"{out.stem}.residual.wav")
        if stems_dir is not None and not force and stems_dir.is_dir() and any(stems_dir.iterdir()):
            raise SplatError(f"{stems_dir} is not empty; pass --force to write the stems into it anyway")
        if original is not None:
            _refuse_to_overwrite(residual_path, force=force)
            loaded = load_audio(original, sample_rate=None)
            residual_audio = residual(loaded.samples, loaded.sample_rate, audio, atom_set.sample_rate)
        console = _stdout()
        write_audio(out, audio, atom_set.sample_rate)
        what = f"{len(atom_set.atoms)} atoms" if indices is None else f"{len(indices)} of {len(atom_set.atoms)} atoms"
        _say(console, f"rendered {what} ({atom_set.duration_s:.2f} s at {atom_set.sample_rate} Hz)\nwrote {out}")
        if original is not None:
            write_audio(residual_path, residual_audio, loaded.sample_rate)
            _say(console, f"wrote {residual_path} (the residual, at {loaded.sample_rate} Hz)")
        if stems_dir is not None:
            n_stems = 0
            for stem in stems(atom_set, indices):
                write_audio(stems_dir / f"{stem.name}.wav", stem.audio, atom_set.sample_rate)
                n_stems += 1
            _say(console, f"wrote {n_stems} stems to {stems_dir}")


def _chosen_atoms(atom_set: AtomSet, solo: str | None, where: str | None) -> list[int] | None:
    """The atoms --solo and --where choose (both: those in both); None if neither is given."""
    from splat.edit import select
    from splat.listen import check_indices

    if solo is None and where is None:
        return None
    chosen = select(atom_set, where)
    if solo is not None:
        try:
            wanted = {int(part) for part in solo.split(",") if part.strip()}
        except ValueError:
            raise typer.BadParameter(
                f"{solo!r} must be atom indices separated by commas", param_hint="'--solo'"
            ) from None
        chosen = [i for i in chosen if i in check_indices(atom_set, sorted(wanted))]
    if not chosen:
        raise ParameterError("no atom is chosen by --solo/--where; nothing to render")
    return chosen


@app.command("plot")
def plot_command(
    atoms_json: Annotated[Path, typer.Argument(metavar="ATOMS.json", help="Atoms file written by `splat fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT.png", help="PNG file to write.")],
    audio: Annotated[
        Path | None,
        typer.Option(
            metavar="AUDIO",
            help="Draw on this recording's spectrogram (e.g. the one that was fit); default: the atoms' own render.",
        ),
    ] = None,
    notes: Annotated[
        Path | None, typer.Option(metavar="TRUTH.json", help="Ground-truth notes or hits to draw as well.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Draw the atoms on a spectrogram: a marker per atom at (onset s, f0 Hz), sized by gain, coloured by mix."""
    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        if out.suffix.lower() != ".png":
            raise ParameterError(f"cannot write {out}: the plot is a PNG, so OUT must end in .png")
        atom_set = AtomSet.load(atoms_json)
        truth = None if notes is None else load_ground_truth(notes)
        if audio is None:
            samples, source = render_atom_set(atom_set), "their own render"
        else:
            samples, source = load_audio(audio, sample_rate=atom_set.sample_rate).samples, str(audio)
        plot_atoms(out, samples, atom_set.sample_rate, atom_set, truth=truth)
        _say(_stdout(), f"drew {len(atom_set.atoms)} atoms on the spectrogram of {source}\nwrote {out}")


def _column_label(name: str) -> str:
    """Table header for an atom field: 'noise_center_hz' -> 'noise center (Hz)'."""
    for suffix, unit in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            return f"{name[: -len(suffix)].replace('_', ' ')} ({unit})"
    return name.replace("_", " ")


#: Columns `splat info` shows by default (at most 100 characters wide); `--all` shows every field.
_INFO_COLUMNS = ("index", "time_s", "note", "f0_hz", "gain_db", "decay_s", "mix", "duration_s", "noise_center_hz")


@app.command("info")
def info_command(
    atoms_json: Annotated[Path, typer.Argument(metavar="ATOMS.json", help="Atoms file written by `splat fit`.")],
    all_fields: Annotated[bool, typer.Option("--all", help="Show every field (a wide table).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every field of every atom as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print every field of every atom as CSV.")] = False,
) -> None:
    """List the atoms of an atoms JSON file, one row per atom (index, onset, note, f0, gain, ...)."""
    import csv
    import io
    import json

    from splat.edit import COLUMNS, atom_rows

    with _user_errors():
        if as_json and as_csv:
            raise typer.BadParameter("choose one of --json and --csv", param_hint="'--json'")
        atom_set = AtomSet.load(atoms_json)
        rows = atom_rows(atom_set)
        console = _stdout()
        if as_json:
            _say(console, json.dumps(rows, indent=1))
            return
        if as_csv:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            _say(console, buffer.getvalue().rstrip("\n"))
            return
        _say(
            console,
            f"{atoms_json.name}: {len(atom_set.atoms)} atoms, {atom_set.duration_s:.3f} s at {atom_set.sample_rate} Hz",
        )
        _say(console, f"{atom_set.envelope} envelope, up to {atom_set.n_partials} partials")
        if atom_set.floor:
            _say(console, _floor_summary(atom_set))
        if atom_set.room is not None:
            _say(console, _room_summary(atom_set.room))
        columns = [c for c in COLUMNS if c not in ("midi", "n_atoms")] if all_fields else list(_INFO_COLUMNS)
        # The default columns fit in 100 characters; `--where` names them as the JSON does (time_s, f0_hz, ...).
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name in columns:
            table.add_column("#" if name == "index" else _column_label(name), justify="right")
        for row in rows:
            table.add_row(*(_cell(name, row[name]) for name in columns))
        _print_table(console, table)
        _say(console, "mix: 0 = noise burst only, 1 = tone only; duration: onset to release (30 s = never released)")


def _cell(name: str, value: object) -> str:
    """One table cell: onsets to the millisecond, f0 and gains to a tenth, mix to a hundredth, else 4 digits."""
    digits = {"time_s": ".3f", "f0_hz": ".1f", "gain_db": ".1f", "mix": ".2f"}
    if isinstance(value, float):
        return format(value, digits.get(name, ".4g"))
    return str(value)


@app.command("edit")
def edit_command(
    ctx: typer.Context,
    atoms_json: Annotated[Path, typer.Argument(metavar="IN.atoms.json", help="Atoms file to edit.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT.atoms.json", help="Edited atoms file to write.")],
    transpose: Annotated[
        float | None, typer.Option(metavar="SEMITONES", help="Move f0 by this many semitones (12 = an octave up).")
    ] = None,
    shift: Annotated[float | None, typer.Option(metavar="SECONDS", help="Move onsets by this many seconds.")] = None,
    stretch: Annotated[
        float | None,
        typer.Option(
            metavar="FACTOR",
            help="Scale onsets, durations and decays (pitch kept, glides and vibratos slowed alike); above 1 is"
            " slower.",
        ),
    ] = None,
    gain: Annotated[float | None, typer.Option(metavar="DB", help="Add this many dB to the gain.")] = None,
    decay: Annotated[float | None, typer.Option(metavar="FACTOR", help="Scale the ring times (decays).")] = None,
    keep: Annotated[int | None, typer.Option(metavar="N", min=0, help="Keep only the N loudest atoms.")] = None,
    drop: Annotated[bool, typer.Option("--drop", help="Remove the atoms.")] = False,
    tonal_only: Annotated[bool, typer.Option("--tonal-only", help="Set mix to 1: tone, no noise burst.")] = False,
    noise_only: Annotated[bool, typer.Option("--noise-only", help="Set mix to 0: noise burst, no tone.")] = False,
    room_level: Annotated[
        float | None,
        typer.Option(
            metavar="DB",
            help="Set the room's level (its reverberation's energy relative to the direct sound), whatever --where"
            " selects.",
        ),
    ] = None,
    dry: Annotated[bool, typer.Option("--dry", help="Remove the room (no reverberation).")] = False,
    where: Annotated[
        str | None,
        typer.Option(
            metavar="EXPR",
            help='Edit only the atoms this selects, e.g. "f0_hz < 200 and time_s > 1.5", "note == \'C4\'",'
            ' "index in [3, 7]". Columns: index, note, midi and the JSON fields.',
        ),
    ] = None,
    clamp: Annotated[
        bool, typer.Option("--clamp", help="Clamp values pushed out of range instead of refusing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Edit atoms: the operations apply in the order given, to the atoms --where selects (all by default);
    --room-level and --dry change the file's room."""
    from splat.edit import Edit, edit, select

    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        options = {
            "transpose": transpose,
            "shift": shift,
            "stretch": stretch,
            "gain": gain,
            "decay": decay,
            "keep": keep,
            "drop": drop,
            "tonal_only": tonal_only,
            "noise_only": noise_only,
            "room_level": room_level,
            "dry": dry,
        }
        # Click records the options in the order they were given on the command line.
        given = [name for name in ctx.params if name in options and options[name] not in (None, False)]
        if not given:
            raise typer.BadParameter("give at least one operation, e.g. --transpose 12", param_hint="'OPERATIONS'")
        steps = [Edit(name, None if isinstance(options[name], bool) else options[name]) for name in given]
        atom_set = AtomSet.load(atoms_json)
        edited = edit(atom_set, steps, where=where, clamp=clamp)
        edited.save(out)
        n_in = len(atom_set.atoms)
        scope = "" if where is None else f" on the {len(select(atom_set, where))} atoms --where selects"
        _say(
            _stdout(),
            f"{' then '.join(given).replace('_', '-')}{scope}: {n_in} atoms in, {len(edited.atoms)} out\nwrote {out}",
        )


@app.command("morph")
def morph_command(
    a_json: Annotated[Path, typer.Argument(metavar="A.atoms.json", help="The atoms at amount 0.")],
    b_json: Annotated[Path, typer.Argument(metavar="B.atoms.json", help="The atoms at amount 1.")],
    amount: Annotated[float, typer.Option(help="How far from A towards B, in [0, 1].")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT.atoms.json", help="Morphed atoms file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Morph two atom files: atoms matched by onset and pitch are interpolated, the others fade."""
    from splat.morph import morph

    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        morphed = morph(AtomSet.load(a_json), AtomSet.load(b_json), amount)
        morphed.save(out)
        _say(
            _stdout(),
            f"morphed {amount:g} of the way from {a_json} to {b_json}: {len(morphed.atoms)} atoms\nwrote {out}",
        )


@app.command("report")
def report_command(
    audio: Annotated[Path, typer.Argument(metavar="AUDIO", help="The recording (the one that was fit).")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="REPORT.html", help="HTML file to write.")],
    atoms_json: Annotated[
        Path | None,
        typer.Option("--atoms", metavar="ATOMS.json", help="Atoms fitted to AUDIO: draws, plays and scores them."),
    ] = None,
    visqol: Annotated[bool, typer.Option(help="Include ViSQOL in the metrics (slow on long audio).")] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Write one self-contained HTML page: the spectrogram with every atom on it, players, metrics, atom table."""
    from splat.report import build_report

    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        if out.suffix.lower() not in (".html", ".htm"):
            raise ParameterError(f"cannot write {out}: the report is HTML, so OUT must end in .html")
        atom_set = None if atoms_json is None else AtomSet.load(atoms_json)
        loaded = load_audio(audio, sample_rate=None if atom_set is None else atom_set.sample_rate)
        page = build_report(
            loaded.samples, loaded.sample_rate, atom_set, title=f"splat: {audio.name}", with_visqol=visqol
        )
        write_text_atomic(out, page)
        _say(_stdout(), f"wrote {out} ({len(page.encode()) / 1e6:.1f} MB)")


def _floor_summary(atom_set: AtomSet) -> str:
    """One line on the noise floor: its segments' total levels and where it is loudest."""
    totals = [10.0 * math.log10(sum(10.0 ** (v / 10.0) for v in f.level_db)) for f in atom_set.floor]
    loudest = max(atom_set.floor, key=lambda f: max(f.level_db))
    band = loudest.level_db.index(max(loudest.level_db))
    return (
        f"noise floor: {len(atom_set.floor)} segment(s), total level {min(totals):.1f} to {max(totals):.1f} dB, "
        f"loudest band {floor_band_centres_hz(atom_set.sample_rate)[band]:.0f} Hz at {loudest.start_s:.2f} s"
    )


def _room_summary(room: Room) -> str:
    """One line on the room: its level and every band's decay."""
    decays = ", ".join(f"{_band_label(hz)} {s:.2f}" for hz, s in zip(ROOM_BAND_HZ, room.rt60_s, strict=True))
    return f"room: level {room.level_db:.1f} dB, rt60 (s) {decays}"


def _band_label(hz: float) -> str:
    """'125 Hz', '1 kHz', '4 kHz'."""
    return f"{hz / 1000:g} kHz" if hz >= 1000 else f"{hz:g} Hz"


@app.command("eval")
def eval_command(
    original: Annotated[Path, typer.Argument(metavar="ORIGINAL", help="The recording that was fit.")],
    reconstruction: Annotated[
        Path, typer.Argument(metavar="RECONSTRUCTION", help="Audio to score against it, e.g. <stem>.recon.wav.")
    ],
    atoms_json: Annotated[
        Path | None,
        typer.Option("--atoms", metavar="ATOMS.json", help="Atoms behind the reconstruction: adds atom counts."),
    ] = None,
    notes: Annotated[
        Path | None,
        typer.Option(metavar="TRUTH.json", help="Ground-truth notes or hits: adds note scores (needs --atoms)."),
    ] = None,
    visqol: Annotated[bool, typer.Option(help="Compute ViSQOL (needs at least 1 s of audio).")] = True,
) -> None:
    """Score a reconstruction against the original; both are compared at the reconstruction's sample rate."""
    with _user_errors():
        if notes is not None and atoms_json is None:
            raise typer.BadParameter("--notes scores the atoms, so it needs --atoms", param_hint="'--notes'")
        atom_set = None if atoms_json is None else AtomSet.load(atoms_json)
        recon = load_audio(reconstruction, sample_rate=None)
        orig = load_audio(original, sample_rate=recon.sample_rate)
        if recon.samples.size != orig.samples.size:
            end = (
                "its extra end is not scored"
                if recon.samples.size > orig.samples.size
                else "its missing end counts as silence"
            )
            _say(
                _stderr(),
                f"note: the reconstruction lasts {recon.duration_s:.3f} s and the original {orig.duration_s:.3f} s;"
                f" scored over the original's length ({end})",
            )
        report = evaluate_pair(
            orig.samples,
            recon.samples,
            recon.sample_rate,
            atom_set=atom_set,
            notes_path=notes,
            with_visqol=visqol,
        )
        table = Table("metric")
        table.add_column("value", justify="right")
        for name, value in report.rows():
            table.add_row(name, value)
        _print_table(_stdout(), table)


encoder_app = typer.Typer(
    name="encoder", no_args_is_help=True, help="The amortized encoder that proposes atoms (fit --init encoder)."
)
app.add_typer(encoder_app)


@encoder_app.command("train")
def encoder_train_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="WEIGHTS.pt",
            help="Weights to write; their card (hash, settings) goes beside, .json.",
        ),
    ],
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="DIR",
            help="Training set folder: built (or completed) here first from the generators, reused if present.",
        ),
    ] = Path("build/encoder-data"),
    n_synthetic: Annotated[
        int, typer.Option("--synthetic", min=0, help="Clips of random atoms rendered by splat (1.49 s each).")
    ] = 6000,
    n_midi: Annotated[
        int,
        typer.Option(
            "--midi",
            min=0,
            help="Clips of random notes rendered by fluidsynth from the allowed soundfonts (1.49 s each).",
        ),
    ] = 2400,
    n_steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = _TRAIN_DEFAULTS.n_steps,
    batch_size: Annotated[int, typer.Option("--batch", min=1, help="Clips per step.")] = _TRAIN_DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = _TRAIN_DEFAULTS.lr,
    channels: Annotated[
        int, typer.Option(min=4, help="Feature channels of the network.")
    ] = _TRAIN_DEFAULTS.network.channels,
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0: torch's default).")] = 0,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the data, the initialisation and the batches.")
    ] = _TRAIN_DEFAULTS.seed,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing weights.")] = False,
) -> None:
    """Train the encoder: build the training set, then fit the network (resumes from its checkpoint)."""
    from rich.progress import TimeRemainingColumn

    from splat.encoder import EncoderConfig
    from splat.training import data
    from splat.training.train import train

    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        config = TrainConfig(
            n_steps=n_steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            threads=threads,
            network=EncoderConfig(channels=channels),
        )
        config.validate()
        data.refuse_benchmark_path(out)
        log = _stderr()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, TextColumn("{task.fields[note]}"), console=log) as progress:
            tasks: dict[str, TaskID] = {}

            def on_clip(update: data.DataProgress) -> None:
                if update.source not in tasks:
                    tasks[update.source] = progress.add_task(f"data: {update.source}", total=update.total, note="")
                progress.update(tasks[update.source], completed=update.done)

            shards = data.build(data_dir, n_synthetic=n_synthetic, n_midi=n_midi, seed=seed, callback=on_clip)
            training_set = data.load(shards)
            steps = progress.add_task("training", total=n_steps, note="")

            def on_step(update) -> None:
                note = (
                    f"loss {update.loss:.3f} (events {update.detection:.3f}, fields {update.regression:.3f},"
                    f" series {update.series:.3f})"
                )
                progress.update(steps, completed=update.step, note=note)

            note = f"{n_synthetic} synthetic + {n_midi} fluidsynth clips, seed {seed}"
            result = train(training_set, out, config, callback=on_step, data_note=note)
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items() if isinstance(v, float))
        _say(_stdout(), f"trained in {result.seconds / 60:.1f} min; held-out events: {metrics}\nwrote {out}")
