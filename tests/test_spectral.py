import numpy as np
import pytest
import torch

from splat import spectral
from splat.params import AtomParams

SR = 8000


@pytest.fixture
def plan():
    return spectral.Plan(
        spectral.Grid(n_window=2048, step=32, pad=256),
        spectral.resolutions_for((512, 256)),
        sample_rate=SR,
        device=torch.device("cpu"),
    )


def _params(rng, n_atoms: int = 3) -> AtomParams:
    shape = (2, n_atoms)
    values = {
        "time_s": rng.uniform(0.0, 0.2, shape),
        "gain_db": rng.uniform(-20, 0, shape),
        "attack_s": rng.uniform(0.002, 0.01, shape),
        "spread_s": rng.uniform(0.002, 0.01, shape),
        "noise_center_hz": rng.uniform(500, 3000, shape),
        "noise_bandwidth_hz": rng.uniform(200, 1500, shape),
        "f0_hz": rng.uniform(100, 600, shape),
        "inharmonicity": rng.uniform(0, 1e-3, shape),
        "rolloff_db": rng.uniform(1, 10, shape),
        "decay_s": rng.uniform(0.1, 1.0, shape),
        "mix": rng.uniform(0.2, 0.8, shape),
        "short_share": rng.uniform(0.0, 1.0, shape),
        "short_decay_s": rng.uniform(0.03, 0.3, shape),
        "short_rolloff_db": rng.uniform(1, 10, shape),
        "duration_s": rng.uniform(0.05, 0.5, shape),
        "release_s": rng.uniform(0.05, 0.5, shape),
        "formant_hz": rng.uniform(500, 4000, shape),
        "formant_db": rng.uniform(0, 20, shape),
        "f0_glide_cents_per_s": np.zeros(shape),
        "vibrato_hz": rng.uniform(4, 7, shape),
        "vibrato_cents": np.zeros(shape),
    }
    return AtomParams(**{k: torch.as_tensor(v) for k, v in values.items()})


def test_noise_spectra_sum_to_one_over_each_resolution(rng, plan):
    for spectrum in spectral.noise_spectra(_params(rng), plan):
        np.testing.assert_allclose(spectrum.sum(-1).numpy(), 1.0, rtol=1e-2)


def test_resonance_spectra_sum_to_one_over_each_resolution(rng, plan):
    # Partials stay away from DC and Nyquist (f0 >= 100 Hz, rolloff >= 1 dB), so no share leaks out.
    for spectrum in spectral.resonance_spectra(_params(rng), plan, n_partials=8):  # bodies and short parts
        np.testing.assert_allclose(spectrum.sum(-1).numpy(), 1.0, rtol=1e-2)


def test_noise_band_gradient_matches_finite_differences(rng, plan):
    centre = torch.as_tensor(rng.uniform(500, 3000, (1, 3, 1))).requires_grad_(True)
    inv_sigma = torch.as_tensor(1.0 / rng.uniform(50, 300, (1, 3, 2))).requires_grad_(True)
    scale = torch.as_tensor(rng.uniform(0.5, 1.5, (1, 3, 2))).requires_grad_(True)
    bins = [b.double() for b in plan.bins_hz]
    assert torch.autograd.gradcheck(
        lambda c, b, a: spectral._GaussianBands.apply(c, b, a, *bins), (centre, inv_sigma, scale)
    )
