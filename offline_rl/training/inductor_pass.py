"""An Inductor graph pass for the compiled update steps (offline_rl/training/compiled.py); its own
module so that Inductor is imported only by a process that compiles a step."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files


class SkinnyMatmulPass(CustomGraphPass):
    """An Inductor post-grad pass (CPU): batched matrix products with a dimension of size 1
    become a broadcast product and a sum, which Inductor fuses with their neighbours. Such
    products -- an ensemble critic's output layer, forward (x [N, B, H] @ w [N, H, 1]) and
    backward (an outer product, a matrix-vector product) -- run at ~4 GFLOP/s as BLAS calls
    (~35 us each for ~1 MFLOP) and were ~9% of a compiled TD3+BC update's time.
    ``max_columns``: outputs of up to this many columns are rewritten too (1: only matrix-vector
    products; 4, which would include dQ/da through EDAC's first layer, made EDAC slower)."""

    max_columns = 1

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in (aten.bmm.default, aten.baddbmm.default):
                continue
            if node.target is aten.baddbmm.default:
                if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
                    continue
                bias, a, b = node.args
            else:
                bias, (a, b) = None, node.args
            values = [getattr(x, "meta", {}).get("val") for x in (a, b)]
            if any(not isinstance(v, torch.Tensor) or v.dim() != 3 for v in values):
                continue
            (_, m, k), (_, _, n) = values[0].shape, values[1].shape
            if not all(isinstance(d, int) for d in (m, k, n)) or values[0].device.type != "cpu":
                continue
            with graph.inserting_before(node):
                emit = partial(_emit, graph)
                if k == 1:  # outer product: [N, M, 1] * [N, 1, n]
                    out = emit(aten.mul.Tensor, a, b)
                elif n <= self.max_columns:  # [N, M, K, 1] * [N, 1, K, n], summed over K
                    out = emit(aten.sum.dim_IntList, emit(aten.mul.Tensor, emit(aten.unsqueeze.default, a, 3),
                                                          emit(aten.unsqueeze.default, b, 1)), [2])
                elif m == 1:  # [N, K, 1] * [N, K, n], summed over K
                    out = emit(aten.sum.dim_IntList, emit(aten.mul.Tensor, emit(aten.permute.default, a, [0, 2, 1]), b),
                               [1], True)
                else:
                    continue
                if bias is not None:
                    out = emit(aten.add.Tensor, out, bias)
                if out.meta["val"].shape != node.meta["val"].shape:  # broadcasting bias
                    out = emit(aten.expand.default, out, list(node.meta["val"].shape))
            node.replace_all_uses_with(out)
            graph.erase_node(node)

    def uuid(self) -> Any:
        return get_hash_for_files((__file__,))


def _emit(graph: torch.fx.Graph, target, *args):
    """A new call_function node with its FakeTensor value (``meta["val"]``), as Inductor expects."""
    node = graph.call_function(target, args)
    fake = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    mode = next(v.fake_mode for v in fake if hasattr(v, "fake_mode"))
    with mode:
        node.meta["val"] = target(*fake)
    return node


SKINNY_MATMULS = SkinnyMatmulPass()
