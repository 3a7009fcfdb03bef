"""Validation of a composed config, in one place, before anything is built or submitted:
``check(cfg)`` = every value (``validate``) and the algorithm x pre-training / fine-tuning pairing
(``check_pairing``). ``training.run.train`` (what launch.py runs) calls it first, and the sweeper
runs the same two checks for every job before any is launched; nothing else re-checks a config
value.

Each rule names a key, a check and what is allowed; a failing value raises one ConfigError naming
the key, the value and the allowed values. Rules name keys that only some options of a group have
(``algo.alpha`` is TD3+BC's), so a rule whose key the composed config lacks does not apply; in the
other direction every value of the checked groups must have a rule (or be listed in ``UNCHECKED``),
so a renamed YAML key fails validation instead of silently losing its check
(tests/test_config.py composes every group option and checks both directions).

Unknown keys and unknown group options are rejected by Hydra; ``hydra_error_message`` turns its
report into one line. ``+key=value`` / ``++key=value`` would add a key the config does not define
(Hydra's own hint for an unknown key): ``check_overrides`` rejects those too, before composing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from offline_rl.automatic import help_text as applied_help
from offline_rl.cli_help import config_groups
from offline_rl.dataset.levels import LEVELS
from offline_rl.errors import ConfigError, OfflineRLError
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


@dataclass(frozen=True)
class Rule:
    key: str
    check: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """A finite number (inf and nan are no setting's value: they fail at the first update)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def number_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def check(v: Any) -> bool:
        if not _is_num(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    if math.isinf(high):
        text = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check, text


def positive_number():
    return (lambda v: _is_num(v) and v > 0), "a finite number > 0"


#: numpy's seeds are below 2**32 (seed_everything seeds random, numpy and torch with the same value)
MAX_SEED = 2**32 - 1


def boolean():
    return (lambda v: isinstance(v, bool)), "true or false"


def device_name():
    pattern = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    return (lambda v: isinstance(v, str) and bool(pattern.match(v))), "auto, cpu, cuda or cuda:N"


def _rule(key: str, spec) -> Rule:
    check, allowed = spec
    return Rule(key, check, allowed)


RULES: list[Rule] = [
    _rule("seed", ((lambda v: _is_int(v) and 0 <= v <= MAX_SEED), f"an integer in [0, {MAX_SEED}]")),
    _rule("device", device_name()),
    _rule("updates", int_at_least(0)),
    _rule("batch_size", int_at_least(1)),
    _rule("log_every", int_at_least(1)),
    _rule("threads", int_at_least(0)),
    _rule("progress", boolean()),
    _rule("summary", boolean()),
    _rule("compile", ((lambda v: v in COMPILE_MODES), ", ".join(COMPILE_MODES))),
    _rule("precision", ((lambda v: v in PRECISIONS), ", ".join(PRECISIONS))),
    _rule("precision_change", ((lambda v: v in ("refuse", "allow")), "refuse or allow")),
    _rule("resume", ((lambda v: v in ("auto", "never")), "auto or never")),
    _rule("rerun", boolean()),
    _rule("continue_from", (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "null or the MLflow run id of a FINISHED run")),
    _rule("checkpoint.every", (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no periodic checkpoints)")),
    _rule("checkpoint.keep", int_at_least(1)),
    _rule("checkpoint.on_signal", boolean()),
    _rule("checkpoint.dir", (lambda v: v is None or isinstance(v, str), "null or a folder")),
    _rule("eval.every", int_at_least(0)),
    _rule("eval.episodes", int_at_least(0)),
    _rule("eval.seed", int_at_least(0)),
    _rule("network.width", int_at_least(1)),
    _rule("network.depth", (lambda v: v is None or (_is_int(v) and v >= 1), "null (the algorithm's reference depth) or an integer >= 1")),
    _rule("network.actor_layer_norm", boolean()),
    _rule("network.critic_layer_norm", boolean()),
    _rule("network.layer_norm_affine", boolean()),
    _rule("algo.gamma", number_in(0.0, 1.0, low_open=True, high_open=True)),
    _rule("algo.tau", number_in(0.0, 1.0, low_open=True)),
    _rule("algo.actor_lr", positive_number()),
    _rule("algo.critic_lr", positive_number()),
    _rule("algo.alpha_lr", positive_number()),
    _rule("algo.alpha", number_in(0.0, float("inf"))),
    _rule("algo.policy_delay", int_at_least(1)),
    _rule("algo.policy_noise", number_in(0.0, float("inf"))),
    _rule("algo.noise_clip", number_in(0.0, float("inf"))),
    _rule("algo.num_critics", int_at_least(2)),
    _rule("algo.eta", number_in(0.0, float("inf"))),
    _rule("algo.initial_alpha", positive_number()),
    _rule("algo.max_action", positive_number()),
    _rule("algo.normalize_states", boolean()),
    # TD3+BC+CQL, EDAC+BC, CQL (appendix G)
    _rule("algo.cql_weight", number_in(0.0, float("inf"))),
    _rule("algo.cql_n_actions", int_at_least(1)),
    _rule("algo.cql_temperature", positive_number()),
    _rule("algo.bc_weight", number_in(0.0, float("inf"))),
    _rule("algo.bc_steps", int_at_least(0)),
    _rule("algo.target_update_period", int_at_least(1)),
    _rule("algo.importance_sample", boolean()),
    _rule("algo.backup_entropy", boolean()),
    _rule("algo.orthogonal_init", boolean()),
    _rule("algo.target_entropy", (lambda v: v is None or _is_num(v), "null (-|A|) or a number")),
    _rule("algo.corl_init", boolean()),
    # IQL (offline_rl/algo/iql.py)
    _rule("algo.expectile", number_in(0.0, 1.0, low_open=True, high_open=True)),
    _rule("algo.beta", number_in(0.0, float("inf"))),
    _rule("algo.max_weight", positive_number()),
    _rule("algo.value_lr", positive_number()),
    _rule("algo.actor_schedule_steps", (lambda v: v is None or (_is_int(v) and v >= 1), "null (a constant learning rate) or an integer >= 1")),
    _rule("algo.normalize_rewards", boolean()),
    _rule("algo.value.width", int_at_least(1)),
    _rule("algo.value.depth", int_at_least(1)),
    _rule("algo.value.layer_norm", boolean()),
    _rule("algo.value.layer_norm_affine", boolean()),
    # the networks (their width, depth and LayerNorm come from network.*)
    _rule("algo.actor.width", int_at_least(1)),
    _rule("algo.critic.width", int_at_least(1)),
    _rule("algo.actor.depth", int_at_least(1)),
    _rule("algo.critic.depth", int_at_least(1)),
    _rule("algo.actor.layer_norm", boolean()),
    _rule("algo.critic.layer_norm", boolean()),
    _rule("algo.actor.layer_norm_affine", boolean()),
    _rule("algo.critic.layer_norm_affine", boolean()),
    _rule("algo.actor.log_std_min", (_is_num, "a number")),
    _rule("algo.actor.log_std_max", (_is_num, "a number")),
    # pre-training (offline_rl.pretrain.common.Scheme)
    _rule("pretrain.steps", int_at_least(1)),
    _rule("pretrain.until", ((lambda v: v in (None, "converged")), "null or 'converged'")),
    _rule("pretrain.window", int_at_least(1)),
    _rule("pretrain.tolerance", number_in(0.0, float("inf"))),
    _rule("pretrain.lambda", number_in(0.0, 1.0)),
    _rule("pretrain.cql_weight", number_in(0.0, float("inf"))),
    _rule("pretrain.cql_n_actions", int_at_least(1)),
    _rule("pretrain.bootstrap_timeouts", boolean()),
    # online fine-tuning ("Finetuning from offline RL", Table B1 / B2, appendix C.1)
    _rule("finetune.env_steps", int_at_least(1)),
    _rule("finetune.min_replay_size", int_at_least(1)),
    _rule("finetune.exploration_noise", number_in(0.0, float("inf"))),
    _rule("finetune.batch_size", int_at_least(1)),
    _rule("finetune.init_with_offline", boolean()),
    _rule("finetune.offline_fraction", (lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "null (uniform over the replay) or a number in [0, 1]")),
    _rule("finetune.max_replay_size", int_at_least(1)),
    _rule("finetune.from_run", (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "null or an MLflow run id / checkpoint path")),
    _rule("finetune.algorithm.epsilon", positive_number()),
    _rule("finetune.algorithm.dqda_clipping", (lambda v: v is None or (_is_num(v) and v > 0), "null (off) or a number > 0")),
    _rule("finetune.algorithm.initial_multiplier", positive_number()),
    _rule("finetune.algorithm.multiplier_lr", positive_number()),
    _rule("finetune.algorithm.policy_delay", int_at_least(1)),
    _rule("finetune.algorithm.tau", number_in(0.0, 1.0, low_open=True)),
    _rule("finetune.algorithm.actor_lr", positive_number()),
    _rule("finetune.algorithm.critic_lr", positive_number()),
    _rule("finetune.algorithm.alpha", number_in(0.0, float("inf"))),
    _rule("finetune.algorithm.eta", number_in(0.0, float("inf"))),
    _rule("finetune.algorithm.alpha_lr", positive_number()),
    _rule("finetune.algorithm.policy_noise", number_in(0.0, float("inf"))),
    _rule("finetune.algorithm.noise_clip", number_in(0.0, float("inf"))),
    _rule("finetune.algorithm.expectile", number_in(0.0, 1.0, low_open=True, high_open=True)),
    _rule("finetune.algorithm.beta", number_in(0.0, float("inf"))),
    _rule("finetune.algorithm.max_weight", positive_number()),
    _rule("finetune.algorithm.value_lr", positive_number()),
    _rule("finetune.algorithm.actor_schedule_steps", (lambda v: v is None or (_is_int(v) and v >= 1), "null (a constant learning rate) or an integer >= 1")),
    _rule("finetune.algorithm.target_entropy", (lambda v: v is None or _is_num(v), "null (-|A|) or a number")),
    # the datasets: Minari's by id, this project's by environment and level
    _rule("dataset.dataset_id", (lambda v: isinstance(v, str) and "/" in v, "a Minari dataset id such as mujoco/hopper/medium-v0")),
    _rule("dataset.download_if_missing", boolean()),
    _rule("dataset.probe_timeout_s", positive_number()),
    _rule("dataset.env_id", (lambda v: isinstance(v, str) and v.strip() != "", "a Gymnasium environment id")),
    _rule("dataset.level", ((lambda v: v in LEVELS), ", ".join(LEVELS))),
    _rule("dataset.generator", ((lambda v: isinstance(v, dict)), "a mapping of generator settings")),
    # evaluation overrides of Minari datasets (appendix G.5)
    _rule("dataset.use_minari_reference", boolean()),
    _rule("dataset.eval_max_episode_steps", (lambda v: v is None or (_is_int(v) and v >= 1), "null (the dataset's environment's time limit) or an integer >= 1")),
    _rule("dataset.ref_min_score", (lambda v: v is None or _is_num(v), "null (the dataset's reference score) or a number")),
    _rule("dataset.ref_max_score", (lambda v: v is None or _is_num(v), "null (the dataset's reference score) or a number")),
    # tracking: a server that stops answering mid-run (offline_rl.tracker)
    _rule("tracker.experiment", (lambda v: isinstance(v, str) and v.strip() != "", "an MLflow experiment name")),
    _rule("tracker.tracking_uri", (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "null (the sqlite store in tracker.store_dir) or an MLflow tracking URI")),
    _rule("tracker.store_dir", (lambda v: isinstance(v, str) and v.strip() != "", "a folder")),
    _rule("tracker.retry_every_s", positive_number()),
    _rule("tracker.wait_for_server_s", number_in(0.0, float("inf"))),
]


#: what needs no rule: Hydra's instantiation keys
UNCHECKED = ("_target_", "_partial_")
#: top-level nodes that are not settings: Hydra's own (in a job's config) and its runtime choices
NOT_SETTINGS = ("choices", "hydra")
_MISSING = object()


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every value's dotted key (a mapping value such as ``dataset.generator`` is one leaf)."""
    keys = []
    for key in node.keys():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child) and not dotted.endswith("generator"):
            keys += leaf_keys(child, dotted)
        else:
            keys.append(dotted)
    return keys


def validate(cfg: DictConfig, rules: list[Rule] | None = None) -> None:
    """Every value of ``cfg`` against its rule; a value without a rule is an error too."""
    rules = RULES if rules is None else rules
    by_key = {rule.key: rule for rule in rules}
    problems = []
    fraction = OmegaConf.select(cfg, "finetune.offline_fraction", default=None)
    if fraction is not None and OmegaConf.select(cfg, "finetune.init_with_offline") is False:
        problems.append(f"finetune.offline_fraction={fraction!r} needs the offline data in the "
                        f"replay: set finetune.init_with_offline=true or finetune.offline_fraction=null")
    for key in leaf_keys(cfg):
        if key.rsplit(".", 1)[-1] in UNCHECKED or key.split(".", 1)[0] in NOT_SETTINGS:
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
                problems.append(f"{key} has no validation rule (offline_rl/config.py RULES): add one")
            continue
        if OmegaConf.is_missing(cfg, key) if "." not in key else _is_missing(cfg, key):
            problems.append(f"{key} is not set: expected {rule.allowed}")
            continue
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if value is _MISSING or not rule.check(value):
            problems.append(f"{key}={value!r} is not allowed: expected {rule.allowed}")
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

    for override in OverridesParser.create().parse_overrides(list(overrides)):
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
