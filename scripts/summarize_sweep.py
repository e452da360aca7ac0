"""Summarise a Hydra sweep of ``src/train.py``: a table of final metrics per run, and a table and a
plot of one metric per objective (or schedule) x model.

    python scripts/summarize_sweep.py logs/train/multiruns/2026-11-28_12-00-00 [--metric val/loss]
    python scripts/summarize_sweep.py <objectives_sweep dir> --metric val/fid   # FID per objective x model

Reads every ``<sweep>/<job>/final_metrics.json`` (written by train.py at the end of each run),
prints a markdown table, and writes ``<sweep>/summary.md``, ``<sweep>/summary.csv`` and
``<sweep>/summary.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def load_runs(sweep_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(
        sweep_dir.glob("*/final_metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)
    ):
        summary = json.loads(path.read_text())
        runs.append({"job": path.parent.name, **summary})
    return runs


def varying_choices(runs: list[dict]) -> list[str]:
    """The config groups whose option differs between runs (the sweep's axes)."""
    keys = sorted({key for run in runs for key in run["choices"]})
    return [key for key in keys if len({run["choices"].get(key) for run in runs}) > 1]


def markdown_table(runs: list[dict], axes: list[str], metrics: list[str]) -> str:
    header = ["job", *axes, "steps", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        values = [run["job"], *(str(run["choices"].get(a)) for a in axes), str(run["global_step"])]
        values += [f"{run['metrics'][m]:.4g}" if m in run["metrics"] else "" for m in metrics]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def plot_axes(axes: list[str]) -> tuple[str, str]:
    """(x axis, bar groups) of the plot: the swept objective or schedule against the model."""
    others = [a for a in axes if a != "model"]
    x_axis = next(
        (a for a in ("objective", "schedule") if a in axes), others[0] if others else "model"
    )
    return x_axis, "model"


def cell(runs: list[dict], metric: str, **choices: str) -> float:
    """Mean of ``metric`` over the runs with these choices (nan if none)."""
    values = [
        r["metrics"][metric]
        for r in runs
        if metric in r["metrics"] and all(r["choices"].get(k, "?") == v for k, v in choices.items())
    ]
    return sum(values) / len(values) if values else float("nan")


def pivot_table(runs: list[dict], row_axis: str, col_axis: str, metric: str) -> str:
    """Markdown: ``metric`` per ``row_axis`` option (rows) and ``col_axis`` option (columns)."""
    rows = sorted({run["choices"].get(row_axis, "?") for run in runs})
    cols = sorted({run["choices"].get(col_axis, "?") for run in runs})
    lines = [f"| {row_axis} | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for row in rows:
        values = [cell(runs, metric, **{row_axis: row, col_axis: col}) for col in cols]
        lines.append(f"| {row} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    return f"{metric}:\n\n" + "\n".join(lines)


def plot(runs: list[dict], metric: str, path: Path, x_axis: str, group_axis: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted({run["choices"].get(x_axis, "?") for run in runs})
    groups = sorted({run["choices"].get(group_axis, "?") for run in runs})
    fig, ax = plt.subplots(figsize=(1.6 * len(xs) * max(1, len(groups)) + 2, 4))
    width = 0.8 / max(1, len(groups))
    for j, group in enumerate(groups):
        heights = [cell(runs, metric, **{x_axis: x, group_axis: group}) for x in xs]
        ax.bar([i + j * width for i in range(len(xs))], heights, width, label=group)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(xs))], xs)
    ax.set_ylabel(metric)
    ax.set_xlabel(x_axis)
    ax.legend(title=group_axis)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--metric", default="val/loss", help="the metric to plot (default val/loss)"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: sweep directory {args.sweep_dir} does not exist", file=sys.stderr)
        return 1
    runs = load_runs(args.sweep_dir)
    if not runs:
        print(
            f"error: no */final_metrics.json under {args.sweep_dir} (is it a train.py -m sweep directory?)",
            file=sys.stderr,
        )
        return 1
    metrics = sorted(
        {m for run in runs for m in run["metrics"] if m.startswith(("val/", "train/loss"))}
    )
    if not any(args.metric in run["metrics"] for run in runs):
        print(
            f"error: no run of {args.sweep_dir} logged {args.metric} (logged: {', '.join(metrics) or 'none'}); "
            "choose one with --metric",
            file=sys.stderr,
        )
        return 1
    axes = varying_choices(runs)
    x_axis, group_axis = plot_axes(axes)
    table = markdown_table(runs, axes, metrics)
    table += "\n\n" + pivot_table(runs, x_axis, group_axis, args.metric)
    print(table)
    (args.sweep_dir / "summary.md").write_text(table + "\n")
    with open(args.sweep_dir / "summary.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["job", *varying_choices(runs), *metrics])
        for run in runs:
            writer.writerow(
                [
                    run["job"],
                    *(run["choices"].get(a) for a in varying_choices(runs)),
                    *(run["metrics"].get(m) for m in metrics),
                ]
            )
    plot(runs, args.metric, args.sweep_dir / "summary.png", x_axis, group_axis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
