"""``python launch.py --help``: the config groups a researcher chooses from, one line each.

Hydra's default help lists every group under ``conf/``, including ``tuning`` (48 per-task files
that ``conf/config.yaml`` applies automatically) which would crowd the list. The help template
(``hydra.help.template`` in ``conf/config.yaml``) calls the resolver ``${config_groups:}``
(registered by ``offline_rl.config``) instead of Hydra's ``$APP_CONFIG_GROUPS``."""

from __future__ import annotations

import os
from pathlib import Path

AUTOMATIC = {"tuning": "applied automatically: conf/tuning/<algo>_<dataset>.yaml (paper Table 3)",
             "reference": "applied automatically: conf/reference/<algo>_<dataset family>.yaml "
                          "(the paper's reference code)"}
PREFIX = {"experiment": "+experiment"}  # sweep files are added to the defaults, not chosen
LAUNCHERS = "hydra/launcher"            # the project's own launcher presets, for sweeps


def conf_dir() -> Path:
    root = os.environ.get("OFFLINE_RL_ROOT")
    return (Path(root) if root else Path(__file__).resolve().parents[1]) / "conf"


def options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def config_groups() -> str:
    """``group: option, option`` per group; automatic groups by their file count only."""
    conf = conf_dir()
    lines = []
    for folder in sorted(p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"):
        found = options(folder)
        if not found:
            continue
        if folder.name in AUTOMATIC:
            lines.append(f"({folder.name}: {len(found)} files, {AUTOMATIC[folder.name]})")
        else:
            lines.append(f"{PREFIX.get(folder.name, folder.name)}: {', '.join(found)}")
    launchers = options(conf / LAUNCHERS)
    if launchers:
        lines.append(f"{LAUNCHERS}: {', '.join(launchers)}   (where a sweep's jobs run)")
    return "\n".join(lines)
