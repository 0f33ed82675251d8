"""The amortized encoder: its input features, network, decoding, weights, training and use in `fit`."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import splat
from splat import encoder as encoder_module
from splat.atoms import Atom, AtomSet
from splat.cli import app
from splat.encoder import (
    BINS_PER_SEMITONE,
    ENCODER_RATE,
    HARMONICS,
    HOP,
    LOWEST_MIDI,
    N_FFTS,
    N_OUTPUTS,
    N_PITCHES,
    RAW_FIELDS,
    SERIES_CHANNELS,
    Encoder,
    EncoderConfig,
    EncoderNet,
    decode,
    features,
    harmonic_stack,
    log_frequency_filters,
    n_parameters,
)
from splat.errors import ParameterError, SplatError
from splat.modes import MODES
from splat.params import FIELDS, Bounds
from splat.training import data as training_data
from splat.training.midi import midi_file
from splat.training.synthetic import UNKNOWN_SERIES, render_clip
from splat.training.targets import build_targets, losses
from splat.training.train import TrainConfig, train

SHIPPED = encoder_module.WEIGHTS_DIR / "encoder.pt"


def _filters() -> list[torch.Tensor]:
    return [log_frequency_filters(n) for n in N_FFTS]


def test_network_is_small_and_maps_every_frame_and_pitch():
    net = EncoderNet(EncoderConfig())
    assert n_parameters(net) <= 3_000_000
    audio = torch.randn(2, 5000) * 0.1
    out = net(features(audio, _filters()))
    assert out.shape == (2, N_OUTPUTS, 5000 // HOP + 1, N_PITCHES)


def test_log_frequency_filters_average_and_a_sinusoid_lands_on_its_bin():
    for n_fft, bank in zip(N_FFTS, _filters(), strict=True):
        assert bank.shape[0] == n_fft // 2 + 1
        sums = bank.sum(0)
        filled = sums > 0
        torch.testing.assert_close(sums[filled], torch.ones(int(filled.sum())))
    t = torch.arange(ENCODER_RATE) / ENCODER_RATE
    tone = torch.cos(2 * math.pi * 440.0 * t)[None]
    level = features(tone, _filters())[0, 1, 40]  # the 4096-point STFT, a frame inside the tone
    a4 = (69 - LOWEST_MIDI) * BINS_PER_SEMITONE + 1  # bin j is centred on MIDI 21 - 1/3 + j/3
    assert int(level.argmax()) == a4
    # Reference: the filter's mean of |X_k|^2 / (sum w)^2, where for a unit cosine X_k = W(f_k - 440) / 2
    # and W is the Hann window's DTFT, summed here directly (a full-scale tone on a bin gives 1/4).
    n_fft = N_FFTS[1]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window
    n = np.arange(n_fft)
    bins_hz = np.arange(n_fft // 2 + 1) * ENCODER_RATE / n_fft
    dtft = np.exp(-2j * np.pi * np.outer(bins_hz - 440.0, n) / ENCODER_RATE) @ window
    power = np.abs(dtft / 2) ** 2 / window.sum() ** 2
    expected_db = 10 * np.log10(power @ _filters()[1][:, a4].double().numpy())
    assert float(level[a4]) == pytest.approx((expected_db + 30) / 20, abs=1e-3)


def test_harmonic_stack_lines_up_partials():
    x = torch.full((1, 1, 3, 400), -3.5)
    j = 150
    x[..., j] = 1.0
    stacked = harmonic_stack(x)
    for c, h in enumerate(HARMONICS):
        shift = round(12 * BINS_PER_SEMITONE * math.log2(h))
        assert int(stacked[0, c, 0].argmax()) == j - shift


def test_decode_keeps_local_peaks_above_threshold_strongest_first():
    out = torch.full((N_OUTPUTS, 20, N_PITCHES), -10.0)
    out[0, 5, 48] = 3.0  # A4 = MIDI 69 = bin 48
    out[0, 5, 49] = 2.0  # a neighbour: not a peak of its own
    out[0, 12, 20] = 1.0
    out[0, 15, 60] = -2.0  # probability 0.12: under the threshold
    out[1, 5, 48] = math.atanh(0.4)  # onset 0.2 frames later
    out[2, 5, 48] = math.atanh(0.2)  # 0.1 semitone sharp
    out[SERIES_CHANNELS.start + MODES.index("membrane"), 5, 48] = 2.0  # the peak rings as a membrane
    peaks = decode(out, threshold=0.3, max_atoms=10, bounds=Bounds())
    assert peaks.time_s.shape == (2,)
    assert float(peaks.time_s[0]) == pytest.approx(5.2 * HOP / ENCODER_RATE, rel=1e-5)
    assert float(peaks.f0_hz[0]) == pytest.approx(440 * 2 ** (0.1 / 12), rel=1e-5)
    assert float(peaks.score[0]) > float(peaks.score[1])  # strongest first
    assert [MODES[int(m)] for m in peaks.modes] == ["membrane", "string"]
    assert peaks.raw.shape == (2, len(RAW_FIELDS))
    assert decode(out, threshold=0.3, max_atoms=1, bounds=Bounds()).time_s.shape == (1,)


def test_generated_clips_label_each_event_with_the_series_it_was_rendered_with():
    rng = np.random.default_rng(3)
    clips = [render_clip(rng, n_samples=4096) for _ in range(40)]
    labels = np.concatenate([c.series for c in clips])
    assert all(c.series.shape == (c.atoms.shape[0],) for c in clips)
    assert set(labels.tolist()) == set(range(len(MODES)))  # drums as membranes, mallets as bars, the rest strings
    f0 = np.concatenate([c.atoms[:, FIELDS.index("f0_hz")] for c in clips])
    assert np.all(f0[labels == MODES.index("membrane")] < 300.0)  # only kicks, snares and toms are membranes


def test_series_targets_and_loss_only_where_the_series_is_known():
    events = np.zeros((2, 1, len(FIELDS)), dtype=np.float32)
    events[:, 0, FIELDS.index("time_s")] = 10 * HOP / ENCODER_RATE
    events[:, 0, FIELDS.index("f0_hz")] = 440.0  # A4: pitch cell 48
    known = np.ones(events.shape, dtype=bool)
    series = np.array([[MODES.index("bar")], [UNKNOWN_SERIES]], dtype=np.int8)
    targets = build_targets(events, known, np.array([1, 1]), series, n_frames=20)
    assert int(targets.series[0, 10, 48]) == MODES.index("bar")
    assert int((targets.series[0] >= 0).sum()) == 1 and int((targets.series[1] >= 0).sum()) == 0
    outputs = torch.zeros(2, N_OUTPUTS, 20, N_PITCHES)
    assert float(losses(outputs, targets)[2]) == pytest.approx(math.log(len(MODES)), rel=1e-5)  # uniform guess
    outputs[:, SERIES_CHANNELS.start + MODES.index("bar")] = 8.0
    assert float(losses(outputs, targets)[2]) < 1e-3
    unlabelled = dataclasses.replace(targets, series=torch.full_like(targets.series, -1))
    assert float(losses(torch.zeros_like(outputs), unlabelled)[2]) == 0.0


def _saved(tmp_path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path = tmp_path / "weights" / "encoder.pt"
    Encoder(EncoderNet(EncoderConfig(channels=8)), EncoderConfig(channels=8), threshold=0.02).save(path)
    return path


def test_weights_round_trip(tmp_path):
    path = _saved(tmp_path)
    first = Encoder.load(path)
    audio = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    torch.testing.assert_close(first.outputs(audio), Encoder.load(path).outputs(audio))
    assert first.sha256 == json.loads(path.with_suffix(".json").read_text())["sha256"]


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    encoder = Encoder(EncoderNet(EncoderConfig(channels=4)), EncoderConfig(channels=4))
    encoder.save(tmp_path / "a" / "encoder.pt")
    encoder.save(tmp_path / "b" / "encoder.pt")
    assert (tmp_path / "a" / "encoder.pt").read_bytes() == (tmp_path / "b" / "encoder.pt").read_bytes()


def test_weights_are_not_unpickled(tmp_path):
    path = _saved(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"stem.weight": Payload()}, path)  # a pickle that would run code
    card = json.loads(path.with_suffix(".json").read_text())
    card["sha256"] = encoder_module.weights_hash(path)  # even with a matching hash
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(SplatError, match="do not fit the network"):
        Encoder.load(path)


@pytest.mark.parametrize("damage", ["truncated", "tampered", "missing"])
def test_damaged_weights_are_refused(tmp_path, damage):
    path = _saved(tmp_path)
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "tampered":
        path.write_bytes(blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:])
    else:
        path.unlink()
    with pytest.raises(SplatError, match="corrupt" if damage != "missing" else "not found"):
        Encoder.load(path)


def test_cli_refuses_damaged_weights_in_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "shipped"
    folder.mkdir()
    path = _saved(tmp_path)
    shutil.copy(path, folder / "encoder.pt")
    shutil.copy(path.with_suffix(".json"), folder / "encoder.json")
    (folder / "encoder.pt").write_bytes((folder / "encoder.pt").read_bytes()[:1000])
    monkeypatch.setattr(encoder_module, "WEIGHTS_DIR", folder)
    wav = tmp_path / "tone.wav"
    t = np.arange(8000) / 22050
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 220 * t), 22050)
    result = CliRunner().invoke(app, ["fit", str(wav), "--init", "encoder", "--iters", "2"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "corrupt" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "tone.atoms.json").exists()


def _three_notes() -> tuple[np.ndarray, list[tuple[float, float]]]:
    notes = [(0.1, 130.81), (0.5, 329.63), (0.9, 783.99)]
    atoms = [
        Atom(
            time_s=t,
            gain_db=-12.0,
            attack_s=0.003,
            spread_s=0.008,
            noise_center_hz=2000.0,
            noise_bandwidth_hz=2000.0,
            f0_hz=f0,
            inharmonicity=2e-4,
            rolloff_db=5.0,
            decay_s=2.0,
            mix=0.95,
            noise_seed=i,
            short_share=0.4,
            short_decay_s=0.4,
            short_rolloff_db=3.0,
            duration_s=0.35,
            release_s=0.1,
        )
        for i, (t, f0) in enumerate(notes)
    ]
    audio = splat.render(AtomSet(atoms=tuple(atoms), sample_rate=22050, duration_s=32768 / 22050))
    return audio, notes


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped weights in this checkout")
def test_shipped_weights_find_three_rendered_atoms():
    audio, notes = _three_notes()
    proposed = Encoder.load().propose(audio, 22050)
    for t, f0 in notes:
        close = [a for a in proposed.atoms if abs(a.time_s - t) <= 0.010 and abs(a.f0_hz / f0 - 1) <= 0.01]
        assert close, f"no proposal within 10 ms and 1 % of ({t} s, {f0} Hz): {proposed.atoms}"


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped weights in this checkout")
def test_same_seed_same_proposal_and_fit():
    audio, _ = _three_notes()
    encoder = Encoder.load()
    assert encoder.propose(audio, 22050, seed=3) == encoder.propose(audio, 22050, seed=3)
    config = splat.FitConfig(n_iters=3, n_atoms=8, init="encoder")
    first = splat.fit(audio, 22050, config).atoms.to_dict()
    assert first == splat.fit(audio, 22050, config).atoms.to_dict()
    assert first["config"]["init"] == "encoder"
    assert first["config"]["encoder_sha256"] == encoder.sha256


def test_fit_with_zero_iterations_renders_what_the_init_placed(tmp_path):
    audio, notes = _three_notes()
    encoder = Encoder.load(_saved(tmp_path))
    found = encoder.proposals(audio / np.abs(audio).max(), 22050, max_atoms=8, bounds=Bounds())
    result = splat.fit(audio, 22050, splat.FitConfig(n_iters=0, n_atoms=8), init="encoder", encoder=encoder)
    assert len(result.atoms.atoms) == len(found) == 8  # an untrained net's threshold 0.02 keeps every peak
    times = sorted(float(t) for t in found.params.time_s[0])
    assert [a.time_s for a in result.atoms.atoms] == pytest.approx(times, abs=1e-6)
    analysed = splat.fit(audio, 22050, splat.FitConfig(n_iters=0, n_atoms=8), init="analysis")
    assert 1 <= len(analysed.atoms.atoms) < 8  # only the atoms placed on detected onsets
    assert len(splat.fit(audio, 22050, splat.FitConfig(n_iters=0, n_atoms=8), init="random").atoms.atoms) == 0


def test_cli_fit_init_encoder(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    monkeypatch.setattr(encoder_module, "WEIGHTS_DIR", path.parent)
    wav = tmp_path / "notes.wav"
    sf.write(wav, _three_notes()[0], 22050)
    for iters in ("3", "0"):  # 0: the proposal alone, unfitted
        args = ["fit", str(wav), "--init", "encoder", "--iters", iters, "--atoms", "8", "--force"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / "notes.atoms.json").read_text())
        assert doc["config"]["init"] == "encoder" and doc["config"]["n_iters"] == int(iters)
        assert doc["config"]["encoder_sha256"] == encoder_module.weights_hash(path)
        assert doc["atoms"]


def _tiny_set(*, seed: int, n_clips: int, n_samples: int) -> training_data.TrainingSet:
    """A few short synthetic clips as a `TrainingSet` (what shards hold, without the files)."""
    rng = np.random.default_rng(seed)
    clips = [render_clip(rng, n_samples=n_samples) for _ in range(n_clips)]
    n_events = max(c.atoms.shape[0] for c in clips)
    events = np.zeros((n_clips, n_events, clips[0].atoms.shape[1]), dtype=np.float32)
    known = np.zeros(events.shape, dtype=bool)
    for i, c in enumerate(clips):
        events[i, : c.atoms.shape[0]], known[i, : c.atoms.shape[0]] = c.atoms, c.known
    series = np.full(events.shape[:2], -1, dtype=np.int8)
    for i, c in enumerate(clips):
        series[i, : c.series.size] = c.series
    counts = np.array([c.atoms.shape[0] for c in clips])
    return training_data.TrainingSet(np.stack([c.audio for c in clips]), events, known, counts, series)


def test_training_lowers_the_loss_on_a_tiny_set(tmp_path):
    dataset = _tiny_set(seed=0, n_clips=6, n_samples=8192)
    config = TrainConfig(
        n_steps=40, batch_size=4, lr=5e-3, mix_probability=0.0, level_db=(0.0, 0.0), held_out=0.2,
        network=EncoderConfig(channels=8, dilations=(1, 2)),
    )  # fmt: skip
    result = train(dataset, tmp_path / "tiny.pt", config)
    assert np.mean(result.losses[-8:]) < 0.7 * np.mean(result.losses[:8])
    assert Encoder.load(tmp_path / "tiny.pt").threshold == result.metrics["threshold"]


def test_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    dataset = _tiny_set(seed=1, n_clips=5, n_samples=4096)
    config = TrainConfig(
        n_steps=6, batch_size=2, checkpoint_every=3, held_out=0.2, threads=1,
        network=EncoderConfig(channels=4, dilations=(1,)),
    )  # fmt: skip
    train(dataset, tmp_path / "straight.pt", config)

    def interrupt(progress):
        if progress.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "resumed.pt", config, callback=interrupt)
    assert (tmp_path / "resumed.checkpoint.pt").exists()
    train(dataset, tmp_path / "resumed.pt", config)
    assert not (tmp_path / "resumed.checkpoint.pt").exists()
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


def test_training_data_refuses_the_benchmark_folder(tmp_path):
    shared = training_data.benchmark_audio_dir()
    with pytest.raises(ParameterError, match="benchmark"):
        training_data.build(shared / "training", n_synthetic=1, n_midi=0, seed=0)
    with pytest.raises(ParameterError, match="benchmark"):
        training_data.refuse_benchmark_path(shared)
    training_data.refuse_benchmark_path(tmp_path)  # elsewhere is fine


def test_training_data_shards_are_reproducible(tmp_path):
    first = training_data.build(tmp_path / "a", n_synthetic=2, n_midi=0, seed=5)
    second = training_data.build(tmp_path / "b", n_synthetic=2, n_midi=0, seed=5)
    a, b = training_data.load(first), training_data.load(second)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.events, b.events)
    np.testing.assert_array_equal(a.series, b.series)
    assert a.audio.shape == (2, 2**15) and np.abs(a.audio).max(axis=1) == pytest.approx([1.0, 1.0])


def test_midi_file_encodes_notes():
    blob = midi_file([(0.0, 0.5, 60, 100), (0.25, 1.0, 64, 90)], program=3)
    assert blob[:4] == b"MThd" and blob[14:18] == b"MTrk"
    assert int.from_bytes(blob[18:22], "big") == len(blob) - 22
    track = blob[22:]
    assert bytes([0xC0, 3]) in track and bytes([0x90, 60, 100]) in track and bytes([0x80, 64, 0]) in track
    # The second note-on comes 250 ticks (1 ms each) after the first: 250 = 0x81 0x7A as a variable-length number.
    assert bytes([0x81, 0x7A, 0x90, 64, 90]) in track


def test_cli_encoder_train_builds_data_trains_and_writes_a_loadable_card(tmp_path):
    out = tmp_path / "w" / "encoder.pt"
    args = ["encoder", "train", "-o", str(out), "--data", str(tmp_path / "data"), "--synthetic", "4", "--midi", "0"]
    args += ["--steps", "2", "--batch", "2", "--channels", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["n_steps"] == 2 and card["parameters"] == n_parameters(
        EncoderNet(EncoderConfig(channels=4))
    )
    assert Encoder.load(out).sha256 == card["sha256"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output


def test_cli_encoder_train_refuses_the_benchmark_folder(tmp_path):
    inside = training_data.benchmark_audio_dir() / "encoder.pt"
    result = CliRunner().invoke(app, ["encoder", "train", "-o", str(inside), "--data", str(tmp_path), "--midi", "0"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "benchmark" in result.output
    assert not inside.exists()


def test_batch_config_hash_follows_the_encoder_weights(tmp_path, monkeypatch):
    from splat.batch import config_sha256

    config = splat.FitConfig(init="encoder")
    monkeypatch.setattr(encoder_module, "WEIGHTS_DIR", _saved(tmp_path, seed=0).parent)
    first = config_sha256(config)
    monkeypatch.setattr(encoder_module, "WEIGHTS_DIR", _saved(tmp_path / "other", seed=1).parent)
    assert config_sha256(config) != first  # retrained weights: the batch refits
    assert config_sha256(splat.FitConfig(init="analysis")) == config_sha256(splat.FitConfig(init="analysis"))


def test_encoder_start_places_proposals_first_and_spares_at_the_bottom(tmp_path):
    from splat.engines import Region
    from splat.fitting import initial_params

    audio, _ = _three_notes()
    target = audio / np.abs(audio).max()
    bounds = Bounds.for_sample_rate(22050)
    found = Encoder.load(_saved(tmp_path)).proposals(target, 22050, max_atoms=5, bounds=bounds)
    region = Region(start=0, n_samples=target.size, segment_starts=(0,), n_segment=target.size)
    start = initial_params(
        target, region, 22050, 8, bounds, np.random.default_rng(0), tone_peak_db=0.0, init="encoder", proposals=found
    )
    assert start.placed[0].tolist() == [True] * 5 + [False] * 3
    np.testing.assert_allclose(start.values["f0_hz"][0, :5], found.params.f0_hz[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(start.values["decay_s"][0, :5], found.params.decay_s[0].numpy(), rtol=1e-6)
    assert np.all(start.values["gain_db"][0, 5:] == bounds.gain_db.lo + 1)
    np.testing.assert_array_equal(start.modes[0, :5], found.modes.numpy())
    assert np.all(start.modes[0, 5:] == MODES.index("string"))


def test_encoder_start_keeps_a_proposed_series_only_where_the_fit_allows_it(tmp_path):
    from splat.engines import Region
    from splat.fitting import initial_params

    audio, _ = _three_notes()
    target = audio / np.abs(audio).max()
    bounds = Bounds.for_sample_rate(22050)
    found = Encoder.load(_saved(tmp_path)).proposals(target, 22050, max_atoms=5, bounds=bounds)
    membranes = dataclasses.replace(found, modes=torch.full_like(found.modes, MODES.index("membrane")))
    region = Region(start=0, n_samples=target.size, segment_starts=(0,), n_segment=target.size)

    def start_modes(allowed):
        rng = np.random.default_rng(0)
        kwargs = {"tone_peak_db": 0.0, "init": "encoder", "proposals": membranes, "allowed_modes": allowed}
        return initial_params(target, region, 22050, 8, bounds, rng, **kwargs).modes[0]

    assert [MODES[m] for m in start_modes(("string", "membrane"))] == ["membrane"] * 5 + ["string"] * 3
    assert [MODES[m] for m in start_modes(("string", "bar"))] == ["string"] * 8
