"""Every algorithm meets the contract of offline_rl/algo/base.py: Algorithm -- losses as
``(batch) -> (loss, metrics)``, the steps and target updates pre-training uses, the options
fine-tuning continues with, and the members its capability flags promise -- and every algorithm a
config can select is one. The compatibility checks read those flags and nothing else."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from offline_rl.algo.bc import BC
from offline_rl.algo.base import Algorithm, MissingCapability
from offline_rl.algo.cql import CQL
from offline_rl.algo.crossq import CrossQ
from offline_rl.algo.edac import EDAC
from offline_rl.algo.edac_bc import EDACBC
from offline_rl.algo.iql import IQL, GaussianIQL, StateValue
from offline_rl.algo.td3 import TD3
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.algo.td3_bc_cql import TD3BCCQL
from offline_rl.algo.td3_c import TD3C
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from test_losses import ACT, OBS, fixed_batch

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [TD3BC, TD3, TD3C, TD3BCCQL, EDAC, EDACBC, CQL, BC, CrossQ, IQL, GaussianIQL]


def tiny(cls) -> Algorithm:
    torch.manual_seed(0)
    if cls is CrossQ:
        return CrossQ(OBS, ACT, actor_width=16, critic_width=32)
    actor = TanhGaussianActor if cls.actor_kind == "stochastic" else DeterministicActor
    options = {"num_critics": 3} if issubclass(cls, EDAC) else {}
    if issubclass(cls, IQL):
        options = {"value": partial(StateValue, width=16)}
    return cls(OBS, ACT, partial(actor, width=16), partial(EnsembleCritic, width=16), **options)


def test_every_configured_algorithm_is_one():
    targets = set()
    for folder, key in (("algo", "_target_"), ("finetune", "algorithm")):
        for path in (ROOT / "conf" / folder).glob("*.yaml"):
            node = OmegaConf.load(path)
            target = node.get(key)
            target = target.get("_target_") if hasattr(target, "get") else target
            if target and ".algo." in str(target):
                targets.add(str(target))
    assert len(targets) >= 7
    for target in targets:
        assert issubclass(get_class(target), Algorithm), target
    assert {get_class(t) for t in targets} <= set(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_losses_are_batch_to_loss_and_metrics(cls):
    algo, batch = tiny(cls), fixed_batch()
    names = ["actor_loss"] + (["critic_loss"] if cls.has_critic else []) + (
        ["alpha_loss"] if cls.entropy_regularised else [])
    for name in names:
        loss, metrics = getattr(algo, name)(batch)
        assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.requires_grad, name
        assert isinstance(metrics, dict) and all(isinstance(v, torch.Tensor) for v in metrics.values())
    metrics = algo.update(batch)
    assert all(torch.isfinite(v).all() for v in metrics.values()) and algo.total_updates == 1


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.has_critic and c is not CrossQ],
                         ids=lambda c: c.__name__)
def test_what_pretraining_uses(cls):
    """One step on a loss moves exactly the optimiser's parameters; the target updates are
    Polyak averages with the algorithm's tau (a no-op where there is no target)."""
    algo, batch = tiny(cls), fixed_batch()
    q, regulariser = algo.critic_values(batch)
    assert q.shape == (algo.critic.num_critics, batch.rewards.shape[0]) and regulariser.shape == ()
    assert algo.td_target(batch).shape == batch.rewards.shape
    actor_before = [p.detach().clone() for p in algo.actor.parameters()]
    critic_before = [p.detach().clone() for p in algo.critic.parameters()]
    algo.step_actor(algo.actor_loss(batch)[0])
    assert any(not torch.equal(a, p) for a, p in zip(actor_before, algo.actor.parameters()))
    assert all(torch.equal(c, p) for c, p in zip(critic_before, algo.critic.parameters()))
    target_before = [p.detach().clone() for p in algo.critic_target.parameters()]
    algo.update_critic_target()
    for old, new, online in zip(target_before, algo.critic_target.parameters(), algo.critic.parameters()):
        torch.testing.assert_close(new, (1 - algo.tau) * old + algo.tau * online)
    algo.update_actor_target()  # defined for all, a no-op without an actor target
    assert (algo.actor_target is None) == (cls in (EDAC, EDACBC, CQL, IQL, GaussianIQL))


@pytest.mark.parametrize("offline, online", [(TD3BC, TD3C), (TD3BC, TD3), (EDAC, EDAC), (IQL, IQL)])
def test_fine_tuning_continues_the_offline_networks(offline, online):
    source = tiny(offline)
    agent = online(OBS, ACT, **online.continuation_options(source))
    assert agent.critic.num_critics == source.critic.num_critics
    for name in agent.TRANSFERRED:
        ours, theirs = getattr(agent, name), getattr(source, name)
        if ours is not None and theirs is not None:
            ours.load_state_dict(theirs.state_dict())  # same architectures


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_capability_flags_say_what_the_algorithm_has(cls):
    """Each flag's members are defined exactly where the flag is set; the others say which flag
    the algorithm lacks."""
    algo, batch = tiny(cls), fixed_batch()
    assert cls.actor_kind in ("deterministic", "stochastic")
    assert not cls.entropy_regularised or cls.actor_kind == "stochastic"
    with torch.no_grad():  # a stochastic actor samples: two draws differ, a deterministic one's do not
        draws = [algo.act(batch.observations, deterministic=False) for _ in range(2)]
    assert (cls.actor_kind == "stochastic") == (not torch.equal(*draws))
    # (CrossQ, the data-generating agent, has a critic but no TD target apart from its critic loss)
    promised = {"has_critic": (lambda: algo.critic_loss(batch),) + (
                    (lambda: algo.td_target(batch),) if cls is not CrossQ else ()),
                "entropy_regularised": (lambda: algo.alpha_loss(batch),
                                        lambda: algo.entropy_temperature)}
    for flag, members in promised.items():
        for member in members:
            if getattr(cls, flag):
                member()
            else:
                with pytest.raises(MissingCapability, match=f"{cls.__name__} has {flag}=False"):
                    member()
    # the compiled steps are named after the class (TD3's are not labelled td3_bc.*)
    names, run_step = [], algo.run_step
    algo.run_step = lambda name, fn, *args, **kw: names.append(name) or run_step(name, fn, *args, **kw)
    algo.update(batch)
    algo.update(batch)
    assert names and all(name.startswith(cls.step_prefix + ".") for name in names), names


def test_the_checks_read_the_flags_alone():
    """A new algorithm is checked by its flags: a stochastic actor without an entropy temperature
    (IQL's Gaussian actor) is refused by soft pre-training before it could reach alpha_loss, and
    by hard pre-training too; with a critic it can still be fine-tuned by an actor of its kind."""
    from offline_rl.errors import ConfigError
    from offline_rl.pretrain.ac import ActorCriticPretraining
    from offline_rl.pretrain.actor import ActorPretraining
    from offline_rl.pretrain.none import NoPretraining
    from offline_rl.pretrain.soft import SoftPretraining

    class GaussianWithoutTemperature(Algorithm):
        actor_kind, entropy_regularised, has_critic = "stochastic", False, True

        def update(self, batch):
            return {}

        def actor_loss(self, batch):
            return torch.zeros(()), {}

    with pytest.raises(ConfigError, match="stochastic but has no entropy temperature; use pretrain=none"):
        SoftPretraining().check(GaussianWithoutTemperature)
    for hard in (ActorCriticPretraining(), ActorPretraining()):
        with pytest.raises(ConfigError, match="actor is stochastic; use pretrain=none"):
            hard.check(GaussianWithoutTemperature)
    NoPretraining().check(GaussianWithoutTemperature)
    with pytest.raises(ConfigError, match="actor is deterministic; use pretrain=ac"):
        SoftPretraining().check(TD3BC)
    with pytest.raises(ConfigError, match="use pretrain=soft"):
        ActorCriticPretraining().check(EDAC)
