"""Train a diffusion model: ``python src/train.py [group=option ...] [key=value ...]``."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from difforge.cli.common import run_command
    from difforge.cli.train import train

    return run_command(train, cfg, "train")


if __name__ == "__main__":
    from difforge.cli.overrides import check_overrides

    check_overrides(str(Path(__file__).resolve().parents[1] / "configs"), "train", sys.argv[1:])
    main()
