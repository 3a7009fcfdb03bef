"""Validation of a composed config, in one place, before anything is built or submitted:
``check(cfg)`` = every value (``validate``) and the algorithm x pre-training / fine-tuning pairing
(``check_pairing``). ``offline_rl.run.train`` (what launch.py runs) calls it first, and the sweeper
runs the same two checks for every job before any is launched; nothing else re-checks a config
value.

The rules live beside what they check: the top-level keys' here (``TOP_LEVEL``), every other
value's in the ``OPTIONS`` of the class (or function) its node builds through ``_target_``
(offline_rl/options.py), collected from the composed config itself, so a new algorithm, scheme or
fine-tuning option brings its own rules; a component whose settings need each other says so in its
``option_problems`` (``finetune.offline_fraction`` needs ``finetune.init_with_offline``). A failing value raises one ConfigError naming the key,
the value and the allowed values. A rule whose key the composed config lacks does not apply; in the
other direction every value must have a rule (or be listed in ``UNCHECKED``), so a renamed YAML key
fails validation, naming the class that should declare it, instead of silently losing its check
(tests/test_config.py composes every group option and checks both directions).

Unknown keys and unknown group options are rejected by Hydra; ``hydra_error_message`` turns its
report into one line. ``+key=value`` / ``++key=value`` would add a key the config does not define
(Hydra's own hint for an unknown key): ``check_overrides`` rejects those too, before composing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from offline_rl.automatic import help_text as applied_help
from offline_rl.cli_help import config_groups
from offline_rl.errors import ConfigError, OfflineRLError
from offline_rl.options import (Rule, boolean, declared_options, int_at_least, int_in, one_of, optional,
                                option_problems, text_or_null)
from offline_rl.precision import PRECISIONS


def _or_else(value: Any, default: Any) -> Any:
    return default if value is None else value


# ${or_else:${network.depth},3}: the network group's value, or the algorithm's reference value
if not OmegaConf.has_resolver("or_else"):
    OmegaConf.register_new_resolver("or_else", _or_else)
# ${config_groups:}: the groups --help lists (conf/config.yaml's hydra.help.template)
if not OmegaConf.has_resolver("config_groups"):
    OmegaConf.register_new_resolver("config_groups", config_groups)
# ${applied_settings:...}: what conf/reference and conf/tuning set for the chosen algo and dataset
if not OmegaConf.has_resolver("applied_settings"):
    OmegaConf.register_new_resolver("applied_settings", applied_help)


#: how update steps run (offline_rl.training.compiled)
COMPILE_MODES = ("auto", "compile", "eager")
#: numpy's seeds are below 2**32 (seed_everything seeds random, numpy and torch with the same value)
MAX_SEED = 2**32 - 1


def device_name() -> Rule:
    pattern = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    return Rule(lambda v: isinstance(v, str) and bool(pattern.match(v)), "auto, cpu, cuda or cuda:N")


#: the keys of conf/config.yaml and of the network group (no class of its own: its values shape the
#: actor and critic nodes through interpolation); every other value's rule is declared by the class
#: its node builds (``OPTIONS``, offline_rl/options.py)
TOP_LEVEL: dict[str, Rule] = {
    "seed": int_in(0, MAX_SEED),
    "device": device_name(),
    "updates": int_at_least(0),
    "batch_size": int_at_least(1),
    "log_every": int_at_least(1),
    "threads": int_at_least(0),
    "progress": boolean(),
    "summary": boolean(),
    "compile": one_of(*COMPILE_MODES),
    "precision": one_of(*PRECISIONS),
    "precision_change": one_of("refuse", "allow"),
    "resume": one_of("auto", "never"),
    "rerun": boolean(),
    "continue_from": text_or_null("the MLflow run id of a FINISHED run"),
    "checkpoint.every": int_at_least(0, " (0: no periodic checkpoints)"),
    "checkpoint.keep": int_at_least(1),
    "checkpoint.on_signal": boolean(),
    "checkpoint.dir": Rule(lambda v: v is None or isinstance(v, str), "null or a folder"),
    "eval.every": int_at_least(0),
    "eval.episodes": int_at_least(0),
    "eval.seed": int_at_least(0),
    "network.width": int_at_least(1),
    "network.depth": optional(int_at_least(1), "the algorithm's reference depth"),
    "network.actor_layer_norm": boolean(),
    "network.critic_layer_norm": boolean(),
    "network.layer_norm_affine": boolean(),
}


#: what needs no rule: Hydra's instantiation keys
UNCHECKED = ("_target_", "_partial_")
#: top-level nodes that are not settings: Hydra's own (in a job's config) and its runtime choices
NOT_SETTINGS = ("choices", "hydra")
#: mappings that are one value (their keys are checked where they are used)
MAPPING_VALUES = ("generator",)
_MISSING = object()


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every value's dotted key (a mapping value such as ``dataset.generator`` is one leaf)."""
    keys = []
    for key in node.keys():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child) and key not in MAPPING_VALUES:
            keys += leaf_keys(child, dotted)
        else:
            keys.append(dotted)
    return keys


@dataclass(frozen=True)
class Owner:
    """A node built through ``_target_``, and the options its class declares."""

    path: str
    target: str
    owner: Any
    options: dict[str, tuple[Rule, str]]


def owners(cfg: DictConfig) -> tuple[list[Owner], dict[str, str]]:
    """The nodes of ``cfg`` that name a ``_target_`` (``algo``, ``algo.actor``,
    ``finetune.algorithm``, ...), each with its class's declared options; and the nodes whose
    target could not be imported, with the problem."""
    found, unimportable = [], {}

    def walk(node: DictConfig, path: str) -> None:
        target = node.get("_target_") if "_target_" in node else None
        if isinstance(target, str):
            try:
                owner = get_object(target)
                found.append(Owner(path, target, owner, declared_options(owner)))
            except Exception as exc:  # noqa: BLE001 -- reported as the config's problem
                unimportable[path] = (f"{path}._target_={target!r} cannot be imported "
                                      f"({type(exc).__name__}: {exc})")
                return  # its values' rules are unknown: the import is the problem
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig) and key not in MAPPING_VALUES:
                walk(child, f"{path}.{key}" if path else str(key))

    for key in cfg.keys():
        child = cfg._get_node(key)
        if key not in NOT_SETTINGS and isinstance(child, DictConfig):
            walk(child, str(key))
    return found, unimportable


def rules_for(cfg: DictConfig) -> tuple[dict[str, Rule], dict[str, str], list[Owner], dict[str, str]]:
    """Every rule that applies to ``cfg``: the top-level ones and those the classes of its nodes
    declare, by dotted key; where each key's rule belongs (for the message of a key without one);
    the nodes' owners; and the nodes whose class could not be imported."""
    nodes, unimportable = owners(cfg)
    rules = dict(TOP_LEVEL)
    home = {}
    for owner in sorted(nodes, key=lambda o: o.path.count(".")):
        home[owner.path] = f"OPTIONS of {owner.target.rsplit('.', 1)[-1]} ({owner.target})"
        for key, (rule, _) in owner.options.items():
            rules[f"{owner.path}.{key}"] = rule
    return rules, home, nodes, unimportable


def _home_of(key: str, home: dict[str, str]) -> str:
    path = key
    while "." in path:
        path = path.rsplit(".", 1)[0]
        if path in home:
            return home[path]
    return "TOP_LEVEL in offline_rl/config.py"


def validate(cfg: DictConfig) -> None:
    """Every value of ``cfg`` against its rule; a value without a rule is an error too."""
    by_key, home, nodes, unimportable = rules_for(cfg)
    problems = list(unimportable.values())
    for key in leaf_keys(cfg):
        if key.rsplit(".", 1)[-1] in UNCHECKED or key.split(".", 1)[0] in NOT_SETTINGS:
            continue
        if any(key.startswith(f"{path}.") for path in unimportable):
            continue
        rule = by_key.get(key)
        if rule is None:
            inside = sorted(k for k in by_key if k.startswith(f"{key}."))
            if inside:  # a group of settings given one value (eval=5)
                value = OmegaConf.select(cfg, key, default=None)
                problems.append(f"{key}={value!r} is not allowed: {key} is a group of settings "
                                f"({', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}); "
                                f"set one of them, e.g. {inside[0]}={value!r}")
            else:
                problems.append(f"{key} has no validation rule: declare it in "
                                f"{_home_of(key, home)}")
            continue
        if OmegaConf.is_missing(cfg, key) if "." not in key else _is_missing(cfg, key):
            problems.append(f"{key} is not set: expected {rule.allowed}")
            continue
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if value is _MISSING or not rule.check(value):
            problems.append(f"{key}={value!r} is not allowed: expected {rule.allowed}")
    for owner in nodes:  # settings that need each other, as each component says
        node = OmegaConf.select(cfg, owner.path)
        values = {k: OmegaConf.select(node, str(k), default=None) for k in node.keys()
                  if not isinstance(node._get_node(k), DictConfig)}
        problems += option_problems(owner.owner, values, owner.path)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _is_missing(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    return isinstance(node, DictConfig) and OmegaConf.is_missing(node, leaf)


def from_config(node: DictConfig) -> Any:
    """hydra.utils.instantiate, but our own errors come out as themselves, not wrapped in
    Hydra's InstantiationException (their message is what the researcher needs to read)."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, OfflineRLError):
            raise cause from None
        raise


def check_pairing(cfg: DictConfig) -> None:
    """Reject algorithm x pre-training / fine-tuning pairs that make no sense, saying why and what
    to use (``Scheme.check``, ``OnlineFinetuning.check``)."""
    algo_class = get_class(cfg.algo._target_)
    from_config(cfg.pretrain).check(algo_class)
    from_config(cfg.finetune).check(algo_class)


def check(cfg: DictConfig) -> None:
    """The whole config, before any data is loaded or generated (and, for sweeps, before any job
    is submitted): its values, then its pairing."""
    validate(cfg)
    check_pairing(cfg)


# ----- command-line overrides, before and as Hydra composes them --------------------------------
KEYS_HINT = "`python launch.py --cfg job` lists the keys, `--help` the groups and their options"


# mappings whose keys are not listed in the config but checked where they are used: a local
# dataset's generator settings (offline_rl.generate.datasets.GeneratorConfig.for_env), which the
# config leaves empty so that a run records only what it changes (and its identity stays the same)
OPEN_MAPPINGS = ("dataset.generator",)


def open_mapping(key: str) -> str | None:
    return next((m for m in OPEN_MAPPINGS if key == m or key.startswith(m + ".")), None)


def check_overrides(overrides: Sequence[str], conf_dir: str | Path) -> None:
    """Reject ``+key=value`` and ``++key=value`` for config keys: they add keys the config does
    not define, which would be taken silently (and recorded as params). Adding a config group
    (``+experiment=...``, a folder of ``conf_dir``), a setting to an open mapping
    (``+dataset.generator.env_steps=300000``, OPEN_MAPPINGS) and Hydra's own ``hydra.*`` keys stay
    allowed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    debug = next((o for o in parsed if o.key_or_group == "debug" and not o.is_delete()), None)
    experiment = next((o for o in parsed if o.key_or_group == "experiment"), None)
    debug_options = ([] if debug is None else list(debug.sweep_string_iterator())
                     if debug.is_sweep_override() else [debug.get_value_element_as_str()])
    if experiment is not None and any(option != "none" for option in debug_options):
        # +experiment=... is appended after the debug group, so its own updates, evaluation and
        # sweep would win over debug's: a "smoke" sweep of full-length jobs
        raise ConfigError(f"{debug.input_line} cannot shorten {experiment.input_line}: the "
                          f"experiment's own settings (updates, eval, ...) come after debug's and "
                          f"win; check its jobs with a dry run (hydra.sweeper.dry_run=true) or run one "
                          f"of them with {debug.input_line} and the experiment's choices as arguments")
    for override in parsed:
        if not (override.is_add() or override.is_force_add()):
            continue
        key = override.key_or_group
        if (key.split(".")[0].split("/")[0] == "hydra" or (Path(conf_dir) / key).is_dir()
                or open_mapping(key)):
            continue
        plus = "++" if override.is_force_add() else "+"
        raise ConfigError(f"{override.input_line}: '{plus}' adds keys the config does not define, "
                          f"and unknown keys are rejected; to set a key it defines, write "
                          f"{key}={override.get_value_element_as_str()} ({KEYS_HINT})")


def hydra_error_message(exc: BaseException) -> str:
    """Hydra's / OmegaConf's report of a bad command line, as one line."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(exc)
    if isinstance(exc, OverrideParseException):
        text = f"cannot parse the override {exc.override}: {text}"
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        if group:
            return (f"{group}={option}: '{group}' has no option '{option}'; available: "
                    f"{', '.join(exc.options)}")
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown and open_mapping(unknown.group(1)):  # a setting the mapping does not list yet
        mapping = open_mapping(unknown.group(1))
        return (f"'{unknown.group(1)}': {mapping} starts empty, so its settings are added with '+': "
                f"write +{mapping}.<setting>=<value>, e.g. +{mapping}.env_steps=300000 (one per "
                f"setting; unknown settings are named when the dataset is built)")
    if unknown:
        return f"unknown config key '{unknown.group(1)}': the config has no such key ({KEYS_HINT})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = exc.__cause__
    detail = [line.strip() for line in str(cause).splitlines() if line.strip()] if cause else []
    message = lines[0] if lines else type(exc).__name__
    return f"{message} ({detail[0]})" if detail else message
