"""Config composition and validation, without running anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import offline_rl.config  # noqa: F401  (resolvers)
from conftest import ROOT
from offline_rl.config import validate
from offline_rl.errors import ConfigError


def composed(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_follow_the_papers():
    cfg = composed()
    assert cfg.algo._target_ == "offline_rl.algo.td3_bc.TD3BC"
    assert (cfg.algo.alpha, cfg.algo.policy_delay, cfg.algo.policy_noise, cfg.algo.noise_clip) == (2.5, 2, 0.2, 0.5)
    assert (cfg.algo.tau, cfg.algo.actor_lr, cfg.batch_size, cfg.algo.gamma) == (0.005, 3e-4, 256, 0.99)
    assert cfg.algo.actor.depth == 2 and cfg.network.actor_layer_norm and cfg.network.critic_layer_norm
    edac = composed("algo=edac")
    assert (edac.algo.num_critics, edac.algo.eta, edac.algo.critic.depth) == (10, 1.0, 3)
    assert composed("algo=sac_n").algo.eta == 0.0
    assert composed("algo=edac", "network.depth=4").algo.critic.depth == 4
    ln = composed("network=layernorm_critic")
    assert (ln.algo.actor.layer_norm, ln.algo.critic.layer_norm) == (False, True)
    for group in ("algo", "pretrain", "dataset", "network", "finetune", "tracker"):
        assert "_target_" in cfg[group] or group == "network"


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


def test_help_lists_groups_and_cfg_job_prints_config():
    out = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for line in ("algo: bc, cql, edac, edac_bc, sac_n, td3_bc, td3_bc_cql", "pretrain:", "finetune:", "network:", "dataset:",
                 "+experiment: finetune_study, lambda_sweep", "hydra/launcher: local, slurm, slurm_local"):
        assert line in out
    # the 48 per-task tuning files are applied automatically: one note, not 48 options
    tuning = sorted((ROOT / "conf" / "tuning").glob("*.yaml"))
    assert len(tuning) == 48 and not any(f.stem in out for f in tuning)
    assert "(tuning: 48 files, applied automatically" in out
    job = subprocess.run([sys.executable, "launch.py", "--cfg", "job", "algo=edac"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert OmegaConf.create(job).algo._target_ == "offline_rl.algo.edac.EDAC"
