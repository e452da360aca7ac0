"""Lesson 3, mode collapse: make it happen, measure it, fix it (docs/guide.md, section 3).

    python scripts/lesson_mode_collapse.py                       # ~1-2 min on a CPU
    python scripts/lesson_mode_collapse.py out_dir=docs/figures  # regenerate the guide's figures
    python scripts/lesson_mode_collapse.py schedule=cosine       # short cosine chains are fine

The lesson is ``difforge.lessons.mode_collapse.run``; its config is
configs/lessons/mode_collapse.yaml.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="mode_collapse")
def main(cfg: DictConfig) -> None:
    from difforge.lessons import mode_collapse
    from difforge.lessons.script import run_lesson

    run_lesson(mode_collapse.run, cfg)


if __name__ == "__main__":
    main()
