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

from splat.atoms import SAMPLE_RATE_RANGE, AtomSet
from splat.audio import load_audio, output_format, write_audio
from splat.errors import ParameterError, SplatError
from splat.evaluate import evaluate_pair, load_ground_truth
from splat.fitting import FitConfig, FitProgress
from splat.floor import band_centres_hz as floor_band_centres_hz
from splat.params import FIELDS
from splat.plot import plot_atoms
from splat.runtime import tune_allocator
from splat.synth import render_atom_set

if TYPE_CHECKING:
    from splat.batch import BatchEvent, RunRecord

# Choices, spelled out so `--help` lists them and a typo fails before any work;
# tests/test_cli.py checks they match the library's own lists. FitConfig types
# these fields as plain str, hence the casts of its defaults below.
Device = Literal["cpu", "cuda"]
Backend = Literal["local", "ray"]
Engine = Literal["fast", "reference"]
Envelope = Literal["gamma", "gaussian"]

#: The option defaults are FitConfig's own (a frozen dataclass, so a constant), never restated here.
_FIT_DEFAULTS = FitConfig()
_DEFAULT_DEVICE = cast(Device, _FIT_DEFAULTS.device)
_DEFAULT_ENGINE = cast(Engine, _FIT_DEFAULTS.engine)
_DEFAULT_ENVELOPE = cast(Envelope, _FIT_DEFAULTS.envelope)

#: Unit suffixes of atom field names and how a table header shows them.
_UNIT_SUFFIXES = (("_hz", "Hz"), ("_db", "dB"), ("_s", "s"))

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
        int, typer.Option("--iters", min=1, help="Optimiser steps per chunk (consecutive segments fit together).")
    ] = _FIT_DEFAULTS.n_iters,
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
    noise_floor: Annotated[
        bool,
        typer.Option(
            "--floor/--no-floor",
            help="Fit a stationary noise floor per segment (24 bands, levels in dB) under the atoms, for hiss,"
            " room and dense-mix wash that no atom should hold.",
        ),
    ] = _FIT_DEFAULTS.noise_floor,
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
            noise_floor=noise_floor,
            segment_s=segment_s,
            sample_rate=sample_rate,
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
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Render an atoms JSON file to audio, using nothing but the JSON."""
    with _user_errors():
        _refuse_to_overwrite(out, force=force)
        output_format(out)
        atom_set = AtomSet.load(atoms_json)
        write_audio(out, render_atom_set(atom_set), atom_set.sample_rate)
        _say(
            _stdout(),
            f"rendered {len(atom_set.atoms)} atoms ({atom_set.duration_s:.2f} s at {atom_set.sample_rate} Hz)\n"
            f"wrote {out}",
        )


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


@app.command("info")
def info_command(
    atoms_json: Annotated[Path, typer.Argument(metavar="ATOMS.json", help="Atoms file written by `splat fit`.")],
) -> None:
    """List the atoms of an atoms JSON file, one row per atom."""
    with _user_errors():
        atom_set = AtomSet.load(atoms_json)
        console = _stdout()
        _say(
            console,
            f"{atoms_json}: {len(atom_set.atoms)} atoms, {atom_set.sample_rate} Hz, {atom_set.duration_s:.3f} s, "
            f"{atom_set.envelope} envelope, up to {atom_set.n_partials} partials",
        )
        if atom_set.floor:
            _say(console, _floor_summary(atom_set))
        table = Table(
            caption="mix: 0 = noise burst only, 1 = tone only; short_share: tone share ringing short_decay_s; "
            "duration: onset to release (30 s = never released)"
        )
        table.add_column("#", justify="right")
        for name in FIELDS:
            table.add_column(_column_label(name), justify="right")
        for index, atom in enumerate(atom_set.atoms):
            values = [f"{atom.time_s:.3f}"] + [f"{getattr(atom, name):.4g}" for name in FIELDS[1:]]
            table.add_row(str(index), *values)
        _print_table(console, table)


def _floor_summary(atom_set: AtomSet) -> str:
    """One line on the noise floor: its segments' total levels and where it is loudest."""
    totals = [10.0 * math.log10(sum(10.0 ** (v / 10.0) for v in f.level_db)) for f in atom_set.floor]
    loudest = max(atom_set.floor, key=lambda f: max(f.level_db))
    band = loudest.level_db.index(max(loudest.level_db))
    return (
        f"noise floor: {len(atom_set.floor)} segment(s), total level {min(totals):.1f} to {max(totals):.1f} dB, "
        f"loudest band {floor_band_centres_hz(atom_set.sample_rate)[band]:.0f} Hz at {loudest.start_s:.2f} s"
    )


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
