"""Restore measured signals with a diffusion prior: ``python src/restore.py ckpt_path=CKPT
operator=inpaint_box posterior=dps`` writes restore.npz, restore.png and metrics.json."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="restore.yaml")
def main(cfg: DictConfig) -> None:
    from difforge.cli.common import run_command
    from difforge.cli.restore import restore

    run_command(restore, cfg, "restore")


if __name__ == "__main__":
    from difforge.cli.overrides import check_overrides

    check_overrides(str(Path(__file__).resolve().parents[1] / "configs"), "restore", sys.argv[1:])
    main()
