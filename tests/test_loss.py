import numpy as np
import pytest
import torch

from splat.errors import ParameterError
from splat.loss import (
    NOISE_MEAN_MAGNITUDE_SQUARED,
    NOISE_MEDIAN_POWER,
    POWER_FLOOR,
    ErbBands,
    SpectralTarget,
    _torch_band_distance,
    erb_number,
    stft_power,
)
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


# The perceptual (ERB-band) term.

SR = 22050


def _naive_band_distance(targets, powers, noises, sample_rate):
    """The band term spelled out with NumPy loops: bins grouped by floor(ERB number), per-band sums."""
    total = 0.0
    for target, power, noise in zip(targets, powers, noises, strict=True):
        n_bins = target.shape[1]
        freqs = np.arange(n_bins) * sample_rate / (2 * (n_bins - 1))
        cells = np.floor(21.4 * np.log10(1 + 0.00437 * freqs))
        errors = []
        for cell in np.unique(cells):
            members = cells == cell
            m = members.sum()
            rho_sq = m + 2 * max(m - 1, 0) * 4 / 9 + 2 * max(m - 2, 0) / 36
            median = (1 - rho_sq / (9 * m * m)) ** 3
            t = np.maximum(target[:, members].sum(1), POWER_FLOOR)
            model = np.maximum(power[:, members].sum(1) + median * noise[:, members].sum(1), POWER_FLOOR)
            errors.append(np.abs(0.5 * np.log(t) - 0.5 * np.log(model)))
        total += np.mean(errors)
    return total / len(targets)


@pytest.fixture
def spectra(rng):
    shapes = [(6, 257), (3, 1025)]  # n_fft 512 and 2048
    targets = [torch.as_tensor(rng.uniform(0, 1, s) ** 3) for s in shapes]
    powers = [torch.as_tensor(rng.uniform(0, 1, s) ** 3) for s in shapes]
    noises = [torch.as_tensor(rng.uniform(0, 1, s) ** 3) for s in shapes]
    return targets, powers, noises


def test_erb_bands_partition_the_bins_into_runs_at_most_one_erb_wide():
    for n_fft in (512, 4096):
        bands = ErbBands.for_bins(n_fft // 2 + 1, SR)
        index = bands.index.numpy()
        assert index[0] == 0 and np.all(np.diff(index) >= 0) and np.all(np.diff(index) <= 1)
        assert np.array_equal(np.bincount(index), np.diff(bands.starts.numpy()))
        erb = erb_number(torch.arange(n_fft // 2 + 1, dtype=torch.float64) * SR / n_fft).numpy()
        for j in range(bands.n_bands):
            lo, hi = bands.starts[j], bands.starts[j + 1]
            assert erb[hi - 1] - erb[lo] < 1.0
        # 1 ERB per band up to Nyquist (about 36 at 22.05 kHz), minus the ones no bin of a short FFT falls in.
        assert 30 <= bands.n_bands <= 37


def test_erb_number_of_1_khz_is_15_6():
    # Glasberg and Moore's scale: 21.4 log10(1 + 4.37) = 15.62.
    assert float(erb_number(torch.tensor(1000.0))) == pytest.approx(15.62, abs=0.01)


@pytest.mark.parametrize("n_fft", [512, 4096])
def test_band_noise_median_is_that_of_a_rendered_noise(rng, n_fft):
    """Each band's median-over-mean factor against the band powers of a white noise's STFT."""
    bands = ErbBands.for_bins(n_fft // 2 + 1, SR)
    noise = torch.as_tensor(rng.standard_normal((1, 1 << 19)))
    pooled = bands.pool(stft_power(noise, Resolution(n_fft, n_fft // 4))[0]).double()
    measured = (pooled.median(0).values / pooled.mean(0)).numpy()
    # Skip the band holding DC (real-valued there: not the complex statistics of the others).
    np.testing.assert_allclose(bands.noise_median.numpy()[1:], measured[1:], rtol=0.05)
    # A one-bin band's is the exponential's ln 2 (1.3 % off in Wilson and Hilferty's form); wide ones near 1.
    sizes = torch.diff(bands.starts)
    assert torch.all((bands.noise_median[sizes == 1] - np.log(2.0)).abs() < 0.01)
    assert bands.noise_median[sizes.argmax()] > 0.97


def test_band_distance_equals_the_naive_definition(spectra):
    targets, powers, noises = spectra
    target = SpectralTarget(targets, sample_rate=SR)
    expected = _naive_band_distance(*(list(map(np.asarray, x)) for x in spectra), SR)
    assert target.band_distance(powers, noises).item() == pytest.approx(expected, rel=1e-5)
    zero_noise = [np.zeros(p.shape) for p in powers]
    expected = _naive_band_distance([t.numpy() for t in targets], [p.numpy() for p in powers], zero_noise, SR)
    assert target.band_distance(powers).item() == pytest.approx(expected, rel=1e-5)


def test_band_distance_is_zero_for_the_target_and_positive_otherwise(spectra):
    targets, powers, _ = spectra
    target = SpectralTarget(targets, sample_rate=SR)
    assert target.band_distance(targets).item() == pytest.approx(0.0, abs=1e-6)
    assert target.band_distance(powers).item() > 0.1
    # Moving power between two bins of one band leaves the band term unchanged (not the per-bin one).
    moved = [t.clone() for t in targets]
    first = int(target.bands[1].starts[-2])  # the top band of the 2048-point FFT: many bins
    moved[1][:, first] += moved[1][:, first + 1]
    moved[1][:, first + 1] = 0.0
    assert target.band_distance(moved).item() == pytest.approx(0.0, abs=1e-6)
    assert target.distance(moved).item() > 0.01


def test_perceptual_weight_adds_the_band_term_to_the_distance(spectra):
    targets, powers, noises = spectra
    plain = SpectralTarget(targets, sample_rate=SR)
    weighted = SpectralTarget(targets, sample_rate=SR, perceptual_weight=0.7)
    expected = plain.distance(powers, noises) + 0.7 * plain.band_distance(powers, noises)
    assert weighted.distance(powers, noises).item() == pytest.approx(expected.item(), rel=1e-6)


def test_band_distance_gradient_equals_autograd_of_the_definition(spectra):
    """Float32 on the CPU takes the native kernel (where it builds); its closed-form gradient against autograd."""
    targets, powers, noises = spectra
    target = SpectralTarget([t.float() for t in targets], sample_rate=SR)
    leaves = [t.float().requires_grad_(True) for t in powers + noises]
    fused = torch.autograd.grad(target.band_distance(leaves[:2], leaves[2:]), leaves)
    total = sum(
        _torch_band_distance(p, n, b, log)
        for p, n, b, log in zip(leaves[:2], leaves[2:], target.bands, target.band_logs, strict=True)
    )
    direct = torch.autograd.grad(total / 2, leaves)
    for a, b in zip(fused, direct, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-9)


def test_perceptual_term_is_refused_without_a_sample_rate_or_with_a_negative_weight(spectra):
    targets = spectra[0]
    with pytest.raises(ParameterError, match="perceptual_weight"):
        SpectralTarget(targets, perceptual_weight=1.0)
    with pytest.raises(ParameterError, match="perceptual_weight"):
        SpectralTarget(targets, sample_rate=SR, perceptual_weight=-1.0)
    with pytest.raises(ParameterError, match="sample rate"):
        SpectralTarget(targets).band_distance(targets)
