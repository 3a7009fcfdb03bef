"""Config composition and validation, without running anything."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import offline_rl.config  # noqa: F401  (resolvers)
import forked
from conftest import ROOT
from offline_rl.config import validate
from offline_rl.errors import ConfigError
from offline_rl.options import int_at_least, positive_number


def composed(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_follow_the_papers():
    # the algorithms' own defaults (CORL's), on a dataset without reference-code settings
    cfg = composed("dataset=minari", "dataset.dataset_id=x/y-v0")
    assert cfg.algo._target_ == "offline_rl.algo.td3_bc.TD3BC"
    assert (cfg.algo.alpha, cfg.algo.policy_delay, cfg.algo.policy_noise, cfg.algo.noise_clip) == (2.5, 2, 0.2, 0.5)
    assert (cfg.algo.tau, cfg.algo.actor_lr, cfg.batch_size, cfg.algo.gamma) == (0.005, 3e-4, 256, 0.99)
    assert cfg.algo.actor.depth == 2 and cfg.network.actor_layer_norm and cfg.network.critic_layer_norm
    edac = composed("algo=edac", "dataset=minari", "dataset.dataset_id=x/y-v0")
    assert (edac.algo.num_critics, edac.algo.eta, edac.algo.critic.depth) == (10, 1.0, 3)
    assert composed("algo=sac_n").algo.eta == 0.0
    assert composed("algo=edac", "network.depth=4").algo.critic.depth == 4
    ln = composed("network=layernorm_critic")
    assert (ln.algo.actor.layer_norm, ln.algo.critic.layer_norm) == (False, True)
    for group in ("algo", "pretrain", "dataset", "network", "finetune", "tracker"):
        assert "_target_" in cfg[group] or group == "network"
    # the default dataset (hopper-medium-local) brings the reference code's Hopper values
    assert (composed().algo.alpha, composed().updates) == (10.0, 500_000)


@pytest.mark.parametrize("override, message", [
    ("algo.tau=0", "algo.tau=0 is not allowed: expected a number in (0.0, 1.0]"),
    ("batch_size=0", "batch_size=0 is not allowed: expected an integer >= 1"),
    ("device=gpu", "device='gpu' is not allowed: expected auto, cpu, cuda or cuda:N"),
    ("network.actor_layer_norm=maybe", "network.actor_layer_norm='maybe' is not allowed: expected true or false"),
    ("algo.gamma=1.0", "algo.gamma=1.0 is not allowed: expected a number in (0.0, 1.0)"),
])
def test_bad_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as info:
        validate(composed(override))
    assert message in str(info.value)


def test_edac_specific_checks_only_apply_to_edac():
    validate(composed("algo=td3_bc"))
    with pytest.raises(ConfigError, match="algo.num_critics=1"):
        validate(composed("algo=edac", "algo.num_critics=1"))


GROUP_OPTIONS = {group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
                 for group in ("algo", "pretrain", "finetune", "network", "dataset", "tracker", "debug")}


def every_option():
    for group, options in GROUP_OPTIONS.items():
        for option in options:
            extra = ["dataset.dataset_id=x/y-v0"] if (group, option) == ("dataset", "minari") else []
            yield group, option, composed(f"{group}={option}", *extra)


def test_every_value_of_every_option_has_a_rule_and_every_rule_a_value():
    """Both directions of 'every value checked': a YAML key without a rule fails validation (so
    renaming a key cannot silently drop its check), and a rule whose key no option has is dead (a
    key renamed in the YAML but not in its class's OPTIONS)."""
    from offline_rl.config import TOP_LEVEL, leaf_keys, owners

    seen, declared, used = set(), set(), set()
    for group, option, cfg in every_option():
        validate(cfg)  # every default is allowed, and every value has a rule
        keys = set(leaf_keys(cfg))
        seen |= keys
        nodes, unimportable = owners(cfg)
        assert unimportable == {}
        for owner in nodes:
            for key, (_, where) in owner.options.items():
                declared.add((where, key))
                if f"{owner.path}.{key}" in keys:
                    used.add((where, key))
    assert set(TOP_LEVEL) - seen == set()
    assert declared - used == set()
    # the rules live beside their classes: none of the groups' keys is in the central table
    assert not [key for key in TOP_LEVEL if key.split(".")[0] in
                ("algo", "pretrain", "finetune", "dataset", "tracker")]


def test_debug_smoke_shortens_every_phase_the_run_has_and_the_command_line_still_wins():
    lengths = lambda cfg: (cfg.updates, cfg.pretrain.steps, cfg.finetune.get("env_steps"),  # noqa: E731
                           cfg.finetune.get("min_replay_size"), cfg.network.width, cfg.eval.episodes)
    # (500k: conf/reference/td3_bc_hopper.yaml, which debug comes after)
    assert lengths(composed("pretrain=ac", "finetune=td3")) == (500_000, 50_000, 200_000, 1000, 256, 10)
    smoke = composed("debug=smoke", "pretrain=ac", "finetune=td3")
    validate(smoke)
    assert lengths(smoke) == (300, 100, 200, 100, 64, 2)
    assert (smoke.pretrain.until, smoke.log_every, smoke.progress) == ("converged", 50, False)
    # no fine-tuning chosen: no fine-tuning keys added (finetune=none declares none)
    plain = composed("debug=smoke")
    validate(plain)
    assert lengths(plain) == (300, 100, None, None, 64, 2)
    mine = composed("debug=smoke", "finetune=iql", "updates=1000", "network=default",
                    "finetune.env_steps=7")
    assert lengths(mine) == (1000, 100, 7, 100, 256, 2)


@pytest.mark.parametrize("experiment", ["+experiment=iql_check", "+experiment=efficiency"])
def test_debug_smoke_with_an_experiment_is_refused_before_composing(experiment):
    """An experiment's own updates and sweep would win over debug's: a "smoke" sweep of
    full-length jobs. One line, exit status 2."""
    from offline_rl.config import check_overrides

    with pytest.raises(ConfigError, match=r"debug=smoke cannot shorten \+experiment=.*dry_run=true"):
        check_overrides(["debug=smoke", experiment, "seed=1"], ROOT / "conf")
    with pytest.raises(ConfigError, match=r"debug=none,smoke cannot shorten"):  # swept: any of them
        check_overrides([experiment, "debug=none,smoke"], ROOT / "conf")
    check_overrides(["debug=none", experiment], ROOT / "conf")  # explicit default: fine


@pytest.mark.slow  # starts a process
def test_debug_smoke_with_an_experiment_exits_2_in_one_line():
    result = forked.run([sys.executable, "launch.py", "+experiment=iql_check", "debug=smoke"], ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot shorten" in result.stderr


def test_a_value_without_a_rule_or_unset_is_an_error():
    cfg = composed("algo=td3_bc")
    OmegaConf.set_struct(cfg, False)
    cfg.algo.policy_delays = 2  # e.g. a key renamed in the YAML only
    with pytest.raises(ConfigError, match=r"algo.policy_delays has no validation rule: declare it in "
                                          r"OPTIONS of TD3BC \(offline_rl.algo.td3_bc.TD3BC\)"):
        validate(cfg)
    cfg = composed("algo=td3_bc")
    OmegaConf.set_struct(cfg, False)
    cfg.eval.rate = 2
    with pytest.raises(ConfigError, match="eval.rate has no validation rule: declare it in TOP_LEVEL"):
        validate(cfg)
    with pytest.raises(ConfigError, match="dataset.dataset_id is not set: expected a Minari dataset id"):
        validate(composed("dataset=minari"))


class ToyAlgorithm:
    """A component this package has never heard of: its own options, nothing else edited."""

    OPTIONS = {"temperature": positive_number(), "horizon": int_at_least(1)}


def test_a_new_component_brings_its_own_rules():
    cfg = composed("algo=td3_bc")
    OmegaConf.set_struct(cfg, False)
    cfg.finetune = {"_target_": "test_config.ToyAlgorithm", "temperature": 0.5, "horizon": 3}
    validate(cfg)
    cfg.finetune.temperature = -1.0
    with pytest.raises(ConfigError, match=r"finetune.temperature=-1.0 is not allowed: expected a "
                                          r"finite number > 0"):
        validate(cfg)
    cfg.finetune = {"_target_": "test_config.NoSuchThing", "temperature": 0.5}
    with pytest.raises(ConfigError, match=r"finetune._target_='test_config.NoSuchThing' cannot be "
                                          r"imported") as info:
        validate(cfg)
    assert "has no validation rule" not in str(info.value)  # its values are not blamed


def test_settings_that_need_each_other_are_a_value_problem_not_a_pairing():
    """finetune.offline_fraction needs the offline data in the replay: OnlineFinetuning says so
    (option_problems), validate reports it with the other values, and a sweep calls it an error
    (nothing launched), never an incompatible pair that skip_incompatible would drop."""
    from offline_rl.sweep import job_problem

    cfg = composed("finetune=td3", "finetune.init_with_offline=false", "finetune.offline_fraction=0.5",
                   "algo.tau=2")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert ("finetune.offline_fraction=0.5 needs the offline data in the replay: set "
            "finetune.init_with_offline=true or finetune.offline_fraction=null") in str(info.value)
    assert "algo.tau=2 is not allowed" in str(info.value)  # in the same one line
    error, incompatibility = job_problem(composed("finetune=td3", "finetune.init_with_offline=false",
                                                  "finetune.offline_fraction=0.5"))
    assert incompatibility is None and "needs the offline data" in error
    validate(composed("finetune=td3", "finetune.offline_fraction=0.5"))


@pytest.mark.slow  # starts a process
def test_help_lists_groups_and_cfg_job_prints_config():
    out = forked.run([sys.executable, "launch.py", "--help"], ROOT, check=True).stdout
    for line in ("algo: bc, cql, edac, edac_bc, iql, iql_gaussian, sac_n, td3_bc, td3_bc_cql", "pretrain:", "finetune:", "network:", "dataset:", "debug: none, smoke",
                 "+experiment: efficiency, finetune_study, iql_check, lambda_sweep", "hydra/launcher: local, slurm, slurm_local"):
        assert line in out
    # the 48 per-task tuning files are applied automatically: one note, not 48 options
    tuning = sorted((ROOT / "conf" / "tuning").glob("*.yaml"))
    assert len(tuning) == 48 and not any(f.stem in out for f in tuning)
    assert "(tuning: 48 files, applied automatically" in out
    job = forked.run([sys.executable, "launch.py", "--cfg", "job", "algo=edac"], ROOT, check=True).stdout
    assert OmegaConf.create(job).algo._target_ == "offline_rl.algo.edac.EDAC"



@pytest.mark.slow  # starts a process
def test_generator_settings_are_added_with_plus_and_the_plain_form_says_so():
    """A local dataset's `generator` mapping starts empty: `+dataset.generator.<setting>=v` adds a
    setting; the plain form (what Hydra refuses) and an unknown setting each get one line."""
    def launch(*args):
        return forked.run([sys.executable, "launch.py", "dataset=hopper-medium-local", *args], ROOT)

    job = launch("+dataset.generator.env_steps=300000", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    assert OmegaConf.create(job.stdout).dataset.generator == {"env_steps": 300000}
    plain = launch("dataset.generator.env_steps=300000", "--cfg", "job")
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        "error: 'dataset.generator.env_steps': dataset.generator starts empty, so its settings are "
        "added with '+': write +dataset.generator.<setting>=<value>, e.g. "
        "+dataset.generator.env_steps=300000 (one per setting; unknown settings are named when the "
        "dataset is built)"]
    unknown = launch("+dataset.generator.env_stpes=10", "tracker=none")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        "error: unknown dataset generator setting(s) env_stpes; the settings are: ")


# ----- the paper's reference-code settings per dataset (conf/reference/) -------------------------
# (alpha, updates, lambda) of TD3+BC, (N, updates, lambda) of EDAC; lambda: the paper's section 6.2,
# "lambda = 0.1 for HalfCheetah, and Walker2d for EDAC"
MUJOCO = {"hopper": (10.0, 500_000, 0.0, 50, 3_000_000, 0.0),
          "halfcheetah": (20.0, 100_000, 0.1, 10, 1_000_000, 0.1),
          "walker2d": (5.0, 500_000, 0.0, 10, 12_000_000, 0.1)}
LOCAL_LEVELS = ("medium", "medium-replay", "full-replay", "expert", "medium-expert")
OFFICIAL_LEVELS = ("simple", "medium", "expert")


@pytest.mark.parametrize("env", sorted(MUJOCO))
def test_reference_settings_compose_for_every_mujoco_dataset(env):
    alpha, td3_updates, td3_lambda, n, edac_updates, edac_lambda = MUJOCO[env]
    datasets = [f"{env}-{level}-local" for level in LOCAL_LEVELS] + [
        f"{env}-{level}" for level in OFFICIAL_LEVELS]
    for dataset in datasets:
        td3 = composed(f"dataset={dataset}")
        assert (td3.algo.alpha, td3.updates, td3.pretrain.get("lambda")) == (alpha, td3_updates, td3_lambda), dataset
        edac = composed("algo=edac", "pretrain=soft", f"dataset={dataset}")
        full_replay_walker = dataset == "walker2d-full-replay-local"
        expected_updates = 3_000_000 if full_replay_walker else edac_updates
        assert (edac.algo.num_critics, edac.algo.eta, edac.updates) == (n, 1.0, expected_updates), dataset
        assert edac.pretrain["lambda"] == edac_lambda, dataset
        validate(td3)
        validate(edac)


def test_reference_settings_lose_to_the_command_line_and_skip_other_datasets():
    cfg = composed("dataset=walker2d-medium-local", "algo.alpha=2.5", "updates=30000")
    assert (cfg.algo.alpha, cfg.updates) == (2.5, 30000)
    edac = composed("algo=edac", "pretrain=soft", "dataset=halfcheetah-medium",
                    "pretrain.lambda=0", "algo.num_critics=5")
    assert (edac.pretrain["lambda"], edac.algo.num_critics, edac.updates) == (0, 5, 1_000_000)
    # Adroit keeps Table 3's values (conf/tuning/), any Minari id keeps the algorithm's defaults
    assert composed("dataset=pen-human").algo.alpha == 1.0
    other = composed("dataset=minari", "dataset.dataset_id=x/y-v0")
    assert (other.algo.alpha, other.updates) == (2.5, 1_000_000)
    # variants without reference settings keep their own defaults on MuJoCo data too
    assert composed("algo=sac_n", "dataset=hopper-medium-local").algo.num_critics == 10


@pytest.mark.slow  # starts a process
def test_help_says_which_values_the_automatic_files_set():
    """`--help` with a run's choices names the files conf/config.yaml applied and what each set;
    a value the command line overrides is marked."""
    def help_for(*args):
        out = forked.run([sys.executable, "launch.py", *args, "--help"], ROOT, check=True).stdout
        section = out.split("== Settings applied automatically")[1].split("== Config ==")[0]
        return section.strip().splitlines()[1:]

    assert help_for("dataset=walker2d-medium-local", "algo.alpha=2.5") == [
        "conf/reference/td3_bc_walker2d.yaml: algo.alpha=5.0 (overridden on the command line), "
        "updates=500000"]
    assert help_for("algo=edac_bc", "dataset=pen-human") == [
        "conf/tuning/edac_bc_pen-human.yaml: algo.num_critics=20, algo.eta=1000.0"]
    assert help_for("dataset=minari", "dataset.dataset_id=x/y-v0") == [
        "none for this algo and dataset"]
    # conf/debug/ comes after them: debug=smoke's updates win too
    assert help_for("dataset=walker2d-medium-local", "debug=smoke") == [
        "conf/reference/td3_bc_walker2d.yaml: algo.alpha=5.0, updates=500000 (overridden by debug=smoke)"]


def test_a_minari_id_of_a_known_family_is_told_what_it_goes_without():
    """`dataset=minari dataset.dataset_id=local/hopper/...` applies no family: one warning naming
    the reference values it goes without and the override that applies them (which does)."""
    from offline_rl.automatic import missing_reference

    def choices_and_config(*overrides):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.runtime.choices), cfg

    bare = choices_and_config("dataset=minari", "dataset.dataset_id=local/hopper/medium-v0")
    assert missing_reference(*bare) == (
        "dataset=minari applies no dataset family, so local/hopper/medium-v0 runs without "
        "conf/reference/td3_bc_hopper.yaml's reference values (algo.alpha=10.0, updates=500000); "
        "add dataset/family=hopper to apply them")
    assert (bare[1].algo.alpha, bare[1].updates) == (2.5, 1_000_000)
    applied = choices_and_config("dataset=minari", "dataset.dataset_id=local/hopper/medium-v0",
                                 "dataset/family=hopper")
    assert missing_reference(*applied) is None
    assert (applied[1].algo.alpha, applied[1].updates) == (10.0, 500_000)
    # nothing to say: a named dataset, an id of no known family, an algorithm without reference values
    assert missing_reference(*choices_and_config("dataset=hopper-medium-local")) is None
    assert missing_reference(*choices_and_config("dataset=minari", "dataset.dataset_id=x/y/z-v0")) is None
    assert missing_reference(*choices_and_config("dataset=minari",
                                                 "dataset.dataset_id=tests/hopper/random-v0")) is None
    assert missing_reference(*choices_and_config("algo=sac_n", "dataset=minari",
                                                 "dataset.dataset_id=mujoco/hopper/medium-v0")) is None


def test_hard_pretraining_completes_timeouts_as_the_reference_code(tmp_path):
    """Every pre-training scheme's default: a time-limited episode's return-to-go is completed with
    r_T / (1 - gamma), the reference code's hard and soft choice, computed by hand here."""
    from hydra.utils import instantiate

    from offline_rl.dataset.episodes import OfflineData
    from offline_rl.dataset.replay import ReplayBuffer

    for scheme in ("ac", "actor", "critic", "none", "qt_max", "soft"):
        assert instantiate(composed(f"pretrain={scheme}").pretrain).bootstrap_timeouts, scheme
    # one episode of 3 steps cut by the time limit: rewards 1, 2, 4, gamma 0.5
    data = OfflineData("hand", np.zeros((3, 1), np.float32), np.zeros((3, 1), np.float32),
                       np.array([1.0, 2.0, 4.0], np.float32), np.zeros((3, 1), np.float32),
                       np.zeros(3, bool), np.array([False, False, True]))
    scheme = instantiate(composed("pretrain=ac").pretrain)
    replay = ReplayBuffer.from_offline(data, "cpu", gamma=0.5, normalize_states=False,
                                       bootstrap_timeouts=scheme.bootstrap_timeouts)
    last = 4.0 / (1 - 0.5)  # 8: the last reward repeated forever
    expected = [1 + 0.5 * 2 + 0.25 * last, 2 + 0.5 * last, last]  # 4.0, 6.0, 8.0
    assert replay.storage["returns_to_go"][:3].tolist() == pytest.approx(expected)


def test_a_run_composed_outside_hydra_main_is_named_from_its_group_choices():
    """hydra.compose(..., return_hydra_config=True) in a notebook or a test: the run gets the name
    launch.py would give it (so launch.py's same command finds its checkpoints), not ?-?-?-s0."""
    from offline_rl.identity import flatten, run_identity
    from offline_rl.run import group_choices, run_name

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["algo=edac", "pretrain=soft", "seed=3"],
                      return_hydra_config=True)
        bare = compose(config_name="config", overrides=["algo=edac"])
    assert run_name(group_choices(cfg), cfg.seed, "") == "edac-soft-hopper-medium-local-s3"
    assert run_name(group_choices(bare), bare.seed, "") == "?-?-?-s0"  # no choices to read
    # Hydra's own settings are not the run's: neither params nor identity (launch.py's is the same)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        plain = compose(config_name="config", overrides=["algo=edac", "pretrain=soft", "seed=3"])
    assert flatten(cfg) == flatten(plain) and not any(k.startswith("hydra.") for k in flatten(cfg))
    assert run_identity(cfg) == run_identity(plain)
