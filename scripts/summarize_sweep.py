"""Summarise a Hydra sweep of ``src/train.py``: a table of final metrics per run and a plot of one
metric per schedule x model.

    python scripts/summarize_sweep.py logs/train/multiruns/2026-11-28_12-00-00 [--metric val/loss]

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


def plot(runs: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedules = sorted({run["choices"].get("schedule", "?") for run in runs})
    models = sorted({run["choices"].get("model", "?") for run in runs})
    fig, ax = plt.subplots(figsize=(1.6 * len(schedules) * max(1, len(models)) + 2, 4))
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        heights = []
        for schedule in schedules:
            values = [
                r["metrics"].get(metric)
                for r in runs
                if r["choices"].get("schedule", "?") == schedule
                and r["choices"].get("model", "?") == model
            ]
            values = [v for v in values if v is not None]
            heights.append(sum(values) / len(values) if values else float("nan"))
        ax.bar([i + j * width for i in range(len(schedules))], heights, width, label=model)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(schedules))], schedules)
    ax.set_ylabel(metric)
    ax.set_xlabel("schedule")
    ax.legend(title="model")
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
    table = markdown_table(runs, varying_choices(runs), metrics)
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
    plot(runs, args.metric, args.sweep_dir / "summary.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
