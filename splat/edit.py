"""Edit operations on an `AtomSet` (pure functions) and the safe `--where` selection language.

An edit is a list of `Edit` steps applied in order to the atoms a `where`
expression selects (all atoms by default); the selection is made once, on the
input, and atoms keep their input index through the steps. Two steps change the
file's room (`splat.room`) instead, whatever the selection: its level, or
removing it. Each step's result
is range-checked: a value pushed out of its range is clamped (`clamp=True`) or
refused with a `ParameterError` naming the atom's index and the field.

`where` expressions are parsed with `ast` and evaluated by a small interpreter
over a whitelist of node types (comparisons, `and`/`or`/`not`, arithmetic,
numbers, strings, lists); names are the atom's fields and a few derived
columns (`COLUMNS`). Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from splat.atoms import Atom, AtomSet, Room
from splat.errors import ParameterError
from splat.params import Bounds, RoomBounds

#: Note names of the twelve pitch classes, C first (sharps, as MIDI tools print them).
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: Columns a `where` expression may name besides the atom's own fields: the position in the file,
#: the nearest note's name and MIDI number, the loudness rank (0 = the largest gain_db) and the file's atom count.
DERIVED_COLUMNS = ("index", "note", "midi", "rank", "n_atoms")
#: Every column a `where` expression may name.
COLUMNS: tuple[str, ...] = DERIVED_COLUMNS + tuple(f.name for f in fields(Atom))

#: Operations and whether each takes a number (see `Edit`).
OPERATIONS: dict[str, bool] = {
    "transpose": True,
    "shift": True,
    "stretch": True,
    "gain": True,
    "decay": True,
    "keep": True,
    "drop": False,
    "tonal_only": False,
    "noise_only": False,
    "room_level": True,
    "dry": False,
}
#: Operations on the file's room rather than on the selected atoms.
ROOM_OPERATIONS = ("room_level", "dry")
#: Longest `where` expression accepted: far above any real selection, and short enough that neither
#: the parser nor the interpreter's recursion can run out of stack.
MAX_WHERE_CHARS = 500
#: Fields a time stretch scales (onsets, durations and decays; pitch is kept).
STRETCHED_FIELDS = ("time_s", "duration_s", "release_s", "decay_s", "short_decay_s")
#: Rates a time stretch divides by its factor, so that a glide covers the same cents over the
#: stretched note and a vibrato keeps its cycles (the vibrato's rate only where it has a depth).
SLOWED_FIELDS = ("f0_glide_cents_per_s", "vibrato_hz")
#: Fields `decay` scales: the body's and the short part's ring times.
DECAY_FIELDS = ("decay_s", "short_decay_s")

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


@dataclass(frozen=True)
class Edit:
    """One edit step.

    Attributes:
        op: One of `OPERATIONS`: "transpose" (semitones), "shift" (seconds),
            "stretch" (factor > 0 on onsets, durations and decays; pitch kept, the
            glide's and the vibrato's rates divided by it),
            "gain" (dB), "decay" (factor > 0 on the ring times), "keep" (the
            N loudest selected atoms stay, the other selected ones go),
            "drop" (remove the selected atoms), "tonal_only" (mix 1),
            "noise_only" (mix 0); and on the file's room: "room_level" (set its
            `level_db`; the file must have a room) or "dry" (remove the room).
        amount: The operation's number; None for those that take none.
    """

    op: str
    amount: float | None = None

    def check(self) -> None:
        """Raise ParameterError if the operation is unknown or its amount is missing or invalid."""
        if self.op not in OPERATIONS:
            raise ParameterError(f"unknown edit {self.op!r}; choose from {', '.join(OPERATIONS)}")
        if not OPERATIONS[self.op]:
            if self.amount is not None:
                raise ParameterError(f"{self.op} takes no amount, got {self.amount}")
            return
        if self.amount is None or not math.isfinite(self.amount):
            raise ParameterError(f"{self.op} needs a finite amount, got {self.amount}")
        if self.op in ("stretch", "decay") and self.amount <= 0:
            raise ParameterError(f"{self.op} factor={self.amount:g} must be positive")
        if self.op == "keep" and (self.amount < 0 or self.amount != int(self.amount)):
            raise ParameterError(f"keep N={self.amount:g} must be a whole number >= 0")


def note_name(f0_hz: float) -> str:
    """The nearest equal-tempered note of a frequency, e.g. 261.6 -> "C4", 440 -> "A4"."""
    midi = midi_number(f0_hz)
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def midi_number(f0_hz: float) -> int:
    """The nearest MIDI note number of a frequency in Hz (A4 = 440 Hz = 69)."""
    return round(69 + 12 * math.log2(f0_hz / 440.0))


def atom_rows(atom_set: AtomSet) -> list[dict[str, Any]]:
    """Every atom's `COLUMNS` as a dict (index, note, midi, rank, n_atoms, then its fields), in file order."""
    by_gain = sorted(range(len(atom_set.atoms)), key=lambda i: -atom_set.atoms[i].gain_db)
    rank = {index: position for position, index in enumerate(by_gain)}
    return [
        {
            "index": i,
            "note": note_name(atom.f0_hz),
            "midi": midi_number(atom.f0_hz),
            "rank": rank[i],
            "n_atoms": len(atom_set.atoms),
            **vars(atom),
        }
        for i, atom in enumerate(atom_set.atoms)
    ]


def parse_where(expression: str) -> Callable[[dict[str, Any]], bool]:
    """Compile a `where` expression into a predicate over an atom's columns (a row of `atom_rows`).

    Examples: ``"f0_hz < 200 and time_s > 1.5"``, ``"note == 'C4'"``, ``"index in [3, 7]"``,
    ``"rank >= n_atoms / 2"`` (the quieter half).

    Raises:
        ParameterError: on a syntax error, an unknown column (named in the
            message), or anything outside the whitelist (calls, attributes,
            subscripts, lambdas, ...).
    """
    if len(expression) > MAX_WHERE_CHARS:
        raise ParameterError(f"--where is {len(expression)} characters long; at most {MAX_WHERE_CHARS} are allowed")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ParameterError(f"--where {expression!r} is not a valid expression: {exc.msg}") from exc
    except RecursionError as exc:  # nesting deep enough to exhaust the parser's stack
        raise ParameterError("--where is nested too deeply") from exc
    _check_tree(tree.body, expression)

    def predicate(row: dict[str, Any]) -> bool:
        value = _evaluate(tree.body, row, expression)
        if not isinstance(value, bool):
            raise ParameterError(f"--where {expression!r} gives {value!r}, not true or false")
        return value

    return predicate


def _check_tree(node: ast.AST, expression: str) -> None:
    """Refuse every node type the interpreter does not know and every unknown name, before evaluating."""
    allowed = (
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.USub,
        ast.UAdd,
        ast.Compare,
        ast.BinOp,
        ast.Name,
        ast.Load,
        ast.Constant,
        ast.List,
        ast.Tuple,
        *_COMPARE,
        *_ARITHMETIC,
    )
    for child in ast.walk(node):
        if not isinstance(child, allowed):
            raise ParameterError(
                f"--where {expression!r}: {type(child).__name__} is not allowed; use comparisons of columns with "
                "numbers, strings or lists, joined by and/or/not"
            )
        if isinstance(child, ast.Name) and child.id not in COLUMNS:
            raise ParameterError(f"--where {expression!r}: unknown column {child.id!r}; columns: {', '.join(COLUMNS)}")
        if isinstance(child, ast.Constant) and not isinstance(child.value, (int, float, str)):
            raise ParameterError(f"--where {expression!r}: the constant {child.value!r} is not allowed")


def _evaluate(node: ast.AST, row: dict[str, Any], expression: str) -> Any:
    """Evaluate a node `_check_tree` accepted."""
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return row[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            return [_evaluate(e, row, expression) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            values = (_truth(_evaluate(v, row, expression), expression) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            operand = _evaluate(node.operand, row, expression)
            if isinstance(node.op, ast.Not):
                return not _truth(operand, expression)
            return -_number(operand, expression) if isinstance(node.op, ast.USub) else _number(operand, expression)
        if isinstance(node, ast.BinOp):
            left = _number(_evaluate(node.left, row, expression), expression)
            right = _number(_evaluate(node.right, row, expression), expression)
            return _ARITHMETIC[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = _evaluate(node.left, row, expression)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = _evaluate(comparator, row, expression)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
    except (TypeError, ZeroDivisionError) as exc:
        raise ParameterError(f"--where {expression!r}: {exc}") from exc
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check_tree lets no other node through


def _truth(value: Any, expression: str) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"--where {expression!r}: {value!r} is used as a condition; compare it with something")
    return value


def _number(value: Any, expression: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"--where {expression!r}: arithmetic on {value!r}, which is not a number")
    return value


def select(atom_set: AtomSet, where: str | None) -> list[int]:
    """Indices (positions in `atom_set.atoms`) of the atoms `where` selects; all of them for None.

    Raises:
        ParameterError: if the expression is invalid (see `parse_where`).
    """
    if where is None:
        return list(range(len(atom_set.atoms)))
    predicate = parse_where(where)
    return [row["index"] for row in atom_rows(atom_set) if predicate(row)]


def edit(atom_set: AtomSet, edits: Sequence[Edit], *, where: str | None = None, clamp: bool = False) -> AtomSet:
    """Apply `edits` in order to the atoms `where` selects.

    Args:
        atom_set: The input atoms (not changed).
        edits: The steps, applied in order.
        where: A selection expression (`parse_where`); None selects every atom.
        clamp: Clamp a value pushed out of its range onto the range instead of refusing.

    Returns:
        The edited AtomSet, validated. A stretch by a factor above 1 lengthens
        the file (`duration_s`) so that the stretched onsets fit in it.

    Raises:
        ParameterError: on an invalid step or expression, or (without `clamp`) a
            value out of range, naming the atom's input index and the field.
    """
    for step in edits:
        step.check()
    selected = set(select(atom_set, where))
    atoms = dict(enumerate(atom_set.atoms))  # input index -> atom; dicts keep the input order
    duration_s = atom_set.duration_s
    room = atom_set.room
    bounds = Bounds.for_sample_rate(atom_set.sample_rate)
    for step in edits:
        if step.op in ROOM_OPERATIONS:
            room = _edited_room(room, step, clamp=clamp)
            continue
        if step.op == "stretch":
            duration_s = max(duration_s, duration_s * float(step.amount or 1.0))
        chosen = [i for i in atoms if i in selected]
        if step.op == "drop":
            atoms = {i: a for i, a in atoms.items() if i not in selected}
        elif step.op == "keep":
            loudest = sorted(chosen, key=lambda i: atoms[i].gain_db, reverse=True)[: int(step.amount or 0)]
            atoms = {i: a for i, a in atoms.items() if i not in selected or i in loudest}
        else:
            for i in chosen:
                changed = _changed_fields(atoms[i], step, bounds)
                atoms[i] = replace(atoms[i], **_in_range(changed, i, step, bounds, duration_s, clamp=clamp))
    edited = replace(atom_set, duration_s=duration_s, room=room).with_atoms(list(atoms.values()))
    edited.validate()
    return edited


def _changed_fields(atom: Atom, step: Edit, bounds: Bounds) -> dict[str, float]:
    """The new values of the fields `step` changes on one atom (before range checks)."""
    amount = float(step.amount) if step.amount is not None else 0.0
    if step.op == "transpose":
        return {"f0_hz": atom.f0_hz * 2.0 ** (amount / 12.0)}
    if step.op == "shift":
        return {"time_s": atom.time_s + amount}
    if step.op == "stretch":
        stretched = {name: getattr(atom, name) * amount for name in STRETCHED_FIELDS}
        if atom.duration_s >= bounds.duration_s.hi:  # the top duration means "never released": it stays so
            stretched["duration_s"] = atom.duration_s
        stretched |= {name: getattr(atom, name) / amount for name in SLOWED_FIELDS}
        if atom.vibrato_cents == 0.0:  # no vibrato: its rate plays no part, and must not leave its range
            stretched["vibrato_hz"] = atom.vibrato_hz
        return stretched
    if step.op == "gain":
        return {"gain_db": atom.gain_db + amount}
    if step.op == "decay":
        return {name: getattr(atom, name) * amount for name in DECAY_FIELDS}
    return {"mix": 1.0 if step.op == "tonal_only" else 0.0}


def _edited_room(room: Room | None, step: Edit, *, clamp: bool) -> Room | None:
    """The room after a room step: none after "dry", else with the new level (range-checked as `_in_range` does)."""
    if step.op == "dry":
        return None
    if room is None:
        raise ParameterError(f"{step.op}: the file has no room to change (fit one with `splat fit --room`)")
    rng = RoomBounds().level_db
    level_db = float(step.amount if step.amount is not None else 0.0)
    if not rng.lo <= level_db <= rng.hi:
        if not clamp:
            raise ParameterError(
                f"{step.op} {level_db:g} is out of the room's level range [{rng.lo:g}, {rng.hi:g}];"
                " pass --clamp to clamp it"
            )
        level_db = min(max(level_db, rng.lo), rng.hi)
    return replace(room, level_db=level_db)


def _in_range(
    values: dict[str, float], index: int, step: Edit, bounds: Bounds, duration_s: float, *, clamp: bool
) -> dict[str, float]:
    """`values` checked against their ranges: clamped onto them, or refused naming atom `index` and the field."""
    out = {}
    for name, value in values.items():
        rng = bounds.range_of(name) if name != "time_s" else None
        lo, hi = (0.0, duration_s) if rng is None else (rng.lo, rng.hi)
        if not lo <= value <= hi:
            if not clamp:
                raise ParameterError(
                    f"{step.op} {step.amount:g} puts atom {index}'s {name}={value:g} out of range [{lo:g}, {hi:g}];"
                    " pass --clamp to clamp it, or --where to leave that atom out"
                )
            value = min(max(value, lo), hi)
        out[name] = value
    return out
