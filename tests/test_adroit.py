"""Adroit datasets and the paper's evaluation fix (appendix G.5, Table 4), and Table 3's per-task
hyper-parameters composed from conf/tuning/.

The human demonstrations cannot be downloaded here: the tests write small Adroit-shaped Minari
datasets themselves (uniform-random actions in the real AdroitHand environments, under the real
D4RL ids, in a temporary MINARI_DATASETS_PATH) and run the real dataset configs on them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import forked
from conftest import ROOT

SKIP_REASON = "gymnasium-robotics is not installed (pip install '.[adroit]')"
needs_robotics = pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None,
                                    reason=SKIP_REASON)

# Table 4: new time limit, new min (random) score, max (D4RL human) score
TABLE_4 = {"pen": (100, -162.09, 3076.83), "door": (300, -84.52, 2880.57),
           "hammer": (624, -856.83, 12794.13), "relocate": (527, -37.95, 4233.88)}
ENVS = {"pen": "AdroitHandPen-v1", "door": "AdroitHandDoor-v1", "hammer": "AdroitHandHammer-v1",
        "relocate": "AdroitHandRelocate-v1"}
# what the generated datasets store as Minari's own reference scores
STORED_MIN, STORED_MAX = -5.0, 50.0


def make_adroit_dataset(dataset_id: str, env_id: str, episodes: int = 4, steps: int = 30,
                        seed: int = 0):
    """A real Minari dataset of uniform-random episodes of ``steps`` steps in a real AdroitHand
    env, cut like a recording (the last step truncated); the stored env spec is the registered one
    (200-step time limit), as in Minari's D4RL datasets."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    gymnasium_robotics = pytest.importorskip("gymnasium_robotics", reason=SKIP_REASON)
    gym.register_envs(gymnasium_robotics)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    buffers = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        observations, actions, rewards = [obs], [], []
        for _ in range(steps):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
        truncations = np.zeros(steps, dtype=bool)
        truncations[-1] = True
        buffers.append(EpisodeBuffer(id=ep, seed=seed + ep, observations=np.asarray(observations),
                                     actions=np.asarray(actions, dtype=np.float32),
                                     rewards=np.asarray(rewards, dtype=np.float64),
                                     terminations=np.zeros(steps, dtype=bool), truncations=truncations))
    env.close()
    return minari.create_dataset_from_buffers(
        dataset_id, buffers, env=gym.spec(env_id), algorithm_name="uniform-random", author="tests",
        author_email="tests@example.org", description="Adroit-shaped test data",
        ref_min_score=STORED_MIN, ref_max_score=STORED_MAX)


@pytest.fixture(scope="session")
def adroit_root(tmp_path_factory) -> Path:
    """A Minari root holding generated D4RL/pen/human-v2 and D4RL/door/human-v2 (tests that use
    it are skipped without gymnasium-robotics)."""
    pytest.importorskip("gymnasium_robotics", reason=SKIP_REASON)
    root = tmp_path_factory.mktemp("adroit_minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_adroit_dataset("D4RL/pen/human-v2", ENVS["pen"])
            make_adroit_dataset("D4RL/door/human-v2", ENVS["door"], episodes=2, steps=10)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root


@pytest.fixture
def use_root(adroit_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(adroit_root))
    return adroit_root


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    import offline_rl.config  # noqa: F401  (the config resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def load(cfg):
    from hydra.utils import instantiate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return instantiate(cfg)


# ----- dataset configs and the evaluation fix -------------------------------------------------


@pytest.mark.parametrize("task", sorted(TABLE_4))
@pytest.mark.parametrize("level", ["human", "cloned", "expert"])
def test_dataset_configs_carry_table_4(task, level):
    cfg = compose(f"dataset={task}-{level}")
    steps, low, high = TABLE_4[task]
    assert cfg.dataset.dataset_id == f"D4RL/{task}/{level}-v2"
    assert cfg.dataset.eval_max_episode_steps == steps
    assert (cfg.dataset.ref_min_score, cfg.dataset.ref_max_score) == (low, high)
    assert cfg.dataset.use_minari_reference is False


def test_time_limit_override_and_rebased_score_on_a_synthetic_return(use_root):
    from offline_rl.training.evaluation import Evaluator, normalized_score
    from offline_rl.dataset.replay import StateNormalizer

    data = load(compose("dataset=pen-human").dataset)
    assert data.env_spec.id == "AdroitHandPen-v1"
    assert data.env_spec.max_episode_steps == 100  # the dataset's own spec says 200
    assert (data.ref_min_score, data.ref_max_score) == (-162.09, 3076.83)
    assert data.metadata["eval_max_episode_steps"] == 100
    assert data.metadata["dataset_max_episode_steps"] == 200
    assert data.metadata["ref_scores_source"] == "config"
    # Table 4's re-based normalisation of a return of 1000 on pen
    expected = 100 * (1000 + 162.09) / (3076.83 + 162.09)
    assert normalized_score(1000.0, data.ref_min_score, data.ref_max_score) == pytest.approx(expected)
    assert expected == pytest.approx(35.8789, abs=1e-4)

    # the evaluator runs episodes of the overridden length and normalises with Table 4's scores
    calls = []

    def policy(obs):
        calls.append(1)
        import torch

        return torch.zeros(obs.shape[0], data.act_dim)

    evaluator = Evaluator(data.env_spec, 1, 0, StateNormalizer.identity(data.obs_dim), "cpu",
                          data.ref_min_score, data.ref_max_score)
    try:
        metrics = evaluator(policy)
    finally:
        evaluator.close()
    assert len(calls) == 100
    assert metrics["eval/normalized_score_mean"] == pytest.approx(
        100 * (metrics["eval/return_mean"] + 162.09) / (3076.83 + 162.09))


def test_door_time_limit_is_longer_than_the_env_default(use_root):
    data = load(compose("dataset=door-human").dataset)
    assert data.env_spec.max_episode_steps == 300
    assert (data.ref_min_score, data.ref_max_score) == (-84.52, 2880.57)


def test_minari_reference_flag_keeps_the_datasets_own_values(use_root):
    data = load(compose("dataset=pen-human", "dataset.use_minari_reference=true").dataset)
    assert data.env_spec.max_episode_steps == 200
    assert (data.ref_min_score, data.ref_max_score) == (STORED_MIN, STORED_MAX)
    assert data.metadata["ref_scores_source"] == "minari"
    assert data.metadata["eval_max_episode_steps_source"] == "minari"


def test_missing_gymnasium_robotics_names_the_extra(use_root, monkeypatch):
    from offline_rl.dataset import minari_source
    from offline_rl.errors import DatasetError

    env_spec = load(compose("dataset=pen-human").dataset).env_spec
    real = importlib.util.find_spec
    monkeypatch.setattr(minari_source.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gymnasium_robotics" else real(name, *a))
    # before any download (a known Adroit id), and from the env spec of any dataset
    with pytest.raises(DatasetError, match=r"pip install '\.\[adroit\]'"):
        minari_source.load_minari("D4RL/relocate/expert-v2")
    with pytest.raises(DatasetError, match=r"AdroitHandPen-v1.*pip install '\.\[adroit\]'"):
        minari_source.check_env_package("tests/any-v0", env_spec)


@needs_robotics  # without it, the message is the missing package's (tested above)
@pytest.mark.slow  # starts a process
def test_offline_the_paper_command_fails_with_the_dataset_message(tmp_path):
    """`python launch.py algo=edac_bc pretrain=soft dataset=pen-human` without the dataset (no
    MLflow store: the message comes before any tracking)."""
    empty = tmp_path / "empty_minari"
    empty.mkdir()
    env = {**os.environ, "MINARI_DATASETS_PATH": str(empty), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, str(ROOT / "launch.py"), "algo=edac_bc", "pretrain=soft", "dataset=pen-human",
           "dataset.download_if_missing=false", "tracker=none", f"hydra.run.dir={tmp_path}/hydra"]
    result = forked.run(cmd, ROOT, env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "D4RL/pen/human-v2" in result.stderr and "minari download D4RL/pen/human-v2" in result.stderr
    assert "Traceback" not in result.stderr


# ----- Table 3 through conf/tuning ------------------------------------------------------------

TUNING_LINE = "- optional tuning: ${algo}_${dataset}"


def _tuning_line_present() -> bool:
    return TUNING_LINE in (ROOT / "conf" / "config.yaml").read_text()


@pytest.mark.parametrize("algo, dataset, expected", [
    ("edac_bc", "pen-human", {"num_critics": 20, "eta": 1000.0, "bc_weight": 1.0}),
    ("edac_bc", "pen-cloned", {"num_critics": 20, "eta": 10.0}),
    ("edac", "hammer-human", {"num_critics": 50, "eta": 200.0}),
    ("edac_bc", "relocate-cloned", {"num_critics": 50, "eta": 200.0}),
    ("td3_bc_cql", "pen-human", {"alpha": 1.0, "cql_weight": 1.0, "cql_n_actions": 10,
                                 "cql_temperature": 1.0}),
    ("td3_bc_cql", "door-cloned", {"alpha": 0.1, "cql_weight": 10.0}),
    ("td3_bc", "door-human", {"alpha": 0.1}),
    ("td3_bc", "hopper-medium-local", {"alpha": 10.0}),  # conf/reference: the reference code's hopper value
    ("td3_bc", "minari", {"alpha": 2.5}),  # neither Table 3 nor reference values: the algo's defaults
    ("cql", "pen-human", {"cql_n_actions": 10, "cql_temperature": 1.0, "cql_weight": 10.0}),
])
def test_table_3_values_compose_per_algo_and_dataset(algo, dataset, expected):
    assert _tuning_line_present(), f"conf/config.yaml's defaults list needs `{TUNING_LINE}` after _self_"
    cfg = compose(f"algo={algo}", f"dataset={dataset}")
    for key, value in expected.items():
        assert cfg.algo[key] == value, key
    # the command line still wins over the tuning file
    if "num_critics" in expected:
        assert compose(f"algo={algo}", f"dataset={dataset}", "algo.num_critics=3").algo.num_critics == 3
