"""splat: fit a recording with a few editable sound events ("atoms").

import splat
result = splat.fit(audio, sample_rate, splat.FitConfig())   # -> FitResult(.atoms, .reconstruction)
result.atoms.save("x.atoms.json")
audio = splat.render(splat.AtomSet.load("x.atoms.json"))
records = splat.fit_many(["songs/"], "out/", splat.FitConfig(), jobs=2)   # -> [RunRecord], out/splat-run.jsonl
"""

from splat.atoms import Atom, AtomSet
from splat.audio import load_audio, write_audio
from splat.batch import RunRecord, fit_many
from splat.errors import AudioError, FormatError, ParameterError, SplatError
from splat.fitting import FitConfig, FitResult, fit
from splat.synth import render_atom_set as render

__version__ = "0.1.0"

__all__ = [
    "Atom",
    "AtomSet",
    "AudioError",
    "FitConfig",
    "FitResult",
    "FormatError",
    "ParameterError",
    "RunRecord",
    "SplatError",
    "fit",
    "fit_many",
    "load_audio",
    "render",
    "write_audio",
    "__version__",
]
