"""The CUDA path: compiled update steps as CUDA graphs, capturable Adam, Inductor's random numbers,
on-device replay sampling, checkpoints that move between CUDA and the CPU, and a launch.py run on
the GPU. Tests marked ``cuda`` skip without a GPU (CI is CPU-only); scripts/device_check.sh runs them
on a lent one. The two tests at the end run everywhere: they load, on the CPU, what a CUDA run
writes into a checkpoint.

How compiled and eager are compared on CUDA. On the CPU a compiled step draws PyTorch's own random
numbers (``fallback_random``), so tests/test_speed.py compares the draws one for one. On CUDA the
graphs draw Inductor's Philox numbers, which are not eager's, so here the draws are taken out of
the comparison and checked on their own:
- TD3+BC: target policy smoothing off (``policy_noise=0``: the draw is multiplied by zero) on a
  fixed sequence of batches, so the update is deterministic;
- EDAC and soft pre-training: the actor's N(0, 1) draw (``TanhGaussianActor.standard_normal``) is
  a fixed pseudo-random pattern, the same in both versions;
- Inductor's draws inside CUDA-graph replays are checked as a distribution: mean and second moment
  of N(0, 1) over ~15,000 draws, a fresh draw at every replay (not one frozen at capture), and the
  same draws again from the same CUDA generator state (what a checkpoint's ``rng`` holds).

Tolerance: tests/test_speed.py's (rtol 1e-4, atol 1e-5). On the GPU both versions run float32
matrix products in cuBLAS (TF32 off, PyTorch's default); Inductor fuses the pointwise work and
reorders sums (LayerNorm, loss means, Adam), a few ulp per operation, ~1e-6 relative after a few
updates. A real difference -- a skipped or doubled step, a lost Adam step count, a wrong sign --
moves values by 1e-3 or more. Between the CPU and the GPU (checkpoints moved across) the same
tolerance holds: different BLAS, the same float32 arithmetic."""

from __future__ import annotations

import copy
import math
import signal
import warnings
from functools import partial

import pytest
import torch

from conftest import SMALL_RUN, interrupt_at_sample, metric_steps, run_launch, search_runs
from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch, ReplayBuffer, StateNormalizer
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from offline_rl.pretrain.ac import ActorCriticPretraining
from offline_rl.pretrain.soft import SoftPretraining
from offline_rl.training.checkpoint import load_checkpoint, save_checkpoint
from offline_rl.training.compiled import attach_compiler
from test_speed import assert_close_state, compare_runs

CUDA = torch.cuda.is_available()


def needs_cuda(test):
    """Marked ``cuda`` (``pytest -m cuda`` selects these) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="no CUDA device")(test))


# Hopper's shapes and the paper's networks and batch (TD3+BC 2x256, EDAC 3x256 with 10 critics)
OBS, ACT, B = 11, 3, 256


def paper_td3_bc(device, **options) -> TD3BC:
    torch.manual_seed(0)
    return TD3BC(OBS, ACT, partial(DeterministicActor, depth=2), partial(EnsembleCritic, depth=2),
                 policy_noise=0.0, device=device, **options)


class FixedNoiseActor(TanhGaussianActor):
    """The tanh-Gaussian actor with its N(0, 1) draw replaced by a fixed pattern (values spread
    over about +-1.7, a function of the shape only), identical in eager and compiled steps."""

    def standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        index = torch.arange(like.numel(), device=like.device, dtype=like.dtype).reshape(like.shape)
        return 1.7 * torch.sin(index * 0.618 + 0.5)


def paper_edac(device) -> EDAC:
    torch.manual_seed(0)
    return EDAC(OBS, ACT, partial(FixedNoiseActor, depth=3), partial(EnsembleCritic, depth=3),
                num_critics=10, device=device)


def batches(n: int, device, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    made = [Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                  torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                  (torch.rand(B, generator=g) < 0.05).float(), torch.randn(B, generator=g) * 10)
            for _ in range(n)]
    return [Batch(*(t.to(device) for t in batch)) for batch in made]


def run(step, data: list[Batch]) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    return [{k: v.detach().clone() for k, v in step(batch).items()} for batch in data]


def on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def tensors_only(state):
    """A state dict's tensors (parameters, Adam's moments and step counts), without the optimiser
    flags that legitimately differ between the eager and the CUDA-graph path (``capturable``)."""
    if isinstance(state, dict):
        return {k: tensors_only(v) for k, v in state.items() if k != "param_groups"}
    return on_cpu(state)


def no_cudagraph_skips(report) -> None:
    skipped = {name: r.cudagraph_skips for name, r in report.steps.items() if r.cudagraph_skips}
    assert not skipped, (f"compiled steps ran without CUDA graphs: {skipped} (run with "
                         f"TORCH_LOGS=perf_hints for Inductor's reason)")


@pytest.fixture
def strict_cudagraphs(monkeypatch):
    """Where this torch has it, Inductor raises (with its reason) instead of quietly running a
    graph without a CUDA graph."""
    config = torch._inductor.config.triton
    if hasattr(config, "cudagraph_or_error"):
        monkeypatch.setattr(config, "cudagraph_or_error", True)


def compare_on_cuda(eager_metrics, compiled_metrics, eager, compiled) -> None:
    """Losses within RTOL/ATOL at every update; parameters and Adam's moments too, but for a few
    stray elements (test_speed.py: STRAY_ATOL): 1 in 100,000 may differ by up to 1e-4."""
    compare_runs(on_cpu(eager_metrics), on_cpu(compiled_metrics), _StateOnCpu(eager), _StateOnCpu(compiled),
                 stray=1e-5)


class _StateOnCpu:
    """An algorithm seen through its state dict on the CPU (compare_runs reads ``state_dict()``);
    Adam's step counters live on the GPU in the CUDA-graph path and on the CPU eagerly."""

    def __init__(self, algo):
        self.algo = algo

    def state_dict(self):
        state = on_cpu(self.algo.state_dict())
        for value in state.values():
            if isinstance(value, dict) and "param_groups" in value:
                for group in value["param_groups"]:
                    group.pop("capturable", None)
        return state


# ----- compiled (CUDA graphs) == eager on the GPU ------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("name", ["td3_bc", "edac"])
@pytest.mark.usefixtures("strict_cudagraphs")
@pytest.mark.compiles
def test_compiled_update_matches_eager_on_cuda(name):
    eager = paper_td3_bc("cuda") if name == "td3_bc" else paper_edac("cuda")
    compiled = copy.deepcopy(eager)
    report = attach_compiler(compiled, "compile")
    attach_compiler(eager, "eager")
    data = batches(6, "cuda")  # TD3+BC: three critic-only and three critic+actor updates
    compiled_metrics = run(compiled.update, data)
    compare_on_cuda(run(eager.update, data), compiled_metrics, eager, compiled)
    assert all(r.status == "compiled" and r.graphs == 1 for r in report.steps.values()), report.summary()
    no_cudagraph_skips(report)
    # the CUDA-graph path: Adam's counters on the device, in step with eager's
    for optimizer in compiled.optimizers():
        assert all(group["capturable"] for group in optimizer.param_groups)
        assert {s["step"].device.type for s in optimizer.state.values()} == {"cuda"}
    assert compiled.total_updates == eager.total_updates == 6


@needs_cuda
@pytest.mark.usefixtures("strict_cudagraphs")
@pytest.mark.compiles
def test_pretraining_steps_compiled_match_eager_on_cuda():
    """Algorithm 1's two steps (TD3+BC: BC of the actor, MC regression of the critic) and
    Algorithm 2's soft BC step (EDAC, fixed actor noise), compiled against eager on the GPU."""

    class Replay:
        def __init__(self):
            self.data = iter(batches(4, "cuda", seed=3))

        def sample(self, batch_size):
            return next(self.data)

        def sampler(self, batch_size):
            return lambda: self.sample(batch_size)

    cases = [(paper_td3_bc, ActorCriticPretraining(steps=50_000, until=None), ("actor_update", "critic_update")),
             (paper_edac, SoftPretraining(steps=50_000, until=None), ("soft_actor_update",))]
    for build, scheme, makers in cases:
        eager = build("cuda")
        compiled = copy.deepcopy(eager)
        report = attach_compiler(compiled, "auto", updates=0)  # the phase's own length (50,000) decides
        attach_compiler(eager, "eager")
        for maker in makers:
            make = getattr(scheme, maker)
            step_eager, step_compiled = make(eager, Replay(), B), make(compiled, Replay(), B)
            compare_on_cuda(run(lambda _: step_eager(), range(4)), run(lambda _: step_compiled(), range(4)),
                            eager, compiled)
        assert {r.status for r in report.steps.values()} == {"compiled"}, report.summary()
        no_cudagraph_skips(report)


@needs_cuda
@pytest.mark.usefixtures("strict_cudagraphs")
@pytest.mark.compiles
def test_inductor_random_numbers_in_cuda_graphs_are_fresh_normal_and_reproducible():
    """TD3+BC's critic step draws N(0, 1) noise inside its CUDA graph (here through the
    ``target_transform`` hook, which runs inside the compiled step): a new draw at every replay,
    N(0, 1) by its first two moments, and the same draws again from the same seed and from a
    restored CUDA generator state (a checkpoint's ``rng['cuda']``)."""

    def draw(batch, target):
        noise = torch.randn_like(batch.actions)
        return target, {"noise_first": noise[0, 0], "noise_mean": noise.mean(),
                        "noise_square": noise.square().mean()}

    base = paper_td3_bc("cuda")
    data = batches(30, "cuda")

    def noise_of(algo, chunk, seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        out = [algo.update(batch) for batch in chunk]
        return [{k: float(m[k]) for k in ("noise_first", "noise_mean", "noise_square")} for m in out]

    first = copy.deepcopy(base)
    first.target_transform = draw
    report = attach_compiler(first, "compile")
    drawn = noise_of(first, data[:10], seed=0)
    saved = torch.cuda.get_rng_state()
    drawn += noise_of(first, data[10:20])
    torch.cuda.set_rng_state(saved)  # as set_rng_state does on resume
    again = noise_of(first, data[20:30])
    no_cudagraph_skips(report)

    values = [d["noise_first"] for d in drawn]
    assert len(set(values)) == len(values), "the same draw replayed: noise frozen in the CUDA graph"
    n = len(drawn) * B * ACT
    mean = sum(d["noise_mean"] for d in drawn) / len(drawn)
    square = sum(d["noise_square"] for d in drawn) / len(drawn)
    assert abs(mean) < 5 / math.sqrt(n), mean  # 5 standard errors of N(0, 1)'s mean
    assert abs(square - 1) < 5 * math.sqrt(2 / n), square  # and of its second moment
    assert [d["noise_first"] for d in again] == values[10:20], "restored CUDA RNG state, other draws"

    second = copy.deepcopy(base)
    second.target_transform = draw
    attach_compiler(second, "compile")
    assert [d["noise_first"] for d in noise_of(second, data[:10], seed=0)] == values[:10]
    assert [d["noise_first"] for d in noise_of(second, data[:10], seed=1)] != values[:10]


# ----- checkpoints between the GPU and the CPU ---------------------------------------------------


@needs_cuda
@pytest.mark.usefixtures("strict_cudagraphs")
@pytest.mark.compiles
def test_a_compiled_cuda_checkpoint_continues_on_the_cpu_and_back(tmp_path):
    """TD3+BC compiled on the GPU for 3 updates -> checkpoint (save_checkpoint / load_checkpoint,
    mapped to the CPU as resuming does) -> eager on the CPU for 3 more, equal to the GPU run's own
    updates 4-6 -> checkpoint -> compiled on the GPU again for 3 more, equal to the CPU's 7-9. Adam's
    moments and step counts cross both ways (a lost count changes the bias correction by 10x)."""
    data = batches(9, "cpu")
    gpu_data = [Batch(*(t.cuda() for t in batch)) for batch in data]
    gpu = paper_td3_bc("cuda")
    attach_compiler(gpu, "compile")
    torch.manual_seed(1)
    for batch in gpu_data[:3]:
        gpu.update(batch)
    first = save_checkpoint(tmp_path / "gpu.pt", {"algo": gpu.state_dict(),
                                                   "normalizer": {"mean": torch.zeros(OBS, device="cuda"),
                                                                  "std": torch.ones(OBS, device="cuda")}})
    for batch in gpu_data[3:6]:
        gpu.update(batch)

    cpu = paper_td3_bc("cpu")
    attach_compiler(cpu, "eager")
    state = load_checkpoint(first)  # map_location="cpu", as CheckpointDir.load_latest
    cpu.load_state_dict(state["algo"])
    StateNormalizer.from_state_dict(load_checkpoint(first, map_location="cuda")["normalizer"])
    assert all(not group["capturable"] for o in cpu.optimizers() for group in o.param_groups)
    for batch in data[3:6]:
        cpu.update(batch)
    assert_close_state(tensors_only(gpu.state_dict()), tensors_only(cpu.state_dict()), where="cpu")
    second = save_checkpoint(tmp_path / "cpu.pt", {"algo": cpu.state_dict()})

    back = paper_td3_bc("cuda")
    report = attach_compiler(back, "compile")
    back.load_state_dict(load_checkpoint(second)["algo"])
    for batch_cpu, batch_gpu in zip(data[6:], gpu_data[6:]):
        cpu.update(batch_cpu)
        back.update(batch_gpu)
        gpu.update(batch_gpu)
    assert back.total_updates == cpu.total_updates == 9
    assert_close_state(tensors_only(cpu.state_dict()), tensors_only(back.state_dict()), where="back")
    assert_close_state(tensors_only(gpu.state_dict()), tensors_only(back.state_dict()), where="gpu")
    no_cudagraph_skips(report)


def _interrupted_in_process(store, overrides, at_sample, monkeypatch, device=None) -> int:
    """train() stopped by SIGTERM at the ``at_sample``-th replay sample (as scancel sends it), run
    as launch.py runs it: under Hydra's config, whose group choices name the run and its checkpoint
    folder (composed without them, the run is "?-?-?-s0" and launch.py's same command cannot find
    its checkpoint: seen on the first GPU run, 2026-12-04); ``device``: what device=auto resolves to
    (a CPU-only node: "cpu"). The checkpoint's step."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from test_resume import ROOT, small_run

    import offline_rl.run as run_module

    if device is not None:
        monkeypatch.setattr(run_module, "resolve_device", lambda name: torch.device(device))
    interrupt_at_sample(monkeypatch, at_sample)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*small_run(*overrides), f"tracker.store_dir={store}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the task's config, as @hydra.main hands it over
    try:
        with pytest.raises(SystemExit) as stopped:
            run_module.train(cfg)
    finally:
        HydraConfig.instance().cfg = None
        monkeypatch.undo()
    assert stopped.value.code == 128 + signal.SIGTERM
    steps = sorted(int(f.stem.split("-")[1]) for f in store.glob("checkpoints/*/step-*.pt"))
    return steps[-1]


@needs_cuda
@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")], ids=["cuda-to-cpu", "cpu-to-cuda"])
@pytest.mark.slow  # starts a process
def test_a_run_interrupted_on_one_device_resumes_on_the_other(first, then, tmp_path, minari_root,
                                                              monkeypatch, new_store):
    """launch.py with device=auto (one run identity on a GPU node and on a CPU node): stopped by
    SIGTERM on one, the same command resumes it on the other -- same MLflow run, FINISHED, each
    metric step once. The CPU side of cuda-to-cpu is a process that sees no GPU
    (CUDA_VISIBLE_DEVICES=''); cpu-to-cuda's first leg is this process with device=auto resolving
    to the CPU. The replay's sampling generator cannot cross kinds of device: it is reseeded, with
    a warning (the batches then differ from an uninterrupted run's, so weights are not compared)."""
    from test_resume import small_run

    store = new_store(tmp_path / "store")
    overrides = ["algo=td3_bc", "updates=60", "log_every=10", "eval.every=30", "eval.episodes=1",
                 "checkpoint.every=20", "batch_size=32", "device=auto"]
    step = _interrupted_in_process(store, overrides, 27, monkeypatch, device=None if first == "cuda" else "cpu")
    assert step == 27  # the signal's own checkpoint, after the update it arrived in
    env = {"CUDA_VISIBLE_DEVICES": ""} if then == "cpu" else {}
    result = run_launch(small_run(*overrides), store, minari_root, extra_env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and "saved on another kind of device" in result.stderr
    runs = search_runs(store)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.device"].startswith(then)
    assert int(run["tags.resumed_from_step"]) == step
    assert metric_steps(store, run["run_id"], "offline_rl/critic_loss") == list(range(10, 61, 10))
    assert metric_steps(store, run["run_id"], "eval/return_mean") == [30, 60]
    assert math.isfinite(run["metrics.eval/return_mean"])


# ----- launch.py on the GPU ----------------------------------------------------------------------


@needs_cuda
@pytest.mark.slow  # starts a process
def test_launch_with_device_cuda_compiles_and_finishes(tmp_path, minari_root):
    """A researcher's command with device=cuda and compile=compile (what a long run does): hard
    pre-training then TD3+BC, evaluations feeding GPU actions to CPU environments, periodic
    checkpoints; FINISHED, every step function compiled and run as a CUDA graph."""
    result = run_launch([*SMALL_RUN, "device=cuda", "compile=compile", "algo=td3_bc", "pretrain=ac",
                         "pretrain.steps=100", "pretrain.until=null", "updates=200",
                         "eval.every=100", "checkpoint.every=100"], tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(tmp_path).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.device"].startswith("cuda")
    summary = run["tags.compile"]
    for step in ("pretrain.actor", "pretrain.critic", "td3_bc.critic", "td3_bc.critic_actor"):
        assert f"{step}: compiled" in summary, summary
    assert "without CUDA graph" not in summary, summary
    assert run["metrics.compile/cudagraph_skips"] == 0 and run["metrics.compile/fallbacks"] == 0
    assert math.isfinite(run["metrics.eval/return_mean"])
    assert math.isfinite(run["metrics.offline_rl/critic_loss"])




# ----- what a CUDA run writes, loaded on the CPU (run everywhere) --------------------------------


@pytest.mark.compiles
def test_a_capturable_adam_state_loads_and_steps_eagerly_on_the_cpu():
    """A compiled CUDA run's optimiser state dicts say ``capturable=True`` (Adam's counters on the
    device); mapped to the CPU and loaded, eager Adam there would refuse to step. Loading resets the
    flag to this process's; the run then continues exactly as the algorithm that wrote it."""
    data = batches(6, "cpu")
    writer = paper_td3_bc("cpu")
    torch.manual_seed(1)
    for batch in data[:3]:
        writer.update(batch)
    state = copy.deepcopy(writer.state_dict())
    for key in ("actor_optimizer", "critic_optimizer"):  # as the CUDA-graph path saves them
        for group in state[key]["param_groups"]:
            group["capturable"] = True
    reader = paper_td3_bc("cpu")
    reader.load_state_dict(state)
    assert all(not group["capturable"] for o in reader.optimizers() for group in o.param_groups)
    torch.manual_seed(2)
    for batch in data[3:]:
        writer.update(batch)
    torch.manual_seed(2)
    for batch in data[3:]:
        reader.update(batch)
    assert_close_state(writer.state_dict(), reader.state_dict(), exact=True)

    compiled = paper_td3_bc("cpu")  # and a compiled step (a prepared compiler) after loading
    attach_compiler(compiled, "compile", backend="eager")
    compiled.update(data[0])
    compiled.load_state_dict(state)
    assert all(not group["capturable"] for o in compiled.optimizers() for group in o.param_groups)
    compiled.update(data[1])


@needs_cuda
def test_a_phase_sampler_draws_what_sample_draws_on_cuda():
    """On the GPU too (a Philox generator, ``randint(out=)``, ``index_select(out=)``): the phase's
    sampler draws the batches ``sample`` draws from the same seed, into the same tensors."""
    from offline_rl.dataset.replay import FIELDS, ReplayBuffer

    def replay():
        buffer = ReplayBuffer(5000, obs_dim=3, act_dim=2, device="cuda", seed=11)
        rows = torch.arange(5000 * buffer.rows.shape[1], dtype=torch.float32, device="cuda")
        buffer.rows.copy_(rows.reshape(buffer.rows.shape))
        buffer.size = buffer.position = 5000
        return buffer

    reference, phase = replay(), replay()
    draw = phase.sampler(256)
    first = draw()
    for step in range(5):
        expected, got = (reference.sample(256), first) if step == 0 else (reference.sample(256), draw())
        assert got is first
        for key in FIELDS:
            assert torch.equal(getattr(got, key), getattr(expected, key)), (step, key)


def test_a_replay_generator_state_from_another_device_reseeds_with_a_warning():
    """A CUDA generator's state (Philox seed and offset, 16 bytes) cannot be set on a CPU
    generator (a Mersenne Twister's 5,056 bytes) nor the reverse: loading one reseeds from its
    bytes, deterministically, and warns. A state of the same kind still continues exactly."""
    def buffer() -> ReplayBuffer:
        replay = ReplayBuffer(100, OBS, ACT, "cpu", seed=0)
        replay.storage["observations"][:] = torch.arange(100 * OBS, dtype=torch.float32).reshape(100, OBS)
        replay.size = 100
        return replay

    cuda_state = {"generator": torch.tensor(list((1234).to_bytes(8, "little") + (0).to_bytes(8, "little")),
                                            dtype=torch.uint8), "size": 100, "position": 0}
    first, second = buffer(), buffer()
    for replay in (first, second):
        with pytest.warns(RuntimeWarning, match="saved on another kind of device"):
            replay.load_state_dict(cuda_state)
    drawn = first.sample(64).observations
    assert torch.equal(drawn, second.sample(64).observations)  # the same stream from the same state
    assert len(set(drawn[:, 0].tolist())) > 32 and first.size == 100  # and a random one

    source = buffer()
    source.sample(5)
    same = buffer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(source.state_dict())
    assert torch.equal(source.sample(8).observations, same.sample(8).observations)


# ----- bf16 on the GPU (precision=bf16 / auto; offline_rl/precision.py) ---------------------------

BF16_GPU = CUDA and torch.cuda.get_device_capability()[0] >= 8


@needs_cuda
def test_auto_resolves_to_bf16_exactly_where_the_gpu_has_bf16_tensor_cores():
    from offline_rl.errors import ConfigError
    from offline_rl.precision import resolve

    cuda = torch.device("cuda")
    assert resolve("auto", cuda) == ("bf16" if BF16_GPU else "fp32")
    assert resolve("fp32", cuda) == "fp32"
    if BF16_GPU:
        assert resolve("bf16", cuda) == "bf16"
    else:
        with pytest.raises(ConfigError, match="compute capability"):
            resolve("bf16", cuda)


@needs_cuda
@pytest.mark.skipif(not BF16_GPU, reason="bf16 needs compute capability >= 8.0")
@pytest.mark.parametrize("name", ["td3_bc", "edac"])
@pytest.mark.usefixtures("strict_cudagraphs")
@pytest.mark.compiles
def test_compiled_bf16_cuda_steps_stay_float32_and_follow_the_float32_ones(name):
    """The CPU test's promises (tests/test_precision.py) on the GPU, in CUDA graphs: every
    parameter, optimiser state and logged value float32; 4 updates' losses within 5% of the
    float32 step's and the weights moved in the same direction."""
    from test_precision import _state_tensors

    def make_on_cuda():
        torch.manual_seed(0)
        return paper_td3_bc("cuda") if name == "td3_bc" else paper_edac("cuda")

    fp32, bf16, start = make_on_cuda(), make_on_cuda(), make_on_cuda()
    attach_compiler(fp32, "compile", precision="fp32")
    report = attach_compiler(bf16, "compile", precision="bf16")
    for b in batches(6, "cuda"):
        torch.manual_seed(1)
        m32 = fp32.update(b)
        torch.manual_seed(1)
        m16 = bf16.update(b)
    assert "in bf16" in report.summary()
    for key, tensor in _state_tensors(bf16):
        assert tensor.dtype == torch.float32, key
    for key in m16:
        assert m16[key].dtype == torch.float32, key
        assert abs(float(m16[key]) - float(m32[key])) <= 0.05 * abs(float(m32[key])) + 0.05, key
    for net in ("actor", "critic"):
        def flat(algo):
            return torch.cat([w.flatten().float().cpu() for w in getattr(algo, net).state_dict().values()])

        cosine = torch.nn.functional.cosine_similarity(flat(bf16) - flat(start), flat(fp32) - flat(start), 0)
        assert cosine > 0.95, (net, float(cosine))
