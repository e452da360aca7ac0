"""Non-finite training steps, detected on the device and read back only when asked.

A per-step ``if not torch.isfinite(loss)`` makes the host wait for the device at every step, so
the CPU cannot queue the next step while the GPU runs this one. Here the step's "found_inf"
flag (loss or any gradient NaN/Inf) stays a device tensor: it goes to a fused optimizer, which
skips the update on the device (the pattern of ``torch.amp.GradScaler``: fused Adam/AdamW take
``found_inf`` and leave parameters, moments and step count untouched when it is 1), and the
step's number, kind and noise levels go into small device buffers. The host reads the buffers
(one synchronisation) only at logging steps, before a checkpoint is written and at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NUM_REPORTED_LEVELS = 16
LOSS, GRADIENTS = 1, 2  # the kinds of a recorded step


def gradients_nonfinite(grads: list[Tensor]) -> Tensor:
    """A device bool: some gradient holds a NaN/Inf (one fused norm call over all of them)."""
    if not grads:
        raise ValueError("gradients_nonfinite needs at least one gradient")
    return ~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


@dataclass(frozen=True)
class NonfiniteStep:
    """One recorded step: its global step, what was non-finite, the noise levels of the
    non-finite samples (at most 16, ascending; empty when the gradients alone were)."""

    step: int
    kind: str
    sigmas: list[float]


class NonfiniteRecorder:
    """Device-side log of the first ``capacity`` steps with a non-finite loss or gradients.

    Per step: ``note_loss`` (in ``training_step``, for each micro-batch; optional), then
    ``found_inf`` (after backward, given the gradients' flag; returns the float flag for the
    optimizer) and ``record``.
    ``read`` returns the steps recorded since the previous ``read`` (one host sync).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._device: torch.device | None = None
        self._loss_bad: Tensor | None = None
        self._levels: Tensor | None = None
        self._reported = 0

    def _buffers(self, device: torch.device) -> None:
        if self._device == device:
            return
        self._device = device
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.steps = torch.full((self.capacity,), -1, dtype=torch.long, device=device)
        self.kinds = torch.zeros(self.capacity, dtype=torch.long, device=device)
        self.sigmas = torch.full((self.capacity, NUM_REPORTED_LEVELS), float("nan"), device=device)

    def note_loss(self, per_sample: Tensor, sigma: Tensor) -> Tensor:
        """Flag the micro-batch's non-finite per-sample losses ``(B,)``; returns the finite mask."""
        finite = torch.isfinite(per_sample.detach())
        bad_levels = torch.where(finite, float("nan"), sigma.detach().float())
        # NaN sorts last: the first entries are the non-finite samples' levels, ascending.
        levels = bad_levels.sort().values[:NUM_REPORTED_LEVELS]
        levels = torch.nn.functional.pad(
            levels, (0, NUM_REPORTED_LEVELS - levels.numel()), value=float("nan")
        )
        bad = ~finite.all()
        if self._loss_bad is None or self._levels is None:
            self._loss_bad, self._levels = bad, levels
        else:  # gradient accumulation: keep the first bad micro-batch's levels
            self._levels = torch.where(self._loss_bad, self._levels, levels)
            self._loss_bad = self._loss_bad | bad
        return finite

    def found_inf(self, grads_bad: Tensor) -> Tensor:
        """1.0 if the step's loss or (``grads_bad``) a gradient is non-finite, else 0.0 (a device
        scalar, for the optimizer's ``found_inf``)."""
        bad = grads_bad if self._loss_bad is None else grads_bad | self._loss_bad
        return bad.float()

    def record(self, step: int, found_inf: Tensor) -> None:
        """Append ``step`` if ``found_inf`` (the possibly all-reduced flag) is set; no host sync."""
        self._buffers(found_inf.device)
        bad = found_inf > 0
        index = self.count.clamp(max=self.capacity - 1).view(1)
        write = bad & (self.count < self.capacity)
        if self._loss_bad is None or self._levels is None:  # no note_loss this step
            kind = torch.full((), GRADIENTS, device=found_inf.device)
            levels = torch.full((NUM_REPORTED_LEVELS,), float("nan"), device=found_inf.device)
        else:
            kind = torch.where(self._loss_bad, LOSS, GRADIENTS)
            levels = self._levels
        self.steps.index_copy_(
            0, index, torch.where(write, step, self.steps.index_select(0, index))
        )
        self.kinds.index_copy_(
            0, index, torch.where(write, kind, self.kinds.index_select(0, index))
        )
        self.sigmas.index_copy_(
            0, index, torch.where(write, levels[None], self.sigmas.index_select(0, index))
        )
        self.count += bad.long()
        self._loss_bad = self._levels = None

    def read(self) -> list[NonfiniteStep]:
        """The steps recorded since the last ``read`` (at most ``capacity`` in all)."""
        if self._device is None:
            return []
        count = min(int(self.count), self.capacity)
        if count <= self._reported:
            return []
        new = range(self._reported, count)
        steps, kinds = self.steps.tolist(), self.kinds.tolist()
        sigmas = self.sigmas.cpu()
        self._reported = count
        return [
            NonfiniteStep(
                steps[i],
                "training loss" if kinds[i] == LOSS else "gradients",
                [v for v in sigmas[i].tolist() if v == v],
            )
            for i in new
        ]
