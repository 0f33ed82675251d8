"""splat.optim.Adam against torch.optim.Adam with a LambdaLR schedule: the same numbers, bit for bit."""

from __future__ import annotations

import math

import torch

from splat.optim import Adam


def _loss(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    return (a.sin() * (k + 1)).square().sum() + (b - 3.0).abs().sum() * 0.1 + (a[:2] * b[0]).sum()


def test_adam_matches_torch_adam_with_a_schedule_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    start_a, start_b = torch.randn(5, 4, generator=gen), torch.randn(3, generator=gen)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / 3) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / 20)))

    a, b = start_a.clone().requires_grad_(True), start_b.clone().requires_grad_(True)
    reference = torch.optim.Adam([a], lr=0.05)
    reference.add_param_group({"params": [b]})
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, factor)
    mine_a, mine_b = start_a.clone().requires_grad_(True), start_b.clone().requires_grad_(True)
    mine = Adam([mine_a, mine_b])
    for step in range(1, 21):
        reference.zero_grad(set_to_none=True)
        _loss(a, b, step).backward()
        reference.step()
        schedule.step()
        mine.zero_grad()
        _loss(mine_a, mine_b, step).backward()
        mine.step(0.05 * factor(step - 1))
        torch.testing.assert_close(mine_a, a, rtol=0, atol=0)
        torch.testing.assert_close(mine_b, b, rtol=0, atol=0)
    torch.testing.assert_close(mine.moments[0].exp_avg_sq, reference.state[a]["exp_avg_sq"], rtol=0, atol=0)


def test_forget_and_replace_edit_the_moments():
    p = torch.ones(3, 2, requires_grad=True)
    opt = Adam([p])
    (p * torch.tensor([[1.0], [2.0], [3.0]])).sum().backward()
    opt.step(0.1)
    opt.forget(0, torch.tensor([[True], [False], [False]]))
    assert torch.all(opt.moments[0].exp_avg[0] == 0) and torch.all(opt.moments[0].exp_avg[1:] != 0)
    smaller = p.detach()[1:].clone().requires_grad_(True)
    m = opt.moments[0]
    opt.replace(0, smaller, m.exp_avg[1:], m.exp_avg_sq[1:])
    assert opt.params[0] is smaller and opt.moments[0].steps == 1
    torch.testing.assert_close(opt.moments[0].exp_avg, m.exp_avg[1:])
    opt.zero_grad()
    smaller.sum().backward()
    before = smaller.detach().clone()
    opt.step(0.1)
    assert torch.all(smaller < before)  # a positive gradient moves every entry down
