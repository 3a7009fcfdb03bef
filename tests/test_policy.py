"""A trained run's policy by its MLflow run id (offline_rl/policy.py): evaluated as training
evaluates it, and exported as one TorchScript file whose actions are the run's, loaded by a
Python that cannot import this package."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SMALL_RUN, run_launch, search_runs

# one worker for the module (make test's --dist loadgroup): each worker running some of its tests
# would train its own copy of the module-scoped runs (~11 s each)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("policy")]


@pytest.fixture(scope="module", params=["td3_bc", "edac"])
def trained(request, tmp_path_factory, minari_root):
    store = tmp_path_factory.mktemp(f"policy-{request.param}")
    extra = ["algo.num_critics=3"] if request.param == "edac" else []
    result = run_launch([f"algo={request.param}", *SMALL_RUN, "updates=200", "eval.every=200",
                         *extra], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(store).iloc[0]
    return {"uri": f"sqlite:///{store / 'mlflow.db'}", "run": run, "store": store, "algo": request.param}


def test_the_exported_policy_acts_as_the_run_without_this_package(trained, tmp_path):
    from offline_rl.dataset.minari_source import read_minari_dataset
    from offline_rl.policy import export, load_policy

    policy = load_policy(trained["run"]["run_id"], trained["uri"])
    assert policy.which == "offline"
    observations = read_minari_dataset("tests/hopper/random-v0").observations[:64]
    expected = policy.act(observations)
    # the run's own networks and normalisation, as its evaluations used them
    normalized = (observations - policy.normalizer.mean) / policy.normalizer.std
    with torch.no_grad():
        direct = policy.agent.actor.act(torch.as_tensor(normalized, dtype=torch.float32),
                                        deterministic=True).numpy()
    np.testing.assert_array_equal(expected, direct)
    path = export(policy, tmp_path / "policy.pt")
    np.save(tmp_path / "obs.npy", observations.astype(np.float32))
    # a Python where importing offline_rl fails (it is installed in this venv): torch alone
    code = ("import sys\n"
            "sys.modules['offline_rl'] = None  # any import of it raises ImportError\n"
            "import numpy, torch\n"
            f"m = torch.jit.load({str(path)!r})\n"
            f"a = m(torch.as_tensor(numpy.load({str(tmp_path / 'obs.npy')!r})))\n"
            f"numpy.save({str(tmp_path / 'actions.npy')!r}, a.detach().numpy())\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), expected, rtol=0, atol=1e-6)


def test_evaluate_scores_the_policy_as_the_run_did_and_names_a_wrong_id(trained, capsys):
    from offline_rl.policy import main

    run = trained["run"]
    assert main(["evaluate", run["run_id"], "--tracking-uri", trained["uri"], "--episodes", "2"]) == 0
    line = capsys.readouterr().out.strip()
    # the run's last evaluation: 2 episodes from reset seed eval.seed + seed = 10000, same policy
    assert line.endswith(f"normalised score {run['metrics.eval/normalized_score_mean']:.1f} ± "
                         f"{run['metrics.eval/normalized_score_std']:.1f}"), line
    assert line.startswith(f"run {run['run_id']} (offline policy), 2 episodes from reset seed 10000")
    assert main(["export", "0123456789abcdef", "--tracking-uri", trained["uri"], "--out", "x.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no MLflow run '0123456789abcdef' in the store")


def test_a_video_of_one_episode_on_a_headless_machine(trained, tmp_path):
    """MuJoCo's offscreen renderer through EGL (Mesa's software EGL on this CPU-only machine),
    gymnasium's RecordVideo, moviepy (the `video` extra): one MP4 of the first episode."""
    import ctypes.util
    import os

    if trained["algo"] != "td3_bc":  # the renderer and the writer do not depend on the actor
        pytest.skip("one algorithm is enough for the video (~30 s of software rendering each)")
    if ctypes.util.find_library("EGL") is None:
        pytest.skip("no libEGL on this machine (apt install libegl1 libegl-mesa0)")
    env = {**os.environ, "MUJOCO_GL": "egl"}
    done = subprocess.run([sys.executable, "-m", "offline_rl.policy", "evaluate",
                           trained["run"]["run_id"], "--tracking-uri", trained["uri"],
                           "--episodes", "1", "--video", str(tmp_path / "video")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (video,) = (tmp_path / "video").glob("*.mp4")
    assert video.stat().st_size > 1000 and done.stdout.strip().endswith(f"video {video}")
