"""What every multistep solver shares: the order used at each step and the checks of its options.

A multistep solver of order p needs the denoiser's outputs at the p - 1 previous points, so it
warms up (order 1 at the first step, 2 at the second, ...). With ``lower_order_final`` it also
lowers the order near the end: the step i of N uses at most order N - i, i.e. first order at the
last step and at most second order at the one before, at any step count (as diffusers' UniPC).
diffusers' DPMSolverMultistep and DEISMultistep do it below 15 steps only; above, a third-order
extrapolation over a long last step to sigma_min is unstable (SDE-DPM-Solver++(3M) on EDM's
schedule, flow grid, 20 steps: W1 0.39 against 0.031 with the lower final orders;
docs/benchmarks.md, section 3). ``lower_order_final=False`` gives their order above 15 steps.
"""

from __future__ import annotations

from difforge import checks


def multistep_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of step ``i`` (0-based) of ``steps``: ``order`` after warm-up, lower at the end."""
    used = min(order, i + 1)
    return min(used, steps - i) if lower_order_final else used


def check_order(order: int, max_order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= max_order:
        raise ValueError(f"sampler.order must be an integer in 1..{max_order}, got {order!r}")


def check_flag(name: str, value: bool) -> None:
    checks.check_flag(f"sampler.{name}", value)


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    checks.check_choice(f"sampler.{name}", value, allowed)


def check_noise(eta: float, s_noise: float, max_eta: float = float("inf")) -> None:
    if not 0 <= eta <= max_eta:
        allowed = "0 <= eta" + (f" <= {max_eta:g}" if max_eta < float("inf") else "")
        raise ValueError(f"sampler.eta must satisfy {allowed}, got {eta}")
    if s_noise < 0:
        raise ValueError(f"sampler.s_noise must be >= 0, got {s_noise}")
