"""Lesson 4, sampling efficiency: quality versus NFE for every sampler (docs/guide.md, section 4).

    python scripts/nfe_sweep.py                         # 10-15 min on two shared CPU cores
    python scripts/nfe_sweep.py out_dir=docs/figures    # regenerate the guide's figure and tables
    python scripts/nfe_sweep.py num_samples=10000 sweep2d.enabled=false   # ~1 min
    python scripts/nfe_sweep.py exact=false ckpt_path=CKPT   # FID versus NFE of a trained model
                                                             # alone (digits: 5-9 min)

The lesson is ``difforge.lessons.nfe_sweep.run``; its config is configs/lessons/nfe_sweep.yaml.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs/lessons", config_name="nfe_sweep")
def main(cfg: DictConfig) -> None:
    from difforge.lessons import nfe_sweep
    from difforge.lessons.script import run_lesson

    run_lesson(nfe_sweep.run, cfg)


if __name__ == "__main__":
    main()
