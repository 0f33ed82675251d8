"""splat: fit a recording with a few editable sound events ("atoms").

import splat
result = splat.fit(audio, sample_rate, splat.FitConfig())   # -> FitResult(.atoms, .reconstruction)
proposal = splat.Encoder.load().propose(audio, sample_rate)  # the encoder's atoms alone, an AtomSet
result.atoms.save("x.atoms.json")
audio = splat.render(splat.AtomSet.load("x.atoms.json"))
edited = splat.edit(result.atoms, [splat.Edit("transpose", 12)], where="note == 'C4'")
records = splat.fit_many(["songs/"], "out/", splat.FitConfig(), jobs=2)   # -> [RunRecord], out/splat-run.jsonl
"""

from splat.atoms import Atom, AtomSet
from splat.audio import load_audio, write_audio
from splat.batch import RunRecord, fit_many
from splat.edit import Edit, edit, select
from splat.encoder import Encoder
from splat.errors import AudioError, FormatError, ParameterError, SplatError
from splat.fitting import FitConfig, FitResult, fit
from splat.morph import morph
from splat.synth import render_atom_set as render

__version__ = "0.1.0"

__all__ = [
    "Atom",
    "AtomSet",
    "AudioError",
    "Edit",
    "Encoder",
    "FitConfig",
    "FitResult",
    "FormatError",
    "ParameterError",
    "RunRecord",
    "SplatError",
    "edit",
    "fit",
    "fit_many",
    "load_audio",
    "morph",
    "render",
    "select",
    "write_audio",
    "__version__",
]
