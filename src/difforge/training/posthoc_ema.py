"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, sec. 3 and appendix C): track a few averages during training, choose the EMA length
afterwards.

Power-function EMA (EDM2 eq. 1-3). At optimizer step ``t = 1, 2, ...``

    theta_hat_t = beta_t theta_hat_{t-1} + (1 - beta_t) theta_t,   beta_t = (1 - 1/t)^(gamma + 1),

which weighs step ``tau`` by ``(tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1)``: the integral over
``[tau - 1, tau]`` of the profile ``p_t(s) = (gamma + 1) s^gamma / t^(gamma+1)`` on ``(0, t]``. Its
relative width (standard deviation over t) is

    sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))             (EDM2 eq. 3),

so ``gamma`` is the largest root of ``sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1``.

Reconstruction (EDM2 appendix C.3). Snapshots of two (or more) profiles are saved every
``snapshot_every`` steps. Any target profile ``p*`` (length ``sigma_rel``, at step ``t``) is
approximated in L2 by ``sum_i x_i p_i`` over the snapshot profiles, with ``A x = b``,
``A_ij = <p_i, p_j>``, ``b_i = <p_i, p*>`` and, for power profiles,

    <p_a, p_b> = (g_a + 1)(g_b + 1) min(t_a, t_b)^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a+1) t_b^(g_b+1)).

The reconstructed weights are ``sum_i x_i theta_hat_i``. Since each snapshot's weights are exactly
``integral p_i(s) theta(s) ds`` for the piecewise-constant trajectory, the reconstruction differs
from the directly tracked average by at most ``||sum_i x_i p_i - p*||_1 max_s |theta(s)|`` (tested).

Classic constant-decay EMAs (``decays``) can be tracked beside them ("several EMA decays at once");
they are saved in the snapshots but are not used by the reconstruction.

History. The averages cover the optimizer steps the callback saw: from the first step of a run,
or, when the callback is added to a resumed run whose checkpoint holds none of its state, from the
step after ``start`` (the resumed step), with ``t`` counted from there (``t = step - start``, the
weights before ``start`` are never seen, so none stand in for them). A reconstruction targets the
step of one of those snapshots; any other step is outside the recorded history and refused
(past the last snapshot the target's newest weights were never averaged, and the least-squares fit
returns weights scaled towards zero).

Files: ``<dirpath>/step_<t>.pt`` (``torch.load(..., weights_only=True)``), each a dict with ``step``,
``start``, ``sigma_rels``, ``decays`` and ``averages``: ``{"sigma_rel=0.05": state_dict,
"decay=0.999": ...}``. Snapshots written before ``start`` was recorded count from step 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from difforge.checks import check_real
from difforge.errors import DifforgeError
from difforge.training.module import DiffusionModule

SNAPSHOT_PATTERN = re.compile(r"step_(\d+)\.pt$")
MAX_SIGMA_REL = 1 / math.sqrt(12)  # gamma = 0, a uniform average: the longest power EMA


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent of the power-function EMA of relative width ``sigma_rel`` (EDM2 eq. 3).

    Raises:
        ValueError: unless ``0 < sigma_rel < 1 / sqrt(12)`` (gamma > 0).
    """
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(
            f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}) (1/sqrt(12): a uniform average), got {sigma_rel}"
        )
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def power_profile_dot(t_a: Tensor, gamma_a: Tensor, t_b: Tensor, gamma_b: Tensor) -> Tensor:
    """``<p_a, p_b>`` of power profiles (see the module docstring); broadcasts, float64."""
    low = torch.minimum(t_a, t_b)
    g = gamma_a + gamma_b + 1
    # In logs: t^(gamma + 1) overflows float64 for long runs.
    log_value = g * low.log() - (gamma_a + 1) * t_a.log() - (gamma_b + 1) * t_b.log()
    return (gamma_a + 1) * (gamma_b + 1) / g * log_value.exp()


def posthoc_coefficients(
    steps: Sequence[int], gammas: Sequence[float], target_step: int, target_sigma_rel: float
) -> Tensor:
    """Least-squares coefficients ``x`` (float64, one per snapshot) such that ``sum_i x_i p_i``
    approximates the power profile of length ``target_sigma_rel`` at ``target_step``."""
    t = torch.tensor(steps, dtype=torch.float64)
    g = torch.tensor(gammas, dtype=torch.float64)
    t_star = torch.tensor(float(target_step), dtype=torch.float64)
    g_star = torch.tensor(sigma_rel_to_gamma(target_sigma_rel), dtype=torch.float64)
    A = power_profile_dot(t[:, None], g[:, None], t[None, :], g[None, :])
    b = power_profile_dot(t, g, t_star, g_star)
    # lstsq: snapshots close in time make A nearly singular; the minimum-norm solution is stable.
    return torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]


def average_key(kind: str, value: float) -> str:
    return f"{kind}={value:g}"


class PostHocEMA(L.Callback):
    """Tracks power-function EMAs (and optional constant-decay EMAs) of the trained network and
    saves snapshots beside the checkpoints; the running averages are part of the checkpoint, so a
    resumed run continues them, and snapshots from steps past the resumed one (a killed run's lost
    steps) are replaced. Added to a resumed run whose checkpoint holds no state of it, it averages
    the steps from there on (module docstring, "History"). Image data only: its snapshots are
    ranked by FID (``scripts/posthoc_ema.py``); vector data are refused at the start.

    Args:
        dirpath: snapshot folder (``<run>/checkpoints/posthoc_ema`` in the config).
        sigma_rels: relative widths of the tracked power EMAs (EDM2 uses 0.05 and 0.10).
        snapshot_every: save a snapshot every this many optimizer steps (and at the end).
        decays: constant EMA decays also tracked (``theta_hat <- d theta_hat + (1 - d) theta``).
    """

    def __init__(
        self,
        dirpath: str | Path,
        sigma_rels: Sequence[float] = (0.05, 0.10),
        snapshot_every: int = 250,
        decays: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if isinstance(sigma_rels, str) or not sigma_rels:
            raise ValueError(
                "callbacks.posthoc_ema.sigma_rels must be a list of at least one number, "
                f"got {sigma_rels!r}"
            )
        for sigma_rel in sigma_rels:
            check_real("callbacks.posthoc_ema.sigma_rels", sigma_rel, 0.0, low_open=True)
        if (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise ValueError(
                f"callbacks.posthoc_ema.snapshot_every must be an integer >= 1, got {snapshot_every!r}"
            )
        for decay in decays:
            if not 0 <= decay < 1:
                raise ValueError(f"callbacks.posthoc_ema.decays must lie in [0, 1), got {decay}")
        self.dirpath = Path(dirpath)
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.decays = [float(d) for d in decays]
        self.snapshot_every = snapshot_every
        self.start = 0  # the optimizer step before the first one averaged
        self.step = 0  # the last optimizer step averaged
        self.averages: dict[str, dict[str, Tensor]] = {}

    # --- the averages ---------------------------------------------------------------------------
    @staticmethod
    def _net(pl_module: L.LightningModule) -> nn.Module:
        return cast(DiffusionModule, pl_module).denoiser.net

    def _betas(self, t: int) -> dict[str, float]:
        betas = {
            average_key("sigma_rel", s): (1 - 1 / t) ** (g + 1)
            for s, g in zip(self.sigma_rels, self.gammas, strict=True)
        }
        betas.update({average_key("decay", d): d for d in self.decays})
        return betas

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """One optimizer step: ``t += 1`` and every average moves towards ``net``'s weights."""
        self.step += 1
        state = {k: v.detach() for k, v in net.state_dict().items()}
        for key, beta in self._betas(self.step - self.start).items():
            average = self.averages.get(key)
            if average is None:
                self.averages[key] = {k: v.float().clone() for k, v in state.items()}
                continue
            for name, value in state.items():
                if value.is_floating_point():
                    average[name].lerp_(value.float(), 1 - beta)
                else:
                    average[name].copy_(value)

    def snapshot_path(self, step: int) -> Path:
        return self.dirpath / f"step_{step:08d}.pt"

    def save_snapshot(self) -> Path:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.snapshot_path(self.step)
        payload = {
            "step": self.step,
            "start": self.start,
            "sigma_rels": self.sigma_rels,
            "decays": self.decays,
            "averages": {k: {n: v.cpu() for n, v in a.items()} for k, a in self.averages.items()},
        }
        temporary = path.with_suffix(".tmp")
        torch.save(payload, temporary)
        temporary.replace(path)  # atomic: a kill never leaves a half-written snapshot
        return path

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data_shape = tuple(cast(DiffusionModule, pl_module).data_shape)
        if stage == "fit" and len(data_shape) != 3:
            raise DifforgeError(
                f"callbacks.posthoc_ema: the data are vectors of shape {data_shape}; post-hoc EMA "
                "snapshots are ranked by FID (scripts/posthoc_ema.py), which needs image data"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.averages and trainer.global_step > self.step:
            # Added to a resumed run: the steps before this one were never seen.
            self.start = self.step = trainer.global_step
            rank_zero_info(
                f"callbacks.posthoc_ema: the checkpoint holds no post-hoc EMA state; averaging "
                f"the steps after step {self.start}, from which reconstructions can be made"
            )
        if trainer.is_global_zero and self.dirpath.is_dir():
            for path in self.dirpath.glob("step_*.pt"):
                match = SNAPSHOT_PATTERN.search(path.name)
                if match and int(match.group(1)) > self.step:
                    path.unlink()  # from steps a killed run lost; this run redoes them

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        while self.step < trainer.global_step:  # one update per optimizer step (accumulation)
            self.update(self._net(pl_module))
            if self.step % self.snapshot_every == 0 and trainer.is_global_zero:
                self.save_snapshot()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            self.step > self.start
            and trainer.is_global_zero
            and not self.snapshot_path(self.step).exists()
        ):
            self.save_snapshot()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "start": self.start, "averages": self.averages}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])
        self.start = int(state_dict.get("start", 0))
        self.averages = state_dict["averages"]


def load_snapshots(dirpath: str | Path) -> list[dict[str, Any]]:
    """Every snapshot in ``dirpath``, by step. Raises FileNotFoundError naming the folder if none."""
    paths = sorted(Path(dirpath).glob("step_*.pt"))
    if not paths:
        raise FileNotFoundError(f"no post-hoc EMA snapshots (step_*.pt) in {dirpath}")
    return [torch.load(path, weights_only=True) for path in paths]


def history(snapshots: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The snapshots of the last uninterrupted averaging (those with the last snapshot's
    ``start``; earlier ones averaged other steps, from another start), by step."""
    start = snapshots[-1].get("start", 0)
    return [s for s in snapshots if s.get("start", 0) == start]


def describe_steps(steps: Sequence[int]) -> str:
    """``2, 4, ..., 12`` for a long list: the steps a reconstruction can target."""
    shown = [str(s) for s in steps]
    return ", ".join(shown if len(shown) <= 6 else [*shown[:3], "...", *shown[-2:]])


def check_target_step(snapshots: Sequence[dict[str, Any]], step: int) -> None:
    """Refuse a reconstruction step that is not a snapshot step of the recorded history.

    Raises:
        ValueError: naming the step and the steps that can be targeted.
    """
    steps = [s["step"] for s in history(snapshots)]
    if step not in steps:
        start = history(snapshots)[-1].get("start", 0)
        since = f" (averaged from step {start})" if start else ""
        raise ValueError(
            f"step {step} is not a snapshot step of the recorded post-hoc EMA history: reconstructions are made "
            f"at the snapshot steps {describe_steps(steps)}{since}"
        )


def reconstruct(
    snapshots: Sequence[dict[str, Any]], sigma_rel: float, step: int | None = None
) -> dict[str, Tensor]:
    """The state_dict of the power EMA of length ``sigma_rel`` at ``step`` (default: the last
    snapshot's), from every power-EMA average of the recorded history (:func:`history`) at or
    before ``step``.

    Raises:
        ValueError: ``step`` is not a snapshot step of the history (:func:`check_target_step`),
            or ``sigma_rel`` is out of range (:func:`sigma_rel_to_gamma`).
    """
    recorded = history(snapshots)
    step = recorded[-1]["step"] if step is None else step
    check_target_step(snapshots, step)
    start = recorded[-1].get("start", 0)
    used = [s for s in recorded if s["step"] <= step]
    terms: list[tuple[int, float, dict[str, Tensor]]] = [
        (s["step"] - start, sigma_rel_to_gamma(r), s["averages"][average_key("sigma_rel", r)])
        for s in used
        for r in s["sigma_rels"]
    ]
    x = posthoc_coefficients(
        [t for t, _, _ in terms], [g for _, g, _ in terms], step - start, sigma_rel
    )
    first = terms[0][2]
    result: dict[str, Tensor] = {}
    for name, value in first.items():
        if not value.is_floating_point():
            result[name] = terms[-1][2][name].clone()
            continue
        total = torch.zeros_like(value, dtype=torch.float64)
        for coefficient, (_, _, state) in zip(x.tolist(), terms, strict=True):
            total += coefficient * state[name].double()
        result[name] = total.to(value.dtype)
    return result
