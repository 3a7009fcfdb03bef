"""scripts/check_mlflow_ui.py without a browser: what it requires of the rendered runs table, and
its one-line exits when it cannot run. (The browser part runs by hand: it needs Chromium and
minutes of `mlflow ui` start-up; its last result is in docs/ui.md.)"""

from __future__ import annotations

import importlib.util
import sys

from conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("check_mlflow_ui",
                                                  ROOT / "scripts" / "check_mlflow_ui.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up)
    spec.loader.exec_module(module)
    return module


def test_on_a_sweep_over_datasets_each_dataset_is_counted_against_its_own_children():
    ui = _script()
    store = ui.Store("1", ui.MODEL_TRAINING, "dataset=a,b x pretrain=ac,none",
                     {"r1": "ac s0 a", "r2": "none s0 a", "r3": "ac s0 b", "r4": "none s0 b"},
                     {"a": 2, "b": 2})
    rows = ["dataset=a,b x pretrain=ac,none", "ac s0 a\ta (1111)", "none s0 a\ta (1111)",
            "ac s0 b\tb (2222)", "none s0 b\tb (2222)"]
    grid = "Run Name\tDataset\n" + "\n".join(rows)
    results = ui.checks(store, "#/experiments/1/runs", True, True, grid)
    assert all(results.values()), results
    # (the old rule wanted every dataset once per child: 4 of each, a false alarm here)
    assert "Dataset column filled (a x 2, b x 2)" in results
    # a child whose dataset cell is empty fails the check; a missing child fails the nesting one
    empty = ui.checks(store, "#/experiments/1/runs", True, True, grid.replace("\tb (2222)", "", 1))
    assert [k for k, ok in empty.items() if not ok] == ["Dataset column filled (a x 2, b x 2)"]
    hidden = ui.checks(store, "#/experiments/1/runs", True, False, grid)
    assert not hidden["4 child runs nested under it (shown after expanding the parent: "
                      "ac s0 a, ac s0 b, none s0 a, none s0 b)"]


def test_it_cannot_run_says_why_in_one_line(tmp_path, capsys, monkeypatch):
    ui = _script()
    monkeypatch.setattr(ui.shutil, "which", lambda name: None)
    assert ui.main(["--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: Chromium is not installed: apt-get install -y chromium\n"
    monkeypatch.setattr(ui.shutil, "which", lambda name: "/usr/bin/chromium")
    assert ui.main(["--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} holds no mlflow.db: pass the folder of "
                                       f"the store\n")
