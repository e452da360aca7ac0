"""Lesson 1, the forward process and mode blurring (docs/guide.md, section 1).

    python scripts/lesson_mode_blurring.py                      # figures in the Hydra run dir
    python scripts/lesson_mode_blurring.py out_dir=docs/figures # regenerate the guide's figures
    python scripts/lesson_mode_blurring.py schedules.linear.beta_end=0.01

The lesson is ``difforge.lessons.mode_blurring.run``; its config is
configs/lessons/mode_blurring.yaml. A few seconds on a CPU.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="mode_blurring")
def main(cfg: DictConfig) -> None:
    from difforge.lessons import mode_blurring
    from difforge.lessons.script import run_lesson

    run_lesson(mode_blurring.run, cfg)


if __name__ == "__main__":
    main()
