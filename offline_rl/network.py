"""Actor and critic networks.

Every MLP here puts a LayerNorm after every linear layer except the last one, switchable per network
(paper section 6.1 and appendix B: "a LayerNorm after every linear layer except the final one", before
the activation). The paper's reference code uses LayerNorm without a learned affine transform
(``elementwise_affine=False``); ``layer_norm_affine`` adds one. Critic ensembles -- EDAC's N critics and TD3's twin critics alike -- are one module
whose layers are batched matmuls over the ensemble dimension, never a Python list of networks.

Precision (offline_rl/precision.py): under ``precision=bf16`` an update step runs in bf16 autocast,
so the hidden layers' matrix products take bf16 operands; the normalisation layers cast their input
back to float32 and the output layers (``OutputLinear``, an ``EnsembleLinear`` built with
``output=True``) compute in float32 with autocast off, so actions, log-probabilities and Q-values are
float32. Under fp32 these casts are the identity.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from offline_rl.options import any_number, boolean, int_at_least
from offline_rl.precision import float32_region, to_float32

#: the options of every MLP a YAML node builds (their values come from the network group)
NETWORK_OPTIONS = {"width": int_at_least(1), "depth": int_at_least(1), "layer_norm": boolean(),
                   "layer_norm_affine": boolean()}


def hidden_dims(width: int, depth: int) -> list[int]:
    return [int(width)] * int(depth)


class OutputLinear(nn.Linear):
    """A network's last linear layer: float32 input, weights and result, also inside a bf16
    update step (autocast off here), so what the network outputs keeps float32's precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region(x):
            return F.linear(to_float32(x), self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm on a float32 input (a bf16 product's result is cast back first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(to_float32(x))


def mlp(in_dim: int, dims: list[int], out_dim: int, layer_norm: bool,
        layer_norm_affine: bool = False, output: bool = True) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU for each hidden layer, then a plain Linear: the network's
    output layer (``OutputLinear``) unless ``output=False`` (a trunk whose last layer is hidden)."""
    layers: list[nn.Module] = []
    for dim in dims:
        layers.append(nn.Linear(in_dim, dim))
        if layer_norm:
            layers.append(LayerNorm(dim, elementwise_affine=layer_norm_affine))
        layers.append(nn.ReLU())
        in_dim = dim
    layers.append(OutputLinear(in_dim, out_dim) if output else nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """TD3's actor: a = max_action * tanh(MLP(s))."""

    OPTIONS = NETWORK_OPTIONS

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 2,
                 layer_norm: bool = True, max_action: float = 1.0, layer_norm_affine: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims(width, depth), act_dim, layer_norm, layer_norm_affine)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs)


class TanhGaussianActor(nn.Module):
    """SAC / EDAC actor: a = max_action * tanh(u), u ~ N(mu(s), sigma(s)), log sigma clipped.

    Matches CORL's EDAC actor (log-sigma clipped to [-5, 2], tanh correction with +1e-6).
    """

    OPTIONS = {**NETWORK_OPTIONS, "log_std_min": any_number(), "log_std_max": any_number()}

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 3,
                 layer_norm: bool = True, max_action: float = 1.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0, layer_norm_affine: bool = False):
        super().__init__()
        dims = hidden_dims(width, depth)
        self.trunk = mlp(obs_dim, dims[:-1], dims[-1], layer_norm, layer_norm_affine, output=False)
        # the trunk's last layer is a hidden layer too: give it its LayerNorm and activation
        tail: list[nn.Module] = ([LayerNorm(dims[-1], elementwise_affine=layer_norm_affine)]
                                 if layer_norm else [])
        self.trunk.extend(tail + [nn.ReLU()])
        self.mu = OutputLinear(dims[-1], act_dim)
        self.log_std = OutputLinear(dims[-1], act_dim)
        self.max_action = max_action
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(obs)
        mu = self.mu(hidden)
        log_std = torch.clip(self.log_std(hidden), self.log_std_min, self.log_std_max)
        return mu, log_std

    def forward(self, obs: torch.Tensor, deterministic: bool = False,
                need_log_prob: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        mu, log_std = self.distribution(obs)
        if deterministic:
            pre_tanh = mu
        else:
            pre_tanh = mu + self.standard_normal(mu) * log_std.exp()
        action = torch.tanh(pre_tanh)
        log_prob = None
        if need_log_prob:
            log_prob = gaussian_log_prob(pre_tanh, mu, log_std) - tanh_log_det(action)
        return action * self.max_action, log_prob

    def standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        """The policy's one random draw: N(0, 1) noise shaped like ``like`` (tests/test_cuda.py
        fixes it to compare compiled and eager steps on CUDA, where their random numbers differ)."""
        return torch.randn_like(like)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log pi(a|s) of given (dataset) actions: inverts the tanh, clipping away from +-1."""
        mu, log_std = self.distribution(obs)
        action = torch.clamp(action / self.max_action, -1.0 + eps, 1.0 - eps)
        pre_tanh = torch.atanh(action)
        return gaussian_log_prob(pre_tanh, mu, log_std) - tanh_log_det(action)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs, deterministic=deterministic, need_log_prob=False)[0]


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of log N(x; mu, exp(log_std)^2)."""
    z = (x - mu) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def tanh_log_det(tanh_action: torch.Tensor) -> torch.Tensor:
    """log |d tanh(u)/du| summed over action dims, as CORL computes it (1 - tanh^2 + 1e-6)."""
    return torch.log(1 - tanh_action.pow(2) + 1e-6).sum(-1)


class EnsembleLinear(nn.Module):
    """N independent linear layers applied as one batched matmul: [N, B, in] -> [N, B, out].
    ``output``: the ensemble's last layer, computed in float32 (as ``OutputLinear``)."""

    def __init__(self, in_dim: int, out_dim: int, ensemble_size: int, output: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        self.output = output
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the same distribution nn.Linear uses, drawn independently for every member
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output:
            with float32_region(x):
                return torch.baddbmm(self.bias, to_float32(x), self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index`` alone on x [B, in] -> [B, out]."""
        if self.output:
            with float32_region(x):
                return torch.addmm(self.bias[index], to_float32(x), self.weight[index])
        return torch.addmm(self.bias[index], x, self.weight[index])


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature dim; with ``affine``, a separate affine transform per member."""

    def __init__(self, dim: int, ensemble_size: int, affine: bool = False, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim)) if affine else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(to_float32(x), x.shape[-1:], eps=self.eps)
        return x if self.weight is None else x * self.weight + self.bias

    def member(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s affine transform alone on x [B, dim]."""
        x = F.layer_norm(to_float32(x), x.shape[-1:], eps=self.eps)
        return x if self.weight is None else x * self.weight[index] + self.bias[index]


class EnsembleCritic(nn.Module):
    """N critics Q_i(s, a) evaluated at once. forward(obs, act) -> [N, B].

    obs / act may be [B, d] (shared by all members) or [N, B, d] (one batch per member).
    """

    OPTIONS = NETWORK_OPTIONS

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int = 2, width: int = 256,
                 depth: int = 2, layer_norm: bool = True, layer_norm_affine: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = obs_dim + act_dim
        for dim in hidden_dims(width, depth):
            layers.append(EnsembleLinear(in_dim, dim, num_critics))
            if layer_norm:
                layers.append(EnsembleLayerNorm(dim, num_critics, layer_norm_affine))
            layers.append(nn.ReLU())
            in_dim = dim
        layers.append(EnsembleLinear(in_dim, 1, num_critics, output=True))
        self.net = nn.Sequential(*layers)
        self.num_critics = num_critics

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        if obs.dim() == 2 and act.dim() == 3:
            obs = obs.unsqueeze(0).expand(act.shape[0], -1, -1)
        x = torch.cat([obs, act], dim=-1)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_critics, -1, -1)
        return self.net(x).squeeze(-1)

    def member(self, index: int, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Q_index(s, a) alone -> [B], without computing the other members."""
        x = torch.cat([obs, act], dim=-1)
        for layer in self.net:
            x = layer.member(index, x) if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)) else layer(x)
        return x.squeeze(-1)


def linear_layers(module: nn.Module) -> list[nn.Module]:
    """The (ensemble) linear layers of a network, in order."""
    return [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]
