import numpy as np
import pytest
import torch

from splat.loss import POWER_FLOOR, SpectralTarget


def _direct(target: SpectralTarget, powers: list[torch.Tensor]) -> torch.Tensor:
    """The distance spelled out with autograd-tracked operations (auraloss's definition)."""
    total = 0.0
    for mag, log, norm, power in zip(target.magnitudes, target.logs, target.norms, powers, strict=True):
        model = torch.sqrt(power.clamp_min(POWER_FLOOR))
        total = total + torch.linalg.vector_norm(mag - model) / norm + (log - torch.log(model)).abs().mean()
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
