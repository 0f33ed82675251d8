"""What a fit carries from one chunk to the next (`FitState`), and the checkpoint file that keeps it.

`splat.fit` fits a file a chunk of segments at a time, and each chunk starts its
own optimiser: Adam and its learning-rate schedule are created afresh per chunk,
so no optimiser moment crosses a chunk boundary. What does cross it is small:
the atoms and noise floors exported so far, the loss histories, the state of
the random generator (it draws every chunk's starting atoms and noise seeds),
the last segment's atoms and floor, whose tails ring into the next chunk, and
the room fitted with the first chunk and what rings in it.
Restoring exactly these makes a resumed fit bit-identical to an uninterrupted one.

A checkpoint file (`<stem>.partial.json`) holds a `FitState` as JSON together with
the hashes of the input file and of the config it was fitted with, so that a
checkpoint left by another input or config is recognised and ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from splat.atoms import Atom, FloorSegment, Room
from splat.errors import FormatError
from splat.files import write_text_atomic
from splat.params import AtomParams

CHECKPOINT_FORMAT = "splat.checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class FitState:
    """A fit after its first `n_done` chunks: everything the remaining chunks depend on.

    Attributes:
        n_done: Chunks fitted, in [1, n_chunks).
        n_chunks: Chunks of the whole file.
        rng_state: `numpy.random.Generator.bit_generator.state` after chunk `n_done - 1`.
        atoms: Atoms exported so far (file time).
        floors: Noise-floor segments exported so far.
        losses: The distance after every step, one tuple per chunk done.
        tail: The last fitted segment's atoms (physical units, pruned ones muted), tensors of
            shape (1, atoms), float32.
        tail_floor_db: That segment's noise-floor band levels in dB, shape (1, bands), or None.
        tail_start: That segment's first sample.
        room: The room fitted with the first chunk, or None.
        room_states: The fast engine's room recursions at the next chunk's start, per resolution
            (`splat.engines.FastEngine.room_states_at`), or None.
        tail_modes: That segment's atoms' partial series (indices into `splat.modes.MODES`),
            shape (1, atoms), int64; None: all strings.
    """

    n_done: int
    n_chunks: int
    rng_state: dict[str, Any]
    atoms: tuple[Atom, ...]
    floors: tuple[FloorSegment, ...]
    losses: tuple[tuple[float, ...], ...]
    tail: AtomParams
    tail_floor_db: Tensor | None
    tail_start: int
    room: Room | None = None
    room_states: tuple[Tensor, ...] | None = None
    tail_modes: Tensor | None = None

    def background(self, device: torch.device) -> tuple[AtomParams, Tensor | None, Tensor]:
        """The tail as the fit's next chunk takes it: (atoms, floor levels, segment starts of shape (1,))."""
        tail = AtomParams(**{name: value.to(device) for name, value in vars(self.tail).items()})
        floor_db = None if self.tail_floor_db is None else self.tail_floor_db.to(device)
        return tail, floor_db, torch.tensor([self.tail_start], device=device)

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-ready values. Floats are written exactly (float32 values widen to
        float64 losslessly, and JSON keeps a float64 through its shortest repr)."""
        return {
            "n_done": self.n_done,
            "n_chunks": self.n_chunks,
            "rng_state": self.rng_state,
            "atoms": [asdict(a) for a in self.atoms],
            "floors": [f.to_dict() for f in self.floors],
            "losses": [list(h) for h in self.losses],
            "tail": {name: value.detach().cpu().tolist() for name, value in vars(self.tail).items()},
            "tail_floor_db": None if self.tail_floor_db is None else self.tail_floor_db.detach().cpu().tolist(),
            "tail_start": self.tail_start,
            "room": None if self.room is None else self.room.to_dict(),
            "room_states": None if self.room_states is None else [s.cpu().tolist() for s in self.room_states],
            "tail_modes": None if self.tail_modes is None else self.tail_modes.cpu().tolist(),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FitState:
        """Rebuild a state written by `to_dict` (tensors on the CPU).

        Raises:
            FormatError: if a field is missing or of the wrong kind.
        """
        try:
            floor_db = doc["tail_floor_db"]
            room, states = doc.get("room"), doc.get("room_states")
            tail_modes = doc.get("tail_modes")
            state = cls(
                n_done=int(doc["n_done"]),
                n_chunks=int(doc["n_chunks"]),
                rng_state=dict(doc["rng_state"]),
                atoms=tuple(Atom(**a) for a in doc["atoms"]),
                floors=tuple(FloorSegment(**(f | {"level_db": tuple(f["level_db"])})) for f in doc["floors"]),
                losses=tuple(tuple(float(v) for v in h) for h in doc["losses"]),
                tail=AtomParams(
                    **{name: torch.tensor(value, dtype=torch.float32) for name, value in doc["tail"].items()}
                ),
                tail_floor_db=None if floor_db is None else torch.tensor(floor_db, dtype=torch.float32),
                tail_start=int(doc["tail_start"]),
                room=None if room is None else Room.from_dict(room),
                room_states=None if states is None else tuple(torch.tensor(s, dtype=torch.float32) for s in states),
                tail_modes=None if tail_modes is None else torch.tensor(tail_modes, dtype=torch.int64),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"the checkpoint is incomplete or malformed ({type(exc).__name__}: {exc})") from exc
        if not 1 <= state.n_done < state.n_chunks:
            raise FormatError(f"the checkpoint has {state.n_done} of {state.n_chunks} chunks done")
        return state


@dataclass(frozen=True)
class CheckpointRead:
    """What `read_checkpoint` found: a state to resume from, or a note saying why a file was ignored.

    Both are None when there is no checkpoint file.
    """

    state: FitState | None = None
    note: str | None = None


def write_checkpoint(path: str | Path, state: FitState, *, input_sha256: str, config_sha256: str) -> None:
    """Write `state` atomically, with the hashes of the input and config it belongs to."""
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "input_sha256": input_sha256,
        "config_sha256": config_sha256,
        "state": state.to_dict(),
    }
    write_text_atomic(path, json.dumps(doc) + "\n")


def read_checkpoint(path: str | Path, *, input_sha256: str, config_sha256: str) -> CheckpointRead:
    """Read the checkpoint at `path` if there is one and it belongs to this input and config.

    A checkpoint of another input or config, or one that cannot be read, is not an
    error: the fit starts from the beginning (and overwrites it), and the note says so.
    """
    path = Path(path)
    if not path.exists():
        return CheckpointRead()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
            raise FormatError("not a splat checkpoint")
        if doc.get("version") != CHECKPOINT_VERSION:
            raise FormatError(f"version {doc.get('version')!r}, this splat writes {CHECKPOINT_VERSION}")
        if doc.get("input_sha256") != input_sha256 or doc.get("config_sha256") != config_sha256:
            return CheckpointRead(note=f"ignoring {path}: it was written for another input or config")
        return CheckpointRead(state=FitState.from_dict(doc["state"]))
    except (OSError, UnicodeDecodeError, ValueError, FormatError, KeyError) as exc:
        return CheckpointRead(note=f"ignoring {path}: cannot resume from it ({exc})")
