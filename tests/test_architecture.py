"""The import graph points one way (scripts/import_graph.py prints it): no cycle between modules or
packages, and the layers below never import the ones above them."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

MODULES = import_graph.module_graph(ROOT)
PACKAGES = import_graph.package_graph(MODULES)

# package -> what it must never import: algorithms know neither phases nor runs; data knows nothing
# of algorithms; validation and job context sit below the run that uses them
FORBIDDEN = {
    "network": {"algo", "pretrain", "finetune", "training", "generate", "config", "sweep"},
    "algo": {"pretrain", "finetune", "training", "generate", "config", "sweep"},
    "dataset": {"algo", "pretrain", "finetune", "training", "generate", "sweep"},
    "pretrain": {"finetune", "generate", "sweep"},
    "finetune": {"pretrain", "generate", "sweep"},
    "config": {"training", "pretrain", "finetune", "algo", "generate", "sweep"},
    "job": {"training", "sweep", "config"},
    # the training engine (loop, checkpoints, compiled steps, evaluation) knows nothing of what
    # composes a run: run.py and limits.py sit above it
    "training": {"run", "limits", "pretrain", "finetune", "generate", "sweep", "policy", "first_run"},
}


def test_the_graph_is_read_from_the_source():
    # a few edges everyone can check by reading the files
    assert "offline_rl.algo.base" in MODULES["offline_rl.algo.td3"]
    assert "offline_rl.algo.td3" in MODULES["offline_rl.algo.td3_bc"]
    assert "offline_rl.training.loop" in MODULES["offline_rl.pretrain.common"]
    assert "offline_rl.config" in MODULES["offline_rl.run"]


def test_cycles_are_found():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_the_option_rules_are_the_bottom_layer():
    # every component declares its options with offline_rl/options.py: it imports nothing of ours
    assert PACKAGES["options"] == set()


def test_no_module_cycle():
    assert import_graph.cycles(MODULES) == []


def test_no_package_cycle():
    assert import_graph.cycles(PACKAGES) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    assert not PACKAGES[package] & FORBIDDEN[package], PACKAGES[package]
