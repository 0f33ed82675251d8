"""The noise floor: band layout, time envelope, rendered statistics, and the fast engine's closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splat import floor, loss, spectral
from splat.synth import white_noise

SR = 22050


def _centres() -> torch.Tensor:
    return torch.tensor(floor.band_centres_hz(SR), dtype=torch.float64)


def test_band_centres_run_from_the_lowest_band_to_nyquist():
    centres = floor.band_centres_hz(SR)
    assert len(centres) == floor.N_BANDS
    assert centres[0] == pytest.approx(floor.LOWEST_HZ)
    assert centres[-1] == pytest.approx(SR / 2)
    assert np.allclose(np.diff(np.log(centres)), np.log(centres[1] / centres[0]))


def test_band_shapes_are_a_partition_of_unity_peaking_at_their_centres():
    centres = _centres()
    freqs = torch.linspace(0.0, SR / 2, 5001, dtype=torch.float64)
    shapes = floor.band_shapes(freqs, centres)
    assert torch.allclose(shapes.sum(0), torch.ones_like(freqs))
    assert (shapes >= 0).all()
    at_centres = floor.band_shapes(centres, centres)
    assert torch.allclose(at_centres, torch.eye(floor.N_BANDS, dtype=torch.float64))


@pytest.mark.parametrize("n_fft", [512, 4096])
def test_bin_shares_of_every_band_sum_to_one(n_fft):
    shares = floor.bin_shares(_centres(), n_fft, SR)
    assert shares.shape == (floor.N_BANDS, n_fft // 2 + 1)
    assert (shares >= 0).all()
    assert torch.allclose(shares.sum(-1), torch.ones(floor.N_BANDS, dtype=torch.float64))


def test_neighbouring_segments_crossfade_to_constant_power():
    t = torch.linspace(0.0, 2.0, 4001, dtype=torch.float64)
    starts, ends = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [2.0]])
    power = floor.segment_power(
        t, starts, ends, fade_in=torch.tensor([[False], [True]]), fade_out=torch.tensor([[True], [False]])
    )
    assert torch.allclose(power.sum(0)[t < 2.0], torch.ones(int((t < 2.0).sum()), dtype=torch.float64))
    # The ramp is FADE_S long and centred on the boundary.
    inside = (t - 1.0).abs() < floor.FADE_S / 2 - 1e-3
    assert ((power[0, inside] > 0) & (power[0, inside] < 1)).all()
    assert power[0, t > 1.0 + floor.FADE_S / 2 + 1e-9].abs().max() == 0
    # At the file's start and end the floor stops dead.
    assert power[0, 0] == 1.0 and power[1, t >= 2.0].max() == 0


def test_rendered_floor_has_each_bands_variance_where_its_triangle_is():
    n = 1 << 17
    level_db = torch.full((floor.N_BANDS,), -100.0, dtype=torch.float64)
    band = 15
    level_db[band] = -20.0
    white = white_noise(torch.tensor([3]), n_samples=n)[0].double()
    audio = floor.render(level_db, white, start_s=0.0, end_s=n / SR, first=0, sample_rate=SR, n_file=n)
    assert float(audio.var()) == pytest.approx(10 ** (-20 / 10), rel=0.03)
    spectrum = torch.fft.rfft(audio).abs() ** 2
    freqs = torch.fft.rfftfreq(n, d=1 / SR, dtype=torch.float64)
    centres = _centres()
    outside = (freqs < centres[band - 1]) | (freqs > centres[band + 1])
    assert float(spectrum[outside].sum() / spectrum.sum()) < 1e-6


def test_a_floor_over_a_few_samples_is_finite():
    # 100 samples (a file's last segment can be that short) have bins 220 Hz apart: the
    # lowest bands have none of them, and stay silent.
    n = 100
    white = white_noise(torch.tensor([5]), n_samples=n)[0].double()
    level_db = torch.full((floor.N_BANDS,), -30.0, dtype=torch.float64)
    audio = floor.render(level_db, white, start_s=1.0, end_s=1.0 + n / SR, first=SR, sample_rate=SR, n_file=SR + n)
    assert torch.isfinite(audio).all() and float(audio.abs().max()) > 0.0


def test_fast_engine_floor_matches_the_rendered_floors_mean_spectrogram():
    """The expected spectrogram of the floor against the average of a long rendered one, band by band."""
    n = 1 << 18
    gen = torch.Generator().manual_seed(0)
    level_db = -40.0 + 15.0 * torch.rand(floor.N_BANDS, generator=gen, dtype=torch.float64)
    white = white_noise(torch.tensor([5]), n_samples=n)[0].double()
    audio = floor.render(level_db, white, start_s=0.0, end_s=n / SR, first=0, sample_rate=SR, n_file=n)
    res = spectral.resolutions_for((2048,))
    grid = spectral.Grid(n_window=8192, step=64, pad=1024)
    plan = spectral.Plan(grid, res, sample_rate=SR, device=torch.device("cpu"))
    spans = spectral.FloorSpans.for_segments(torch.tensor([0]), n, n, SR)
    at = spectral.floor_frames(spans, torch.tensor([[2.0]]), plan)  # a window well inside the file
    expected = at[0][0, 0, 0] * (floor.band_powers(level_db.float()) @ plan.floor_shares[0])
    measured = loss.stft_power(audio.float().unsqueeze(0), res[0])[0].mean(0)
    # Each band's energy (over the bins it dominates), averaged over ~500 frames: the narrowest
    # bands hold ~3 bins, so the sampling error is ~3 % there (the bound is ~3 standard errors).
    shares = plan.floor_shares[0]
    owner = shares.argmax(0)
    for b in range(2, floor.N_BANDS - 1):
        bins = owner == b
        ratio = float(measured[bins].sum() / expected[bins].sum())
        assert ratio == pytest.approx(1.0, abs=0.08), (b, ratio)


def test_initial_levels_find_a_stationary_floor():
    n = 32768
    level_db = torch.full((floor.N_BANDS,), -50.0, dtype=torch.float64)
    white = white_noise(torch.tensor([7]), n_samples=n)[0].double()
    audio = floor.render(level_db, white, start_s=0.0, end_s=n / SR, first=0, sample_rate=SR, n_file=n)
    start = floor.quiet_levels_db(audio, SR)
    # A low percentile of noisy per-frame estimates lies a little under the truth; wide bands estimate tightly.
    assert ((start > -53.0) & (start < -49.0))[8:-1].all(), start
    assert (floor.quiet_levels_db(torch.zeros(100, dtype=torch.float64), SR) == -100.0).all()
