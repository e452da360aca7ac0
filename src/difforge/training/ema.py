"""Exponential moving average of network weights (Polyak averaging; DDPM sec. B uses 0.9999).

    theta_ema <- beta theta_ema + (1 - beta) theta,   beta = min(decay, (1 + n) / (10 + n))

with ``n`` the number of updates so far when ``warmup`` is on (the warm-up lets early EMA
weights follow the fast-moving network instead of staying near the random initialisation).

The average is kept in float32 whatever the training precision, as EDM2 and ema-pytorch keep it:
in bfloat16 (8 significant bits) an update ``(1 - beta)(theta - theta_ema)`` below half a
spacing (2^-9 to 2^-8 of ``|theta_ema|``) rounds away, which is most updates at ``beta = 0.999``.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from difforge.checks import check_real

# (owning module, attribute name) of each parameter or buffer: resolved with a dict lookup per
# update, so a ``.to()`` that replaces tensors is followed without walking the module tree.
_Slots = list[tuple[nn.Module, str]]


def _slots(net: nn.Module, kind: str) -> _Slots:
    return [
        (module, name)
        for module in net.modules()
        for name, tensor in getattr(module, kind).items()
        if tensor is not None
    ]


def _resolve(slots: _Slots, kind: str) -> list[Tensor]:
    return [getattr(module, kind)[name] for module, name in slots]


class EMA(nn.Module):
    """Holds an averaged copy of ``net`` in float32; its state (weights and update count) is a
    plain state_dict. A dtype conversion of a module holding it (Lightning's ``bf16-true``,
    ``16-true`` and ``64-true`` convert the whole LightningModule) leaves the average in float32;
    device moves and memory formats apply as usual.

    ``update`` is one ``torch._foreach_lerp_`` and one ``torch._foreach_copy_``, with no
    host-device synchronisation: where the parameters and buffers of both networks live is
    gathered at the first update (again if ``update`` is given another network), and the update
    count is mirrored as a Python int (read from the buffer once after loading a state).
    """

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        self.decay = check_real("ema_decay", decay, 0.0, 1.0, high_open=True)
        self.warmup = bool(warmup)
        self.net = copy.deepcopy(net).eval().requires_grad_(False).float()
        self.num_updates: Tensor
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._count: int | None = None
        self._cache: tuple[Any, _Slots, _Slots, _Slots, _Slots] | None = None
        self.register_load_state_dict_post_hook(EMA._forget_count)

    @staticmethod
    def _forget_count(module: nn.Module, incompatible_keys: Any) -> None:
        module._count = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles re-gather the slots (they point into the original networks).
        return {**self.__dict__, "_cache": None}

    def updates(self) -> int:
        """The number of updates so far (``num_updates``), without a device read after the first."""
        if self._count is None:
            self._count = int(self.num_updates)
        return self._count

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.updates()
        return min(self.decay, (1 + n) / (10 + n))

    def _slots_for(self, net: nn.Module) -> tuple[_Slots, _Slots, _Slots, _Slots]:
        if self._cache is None or self._cache[0]() is not net:
            ema_params, params = _slots(self.net, "_parameters"), _slots(net, "_parameters")
            shapes = [t.shape for t in _resolve(params, "_parameters")]
            if shapes != [t.shape for t in _resolve(ema_params, "_parameters")]:
                raise ValueError("EMA.update got a network with other parameters than its copy")
            buffers = (_slots(self.net, "_buffers"), _slots(net, "_buffers"))
            self._cache = (weakref.ref(net), ema_params, params, *buffers)
        return self._cache[1:]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        count = self.updates()
        weight = 1 - self.current_decay()
        ema_slots, slots, ema_buffer_slots, buffer_slots = self._slots_for(net)
        ema_params = _resolve(ema_slots, "_parameters")
        sources = [
            p.detach() if p.dtype == e.dtype else p.detach().to(e.dtype)
            for p, e in zip(_resolve(slots, "_parameters"), ema_params, strict=True)
        ]
        torch._foreach_lerp_(ema_params, sources, weight)
        if buffer_slots:
            torch._foreach_copy_(
                _resolve(ema_buffer_slots, "_buffers"), _resolve(buffer_slots, "_buffers")
            )
        self.num_updates += 1
        self._count = count + 1

    def _apply(self, fn: Any, recurse: bool = True) -> EMA:
        # Every .to()/.half()/.double() passes here: convert, then put floating tensors back into
        # float32 (a no-op for a device move or a memory format).
        super()._apply(fn, recurse)
        if any(t.dtype != torch.float32 for t in self._floating_tensors()):
            super()._apply(lambda t: t.float() if t.is_floating_point() else t, recurse)
        return self

    def _floating_tensors(self) -> list[Tensor]:
        return [t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()]

    def train(self, mode: bool = True) -> EMA:
        # The averaged network always evaluates in eval mode (no dropout).
        super().train(mode)
        self.net.eval()
        return self
