"""The compiled update steps (offline_rl/training/compiled.py) against the same steps run eagerly:
the same losses, parameters and optimiser states after a few updates from the same seed; a
compile failure falls back to eager with a warning; short phases are not compiled; a compiled run
continued from a checkpoint is bit-identical to one that was not stopped. Tiny networks: the cost
here is compilation (a few seconds per graph on 2 cores)."""

from __future__ import annotations

import copy
import io
import warnings
from functools import partial

import pytest
import torch

from conftest import SMALL_RUN, run_launch, search_runs
from offline_rl.algo.bc import BC
from offline_rl.algo.cql import CQL
from offline_rl.algo.edac import EDAC, diversity_loss, q_and_action_grad
from offline_rl.algo.edac_bc import EDACBC
from offline_rl.algo.iql import IQL, GaussianIQL, StateValue
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.algo.td3_bc_cql import TD3BCCQL
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor, EnsembleCritic, EnsembleLayerNorm, TanhGaussianActor
from offline_rl.pretrain.soft import SoftPretraining
from offline_rl.training.compiled import attach_compiler

OBS, ACT, B, WIDTH = 5, 2, 32, 16

# Tolerance of compiled vs eager. Inductor fuses and reorders float32 arithmetic (sums in
# LayerNorm, the loss means, Adam's update in one kernel, matrix-vector products as reductions),
# which changes results by a few ulp (~1e-7 relative) per operation; Adam then scales gradient
# differences by 1/sqrt(v), so after a few updates parameters and moments differ by up to ~1e-6
# relative. The largest difference measured here is 6% of this tolerance (EDAC+BC: the critic's
# Adam first moment, 6e-7 on 3e-3); a real difference -- a wrong sign, a skipped step, another
# random draw -- changes values by 1e-3 or more.
RTOL, ATOL = 1e-4, 1e-5


def batches(n: int, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                  torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                  (torch.rand(B, generator=g) < 0.2).float(), torch.randn(B, generator=g))
            for _ in range(n)]


def tiny(cls, **options):
    torch.manual_seed(0)
    if issubclass(cls, CQL):
        return cls(OBS, ACT, partial(TanhGaussianActor, width=WIDTH, depth=2),
                   partial(EnsembleCritic, width=WIDTH, depth=2), **options)
    if issubclass(cls, EDAC):
        return cls(OBS, ACT, partial(TanhGaussianActor, width=WIDTH, depth=2),
                   partial(EnsembleCritic, width=WIDTH, depth=2), num_critics=3, **options)
    if issubclass(cls, IQL):  # with its V network; the actor's cosine schedule on
        actor = TanhGaussianActor if cls is GaussianIQL else DeterministicActor
        return cls(OBS, ACT, partial(actor, width=WIDTH, depth=2),
                   partial(EnsembleCritic, width=WIDTH, depth=2),
                   partial(StateValue, width=WIDTH, depth=2), actor_schedule_steps=6, **options)
    return cls(OBS, ACT, partial(DeterministicActor, width=WIDTH, depth=2),
               partial(EnsembleCritic, width=WIDTH, depth=2), **options)


def run(step, data: list[Batch], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return [{k: v.detach().clone() for k, v in step(batch).items()} for batch in data]


# With ``stray`` (CUDA: Inductor's kernels sum in another order than eager's), at most that fraction
# of a tensor's elements may exceed RTOL/ATOL, each still within STRAY_ATOL: Adam turns a rounding
# difference in a gradient near zero into a step-sized one (seen on an H200, 2026-12-04: EDAC, 1 of
# 655,360 critic weights off by 2.1e-5 after 6 updates). A real difference moves many elements by
# an Adam step (lr 3e-4) or more.
STRAY_ATOL = 1e-4


def assert_close_state(a, b, exact: bool = False, where: str = "", stray: float = 0.0) -> None:
    if isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b), where
        elif stray and a.is_floating_point() and a.shape == b.shape:
            off = ~torch.isclose(a, b, rtol=RTOL, atol=ATOL)
            allowed = max(1, int(stray * a.numel()))
            worst = (a - b).abs().max().item() if a.numel() else 0.0
            assert int(off.sum()) <= allowed and worst <= STRAY_ATOL, (
                f"{where}: {int(off.sum())} of {a.numel()} elements beyond rtol {RTOL} / atol {ATOL} "
                f"(at most {allowed} allowed), largest difference {worst:.2e} (at most {STRAY_ATOL})")
        else:
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close_state(a[k], b[k], exact, f"{where}.{k}", stray)
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_state(x, y, exact, f"{where}[{i}]", stray)
    else:
        assert a == b, where


def same_optimiser_states(eager_state: dict, compiled_state: dict) -> dict:
    """The compiled path creates every Adam state before its first step (zeros, step 0: what
    Adam's lazy initialisation creates); an optimiser the eager run has not stepped yet has none."""
    eager_state = copy.deepcopy(eager_state)
    for key, value in compiled_state.items():
        if isinstance(value, dict) and "param_groups" in value and not eager_state[key]["state"]:
            for state in value["state"].values():
                assert all(not t.any() for t in state.values()), key
            eager_state[key]["state"] = value["state"]
    return eager_state


def compare_runs(eager_metrics, compiled_metrics, eager_algo, compiled_algo, stray: float = 0.0) -> None:
    for step, (m_eager, m_compiled) in enumerate(zip(eager_metrics, compiled_metrics, strict=True)):
        assert m_eager.keys() == m_compiled.keys()
        for key in m_eager:
            torch.testing.assert_close(m_compiled[key], m_eager[key], rtol=RTOL, atol=ATOL,
                                       msg=lambda m, where=f"update {step + 1}: {key}": f"{where}: {m}")
    # parameters, targets and Adam's moments and step counts
    compiled_state = compiled_algo.state_dict()
    assert_close_state(same_optimiser_states(eager_algo.state_dict(), compiled_state), compiled_state,
                       where="state", stray=stray)


# ----- compiled == eager -----------------------------------------------------------------------


STEP_NAMES = {TD3BCCQL: {"td3_bc_cql.critic", "td3_bc_cql.critic_actor"},
              TD3BC: {"td3_bc.critic", "td3_bc.critic_actor"}, EDAC: {"edac.update"},
              CQL: {"cql.update"}, BC: {"bc.update"}, GaussianIQL: {"iql_gaussian.update"},
              IQL: {"iql.update"}}


def test_the_stray_tolerance_passes_a_few_rounding_strays_and_nothing_more():
    """What the CUDA comparisons accept (CI has no GPU to run them): a few small strays, not many,
    not a large one; without ``stray``, none."""
    a = torch.zeros(10, 100_000)  # a million elements: 10 strays allowed at 1e-5
    strays = a.clone()
    strays[0, :3] = 2e-5
    assert_close_state({"w": a}, {"w": strays}, stray=1e-5)
    with pytest.raises(AssertionError, match="w"):
        assert_close_state({"w": a}, {"w": strays})
    many = a.clone()
    many[0, :11] = 2e-5
    with pytest.raises(AssertionError, match="11 of 1000000 elements"):
        assert_close_state(a, many, stray=1e-5)
    large = a.clone()
    large[0, 0] = 2 * STRAY_ATOL
    with pytest.raises(AssertionError, match="largest difference 2.00e-04"):
        assert_close_state(a, large, stray=1e-5)


@pytest.mark.parametrize("cls, options", [(TD3BC, {}), (TD3BCCQL, {"cql_weight": 1.0}),
                                          (EDAC, {}), (EDACBC, {"bc_weight": 1.0}),
                                          (CQL, {"cql_n_actions": 3}), (BC, {}), (IQL, {}),
                                          (GaussianIQL, {})],
                         ids=["td3_bc", "td3_bc_cql", "edac", "edac_bc", "cql", "bc", "iql",
                              "iql_gaussian"])
@pytest.mark.compiles
def test_compiled_update_matches_eager(cls, options):
    eager = tiny(cls, **options)
    compiled = copy.deepcopy(eager)
    report = attach_compiler(compiled, "auto", updates=1_000_000)
    data = batches(4)  # TD3: two critic-only and two critic+actor updates
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled_metrics = run(compiled.update, data)
    caught = [w for w in caught if "compile=auto" in str(w.message)]
    compare_runs(run(eager.update, data), compiled_metrics, eager, compiled)
    assert not caught, [str(w.message) for w in caught]  # every algorithm's steps compile
    assert all(r.status == "compiled" and r.compile_seconds > 0 and r.graphs == 1
               for r in report.steps.values()), report.summary()
    assert report.metrics()["compile/seconds"] > 0
    assert set(report.steps) == next(names for base, names in STEP_NAMES.items() if issubclass(cls, base))
    assert eager.total_updates == compiled.total_updates == 4


@pytest.mark.compiles
def test_subclass_with_an_extra_parameter_group_compiles_its_override():
    """A subclass overriding actor_loss with a second parameter group in the actor's optimiser
    (as a Lagrange multiplier would be): the compiled step traces the override and steps both
    groups, at their own learning rates."""

    class Penalised(TD3BC):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.weight = torch.nn.Parameter(torch.tensor(0.5))
            self.actor_optimizer.add_param_group({"params": [self.weight], "lr": 1e-2})

        def actor_loss(self, batch):
            loss, metrics = super().actor_loss(batch)
            bc = metrics["bc_loss"]
            return loss + self.weight * (bc.detach() - 0.1) + self.weight.detach() * bc, metrics

    eager = tiny(Penalised)
    compiled = copy.deepcopy(eager)
    attach_compiler(compiled, "compile")
    data = batches(2)
    compare_runs(run(eager.update, data), run(compiled.update, data), eager, compiled)
    torch.testing.assert_close(compiled.weight, eager.weight, rtol=RTOL, atol=ATOL)
    assert not torch.equal(compiled.weight.detach(), torch.tensor(0.5))  # it was stepped


@pytest.mark.compiles
def test_pretraining_steps_compiled_match_eager():
    """Soft pre-training's two steps (alpha + soft BC; MC critic with the diversity term)."""
    eager = tiny(EDAC)
    compiled = copy.deepcopy(eager)
    report = attach_compiler(compiled, "auto", updates=0)  # the phases' own length decides
    scheme = SoftPretraining(steps=50_000, until=None)

    class Replay:
        def __init__(self):
            self.data = iter(batches(6, seed=3))

        def sample(self, batch_size):
            return next(self.data)

        def sampler(self, batch_size):
            return lambda: self.sample(batch_size)

    for make in (scheme.soft_actor_update, scheme.critic_update):
        step_eager, step_compiled = make(eager, Replay(), B), make(compiled, Replay(), B)
        compare_runs(run(lambda _: step_eager(), range(3)), run(lambda _: step_compiled(), range(3)),
                     eager, compiled)
    assert {n: r.status for n, r in report.steps.items()} == {
        "pretrain.soft_actor": "compiled", "pretrain.critic": "compiled"}


# ----- the rule, the fallback, resuming ------------------------------------------------------


def test_auto_leaves_short_phases_eager_and_eager_mode_never_compiles():
    from torch._dynamo.utils import counters

    for mode, updates in (("auto", 100), ("eager", None)):
        algo = tiny(TD3BC)
        reference = copy.deepcopy(algo)
        report = attach_compiler(algo, mode, updates=updates)
        graphs = counters["stats"]["unique_graphs"]
        data = batches(2)
        got, want = run(algo.update, data), run(reference.update, data)
        assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled
        assert_close_state(want, got, exact=True)  # the eager path, bit for bit
        assert {r.status for r in report.steps.values()} == {"eager"}
        assert report.compile_seconds == 0
    with pytest.raises(ValueError, match="compile='sometimes'"):
        attach_compiler(tiny(TD3BC), "sometimes")


def test_a_compile_failure_warns_and_runs_eagerly():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("simulated compiler failure")

    algo = tiny(EDAC)
    reference = copy.deepcopy(algo)
    report = attach_compiler(algo, "auto", updates=1_000_000, backend=broken_backend)
    data = batches(3)
    with pytest.warns(RuntimeWarning, match="compiling the update step 'edac.update' failed"):
        got = run(algo.update, data)
    want = run(reference.update, data)
    assert_close_state(want, got, exact=True)  # nothing was applied twice, nothing skipped
    assert_close_state(reference.state_dict(), algo.state_dict(), exact=True)
    record = report.steps["edac.update"]
    assert record.status == "fallback" and "simulated compiler failure" in record.reason
    assert report.metrics()["compile/fallbacks"] == 1

    strict = tiny(EDAC)
    attach_compiler(strict, "compile", backend=broken_backend)
    with pytest.raises(Exception, match="simulated compiler failure"):
        strict.update(data[0])


@pytest.mark.compiles
def test_compiled_run_resumed_from_a_checkpoint_is_bit_identical():
    data = batches(6)
    straight = tiny(TD3BC)
    attach_compiler(straight, "compile")
    torch.manual_seed(1)
    for batch in data[:3]:
        straight.update(batch)
    buffer = io.BytesIO()
    torch.save({"algo": straight.state_dict(), "rng": torch.get_rng_state()}, buffer)
    for batch in data[3:]:
        straight.update(batch)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny(TD3BC)
    resumed.load_state_dict(checkpoint["algo"])
    attach_compiler(resumed, "compile")
    torch.set_rng_state(checkpoint["rng"])
    for batch in data[3:]:  # starts with a critic+actor update (update 4)
        resumed.update(batch)
    assert_close_state(straight.state_dict(), resumed.state_dict(), exact=True)


# ----- EDAC's explicit dQ/da ---------------------------------------------------------------------


@pytest.mark.parametrize("layer_norm, affine", [(True, False), (True, True), (False, False)])
def test_explicit_action_gradient_matches_autograd(layer_norm, affine):
    """q_and_action_grad: Q, dQ/da and the diversity term's second-order gradient to the critic's
    parameters equal autograd.grad(create_graph=True)'s (float64)."""
    torch.manual_seed(0)
    critic = EnsembleCritic(OBS, ACT, num_critics=4, width=WIDTH, depth=3, layer_norm=layer_norm,
                            layer_norm_affine=affine).double()
    if affine:  # non-trivial affine parameters
        with torch.no_grad():
            for layer in critic.net:
                if isinstance(layer, EnsembleLayerNorm):
                    layer.weight.normal_()
                    layer.bias.normal_()
    obs, act = torch.randn(7, OBS, dtype=torch.float64), torch.randn(7, ACT, dtype=torch.float64)
    actions = act.unsqueeze(0).repeat(4, 1, 1).requires_grad_(True)
    q = critic(obs, actions)
    grads, = torch.autograd.grad(q.sum(), actions, create_graph=True)
    q_explicit, grads_explicit = q_and_action_grad(critic, obs, act)
    torch.testing.assert_close(q_explicit, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads_explicit, grads, rtol=1e-10, atol=1e-12)
    params = list(critic.parameters())
    second = torch.autograd.grad(diversity_loss(grads) + q.square().mean(), params)
    second_explicit = torch.autograd.grad(diversity_loss(grads_explicit) + q_explicit.square().mean(), params)
    for a, b in zip(second_explicit, second):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.slow  # starts a process
def test_launch_records_the_compile_choice_and_rejects_a_bad_one(tmp_path, minari_root, new_store):
    """run.py wires compile=...: the per-step summary as the `compile` tag and compile/* metrics
    (a short run under auto stays eager by the 10,000-update rule); a bad value stops at once."""
    store = new_store(tmp_path / "store")
    result = run_launch([*SMALL_RUN, "updates=30", "eval.episodes=0", "compile=auto"], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(store).iloc[0]
    assert run["status"] == "FINISHED"
    assert "compile=auto" in run["tags.compile"] and "30 updates < 10000" in run["tags.compile"]
    assert run["metrics.compile/compiled_steps"] == 0 and run["metrics.compile/eager_steps"] >= 1
    bad = run_launch([*SMALL_RUN, "compile=sometimes"], store, minari_root)
    assert bad.returncode == 2 and "compile='sometimes' is not allowed" in bad.stderr


@pytest.mark.compiles
def test_compile_auto_compiles_a_whole_run_end_to_end(tmp_path, minari_root, new_store, monkeypatch):
    """compile=auto through train(): pre-training and offline phases long enough to repay
    compilation (the threshold lowered, as a 1M-update run meets it) run compiled, logged in the
    MLflow run; the same run eagerly ends with close weights."""
    from test_resume import composed, final_state

    from offline_rl.training import compiled
    from offline_rl.run import train

    monkeypatch.setattr(compiled, "DEFAULT_MIN_UPDATES", 30)
    # float32: compiled and eager bf16 steps round differently (tests/test_precision.py compares those)
    common = ["algo=td3_bc", "pretrain=ac", "pretrain.steps=40", "pretrain.until=null",
              "updates=40", "eval.episodes=1", "eval.every=0", "threads=1", "batch_size=32",
              "precision=fp32"]
    train(composed(new_store(tmp_path / "auto"), *common, "compile=auto"))
    auto_id, auto = final_state(tmp_path / "auto")
    run = search_runs(tmp_path / "auto").iloc[0]
    assert "td3_bc.critic: compiled" in run["tags.compile"], run["tags.compile"]
    assert "pretrain.actor: compiled" in run["tags.compile"] and "pretrain.critic: compiled" in run["tags.compile"]
    assert float(run["metrics.compile/compiled_steps"]) == 4 and float(run["metrics.compile/fallbacks"]) == 0
    train(composed(new_store(tmp_path / "eager"), *common, "compile=eager"))
    _, eager = final_state(tmp_path / "eager")
    assert "eager" in search_runs(tmp_path / "eager").iloc[0]["tags.compile"]
    for key in ("actor", "critic"):
        for name, value in eager["algo"][key].items():
            torch.testing.assert_close(auto["algo"][key][name], value, rtol=1e-3, atol=1e-4)
