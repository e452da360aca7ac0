"""Logger factories for the Hydra configs: W&B that never waits at a login prompt.

``wandb_logger`` builds Lightning's ``WandbLogger`` online only when the user configured W&B:
``WANDB_MODE=online`` (or ``run``), or ``WANDB_API_KEY`` set; otherwise offline, into
``<save_dir>/wandb/offline-run-*`` (upload later with ``wandb sync <that folder>``).
``WANDB_MODE=offline``/``dryrun`` forces offline, ``WANDB_MODE=disabled`` is left to wandb.
``offline: true/false`` in the config overrides the guess.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("difforge")

ONLINE_MODES = ("online", "run")
OFFLINE_MODES = ("offline", "dryrun")


def wandb_should_be_offline(environ: dict[str, str] | None = None) -> bool:
    """True unless W&B is configured: ``WANDB_MODE`` online, or an API key in ``WANDB_API_KEY``."""
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ONLINE_MODES:
        return False
    if mode in OFFLINE_MODES:
        return True
    if mode == "disabled":
        return False  # wandb itself honours WANDB_MODE=disabled (no run, no prompt)
    return not env.get("WANDB_API_KEY", "").strip()


def wandb_logger(
    save_dir: str | os.PathLike,
    project: str = "difforge",
    name: str | None = None,
    tags: Iterable[str] | None = None,
    offline: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Lightning ``WandbLogger`` writing under ``save_dir`` (``WANDB_DIR`` too), offline unless
    W&B is configured (see :func:`wandb_should_be_offline`) or ``offline`` says otherwise."""
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(save_dir).expanduser()
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DIR"] = str(save_dir)
    os.environ.setdefault("WANDB_CACHE_DIR", str(save_dir / "wandb" / "cache"))
    if offline is None:
        offline = wandb_should_be_offline()
    if offline:
        import wandb

        kwargs.setdefault("mode", "offline")
        # The line below already says where the run goes and how to upload it: wandb's own
        # offline banners (start and end of every run) would repeat it.
        kwargs.setdefault("settings", wandb.Settings(silent=True))
        log.info(
            "W&B runs offline into %s/wandb (no WANDB_API_KEY or WANDB_MODE=online); upload "
            "later with: wandb sync %s/wandb/offline-run-*",
            save_dir,
            save_dir,
        )
    logger = WandbLogger(
        name=name,
        save_dir=str(save_dir),
        project=project,
        tags=None if tags is None else [str(tag) for tag in tags],
        offline=bool(offline),
        **kwargs,
    )
    # Lightning always passes anonymous=None to wandb.init, which wandb >= 0.19 answers with a
    # deprecation warning on every run; None is wandb's default, so leaving it out changes nothing.
    if logger._wandb_init.get("anonymous", 0) is None:
        del logger._wandb_init["anonymous"]
    return logger
