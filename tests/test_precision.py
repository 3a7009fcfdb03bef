"""precision=bf16 (offline_rl/precision.py): the update steps' hidden-layer matrix products in bf16,
everything else float32. One batch's losses, TD targets and gradients agree with float32 within a
stated tolerance; parameters and optimiser state stay float32; the capability check fails a run in
one line before any data is loaded; ``auto`` records its choice; checkpoints carry their precision
and a resume in another one is refused unless allowed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from functools import partial

import pytest
import torch

from conftest import ROOT, interrupt_at_sample, launch_env, search_runs
from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.errors import ConfigError
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from offline_rl import precision as precision_module
from offline_rl.precision import autocast, resolve
from offline_rl.training.compiled import attach_compiler
from test_resume import assert_same_tensors, composed, final_state

OBS, ACT, B = 11, 3, 256

#: bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%): one update's losses and TD
#: targets, whose matrix products round their operands, agree with float32 within 2%. Gradients
#: are more sensitive -- EDAC's diversity term's change by ~11% when only the batch is rounded to
#: bf16 and everything is computed in float32 -- so each gradient's bf16 error is held against
#: that sensitivity: at most twice the error from rounding the batch alone, plus 1% (measured
#: ratios 1.2-1.5: docs/precision.md)
LOSS_RTOL = 0.02


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                 (torch.rand(B, generator=g) < 0.05).float(), torch.randn(B, generator=g) * 10)


def make(name: str):
    torch.manual_seed(0)
    if name == "td3_bc":
        return TD3BC(OBS, ACT, partial(DeterministicActor, depth=2), partial(EnsembleCritic, depth=2))
    return EDAC(OBS, ACT, partial(TanhGaussianActor, depth=3), partial(EnsembleCritic, depth=3),
                num_critics=5)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Tests of the bf16 path run on any CPU (oneDNN emulates bf16 where the hardware lacks it)."""
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (True, "bf16 for the test"))


@pytest.mark.parametrize("name", ["td3_bc", "edac"])
def test_one_batch_agrees_with_float32_and_outputs_stay_float32(name):
    algo, data = make(name), batch()
    torch.manual_seed(1)
    target32 = algo.td_target(data)
    loss32, _ = algo.critic_loss(data, target32)
    grads32 = torch.autograd.grad(loss32, list(algo.critic.parameters()))
    actor32, _ = algo.actor_loss(data)
    # the same float32 arithmetic on the batch rounded to bf16: the gradients' own sensitivity
    rounded = Batch(data.observations.bfloat16().float(), data.actions.bfloat16().float(), *data[2:])
    grads_rounded = torch.autograd.grad(algo.critic_loss(rounded, target32)[0],
                                        list(algo.critic.parameters()))
    with autocast("bf16", "cpu"):
        torch.manual_seed(1)
        target16 = algo.td_target(data)
        q16, _ = algo.critic_values(data)
        loss16, _ = algo.critic_loss(data, target16)
        grads16 = torch.autograd.grad(loss16, list(algo.critic.parameters()))
        actor16, _ = algo.actor_loss(data)
        action = algo.actor(data.observations)
        action = action[0] if isinstance(action, tuple) else action
    # what the boundary promises: Q-values, targets, losses, actions and gradients are float32
    for tensor in (target16, q16, loss16, actor16, action, *grads16):
        assert tensor.dtype == torch.float32
    assert relative_error(target16, target32) < LOSS_RTOL
    assert relative_error(loss16, loss32) < LOSS_RTOL
    assert relative_error(actor16, actor32) < LOSS_RTOL
    for g16, g32, g_rounded in zip(grads16, grads32, grads_rounded):
        assert relative_error(g16, g32) <= 2 * relative_error(g_rounded, g32) + 0.01
    # and bf16 did change the arithmetic (the test would pass trivially otherwise)
    assert relative_error(loss16, loss32) > 0


def _state_tensors(algo) -> list[tuple[str, torch.Tensor]]:
    out = [(f"{attr}.{k}", v) for attr in ("actor", "critic", "actor_target", "critic_target",
                                           "temperature")
           if getattr(algo, attr, None) is not None for k, v in getattr(algo, attr).state_dict().items()]
    for optimizer in algo.optimizers():
        for p, state in optimizer.state.items():
            out += [(f"adam.{k}", v) for k, v in state.items() if k != "step"]
    return out


@pytest.mark.parametrize("name", ["td3_bc", "edac"])
@pytest.mark.compiles
def test_compiled_bf16_steps_keep_every_state_tensor_float32(name):
    """The compiled bf16 steps keep every state tensor float32 and follow the float32 steps; for
    TD3+BC, compile=eager in bf16 (the compiled step's arithmetic op by op, for debugging) agrees
    with them, checked in the same updates (one compilation, not two)."""
    fp32, bf16, eager16 = make(name), make(name), make(name)
    # the float32 reference eager: test_speed checks the compiled float32 steps against it
    attach_compiler(fp32, "eager", precision="fp32")
    report = attach_compiler(bf16, "compile", precision="bf16")
    attach_compiler(eager16, "eager", precision="bf16")
    for i in range(4):
        torch.manual_seed(i)
        m32 = fp32.update(batch(i))
        torch.manual_seed(i)
        m16 = bf16.update(batch(i))
        if name == "td3_bc":
            torch.manual_seed(i)
            e16 = eager16.update(batch(i))
            for key in e16:
                assert abs(float(e16[key]) - float(m16[key])) <= 1e-2 * abs(float(e16[key])) + 1e-3, (i, key)
    assert "in bf16" in report.summary() and all(r.status == "compiled" for r in report.steps.values())
    states = _state_tensors(bf16)
    assert len(states) > 10
    for key, tensor in states:
        assert tensor.dtype == torch.float32, key
    for key in m16:
        assert m16[key].dtype == torch.float32, key
        assert abs(float(m16[key]) - float(m32[key])) <= 0.05 * abs(float(m32[key])) + 0.05, key
    # the weights moved the same way: 4 Adam steps from the same start point in nearly the same
    # direction (Adam's normalised steps amplify the sign of tiny gradient entries, so the steps'
    # cosine, not their elementwise difference, is the measure)
    start = make(name)
    for net in ("actor", "critic"):
        def flat(algo):
            return torch.cat([w.flatten() for w in getattr(algo, net).state_dict().values()])

        w0 = flat(start)
        cosine = torch.nn.functional.cosine_similarity(flat(bf16) - w0, flat(fp32) - w0, 0)
        assert cosine > 0.95, (net, float(cosine))


def test_resolve_auto_bf16_and_the_one_line_refusal(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (False, "this CPU has neither AVX512-BF16 nor AMX"))
    assert resolve("auto", "cpu") == "fp32" and resolve("fp32", "cpu") == "fp32"
    with pytest.raises(ConfigError) as error:
        resolve("bf16", "cpu")
    message = str(error.value)
    assert "\n" not in message and "precision=bf16" in message and "AVX512-BF16" in message
    assert "precision=fp32" in message and "precision=auto" in message
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (True, "yes"))
    assert resolve("auto", "cpu") == "bf16" and resolve("bf16", "cpu") == "bf16"


def test_this_cpu_is_detected_as_its_flags_say():
    from pathlib import Path

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    expected = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert precision_module.cpu_bf16()[0] == expected


@pytest.mark.slow  # starts a process
def test_bf16_without_hardware_fails_in_one_line_before_the_data(tmp_path, minari_root):
    """launch.py, as a user runs it, on a CPU made to look bf16-less: exit 2, one line, and the
    dataset (which does not exist) was never looked at."""
    script = ("import sys, runpy; import offline_rl.precision as p; "
              "p.cpu_bf16 = lambda: (False, 'this CPU has neither AVX512-BF16 nor AMX'); "
              f"sys.argv = ['launch.py', *sys.argv[1:]]; runpy.run_path({str(ROOT / 'launch.py')!r}, run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", script, "precision=bf16", "dataset=minari",
         "dataset.dataset_id=tests/hopper/no-such-dataset-v0", f"tracker.store_dir={tmp_path}",
         f"hydra.run.dir={tmp_path}/hydra"],
        cwd=ROOT, env=launch_env(minari_root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: precision=bf16 is not available on cpu")
    assert "no-such-dataset" not in result.stderr


def test_auto_records_the_precision_it_used(tmp_path, minari_root, new_store, monkeypatch):
    from offline_rl.run import train

    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_bf16", lambda s=supported: (s, "test"))
        store = new_store(tmp_path / expected)
        train(composed(store, "precision=auto", "updates=20", "eval.episodes=1", "threads=1"))
        run = search_runs(store).iloc[0]
        assert run["params.precision"] == "auto"
        assert run["params.precision_used"] == expected and run["tags.precision"] == expected
        _, final = final_state(store)
        assert final["algo"]["actor"]["net.0.weight"].dtype == torch.float32


def test_a_bf16_run_resumes_bit_identically_and_another_precision_is_refused(
        tmp_path, minari_root, monkeypatch, new_store, bf16_cpu):
    from offline_rl.run import train

    common = ["algo=td3_bc", "precision=auto", "updates=60", "eval.episodes=1", "eval.every=30",
              "log_every=5", "checkpoint.every=12", "threads=1", "batch_size=32"]
    train(composed(new_store(tmp_path / "straight"), *common))
    _, straight = final_state(tmp_path / "straight")

    store = new_store(tmp_path / "resumed")
    restore = interrupt_at_sample(monkeypatch, 31)
    with pytest.raises(SystemExit) as stopped:
        train(composed(store, *common))
    assert stopped.value.code == 128 + signal.SIGTERM
    restore()

    # the same command on a machine where auto means fp32: refused, nothing changed
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (False, "no bf16 here"))
    checkpoints = sorted((store / "checkpoints").glob("*/step-*.pt"))
    with pytest.raises(ConfigError, match=r"trained in bf16.*resolves to fp32.*precision_change=allow"):
        train(composed(store, *common))
    assert sorted((store / "checkpoints").glob("*/step-*.pt")) == checkpoints
    assert search_runs(store).iloc[0]["status"] == "KILLED"  # not restarted by the refusal

    # back on bf16 hardware: continues, and ends with the uninterrupted run's weights
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (True, "bf16 again"))
    train(composed(store, *common))
    _, resumed = final_state(store)
    assert resumed["global_step"] == straight["global_step"]
    assert_same_tensors(straight["algo"], resumed["algo"], "algo")


def test_an_allowed_precision_change_is_recorded(tmp_path, minari_root, monkeypatch, new_store, bf16_cpu):
    from offline_rl.run import train

    common = ["precision=auto", "updates=40", "eval.episodes=1", "log_every=5",
              "checkpoint.every=12", "threads=1", "batch_size=32"]
    store = new_store(tmp_path)
    interrupt_at_sample(monkeypatch, 20)
    with pytest.raises(SystemExit):
        train(composed(store, *common))
    monkeypatch.undo()
    monkeypatch.setattr(precision_module, "cpu_bf16", lambda: (False, "no bf16 here"))
    train(composed(store, *common, "precision_change=allow"))
    run = search_runs(store).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.precision"] == "fp32"
    assert re.fullmatch(r"bf16 until update step \d+, then fp32", run["tags.precision_changes"])
    assert run["params.precision_used"] == "bf16"  # the run's first precision: params never change


