"""Hydra/OmegaConf helpers shared by the entry points."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"

#: Modules whose classes a config stored inside a checkpoint may instantiate.
TRUSTED_TARGET_PREFIXES: tuple[str, ...] = ("apps.", "shared_attention.", "kernels.", "torch.nn.")


def register_resolvers() -> None:
    """Register the `${project_root:}` resolver (idempotent)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def to_container(cfg: Any) -> Any:
    """Resolve a config node into plain Python containers (safe to store in a checkpoint)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_trusted_targets(node: Any, where: str = "config") -> None:
    """Refuse any `_target_` outside the project's own packages.

    Configs read back from checkpoints are data from disk; instantiating arbitrary targets from
    them would execute arbitrary code, so only project classes are allowed.
    """
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(TRUSTED_TARGET_PREFIXES):
            raise ValueError(
                f"{where}: refusing to instantiate `_target_: {target}` read from a checkpoint; "
                f"only classes under {', '.join(TRUSTED_TARGET_PREFIXES)} are allowed"
            )
        for key, value in node.items():
            check_trusted_targets(value, f"{where}.{key}")
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for i, value in enumerate(node):
            check_trusted_targets(value, f"{where}[{i}]")


def git_revision(path: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit the code runs from and whether the tree has uncommitted changes."""
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("could not read the git revision: %s", err)
    return info


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}
