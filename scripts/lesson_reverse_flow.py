"""Lesson 2, the reverse flow (docs/guide.md, section 2).

    python scripts/lesson_reverse_flow.py                       # trains an MLP first (~1-2 min)
    python scripts/lesson_reverse_flow.py ckpt_path=CKPT        # or uses a trained checkpoint
    python scripts/lesson_reverse_flow.py out_dir=docs/figures  # regenerate the guide's figure
    python scripts/lesson_reverse_flow.py sampler@stochastic=euler stochastic.S_churn=40

The lesson is ``difforge.lessons.reverse_flow.run``; its config is
configs/lessons/reverse_flow.yaml.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="reverse_flow")
def main(cfg: DictConfig) -> None:
    from difforge.lessons import reverse_flow
    from difforge.lessons.script import run_lesson

    run_lesson(reverse_flow.run, cfg)


if __name__ == "__main__":
    main()
