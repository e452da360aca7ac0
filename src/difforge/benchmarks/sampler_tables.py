"""Picking the best configurations of a sampler benchmark and writing its markdown tables.

A row is a dict with ``side`` (``difforge`` or ``diffusers``), ``law``, ``schedule``,
``nfe_target``, ``family`` (the difforge sampler, or the diffusers algorithm family), ``config``
(its label), ``default`` (difforge: the sampler at its default settings), ``nfe`` (calls made),
``w1`` and ``mass_err`` (inf when the run failed or diverged).

- Headline: per law x schedule x NFE, difforge's best sampler at its defaults against the best
  diffusers configuration of all; the ratio of their errors.
- Per sampler: each difforge default against the best configuration of its diffusers
  counterpart (``COUNTERPARTS``).
- Grid choice: per sampler and schedule kind, each configuration's error relative to the
  sampler's best in each cell, summarised by the geometric mean over cells (``grid_scores``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from difforge.diffusion.samplers import SAMPLERS

Row = dict[str, Any]

# The diffusers families that run the same algorithm as a difforge sampler (its counterpart).
COUNTERPARTS: dict[str, tuple[str, ...]] = {
    "ddpm": ("ddpm",),
    "ddim": ("ddim",),
    "euler": ("euler",),
    "euler_ancestral": ("euler_ancestral",),
    "heun": ("heun",),
    "dpmpp_2m": ("dpmpp_2m",),
    "dpmpp_3m": ("dpmpp_3m",),
    "dpmpp_2m_sde": ("dpmpp_2m_sde",),
    "dpmpp_3m_sde": ("dpmpp_3m_sde",),
    "dpmpp_singlestep": ("dpmpp_2s", "dpmpp_3s"),
    "unipc": ("unipc_bh1", "unipc_bh2"),
    "deis": ("deis",),
}


def select(rows: Iterable[Row], **where: Any) -> list[Row]:
    """The rows whose fields equal ``where``."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def best(rows: Iterable[Row], metric: str = "w1") -> Row | None:
    """The row with the lowest ``metric`` (None for no rows)."""
    return min(rows, key=lambda r: r[metric], default=None)


def ratio(ours: float, theirs: float) -> float:
    if math.isinf(ours) or theirs <= 0:
        return math.inf
    return ours / theirs


def fmt(value: float, digits: int = 4) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_w1(row: Row) -> str:
    """W1, with its standard deviation over the draws when the row averages several."""
    spread = row.get("w1_std")
    return fmt(row["w1"]) + (f" ± {fmt(spread)}" if spread else "")


def cells(rows: Iterable[Row]) -> list[tuple[str, str, int]]:
    """The (law, schedule, nfe_target) cells present, in order of appearance."""
    return list(dict.fromkeys((r["law"], r["schedule"], r["nfe_target"]) for r in rows))


def headline(rows: Sequence[Row], metric: str = "w1") -> list[Row]:
    """Per cell: difforge's best default sampler, diffusers' best configuration, their ratio."""
    out = []
    for law, schedule, nfe in cells(rows):
        cell = select(rows, law=law, schedule=schedule, nfe_target=nfe)
        ours = best(select(cell, side="difforge", default=True), metric)
        theirs = best(select(cell, side="diffusers"), metric)
        if ours is None or theirs is None:
            continue
        out.append(
            {
                "law": law,
                "schedule": schedule,
                "nfe": nfe,
                "difforge": ours,
                "diffusers": theirs,
                "ratio": ratio(ours[metric], theirs[metric]),
            }
        )
    return out


def headline_table(rows: Sequence[Row], floors: dict[str, dict[str, float]]) -> str:
    """Markdown: the headline in W1 (the goal's metric) with the mode-mass error beside it."""
    lines = [
        "| law | schedule | NFE | difforge best default (sampler) | W1 | mass err | diffusers best "
        "(config) | W1 | mass err | W1 ratio | mass-err ratio | W1 floor |",
        "|" + " --- |" * 12,
    ]
    for h in headline(rows):
        ours, theirs = h["difforge"], h["diffusers"]
        mass_ratio = ratio(ours["mass_err"], theirs["mass_err"])
        lines.append(
            f"| {h['law']} | {h['schedule']} | {h['nfe']} | {ours['family']} ({ours['nfe']} NFE) "
            f"| {fmt_w1(ours)} | {fmt(ours['mass_err'])} | {theirs['family']}: "
            f"{theirs['config']} ({theirs['nfe']} NFE) | {fmt_w1(theirs)} | "
            f"{fmt(theirs['mass_err'])} | **{fmt(h['ratio'], 2)}** | {fmt(mass_ratio, 2)} | "
            f"{fmt(floors[h['law']]['w1_mean'])} |"
        )
    return "\n".join(lines)


def counterpart_table(rows: Sequence[Row], metric: str = "w1") -> str:
    """Markdown: every difforge default against its diffusers counterpart's best, per cell."""
    lines = [
        "| sampler | law | schedule | NFE | difforge default | diffusers counterpart best (config) "
        "| ratio |",
        "|" + " --- |" * 7,
    ]
    samplers = dict.fromkeys(r["family"] for r in rows if r["side"] == "difforge")
    for sampler in samplers:
        families = COUNTERPARTS.get(sampler, ())
        for law, schedule, nfe in cells(rows):
            cell = select(rows, law=law, schedule=schedule, nfe_target=nfe)
            ours = best(select(cell, side="difforge", family=sampler, default=True), metric)
            theirs = best(
                [r for r in select(cell, side="diffusers") if r["family"] in families], metric
            )
            if ours is None:
                continue
            if theirs is None:
                their_cell, ratio_cell = "none in diffusers", "-"
            else:
                their_cell = f"{fmt(theirs[metric])} ({theirs['family']}: {theirs['config']})"
                ratio_cell = fmt(ratio(ours[metric], theirs[metric]), 2)
            lines.append(
                f"| {sampler} | {law} | {schedule} | {nfe} | {fmt(ours[metric])} | {their_cell} "
                f"| {ratio_cell} |"
            )
    return "\n".join(lines)


def grid_scores(
    rows: Sequence[Row], sampler: str, schedules: Sequence[str], metric: str = "w1"
) -> list[tuple[str, float, int]]:
    """Each configuration of ``sampler`` on ``schedules`` with the geometric mean, over the
    cells (law x schedule x NFE), of its error divided by the sampler's best error in that cell;
    best first. Returns ``(config, score, cells)``; a configuration missing or failed in a cell
    scores inf."""
    ours = [
        r
        for r in rows
        if r["side"] == "difforge"
        and r["family"] == sampler
        and r["schedule"] in schedules
        and not r["default"]
    ]
    by_cell: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for r in ours:
        by_cell[(r["law"], r["schedule"], r["nfe_target"])][r["config"]] = r[metric]
    configs = dict.fromkeys(r["config"] for r in ours)
    scores = []
    for config in configs:
        logs = []
        for values in by_cell.values():
            lowest = min(values.values())
            value = values.get(config, math.inf)
            logs.append(
                math.log(value / lowest) if math.isfinite(value) and lowest > 0 else math.inf
            )
        score = math.exp(sum(logs) / len(logs)) if logs else math.inf
        scores.append((config, score, len(logs)))
    return sorted(scores, key=lambda item: item[1])


# A configuration must beat the current default by more than this (geo-mean error ratio) to
# replace it: differences below are within what another noise draw changes.
KEEP_DEFAULT_WITHIN = 1.02


def can_be_default(sampler: str, config: str) -> bool:
    """Whether a searched configuration (its label) may become a default: not ``leading`` read
    over N + 1 points (multistep solvers, or ``final_sigma="min"``). Its first timestep,
    N * (T // (N + 1)), falls as N grows (900 of 1000 at N = 100), so the start's prior
    sqrt(1 + sigma^2) N(0, I) misses the data's variance by a margin that a few steps hide but
    more steps do not (heun, 50 steps, cosine, gmm1d: W1 0.077 against a floor of 0.01); a
    default must reach the floor at 100 NFE (tests/test_samplers.py). DDIM's reading over N
    points starts at (N - 1) * (T // N): 980 of 1,000 at N = 50, but 889 at 128 and 765 at 256
    (Heun, its only taker, degrades there: lesson 4 in docs/guide.md)."""
    grid, final = config.split()[:2]
    over_one_more = SAMPLERS[sampler].multistep_spacing or final == "final=min"
    return not (grid == "leading" and over_one_more)


def chosen_default(
    rows: Sequence[Row],
    sampler: str,
    schedules: Sequence[str],
    current: str | None = None,
    metric: str = "w1",
) -> tuple[str, float] | None:
    """The best configuration by ``grid_scores`` (the registry's ``defaults`` can express any:
    grid, final_sigma, option values) that ``can_be_default``, or ``current``
    (a configuration label) when it scores within ``KEEP_DEFAULT_WITHIN`` of that best:
    ``(config, score)``."""
    ranked = [
        (c, s)
        for c, s, _ in grid_scores(rows, sampler, schedules, metric)
        if can_be_default(sampler, c)
    ]
    if not ranked:
        return None
    scores = dict(ranked)
    if current in scores and scores[current] <= ranked[0][1] * KEEP_DEFAULT_WITHIN:
        return current, scores[current]
    return ranked[0]


def grid_choice_table(
    rows: Sequence[Row],
    kinds: dict[str, Sequence[str]],
    current: dict[tuple[str, str], str],
    top: int = 3,
    metric: str = "w1",
) -> str:
    """Markdown: per sampler and schedule kind, the ``top`` configurations by ``grid_scores``
    and the chosen default (``chosen_default``; ``current[(sampler, kind)]`` is the registry's
    default now, as a configuration label)."""
    lines = [
        "| sampler | schedule kind | rank | configuration | geo-mean error / sampler's best "
        "(cells) |",
        "|" + " --- |" * 5,
    ]
    samplers = dict.fromkeys(r["family"] for r in rows if r["side"] == "difforge")
    for sampler in samplers:
        for kind, schedules in kinds.items():
            ranked = grid_scores(rows, sampler, schedules, metric)
            for rank, (config, score, n) in enumerate(ranked[:top], start=1):
                lines.append(f"| {sampler} | {kind} | {rank} | {config} | {fmt(score, 3)} ({n}) |")
            now = current.get((sampler, kind))
            chosen = chosen_default(rows, sampler, schedules, now, metric)
            if chosen is not None:
                config, score = chosen
                verdict = "kept" if config == now else f"was {now}"
                lines.append(
                    f"| {sampler} | {kind} | **default ({verdict})** | **{config}** "
                    f"| {fmt(score, 3)} |"
                )
    return "\n".join(lines)
