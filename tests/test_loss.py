import numpy as np
import pytest
import torch

from splat.loss import NOISE_MEAN_MAGNITUDE_SQUARED, NOISE_MEDIAN_POWER, POWER_FLOOR, SpectralTarget, stft_power
from splat.spectral import Resolution


def _direct(
    target: SpectralTarget, powers: list[torch.Tensor], noises: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """The distance spelled out with autograd-tracked operations (auraloss's definition).

    With `noises`, the spectral convergence compares the noise's mean magnitude
    (sqrt(pi / 4 N) for a Rayleigh magnitude of mean power N) and the log term
    its median power (ln 2 N).
    """
    total = 0.0
    noises = noises or [torch.zeros_like(p) for p in powers]
    for mag, log, norm, power, noise in zip(target.magnitudes, target.logs, target.norms, powers, noises, strict=True):
        model = torch.sqrt((power + np.pi / 4 * noise).clamp_min(POWER_FLOOR))
        typical = torch.sqrt((power + np.log(2.0) * noise).clamp_min(POWER_FLOOR))
        total = total + torch.linalg.vector_norm(mag - model) / norm + (log - torch.log(typical)).abs().mean()
    return total / len(powers)


@pytest.fixture
def pair(rng):
    targets = [torch.as_tensor(rng.uniform(0, 1, size=s) ** 3) for s in [(5, 7), (3, 4)]]
    targets[0][0, 0] = 0.0  # a silent bin: the target sits on the floor
    powers = [torch.as_tensor(rng.uniform(0.05, 1.0, size=t.shape)).requires_grad_(True) for t in targets]
    return SpectralTarget(targets), powers


def test_distance_equals_the_definition(pair):
    target, powers = pair
    assert target.distance(powers).item() == pytest.approx(_direct(target, powers).item(), rel=1e-12)


def test_distance_gradient_equals_autograd_of_the_definition(pair):
    target, powers = pair
    fused = torch.autograd.grad(target.distance(powers), powers)
    direct = torch.autograd.grad(_direct(target, powers), powers)
    for a, b in zip(fused, direct, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-15)


def test_distance_with_noise_equals_the_definition_and_its_gradients_autograd(pair, rng):
    target, powers = pair
    noises = [torch.as_tensor(rng.uniform(0.0, 1.0, size=p.shape)).requires_grad_(True) for p in powers]
    value = target.distance(powers, noises)
    assert value.item() == pytest.approx(_direct(target, powers, noises).item(), rel=1e-12)
    fused = torch.autograd.grad(value, powers + noises)
    direct = torch.autograd.grad(_direct(target, powers, noises), powers + noises)
    for a, b in zip(fused, direct, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-15)


def test_noise_statistics_are_those_of_a_rendered_noise(rng):
    # The constants behind the noise terms: the STFT of gaussian noise has exponentially
    # distributed power in each cell, whose median is ln 2 and mean magnitude squared pi / 4 of its mean.
    power = stft_power(torch.as_tensor(rng.standard_normal((1, 1 << 18))), Resolution(512, 128))[0, :, 10:-10]
    mean = power.mean()
    assert float(power.median() / mean) == pytest.approx(NOISE_MEDIAN_POWER, rel=0.02)
    assert float(power.sqrt().mean() ** 2 / mean) == pytest.approx(NOISE_MEAN_MAGNITUDE_SQUARED, rel=0.02)


def test_distance_gradient_is_zero_below_the_power_floor(pair):
    target, powers = pair
    with torch.no_grad():
        powers[1][0, 0] = POWER_FLOOR / 10
    (grad,) = torch.autograd.grad(target.distance(powers), powers[1])
    assert grad[0, 0].item() == 0.0
    assert torch.count_nonzero(grad).item() == grad.numel() - 1


def test_distance_is_zero_for_the_target_itself(rng):
    t = [torch.as_tensor(rng.uniform(0.1, 1, size=(4, 6)))]
    assert SpectralTarget(t).distance(t).item() == pytest.approx(0.0, abs=1e-12)
