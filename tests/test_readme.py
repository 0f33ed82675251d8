"""The README's Python API example runs as written (with fewer iterations)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _python_api_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold one python example"
    return blocks[0]


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    code = _python_api_example()
    assert "n_iters=200" in code
    shutil.copy(ROOT / "examples" / "piano.wav", tmp_path / "piano.wav")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.replace("n_iters=200", "n_iters=2"), "README.md", "exec"), namespace)
    assert (tmp_path / "piano.atoms.json").exists()
    audio_out = namespace["audio_out"]
    assert isinstance(audio_out, np.ndarray) and audio_out.size > 0 and np.isfinite(audio_out).all()
