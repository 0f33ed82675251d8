"""Adam for the fit loop: `torch.optim.Adam`'s arithmetic on the CPU, without torch.optim's start-up cost.

Every `torch.optim` optimiser imports `torch._dynamo` the first time one is made
(its `add_param_group` and `zero_grad` are wrapped to stay out of compilation):
about 1.2 s on a 2-core machine, a third of the start-up budget of a short
`splat fit`. The fit needs plain Adam on one or two tensors, with a learning rate
set per step, and its moments edited when atoms are restarted or dropped; this
class is that, step for step the arithmetic of torch's single-tensor Adam (the
one it runs on CPU tensors), so fits are bit-identical (`tests/test_optim.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def warmup_cosine(step: int, n_steps: int) -> float:
    """Learning-rate factor at `step` (from 0) of `n_steps`: a linear warm-up over the first 5 %, then a
    cosine from 1 down to 0.05."""
    warmup = max(1, n_steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, n_steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Moments:
    """Adam's state for one parameter: running means of the gradient and its square, steps taken."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    steps: int = 0


class Adam:
    """Adam (Kingma and Ba) with torch's defaults (betas 0.9, 0.999, eps 1e-8, no weight decay).

    Args:
        params: Leaf tensors to optimise (their `.grad` is read).
        betas: Decay rates of the two moments.
        eps: Added to the denominator.
    """

    def __init__(self, params: list[Tensor], *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.betas = betas
        self.eps = eps
        self.moments = [Moments(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (as `set_to_none=True`)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One Adam step of size `lr` on every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for param, m in zip(self.params, self.moments, strict=True):
            if param.grad is None:
                continue
            grad = param.grad
            m.steps += 1
            m.exp_avg.lerp_(grad, 1 - beta1)
            m.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** float(m.steps)
            bias_correction2 = 1 - beta2 ** float(m.steps)
            step_size = lr / bias_correction1
            denom = (m.exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            param.addcdiv_(m.exp_avg, denom, value=-step_size)

    @torch.no_grad()
    def forget(self, index: int, rows: Tensor) -> None:
        """Zero the moments of parameter `index` where `rows` (broadcast against it) is True: a fresh start there."""
        m = self.moments[index]
        m.exp_avg.masked_fill_(rows, 0.0)
        m.exp_avg_sq.masked_fill_(rows, 0.0)

    def replace(self, index: int, param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
        """Swap parameter `index` for `param` (e.g. with fewer atoms), with these moments; the step count stays."""
        self.params[index] = param
        self.moments[index] = Moments(exp_avg, exp_avg_sq, self.moments[index].steps)
