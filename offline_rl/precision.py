"""The arithmetic precision of the update steps: ``precision=fp32`` (every operation in float32),
``bf16`` (the hidden layers' matrix products in bfloat16) or ``auto`` (bf16 where the device has
bf16 hardware, else fp32).

What bf16 means here (mixed precision, as CUDA AMP practises it; measured in docs/precision.md):

- every update step (offline RL, pre-training, fine-tuning, the behaviour agent) runs inside
  ``torch.autocast(device, bfloat16)``: matrix products -- the hidden layers' forward and their
  backward -- take bf16 operands and accumulate in float32 (oneDNN on the CPU, tensor cores on a
  GPU), their results are rounded to bf16;
- everything else stays float32: parameters, gradients as the optimiser sees them, Adam's state,
  Polyak averaging (none of them is touched by autocast), the normalisation layers (LayerNorm,
  batch renormalisation: their input is cast back to float32 first, ``to_float32``), and the
  output layers (``OutputLinear`` and friends in offline_rl/network.py: float32 input, weights and
  result, autocast off), so Q-values, actions, log-probabilities, TD targets and losses are
  float32 tensors.
- Where the boundary goes was measured (docs/precision.md, TD3+BC, one thread, one process):
  the whole step in bf16 ran 1.53x float32's updates/s, output layers in float32 1.57x, output
  layers and LayerNorm in float32 1.58x -- the casts fuse into the normalisation kernels, so the
  float32 boundary costs nothing measurable -- and it had the smallest errors of the three on the
  same batch (TD target 1.5e-3 against 1.9e-3 relative, actor loss 8.1e-4 against 2.2e-3). After
  10k updates on hopper-medium-local, bf16's Q-values differ from float32's by 0.14 (0.2%), as
  much as those of the eager float32 step do from the compiled one (0.13): rounding noise.
- acting (evaluation, data collection) stays float32: it is not an update step.

``resolve`` turns the setting into the precision a run uses, failing with one line when bf16 is
asked for on a device without it; a run records the result (MLflow param ``precision_used`` and
tag ``precision``), and its checkpoints carry it (offline_rl/run.py refuses to resume one
in another precision unless ``precision_change=allow``)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from offline_rl.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
RESOLVED = ("fp32", "bf16")


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 products in hardware: AVX512-BF16 or AMX on x86-64 (what
    PyTorch's CPU capability probe reports), the ``bf16`` feature on 64-bit Arm. Without them
    oneDNN emulates bf16, slower than float32."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if probe is not None and (probe() or (amx is not None and amx())):
            return True, "this CPU has AVX512-BF16" + (" and AMX" if amx is not None and amx() else "")
        return False, "this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated, slower than fp32)"
    if machine in ("aarch64", "arm64"):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            flags = []
        if "bf16" in flags:
            return True, "this CPU has the Arm BF16 extension"
        return False, "this CPU lacks the Arm BF16 extension"
    return False, f"bf16 hardware is not detected on {machine or 'this'} CPUs"


def bf16_support(device: torch.device | str) -> tuple[bool, str]:
    """(supported, why): bf16 products in hardware on ``device`` -- a CPU with AVX512-BF16 / AMX /
    Arm BF16, a CUDA GPU of compute capability 8.0 or more (A100, H100, H200, RTX 30xx on)."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_bf16()
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if (major, minor) >= (8, 0):
            return True, f"{name} has compute capability {major}.{minor}"
        return False, f"{name} has compute capability {major}.{minor}; bf16 needs 8.0 or more"
    return False, f"bf16 update steps are not supported on {device.type} devices here"


def resolve(requested: str, device: torch.device | str) -> str:
    """The precision a run on ``device`` uses: ``fp32`` or ``bf16``. ``auto`` is bf16 where the
    device supports it, else fp32; ``bf16`` where it does not is a ConfigError (one line)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision={requested!r} is not allowed: expected {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    supported, why = bf16_support(device)
    if requested == "bf16" and not supported:
        raise ConfigError(f"precision=bf16 is not available on {torch.device(device)}: {why}; use "
                          f"precision=fp32, or precision=auto (bf16 where the hardware has it)")
    return "bf16" if supported else "fp32"


def autocast(precision: str, device: torch.device | str):
    """The context an update step runs in: bf16 autocast for ``bf16``, nothing for ``fp32``.

    Without autocast's cache of cast weights: a step takes several gradients one after the other
    (actor, then critic), and a cached bf16 copy of the critic's weights made for the actor's
    loss would carry a grad_fn the actor's ``autograd.grad`` already consumed (torch.compile
    refuses that graph, seen with EDAC). The speed-ups in docs/precision.md were measured without
    the cache."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def to_float32(x: torch.Tensor) -> torch.Tensor:
    """A bf16 (or fp16) matrix product's result in float32, before a normalisation layer or an
    output layer; float32 and float64 tensors pass unchanged, so fp32 runs are unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def float32_region(x: torch.Tensor):
    """A region where autocast is off (the output layers): its products run in float32."""
    return torch.autocast(x.device.type, enabled=False)
