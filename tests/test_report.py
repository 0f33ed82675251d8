"""The HTML report (splat.report): built in Python, then driven in a real headless Chromium.

The browser tests need Debian's `chromium` and `chromium-driver`; `make test` installs
them when missing, so they run (never skip) there. They fail with a clear message
if either program is missing.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_cli import assert_one_error_line, hand_made_atom_set, run

from splat.atoms import AtomSet
from splat.report import MAX_COLUMNS, N_ROWS, atom_strip, build_report, ogg_data_uri, spectrogram
from splat.synth import render_atom_set

#: Schemes a page that makes no network request may load from.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:")


@pytest.fixture(scope="module")
def spread_set() -> AtomSet:
    """Six atoms 0.2 s apart at six pitches over 1.5 s, far enough apart that their marks never overlap."""
    base = hand_made_atom_set(1).atoms[0]
    atoms = [
        replace(base, time_s=0.1 + 0.2 * i, f0_hz=110.0 * 1.5**i, gain_db=-30.0 + 4 * i, noise_seed=i) for i in range(6)
    ]
    return AtomSet(atoms=tuple(atoms), sample_rate=22050, duration_s=1.5, gain=2.0)


@pytest.fixture(scope="module")
def report_file(spread_set, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    original = render_atom_set(spread_set) + 1e-3 * rng.standard_normal(spread_set.n_samples).astype(np.float32)
    path = folder / "spread.report.html"
    path.write_text(build_report(original, spread_set.sample_rate, spread_set, with_visqol=False), encoding="utf-8")
    return path


def page_data(path: Path) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', path.read_text(), re.S)
    assert match
    return json.loads(match.group(1))


def test_the_page_holds_everything_inline(report_file, spread_set):
    text = report_file.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "<script src" not in text and '<link rel="stylesheet"' not in text
    data = page_data(report_file)
    assert [a["index"] for a in data["atoms"]] == list(range(6))
    assert [a["note"] for a in data["atoms"]][:2] == ["A2", "E3"]
    assert set(data["audio"]) == {"original", "reconstruction", "residual", "atoms"}
    assert all(uri.startswith("data:audio/ogg;base64,") for uri in data["audio"].values())
    assert [name for name, _ in data["metrics"]][:2] == ["MR-STFT distance", "log-mel distance (dB)"]
    levels = base64.b64decode(data["spectrogram"]["levels"])
    assert len(levels) == data["spectrogram"]["width"] * data["spectrogram"]["height"]


def test_the_atom_strip_plays_each_atom_alone_in_its_span(spread_set):
    strip, spans = atom_strip(spread_set)
    sr = spread_set.sample_rate
    assert len(spans) == 6
    for start_s, end_s in spans:
        inside = strip[round(start_s * sr) : round(end_s * sr)]
        assert np.abs(inside).max() == pytest.approx(0.5, rel=1e-6)  # every clip at one peak
    gap = strip[round(spans[0][1] * sr) + 1 : round(spans[1][0] * sr) - 1]
    assert gap.size > 0 and not gap.any()


def test_long_audio_encodes(rng):
    # 3 million samples (68 s at 44.1 kHz): one write of them crashes libsndfile 1.2's Vorbis encoder.
    uri = ogg_data_uri(0.1 * rng.standard_normal(3_000_000).astype(np.float32), 44100)
    assert uri.startswith("data:audio/ogg;base64,")
    audio, rate = sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), dtype="float32")
    assert rate == 44100 and abs(audio.size - 3_000_000) < 44100


def test_the_spectrogram_puts_a_tone_on_its_row():
    sr = 22050
    tone = np.sin(2 * np.pi * 1000 * np.arange(2 * sr) / sr).astype(np.float32)
    picture = spectrogram(tone, sr)
    assert picture.levels.shape[0] == N_ROWS and picture.levels.shape[1] <= MAX_COLUMNS + 1
    rows_hz = picture.fmin_hz * (picture.fmax_hz / picture.fmin_hz) ** np.linspace(0, 1, N_ROWS)
    loudest_row = int(np.argmax(picture.levels[:, picture.levels.shape[1] // 2]))
    assert abs(12 * np.log2(rows_hz[loudest_row] / 1000)) < 0.5  # within a quarter tone


def test_cli_report(tmp_path, spread_set):
    atoms_json = tmp_path / "x.atoms.json"
    spread_set.save(atoms_json)
    wav = tmp_path / "x.wav"
    assert run("render", atoms_json, "-o", wav).exit_code == 0
    out = tmp_path / "x.report.html"
    result = run("report", wav, "--atoms", atoms_json, "-o", out, "--no-visqol")
    assert result.exit_code == 0, result.output
    assert len(page_data(out)["atoms"]) == 6
    assert_one_error_line(run("report", wav, "-o", out, "--no-visqol"), mentions="--force")
    assert_one_error_line(run("report", wav, "-o", tmp_path / "r.png"), mentions="must end in .html")
    result = run("report", wav, "-o", tmp_path / "plain.html")  # the recording alone
    assert result.exit_code == 0, result.output
    assert page_data(tmp_path / "plain.html")["atoms"] == []


# --- in a real browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through Debian's chromedriver, logging the console and the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver; `make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, *, timeout_s: float = 20.0):
    """Poll `return <script>` until it is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


@pytest.fixture(scope="module")
def loaded_page(browser, report_file):
    for log in ("browser", "performance"):
        browser.get_log(log)  # drop what the browser logged before the page (its start-up tab)
    browser.get(report_file.as_uri())
    wait_for(browser, "window.splatReady === true")
    # Wait for every player's data to be decoded (readyState 4: enough to play through).
    wait_for(browser, "[...document.querySelectorAll('audio')].every((a) => a.readyState >= 4)")
    return browser


def test_the_page_loads_with_no_console_error_and_no_network_request(loaded_page, report_file):
    errors = [e for e in loaded_page.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    requested, page = [], report_file.as_uri()
    for entry in loaded_page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        # Every request the page makes (the browser's own start-up tab has another document).
        if message["method"] == "Network.requestWillBeSent" and message["params"]["documentURL"] == page:
            requested.append(message["params"]["request"]["url"])
    assert page in requested, "the performance log should at least hold the page's own file:// request"
    assert [url[:60] for url in requested if not url.startswith(LOCAL_SCHEMES)] == []
    resources = loaded_page.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert [url for url in resources if not url.startswith(LOCAL_SCHEMES)] == []


def test_one_mark_per_atom(loaded_page, report_file):
    n_atoms = len(page_data(report_file)["atoms"])
    assert loaded_page.execute_script("return document.querySelectorAll('#marks circle.atom').length") == n_atoms
    assert loaded_page.execute_script("return document.querySelectorAll('#atoms tbody tr').length") == n_atoms


def test_clicking_an_atom_plays_it_and_a_screenshot_is_written(loaded_page, report_file, tmp_path_factory):
    from selenium.webdriver.common.by import By

    spans = [a["clip_s"] for a in page_data(report_file)["atoms"]]
    loaded_page.find_element(By.CSS_SELECTOR, '#marks circle.atom[data-index="3"]').click()
    played = wait_for(loaded_page, "window.splatLastPlay && window.splatLastPlay.resolved && window.splatLastPlay")
    assert played["index"] == 3
    # The atoms' audio moves on from the clip's start (currentTime advances).
    wait_for(loaded_page, f"document.getElementById('atom-audio').currentTime > {spans[3][0] + 0.05}")
    assert loaded_page.execute_script("return document.querySelector('#atoms tr.selected').dataset.index") == "3"
    assert loaded_page.execute_script("return document.querySelector('#marks .atom.selected').dataset.index") == "3"
    # It stops at the end of its clip, before the next atom's.
    wait_for(loaded_page, "document.getElementById('atom-audio').paused", timeout_s=10)
    stopped_at = loaded_page.execute_script("return document.getElementById('atom-audio').currentTime")
    assert spans[3][1] - 0.01 <= stopped_at < spans[4][0]
    # A table row plays its atom too.
    loaded_page.find_element(By.CSS_SELECTOR, '#atoms tbody tr[data-index="1"]').click()
    assert wait_for(loaded_page, "window.splatLastPlay.index === 1 && window.splatLastPlay.resolved")
    # Sorting by gain (descending on the second click) puts the loudest atom first.
    header = loaded_page.find_elements(By.CSS_SELECTOR, "#atoms th")[4]
    header.click()
    header.click()
    assert loaded_page.execute_script("return document.querySelector('#atoms tbody tr').dataset.index") == "5"
    shot = tmp_path_factory.mktemp("screenshot") / "report.png"
    assert loaded_page.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
