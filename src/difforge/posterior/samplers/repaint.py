"""RePaint: inpainting with denoising diffusion (Lugmayr et al. 2022, CVPR, algorithm 1 and the
resampling schedule of sec. 4.2).

Each step down from ``sigma_t`` to ``sigma_{t-1}`` draws the unknown pixels by DDPM's ancestral
step and the known ones by noising ``y`` to ``sigma_{t-1}`` (alg. 1, lines 4-8; ``impose_known``,
which also reads a noisy ``y`` as ``x0`` at level ``sigma_y``). To harmonise the two, the sampler
jumps back up: after every ``jump_length`` steps down it re-noises ``x`` by ``jump_length`` levels
(the forward process, ``x + sqrt(sigma_up^2 - sigma^2) z``; lines 9-10 applied
``jump_length`` times at once) and walks down again, ``resamplings - 1`` times per block
(``jump_length = 10``, ``resamplings = 10`` over 250 steps are the paper's, sec. 5).

Masks only; with ``sigma_y > 0`` only without resampling (``resamplings = 1``: below
``sigma_y`` the known pixels are left to the model, and jumps there would forget ``y``). Not
exact on a Gaussian prior: the known pixels are noised independently of the
unknown ones, which the resampling reconciles only approximately. Network evaluations: the
steps down of ``repaint_schedule``.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from difforge.checks import check_int
from difforge.diffusion.samplers.common import DenoiserFn, StepCallback, denoise, noise_like, report
from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.samplers.common import ddim_step, impose_known


def check_repaint_options(jump_length: int = 10, resamplings: int = 10) -> None:
    """Integers ``jump_length >= 1``, ``resamplings >= 1`` (1: no resampling)."""
    check_int("posterior.jump_length", jump_length, 1)
    check_int("posterior.resamplings", resamplings, 1)


def repaint_schedule(steps: int, jump_length: int, resamplings: int) -> list[int]:
    """The grid indices RePaint visits, from 0 to ``steps``: down one level at a time; on
    reaching a level ``i`` with ``(steps - 1 - i) % jump_length == 0`` and ``i >= jump_length``
    (a block's end, before the last step), back up to ``i - jump_length``, ``resamplings - 1``
    times."""
    left = {i: resamplings - 1 for i in range(steps - 1, jump_length - 1, -jump_length)}
    visits, i = [0], 0
    while i < steps:
        i += 1
        visits.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            i -= jump_length
            visits.append(i)
    return visits


def repaint_nfe(steps: int, options: dict[str, int]) -> int:
    """Steps down in ``repaint_schedule`` (one network evaluation each)."""
    visits = repaint_schedule(steps, options["jump_length"], options["resamplings"])
    return sum(b > a for a, b in pairwise(visits))


def sample_repaint(
    denoiser: DenoiserFn,
    y: Tensor,
    operator: LinearOperator,
    sigma_y: float,
    x: Tensor,
    sigmas: Tensor,
    *,
    jump_length: int = 10,
    resamplings: int = 10,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """x: ``(N, *x_shape)`` at ``sigmas[0]``; y: ``(N, d_y)`` for a mask operator.

    Raises:
        ValueError: ``resamplings > 1`` with ``sigma_y > 0``: below ``sigma_y`` the known pixels
            are no longer imposed, and jumps there would let them forget ``y``.
    """
    check_repaint_options(jump_length, resamplings)
    if sigma_y > 0 and resamplings > 1:
        raise ValueError(
            f"posterior=repaint resamples only exact measurements (Lugmayr et al.): with "
            f"sigma_y = {sigma_y:g} set posterior.resamplings=1, or sigma_y=0"
        )
    visits = repaint_schedule(len(sigmas) - 1, jump_length, resamplings)
    for k, (i, j) in enumerate(pairwise(visits)):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[j])
        if j < i:  # back up: the forward process over the levels between
            x = x + (sigma_next**2 - sigma**2) ** 0.5 * noise_like(x, generator)
            continue
        x0 = denoise(denoiser, x, sigma, class_labels)
        report(callback, k, x, sigma, x0)
        x = ddim_step(x, x0, sigma, sigma_next, 1.0, generator)
        x = impose_known(x, y, operator, sigma_y, sigma_next, generator)
    return x
