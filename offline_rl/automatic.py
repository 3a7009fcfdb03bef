"""The settings ``conf/config.yaml`` applies without being asked: the paper's reference-code values
per algorithm and dataset family (``conf/reference/<algo>_<family>.yaml``: TD3+BC's alpha, EDAC's N
and eta, the updates) and the paper's Table 3 per algorithm and dataset
(``conf/tuning/<algo>_<dataset>.yaml``). Command-line values win over both.

``python launch.py algo=... dataset=... --help`` lists what applies to that choice, file by file,
so that ``--cfg job``'s ``alpha: 10.0`` can be traced to the file that set it; a run on
``dataset=minari`` with an id of a known family is told which reference values it goes without."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from offline_rl.cli_help import conf_dir

AUTOMATIC_GROUPS = ("reference", "tuning")  # the optional defaults conf/config.yaml applies
FAMILY = "dataset/family"


def settings_of(path: Path) -> dict[str, object]:
    """The dotted keys a ``@package _global_`` file sets, with their values."""
    flat: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", OmegaConf.to_container(OmegaConf.load(path)))
    return flat


def applied(choices: Mapping[str, object], overrides: Iterable[str] = ()) -> list[str]:
    """One line per file applied for these Hydra choices: the file and what it sets; values the
    command line overrides are marked as such."""
    pairs = [o.split("=", 1) for o in overrides if "=" in o]
    given = {key.lstrip("+~") for key, _ in pairs}
    # conf/debug/<option>.yaml comes after these files in conf/config.yaml: its values win too
    debug = next((value for key, value in pairs if key == "debug"), "none")
    debug_file = conf_dir() / "debug" / f"{debug}.yaml"
    by_debug = set(settings_of(debug_file)) if debug != "none" and debug_file.is_file() else set()
    lines = []
    for group in AUTOMATIC_GROUPS:
        path = conf_dir() / group / f"{choices.get(group)}.yaml"
        if not path.is_file():
            continue
        values = [f"{k}={v}" + (" (overridden on the command line)" if k in given else
                                f" (overridden by debug={debug})" if k in by_debug else "")
                  for k, v in settings_of(path).items()]
        lines.append(f"{path.relative_to(conf_dir().parent)}: {', '.join(values)}")
    return lines


def help_text(reference: str, tuning: str, overrides: object = ()) -> str:
    """The ``${applied_settings:...}`` resolver of ``--help`` (conf/config.yaml)."""
    lines = applied({"reference": reference, "tuning": tuning}, list(overrides or ()))
    return "\n".join(lines) or "none for this algo and dataset"


def families() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "dataset" / "family").glob("*.yaml"))


def missing_reference(choices: Mapping[str, object], cfg: DictConfig) -> str | None:
    """``dataset=minari`` with an id of a known family (``local/hopper/medium-v0``) applies no
    family, so none of its reference values: the warning that says which, and how to apply them."""
    if choices.get(FAMILY) not in (None, "None") or choices.get("dataset") != "minari":
        return None
    dataset_id = str(OmegaConf.select(cfg, "dataset.dataset_id", default="") or "")
    parts = dataset_id.split("/")
    # the namespaces whose datasets the reference values were written for: this project's local
    # D4RL-grade datasets and Minari's official MuJoCo ones
    family = parts[1] if len(parts) == 3 and parts[0] in ("local", "mujoco") else None
    if family not in families():
        return None
    path = conf_dir() / "reference" / f"{choices.get('algo')}_{family}.yaml"
    if not path.is_file():
        return None
    values = ", ".join(f"{k}={v}" for k, v in settings_of(path).items())
    return (f"dataset=minari applies no dataset family, so {dataset_id} runs without "
            f"{path.relative_to(conf_dir().parent)}'s reference values ({values}); add "
            f"dataset/family={family} to apply them")
