"""Pure tensor functions of the atom model: envelopes, resonance power, partials, kernels.

No state, no I/O. Conventions: per-atom signals have shape (batch, atoms, samples)
or (batch, atoms, points) on a coarser time grid; per-atom parameters broadcast
as (batch, atoms, 1). Times are in seconds, frequencies in Hz.

The model of one atom, for u = time since its onset (seconds):

    burst(u)     = e(u) * band_noise(u)                                         (noise branch)
    resonance(u) = sqrt((1 - s) P_body(u)) * sum_k alpha_k cos(2 pi f_k u + phi_k)    (body)
                 - sqrt(s P_short(u))     * sum_k beta_k  sin(2 pi f_k u + phi_k)    (short part)
    atom(u)      = g * r(u) * (sqrt(1 - mix) * burst(u) + sqrt(mix) * resonance(u))

P_body is the mean power that the burst envelope e(u) produces when it drives a
resonator of unit energy whose partials all fall by 60 dB in `decay_s`:
P = e^2 * h^2 with h^2(n) = (1 - q) q^n, q = exp(-2 / (tau * sr)),
tau = decay_s / ln(1000). So the resonance carries the burst's energy, rings
with the resonator's decay, and `mix` is the share of the atom's energy in it.
P_short is the same with `short_decay_s`; alpha_k and beta_k follow
`rolloff_db` and `short_rolloff_db` under one formant (`formant_gains`), and
s = `short_share`. The short partials are in quadrature with the body's, so
partial k's power is exactly
(1 - s) alpha_k^2 P_body + s beta_k^2 P_short: two separable parts whose sum
lets the upper partials of a strike fade before the fundamental.

r(u) is the release: 1 until `duration_s` after the onset, then a fall of
60 dB every `release_s` seconds (a damper on a string, a bow leaving it), on
top of the atom's own decay (`release_gain`).

The pitch may move: every partial's frequency is f_k * 2^(bend(u) / 1200), with
bend(u) = glide * min(u, duration_s) + depth * sin(2 pi rate u) in cents
(`pitch_bend_cents`), so 2 pi f_k u above becomes 2 pi f_k Phi(u), Phi the
integral of 2^(bend / 1200) from the onset (`warped_time_s`). The partials'
weights stay those of the atom's f0, and a partial is silent while it is at or
above Nyquist.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from splat import native

LN_1000 = math.log(1000.0)  # amplitude ratio of a 60 dB decay, as a natural log
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
HANN_MEAN_SQUARE = 0.375  # mean of w^2 for a Hann window
#: Width of an atom's formant at half its boost (in power), in octaves.
FORMANT_OCTAVES = 1.0
#: Lowest exponent passed to exp (e^-80 ~ 2e-35, below any level that matters). Besides
#: avoiding underflow, this matters for speed: torch's CPU exp is 10-40x slower on inputs
#: below about -87, where float32 results underflow.
EXP_FLOOR = -80.0


def burst_envelope(u_s: Tensor, attack_s: Tensor, spread_s: Tensor, *, shape: str) -> Tensor:
    """Amplitude envelope of the excitation burst, peak 1 at u = attack_s, 0 for u < 0.

    gamma:    e(u) = (u/a)^k exp(k (1 - u/a)) = (u/a)^k exp(k - u/theta),  theta = a / k
    gaussian: e(u) = exp(-(u - a)^2 / (2 spread^2))

    For the gamma shape, e is (up to scale) a gamma density of mode a and
    standard deviation `spread_s` = sqrt(k + 1) theta (`gamma_scale_s` solves
    for theta). A spread well below the attack gives a peak of that width
    (k ~ (a / spread)^2); a spread well above it gives a near-instant rise and a
    tail that falls as exp(-u / spread), as a struck drum or string does.

    Args:
        u_s: Time since the onset in seconds, shape (batch, atoms, points).
        attack_s: Time from onset to peak, shape (batch, atoms, 1).
        spread_s: Width of the burst in seconds, shape (batch, atoms, 1).
        shape: "gamma" or "gaussian".

    Returns:
        Envelope, shape (batch, atoms, points).
    """
    return _BurstEnvelope.apply(u_s, attack_s, spread_s, shape == "gaussian")


def gamma_scale_s(attack_s: Tensor, spread_s: Tensor) -> Tensor:
    """Scale theta (s) of the gamma burst of mode `attack_s` and standard deviation `spread_s`.

    Solves a = k theta, s^2 = (k + 1) theta^2 for theta, i.e. theta^2 + a theta - s^2 = 0,
    written without the cancellation of (sqrt(a^2 + 4 s^2) - a) / 2. Shapes broadcast.
    """
    return 2.0 * spread_s**2 / (torch.sqrt(attack_s**2 + 4.0 * spread_s**2) + attack_s)


class _BurstEnvelope(torch.autograd.Function):
    """e = exp(L) for u >= 0 (else 0), L clamped at EXP_FLOOR; gradient e dL/d(u, a, s) in closed form.

    gamma, with x = u / a, m = ln x + 1 - x (so L = k m), k = a / theta = a (r + a) / (2 s^2)
    and r = sqrt(a^2 + 4 s^2):
        dk/da = (r + a)^2 / (2 r s^2),  dk/ds = -(a / s) dk/da  (k depends on a / s only)
        dL/du = k (1/u - 1/a),  dL/da = m dk/da - k (1 - x) / a,  dL/ds = m dk/ds
    gaussian, with z = (u - a) / s (L = -z^2 / 2):
        dL/du = -z / s,  dL/da = z / s,  dL/ds = z^2 / s
    The gradient is zero where e = 0 (before the onset) and where L is clamped.
    """

    @staticmethod
    def forward(ctx, u_s: Tensor, attack_s: Tensor, spread_s: Tensor, gaussian: bool) -> Tensor:
        if gaussian:
            z = (u_s - attack_s) / spread_s
            log_e = -0.5 * z * z
        else:
            k = attack_s / gamma_scale_s(attack_s, spread_s)
            u = u_s.clamp_min(1e-9)
            x = u / attack_s
            m = torch.log(x) + 1.0 - x
            log_e = k * m
        live = (u_s >= 0) & (log_e > EXP_FLOOR)
        env = torch.exp(log_e.clamp_min(EXP_FLOOR)).masked_fill_(u_s < 0, 0.0)
        ctx.gaussian, ctx.u_shape = gaussian, u_s.shape
        if gaussian:
            ctx.save_for_backward(env, live, attack_s, spread_s, z)
        else:
            ctx.save_for_backward(env, live, attack_s, spread_s, u, x, m, k)
        return env

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        env, live, attack_s, spread_s, *rest = ctx.saved_tensors
        ge = (grad * env).masked_fill_(~live, 0.0)  # dL_loss / dL_envelope
        if ctx.gaussian:
            (z,) = rest
            dz = ge * z / spread_s  # d/du of L is -z / s
            grad_u, grad_a, grad_s = -dz, dz, dz * z
        else:
            u, x, m, k = rest
            grad_u = ge * k * (1.0 / u - 1.0 / attack_s)
            r = torch.sqrt(attack_s**2 + 4.0 * spread_s**2)
            dk_da = (r + attack_s) ** 2 / (2.0 * r * spread_s**2)
            grad_a = ge * (dk_da * m - k * (1.0 - x) / attack_s)
            grad_s = ge * (-(attack_s / spread_s) * dk_da * m)
        return (
            grad_u.sum_to_size(ctx.u_shape),
            grad_a.sum_to_size(attack_s.shape),
            grad_s.sum_to_size(spread_s.shape),
            None,
        )


def release_gain(u_s: Tensor, duration_s: Tensor, release_s: Tensor, *, power: bool) -> Tensor:
    """Release window r(u): 1 until `duration_s`, then falling 60 dB per `release_s` seconds.

    r(u) = exp(-ln(1000) * max(0, u - duration_s) / release_s) in amplitude, its
    square in power. It scales the whole atom, so its expected power spectrogram
    stays separable (power on the grid times the same spectrum).

    Args:
        u_s: Time since the onset in seconds, shape (batch, atoms, points).
        duration_s: Time from the onset to the release, shape (batch, atoms, 1).
        release_s: 60 dB fall time after the release, shape (batch, atoms, 1).
        power: Return r^2 (for power envelopes) instead of r.

    Returns:
        Window, shape (batch, atoms, points), in (0, 1].
    """
    rate = (2.0 if power else 1.0) * LN_1000 / release_s
    return torch.exp((-rate * torch.relu(u_s - duration_s)).clamp_min(EXP_FLOOR))


def resonance_power(e2: Tensor, decay_s: Tensor, *, step_samples: int, sample_rate: int) -> Tensor:
    """Mean power of a unit-energy resonator driven by a burst of power `e2`.

    Computes y[n] = (1 - q1) * sum_{m <= n} w_{n-m} e2[m] Q^(n - m), with q1 the
    per-sample power decay, Q = q1^step the decay per grid step, w = step
    (samples per cell) except w_0 = (step + 1) / 2 (half of the own cell):
    y = (1 - q1) (step r - (step - 1) / 2 e2) with r the decayed sum of e2
    (`decayed_sum`). With step 1 this is exactly the sample-level recursion.

    Args:
        e2: Burst power on a grid of `step_samples` samples, shape (..., points).
        decay_s: 60 dB decay time, shape (..., 1), broadcasting with `e2`: e.g.
            e2 of shape (batch, atoms, 1, points) and decay_s of shape
            (batch, atoms, decays, 1) give every decay of one burst.
        step_samples: Grid step in samples (1 for audio rate).
        sample_rate: Sample rate in Hz.

    Returns:
        Resonance power on the same grid, shape (broadcast of both, points).
    """
    log_q1 = -2.0 * LN_1000 / (decay_s * sample_rate)  # per-sample power decay, as a log
    r = decayed_sum(e2, step_samples * log_q1)
    return -torch.expm1(log_q1) * (step_samples * r - 0.5 * (step_samples - 1) * e2)


def decayed_sum(x: Tensor, log_q: Tensor) -> Tensor:
    """r[n] = sum_{m <= n} Q^(n - m) x[m] (the recursion r[n] = Q r[n-1] + x[n]), Q = exp(log_q).

    Evaluated in blocks of B ~ sqrt(points) samples, with matrix products
    instead of a loop over samples: within each block r is x times the
    lower-triangular Toeplitz matrix Q^(i - j); each block's last value, carried
    through the blocks before it (a second such matrix, in steps of Q^B), is
    added to the next block as Q^(i + 1) times it. Every weight is a power
    Q^k <= 1 with k >= 0, so nothing overflows, and for x >= 0 (a burst's power)
    every output is a sum of non-negative terms, so it keeps float32's relative
    precision (an FFT convolution spreads ~1e-7 of the largest value over every
    output instead).

    The gradient is written out (`_DecayedSum`): x's is the same sum run
    backwards in time over the incoming gradient, and log_q's follows from
    dr[n]/dlog_q = Q (r[n-1] + dr[n-1]/dlog_q).

    float32 on the CPU runs the recursion itself in a native loop (`splat.native`,
    16 rows at a time, in float64), which is what the renderer's audio-rate
    resonances take; powers below 1e-30 are flushed to zero there.

    Args:
        x: Shape (..., points).
        log_q: Log of the decay per point (<= 0), shape (..., 1), broadcasting with x.

    Returns:
        Shape (broadcast of both, points).
    """
    return _DecayedSum.apply(x, log_q)


def _powers_table(log_q: Tensor, n: int, scale: int) -> Tensor:
    """Lower-triangular Toeplitz matrices Q^(scale (i - j)) for 0 <= j <= i < n (else 0), shape (..., n, n).

    From w = [0 (n - 1 times), Q^0, ..., Q^(scale (n - 1))]: M[i, j] = w[n - 1 + i - j], whose
    column-reversed matrix is w[i + j'], a strided view of w; one flip copies it out.
    """
    k = torch.arange(n, device=log_q.device, dtype=log_q.dtype)
    powers = torch.exp((k * (scale * log_q)).clamp_min(EXP_FLOOR))  # (..., n)
    w = torch.cat([powers.new_zeros(*powers.shape[:-1], n - 1), powers], dim=-1)
    hankel = w.as_strided((*w.shape[:-1], n, n), (*w.stride()[:-1], 1, 1))
    return hankel.flip(-1)


def _block_sum(x: Tensor, log_q: Tensor, within: Tensor, across: Tensor, *, reverse: bool) -> Tensor:
    """The decayed sum of x (forwards, or backwards in time) given both tables of `_powers_table`."""
    n = x.shape[-1]
    block = within.shape[-1]
    if reverse:
        x = x.flip(-1)
    blocks = torch.nn.functional.pad(x, (0, across.shape[-1] * block - n)).unflatten(-1, (-1, block))
    local = blocks @ within.transpose(-1, -2)  # (..., blocks, block): each block on its own
    ends = across @ local[..., -1:]  # (..., blocks, 1): r at each block's last point
    carried = torch.nn.functional.pad(ends[..., :-1, :], (0, 0, 1, 0))  # r at the end of the block before
    rise = torch.exp((torch.arange(1, block + 1, device=x.device, dtype=x.dtype) * log_q).clamp_min(EXP_FLOOR))
    out = (local + carried * rise.unsqueeze(-2)).flatten(-2)[..., :n]
    return out.flip(-1) if reverse else out


class _DecayedSum(torch.autograd.Function):
    """r = decayed_sum(x, log_q), with g = dL/dr:

    dL/dx[m] = sum_{n >= m} Q^(n - m) g[n]                     (the sum backwards in time),
    dL/dlog_q = sum_n g[n] dr[n]/dlog_q = sum_m Q r[m - 1] dL/dx[m]   (r[-1] = 0).
    """

    @staticmethod
    def forward(ctx, x: Tensor, log_q: Tensor) -> Tensor:
        ctx.x_shape = x.shape
        if native.usable(x, log_q):
            shape = torch.broadcast_shapes(x.shape, log_q.shape)
            x_rows = x.expand(shape).contiguous()
            q_rows = log_q.expand(*shape[:-1], 1).contiguous()
            r = torch.empty_like(x_rows)
            rows, n = x_rows.numel() // shape[-1], shape[-1]
            native.library().decayed_sum(native.ptr(x_rows), native.ptr(q_rows), rows, n, native.ptr(r))
            ctx.native = True
            ctx.save_for_backward(log_q, r, q_rows)
            return r
        ctx.native = False
        n = x.shape[-1]
        block = math.isqrt(max(n - 1, 0)) + 1  # the smallest B with B^2 >= n
        within = _powers_table(log_q, block, 1)
        across = _powers_table(log_q, -(-n // block), block)
        r = _block_sum(x, log_q, within, across, reverse=False)
        ctx.save_for_backward(log_q, r, within, across)
        return r

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if ctx.native:
            log_q, r, q_rows = ctx.saved_tensors
            grad = grad.contiguous()
            grad_in, grad_q = torch.empty_like(r), torch.empty_like(q_rows)
            native.library().decayed_sum_backward(
                *map(native.ptr, (grad, q_rows, r)), q_rows.numel(), r.shape[-1], *map(native.ptr, (grad_in, grad_q))
            )
            return grad_in.sum_to_size(ctx.x_shape), grad_q.sum_to_size(log_q.shape)
        log_q, r, within, across = ctx.saved_tensors
        grad_in = _block_sum(grad, log_q, within, across, reverse=True)
        grad_x = grad_in.sum_to_size(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_log_q = None
        if ctx.needs_input_grad[1]:
            previous = torch.nn.functional.pad(r[..., :-1], (1, 0))
            grad_log_q = (torch.exp(log_q) * (previous * grad_in).sum(-1, keepdim=True)).sum_to_size(log_q.shape)
        return grad_x, grad_log_q


def partial_frequencies(f0_hz: Tensor, inharmonicity: Tensor, ratio: Tensor) -> Tensor:
    """Partial frequencies f = r f0 sqrt(1 + B r^2), broadcasting.

    r is the partial's ratio in its series (`splat.modes`): k for a string (a stiff
    string's f_k = k f0 sqrt(1 + B k^2)), a membrane's or a bar's mode ratio otherwise.
    """
    return ratio * f0_hz * torch.sqrt(1.0 + inharmonicity * ratio * ratio)


def partial_index(freq_hz: Tensor, f0_hz: Tensor, inharmonicity: Tensor) -> Tensor:
    """Inverse of `partial_frequencies`: the real ratio r (k for a string) whose partial lies at `freq_hz`.

    Solves r^2 + B r^4 = x^2 (x = f / f0) as r^2 = 2 x^2 / (1 + sqrt(1 + 4 B x^2)),
    which stays exact as B -> 0.
    """
    r = freq_hz / f0_hz
    return torch.sqrt(2.0 * r * r / (1.0 + torch.sqrt(1.0 + 4.0 * inharmonicity * r * r)))


def n_audible_partials(
    f0_hz: Tensor, inharmonicity: Tensor, *, nyquist_hz: float, n_partials: int, ratios: Tensor | None = None
) -> Tensor:
    """Number of partials strictly below Nyquist, at most `n_partials` (integer tensor, no gradient).

    Args:
        f0_hz, inharmonicity: Shape (..., 1) with `ratios`, else any shape.
        ratios: Each atom's partial ratios in increasing order (`splat.modes.partial_ratios`),
            shape (..., n_partials); None for strings (ratio k), counted in closed form.

    Returns:
        Counts, the shape of `f0_hz`.
    """
    with torch.no_grad():
        # Partials are audible up to the real ratio at Nyquist, less 1e-6 (rounding at Nyquist itself).
        top = partial_index(torch.full_like(f0_hz, nyquist_hz), f0_hz, inharmonicity) - 1e-6
        if ratios is None:
            return torch.floor(top).clamp(0, n_partials)
        return (ratios <= top).sum(-1, keepdim=True).to(f0_hz.dtype).clamp(max=n_partials)


def partial_weights(rolloff_db: Tensor, k: Tensor, n_active: Tensor, gains: Tensor | None = None) -> Tensor:
    """Energy share c_k of partial k: a geometric roll-off, optionally shaped by per-partial gains.

    Without gains, c_k = rho^(k-1) (1 - rho) / (1 - rho^K) for 1 <= k <= K, else 0,
    where rho = 10^(-rolloff_db / 10) is the power ratio between neighbouring
    partials and K = `n_active`: normalised in closed form. With gains g_k,
    c_k is proportional to rho^(k-1) g_k and normalised by its sum over the last
    axis, which must then hold every partial 1..max K. Either way the weights of
    the K audible partials sum to 1.

    Args:
        rolloff_db: Level drop per partial in dB, shape (..., 1) broadcastable to k.
        k: Partial numbers (float), any shape broadcastable with the others.
        n_active: Audible partial count K, broadcastable.
        gains: Power gain of each partial (`formant_gains`), broadcastable, or None.
    """
    log_rho = -rolloff_db * (math.log(10.0) / 10.0)
    inside = (k >= 1) & (k <= n_active)
    geometric = torch.exp(((k - 1.0).clamp_min(0) * log_rho).clamp_min(EXP_FLOOR))
    if gains is None:
        norm = -torch.expm1(log_rho) / -torch.expm1(n_active.clamp_min(1) * log_rho)
        return torch.where(inside, geometric * norm, torch.zeros_like(k * norm))
    shaped = torch.where(inside, geometric * gains, torch.zeros_like(geometric * gains))
    return shaped / shaped.sum(-1, keepdim=True).clamp_min(1e-30)


def formant_gains(freq_hz: Tensor, formant_hz: Tensor, formant_db: Tensor) -> Tensor:
    """Power gain of a partial at `freq_hz` from the atom's formant: a bump on a log-frequency axis.

    g = 1 + (10^(formant_db / 10) - 1) exp(-(log2(f / formant_hz))^2 / (2 s^2)), with
    s = FORMANT_OCTAVES / FWHM_PER_SIGMA: `formant_db` at the centre, half of it in
    power FORMANT_OCTAVES / 2 away, 1 (no change) far from it or at 0 dB.
    """
    z = torch.log2(freq_hz / formant_hz) * (FWHM_PER_SIGMA / FORMANT_OCTAVES)
    return 1.0 + torch.expm1(formant_db * (math.log(10.0) / 10.0)) * torch.exp(-0.5 * z * z)


def partial_phases(k: Tensor, *, n_partials: int) -> Tensor:
    """Deterministic low-crest-factor starting phases (Schroeder): pi k (k - 1) / n_partials."""
    return math.pi * k * (k - 1.0) / n_partials


def partial_sums(
    freqs_hz: Tensor,
    phases: Tensor,
    cos_amps: Tensor,
    sin_amps: Tensor,
    first_s: Tensor,
    *,
    n_samples: int,
    sample_rate: int,
    block: int = 256,
) -> tuple[Tensor, Tensor]:
    """Sums of partials sum_k a_k cos(x_k(t)) and sum_k b_k sin(x_k(t)), x_k(t) = 2 pi f_k t + phi_k.

    At t = first_s + n / sample_rate for n < n_samples. Each sample n = j * block + r
    splits its phase into the block's start and the offset r, and
    cos(A + R) = cos A cos R - sin A sin R (and sin alike), so both sums over k are
    one matrix product of (blocks x 2 partials) by (2 partials x block): the
    sines and cosines are taken K (n / block + block) times instead of 2 K n.
    Compute in float64: the phases reach 2 pi f t ~ 1e5 rad within seconds.

    Args:
        freqs_hz, phases, cos_amps, sin_amps: Per partial, shape (..., K).
        first_s: Time of sample 0, shape (..., 1).
        n_samples: Samples to produce.
        sample_rate: Sample rate in Hz.
        block: Samples per block.

    Returns:
        The cosine and the sine sums, each of shape (..., n_samples).
    """
    n_blocks = -(-n_samples // block)
    omega = (2.0 * math.pi * freqs_hz).unsqueeze(-1)  # (..., K, 1)
    like = {"device": freqs_hz.device, "dtype": freqs_hz.dtype}
    block_s = torch.arange(n_blocks, **like) * (block / sample_rate)
    start = omega * (first_s.unsqueeze(-1) + block_s) + phases.unsqueeze(-1)  # (..., K, blocks)
    offset = omega * (torch.arange(block, **like) / sample_rate)  # (..., K, block)
    cos_a, sin_a = torch.cos(start), torch.sin(start)
    a, b = cos_amps.unsqueeze(-1), sin_amps.unsqueeze(-1)
    # Rows of the cosine sum: [a cos A, -a sin A]; of the sine sum: [b sin A, b cos A]; columns [cos R; sin R].
    left = torch.stack([torch.cat([a * cos_a, -a * sin_a], dim=-2), torch.cat([b * sin_a, b * cos_a], dim=-2)], dim=-3)
    right = torch.cat([torch.cos(offset), torch.sin(offset)], dim=-2).unsqueeze(-3)  # (..., 1, 2K, block)
    sums = (left.transpose(-1, -2) @ right).flatten(-2)[..., :n_samples]  # (..., 2, n_samples)
    return sums[..., 0, :], sums[..., 1, :]


def pitch_bend_cents(
    u_s: Tensor, glide_cents_per_s: Tensor, vibrato_hz: Tensor, vibrato_cents: Tensor, duration_s: Tensor
) -> Tensor:
    """An atom's pitch relative to its `f0_hz`, in cents, u seconds after its onset.

    bend(u) = glide * min(u, duration_s) + depth * sin(2 pi rate u) for u >= 0, and 0 before
    the onset: the pitch glides while the note is held and keeps the pitch it reached
    through the release; the vibrato starts at the onset, upwards for a positive depth.

    Args:
        u_s: Time since the onset in seconds, shape (..., points).
        glide_cents_per_s, vibrato_hz, vibrato_cents, duration_s: Shape (..., 1), broadcasting.

    Returns:
        The bend in cents, shape (..., points).
    """
    u = u_s.clamp_min(0.0)
    return glide_cents_per_s * torch.minimum(u, duration_s) + vibrato_cents * torch.sin(2.0 * math.pi * vibrato_hz * u)


def pitch_bend_slope_cents_per_s(
    u_s: Tensor, glide_cents_per_s: Tensor, vibrato_hz: Tensor, vibrato_cents: Tensor, duration_s: Tensor
) -> Tensor:
    """d bend / du of `pitch_bend_cents` (same arguments): glide while held, plus the vibrato's, after the onset."""
    after = u_s >= 0
    glide = glide_cents_per_s * (after & (u_s < duration_s))
    omega = 2.0 * math.pi * vibrato_hz
    return glide + after * vibrato_cents * omega * torch.cos(omega * u_s.clamp_min(0.0))


def pitch_moves(glide_cents_per_s: Tensor, vibrato_cents: Tensor) -> bool:
    """Whether any atom's pitch moves (a glide or a vibrato depth other than 0)."""
    return bool(torch.any(glide_cents_per_s != 0) or torch.any(vibrato_cents != 0))


def warped_time_s(u_s: Tensor, bend_cents: Tensor, *, sample_rate: int) -> Tensor:
    """Phi(u) = integral from 0 to u of 2^(bend(v) / 1200) dv: a partial at f Hz (at the atom's f0)
    has the phase 2 pi f Phi(u) + phi.

    Phi(u) = u + integral of (2^(bend / 1200) - 1), the integral by the trapezoidal rule over the
    samples (in float64: an error of ~1e-7 s after a second of a 150-cent vibrato at 12 Hz).
    The bend is 0 before the onset, so Phi(u) = u there exactly, and for a fixed pitch everywhere.

    Args:
        u_s: Time since the onset in seconds at consecutive samples, shape (..., samples),
            starting at or before the onset (u_s[..., 0] <= 0).
        bend_cents: `pitch_bend_cents` at those times, same shape.
        sample_rate: Sample rate in Hz.

    Returns:
        Phi in seconds, same shape and dtype.
    """
    excess = torch.expm1(bend_cents * (math.log(2.0) / 1200.0))  # 2^(bend / 1200) - 1
    steps = (excess[..., 1:] + excess[..., :-1]) * (0.5 / sample_rate)
    return u_s + torch.nn.functional.pad(torch.cumsum(steps, dim=-1), (1, 0))


def moving_partial_sums(
    freqs_hz: Tensor,
    phases: Tensor,
    cos_amps: Tensor,
    sin_amps: Tensor,
    warped_s: Tensor,
    scale: Tensor,
    *,
    nyquist_hz: float,
    block: int = 4096,
) -> tuple[Tensor, Tensor]:
    """`partial_sums` for a moving pitch: sum_k a_k cos(x_k) and sum_k b_k sin(x_k), x_k = 2 pi f_k Phi + phi_k.

    Partial k sounds at f_k * scale(t); while that is at or above Nyquist it is silent (its
    weight stays in the normalisation: the partials audible at the atom's f0 share its energy).
    Computed `block` samples at a time, so memory stays at (..., K, block) whatever the length;
    the gradient recomputes each block (`_MovingPartialSums`). Compute in float64.

    Args:
        freqs_hz, phases, cos_amps, sin_amps: Per partial at the atom's f0, shape (..., K).
        warped_s: Phi at each sample (`warped_time_s`), shape (..., samples).
        scale: Frequency factor 2^(bend / 1200) at each sample, same shape.
        nyquist_hz: Half the sample rate.
        block: Samples per block.

    Returns:
        The cosine and the sine sums, each of shape (..., samples).
    """
    return _MovingPartialSums.apply(freqs_hz, phases, cos_amps, sin_amps, warped_s, scale, nyquist_hz, block)


class _MovingPartialSums(torch.autograd.Function):
    """C = sum_k a_k m_k cos x_k, S = sum_k b_k m_k sin x_k, x_k = 2 pi f_k Phi + phi_k, m_k = [f_k scale < Nyquist].

    With gc = dL/dC, gs = dL/dS and dx_k = m_k (b_k gs cos x_k - a_k gc sin x_k):
    dL/da_k = sum gc m_k cos x_k, dL/db_k = sum gs m_k sin x_k, dL/dphi_k = sum dx_k,
    dL/df_k = 2 pi sum dx_k Phi, dL/dPhi = 2 pi sum_k f_k dx_k (sums over samples, then partials).
    The mask has no gradient.
    """

    @staticmethod
    def _block(freqs: Tensor, phases: Tensor, warped: Tensor, scale: Tensor, nyquist: float) -> tuple[Tensor, Tensor]:
        """m cos x and m sin x over one block, shape (..., K, block)."""
        x = (2.0 * math.pi) * freqs.unsqueeze(-1) * warped.unsqueeze(-2) + phases.unsqueeze(-1)
        live = freqs.unsqueeze(-1) * scale.unsqueeze(-2) < nyquist
        return torch.cos(x) * live, torch.sin(x) * live

    @staticmethod
    def forward(ctx, freqs, phases, cos_amps, sin_amps, warped, scale, nyquist, block):  # type: ignore[override]
        ctx.save_for_backward(freqs, phases, cos_amps, sin_amps, warped, scale)
        ctx.nyquist, ctx.block = nyquist, block
        cos_sums, sin_sums = [], []
        a, b = cos_amps.unsqueeze(-2), sin_amps.unsqueeze(-2)  # (..., 1, K)
        for lo in range(0, warped.shape[-1], block):
            c, s = _MovingPartialSums._block(
                freqs, phases, warped[..., lo : lo + block], scale[..., lo : lo + block], nyquist
            )
            cos_sums.append((a @ c).squeeze(-2))
            sin_sums.append((b @ s).squeeze(-2))
        return torch.cat(cos_sums, dim=-1), torch.cat(sin_sums, dim=-1)

    @staticmethod
    def backward(ctx, grad_cos: Tensor, grad_sin: Tensor) -> tuple[Tensor | None, ...]:
        freqs, phases, cos_amps, sin_amps, warped, scale = ctx.saved_tensors
        a, b = cos_amps.unsqueeze(-1), sin_amps.unsqueeze(-1)  # (..., K, 1)
        grad_f, grad_phi = torch.zeros_like(freqs), torch.zeros_like(phases)
        grad_a, grad_b = torch.zeros_like(cos_amps), torch.zeros_like(sin_amps)
        grad_warped = []
        for lo in range(0, warped.shape[-1], ctx.block):
            hi = lo + ctx.block
            c, s = _MovingPartialSums._block(freqs, phases, warped[..., lo:hi], scale[..., lo:hi], ctx.nyquist)
            gc, gs = grad_cos[..., lo:hi].unsqueeze(-1), grad_sin[..., lo:hi].unsqueeze(-1)  # (..., block, 1)
            grad_a += (c @ gc).squeeze(-1)
            grad_b += (s @ gs).squeeze(-1)
            dx = b * c * gs.transpose(-1, -2) - a * s * gc.transpose(-1, -2)  # (..., K, block)
            grad_phi += dx.sum(-1)
            grad_f += (2.0 * math.pi) * (dx @ warped[..., lo:hi].unsqueeze(-1)).squeeze(-1)
            grad_warped.append((2.0 * math.pi) * (freqs.unsqueeze(-2) @ dx).squeeze(-2))
        needs = ctx.needs_input_grad
        return (
            grad_f if needs[0] else None,
            grad_phi if needs[1] else None,
            grad_a if needs[2] else None,
            grad_b if needs[3] else None,
            torch.cat(grad_warped, dim=-1) if needs[4] else None,
            None,
            None,
            None,
        )


def full_circle_mean(power: Tensor, n: int) -> Tensor:
    """Mean over all n DFT bins of a real signal's power given on its n // 2 + 1 rfft bins.

    DC (and Nyquist, for even n) appear once on the full circle, every other bin twice.

    Args:
        power: Power on the rfft bins, last axis of length n // 2 + 1.

    Returns:
        The mean, with the last axis kept (length 1).
    """
    weights = torch.full((power.shape[-1],), 2.0, dtype=power.dtype, device=power.device)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return (power * weights).sum(-1, keepdim=True) / n


def band_shape(freq_hz: Tensor, center_hz: Tensor, bandwidth_hz: Tensor) -> Tensor:
    """Gaussian power shape of the noise band, peak 1, -3 dB full width `bandwidth_hz`."""
    sigma = bandwidth_hz / FWHM_PER_SIGMA
    z = (freq_hz - center_hz) / sigma
    return torch.exp((-0.5 * z * z).clamp_min(EXP_FLOOR))


def hann_power_taps(position_bins: Tensor, taps: Tensor) -> Tensor:
    """Share of a sinusoid's power that a Hann-windowed DFT puts in the bins around it.

    For a sinusoid at fractional bin `position_bins` = p, the bins are
    b = floor(p) + taps and the share is |W(d)|^2 / (N sum w^2) at d = b - p
    (large-N closed form; sums to 1 over all bins). The three shifted sincs of
    the Hann transform collapse to W(d) / W(0) = sinc(d) / (1 - d^2), so

        share(d) = sin^2(pi d) / (pi d (1 - d^2))^2 / (4 * 0.375),

    and sin^2(pi d) is the same for every tap (d differs by integers): one sine
    per partial, not per bin. The removable singularities at d = 0, +-1 are
    stepped over: a p within 1e-4 of an integer is moved by -5e-4 bins, which
    moves every tap's d by +5e-4 (value error < 3e-4 at the singular points,
    < 1e-9 at the other integers). The gradient is written out (`_HannPowerTaps`).

    Args:
        position_bins: Sinusoid positions in bins, any shape (...).
        taps: Bin offsets from floor(p), integers as floats, shape (taps,).

    Returns:
        Shares, shape (taps, ...): taps first, so that broadcasting against
        per-sinusoid values runs over long contiguous rows.
    """
    return _HannPowerTaps.apply(position_bins, taps)


class _HannPowerTaps(torch.autograd.Function):
    """share(d) = c s^2 / D^2 with s = sin(pi d), D = pi d (1 - d^2), c = 1 / (4 * 0.375).

    d share / d d = 2 c (pi s cos(pi d) D - s^2 D') / D^3 with D' = pi (1 - 3 d^2);
    s cos(pi d) = sin(2 pi d) / 2 is also the same for every tap. d d / d p = -1.
    """

    @staticmethod
    def forward(ctx, position_bins: Tensor, taps: Tensor) -> Tensor:
        below = torch.floor(position_bins)
        frac = position_bins - below
        near = (frac < 1e-4) | (frac > 1.0 - 1e-4)
        d0 = torch.where(near, 5e-4 - frac, -frac)  # offset from the tap at floor(p)
        d = d0 + taps.reshape(-1, *([1] * d0.dim()))
        s2 = torch.sin(math.pi * d0) ** 2
        c = 0.25 / HANN_MEAN_SQUARE
        den = math.pi * d * (1.0 - d * d)
        share = c * s2 / (den * den)
        if ctx.needs_input_grad[0]:
            sc = 0.5 * torch.sin(2.0 * math.pi * d0)
            slope = 2.0 * c * (math.pi * sc * den - s2 * math.pi * (1.0 - 3.0 * d * d)) / (den * den * den)
            ctx.save_for_backward(slope)
        return share

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (slope,) = ctx.saved_tensors
        return -(grad * slope).sum(0), None
