"""Exponential moving average of network weights (Polyak averaging; DDPM sec. B uses 0.9999).

    theta_ema <- beta theta_ema + (1 - beta) theta,   beta = min(decay, (1 + n) / (10 + n))

with ``n`` the number of updates so far when ``warmup`` is on (the warm-up lets early EMA
weights follow the fast-moving network instead of staying near the random initialisation).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """Holds an averaged copy of ``net``; its state (weights and update count) is a plain state_dict."""

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.num_updates: Tensor
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        weight = 1 - self.current_decay()
        ema_params: list[Tensor] = list(self.net.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(net.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, weight)
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        # The averaged network always evaluates in eval mode (no dropout).
        super().train(mode)
        self.net.eval()
        return self
