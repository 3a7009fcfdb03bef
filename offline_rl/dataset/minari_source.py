"""Minari datasets: the official ids from the local cache or Minari's own download, read in bulk.

Offline, a missing official dataset fails fast (a connectivity probe bounded in time, before
Minari's own retries, which take ~23 s) with a message naming the id, the paths searched and how
to generate a local dataset instead.

A dataset whose environment lives in an optional package (the Adroit hand of D4RL/pen, door,
hammer, relocate: gymnasium-robotics) fails before anything is downloaded or trained when that
package is missing, saying which extra to install. Evaluation settings may be overridden per
dataset config (appendix G.5 of the paper: the episode time limit and the reference scores).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from offline_rl.dataset.checks import check_offline_data
from offline_rl.dataset.episodes import OfflineData, flatten_episodes
from offline_rl.errors import DatasetError
from offline_rl.options import Rule, any_number, boolean, declares, int_at_least, optional, positive_number

DEFAULT_REMOTE = "hf://farama-minari"
REMOTE_HOSTS = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}
# environments in optional packages: the module, the pip package, this project's extra
ENV_PACKAGES = {"gymnasium_robotics": ("gymnasium-robotics", "adroit")}
# datasets known to need one of them, checked before any download
DATASET_ENV_MODULES = {re.compile(r"^D4RL/(pen|door|hammer|relocate)/"): "gymnasium_robotics"}


def datasets_root() -> Path:
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def dataset_path(dataset_id: str) -> Path:
    return datasets_root() / dataset_id


def is_local(dataset_id: str) -> bool:
    return (dataset_path(dataset_id) / "data" / "metadata.json").exists()


def _probe(host: str, timeout_s: float) -> str | None:
    """None if a TCP connection to host:443 opens within timeout_s, else the reason it did not.
    Runs in a thread so that a hanging DNS lookup is bounded too."""
    result: dict[str, str | None] = {"error": "no answer"}

    def attempt() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                result["error"] = None
        except OSError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    if thread.is_alive():
        return f"no answer from {host} within {timeout_s:.0f} s"
    return result["error"]


def _generate_hint(dataset_id: str) -> str:
    if dataset_id.startswith("D4RL/"):
        return (f"Recorded demonstrations such as {dataset_id} cannot be generated here: download "
                f"it where there is a network (`minari download {dataset_id}`, needs 'minari[hf]') "
                f"and copy its folder to {dataset_path(dataset_id)}.")
    parts = dataset_id.split("/")
    env = parts[1] if len(parts) >= 3 else "hopper"
    level = parts[-1].rsplit("-v", 1)[0] if parts else "medium"
    return (f"To train without a network, use a dataset this project generates itself: "
            f"`python launch.py dataset={env}-{level if level != 'simple' else 'medium'}-local` "
            f"(generated on first use), or `make datasets` to generate them ahead of time.")


def download(dataset_id: str, probe_timeout_s: float = 8.0) -> None:
    """Download an official dataset with Minari's API, failing fast and clearly when offline."""
    remote = os.environ.get("MINARI_REMOTE", DEFAULT_REMOTE)
    searched = dataset_path(dataset_id)
    scheme = urlparse(remote).scheme
    host = REMOTE_HOSTS.get(scheme, urlparse(remote).netloc)
    base = (f"Minari dataset '{dataset_id}' is not in the local cache (searched {searched}; "
            f"set MINARI_DATASETS_PATH to search elsewhere)")
    if scheme == "hf":
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise DatasetError(f"{base} and cannot be downloaded: Minari's download needs "
                               f"huggingface_hub (`pip install 'minari[hf]'`). "
                               f"{_generate_hint(dataset_id)}") from None
    reason = _probe(host, probe_timeout_s) if host else None
    if reason is not None:
        raise DatasetError(f"{base} and cannot be downloaded from {remote}: {reason}. "
                           f"{_generate_hint(dataset_id)}")
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as exc:  # the library's own errors: network, unknown id, version mismatch
        raise DatasetError(f"{base} and the download from {remote} failed: "
                           f"{type(exc).__name__}: {exc}. {_generate_hint(dataset_id)}") from None


def read_minari_dataset(dataset_id: str) -> OfflineData:
    """Read a local Minari dataset into OfflineData (HDF5 read in bulk, one read per field), and
    check its contents (``offline_rl.dataset.checks``)."""
    import minari

    data_path = dataset_path(dataset_id) / "data"
    try:
        ds = minari.load_dataset(dataset_id)
        metadata = ds.storage.metadata
    except FileNotFoundError:
        raise DatasetError(f"Minari dataset '{dataset_id}' not found at {data_path}") from None
    except Exception as exc:
        if _recorded_steps(data_path) == 0:  # Minari itself fails on some empty datasets
            raise _empty(dataset_id, data_path) from None
        raise DatasetError(f"Minari dataset '{dataset_id}' at {data_path} is unreadable "
                           f"({type(exc).__name__}: {exc}); delete {dataset_path(dataset_id)} and "
                           f"download or generate it again") from None
    try:
        if metadata.get("data_format", "hdf5") == "hdf5":
            episodes = _read_hdf5_episodes(data_path / "main_data.hdf5")
        else:
            episodes = [{"observations": ep.observations, "actions": ep.actions,
                         "rewards": ep.rewards, "terminations": ep.terminations,
                         "truncations": ep.truncations} for ep in ds.iterate_episodes()]
    except Exception as exc:
        raise DatasetError(f"Minari dataset '{dataset_id}': the data file under {data_path} is "
                           f"corrupt or truncated ({type(exc).__name__}: {exc}); delete "
                           f"{dataset_path(dataset_id)} and download or generate it again") from None
    extra = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
    for key, value in list(extra.items()):
        if isinstance(value, str) and value[:1] in "{[":
            try:
                extra[key] = json.loads(value)
            except ValueError:
                pass
    if not any(len(ep["rewards"]) for ep in episodes):
        raise _empty(dataset_id, data_path, len(episodes))
    try:
        data = flatten_episodes(episodes, dataset_id=dataset_id, env_spec=ds.env_spec,
                                ref_min_score=metadata.get("ref_min_score"),
                                ref_max_score=metadata.get("ref_max_score"), metadata=extra)
    except ValueError as exc:  # episodes of different shapes, or none at all
        raise DatasetError(f"Minari dataset '{dataset_id}' at {data_path}: its episodes do not "
                           f"fit together ({exc}); delete {dataset_path(dataset_id)} and download "
                           f"or generate it again") from None
    check_offline_data(data, files=str(data_path))
    return data


def _recorded_steps(data_path: Path) -> int | None:
    """total_steps from the dataset's metadata.json, None when unreadable."""
    try:
        return int(json.loads((data_path / "metadata.json").read_text()).get("total_steps"))
    except (OSError, ValueError, TypeError):
        return None


def _empty(dataset_id: str, data_path: Path, episodes: int = 0) -> DatasetError:
    return DatasetError(f"Minari dataset '{dataset_id}' at {data_path} is empty: it holds no "
                        f"transitions ({episodes} episode(s)); nothing to train on. Download or "
                        f"generate it again, or choose another dataset")


def _read_hdf5_episodes(path: Path) -> list[dict[str, np.ndarray]]:
    import h5py

    keys = ("observations", "actions", "rewards", "terminations", "truncations")
    with h5py.File(path, "r") as f:
        names = sorted(f.keys(), key=lambda n: int(n.split("_")[-1]))
        episodes = []
        for name in names:
            group = f[name]
            obs = group["observations"]
            if not isinstance(obs, h5py.Dataset):
                raise DatasetError(f"{path}: {name}/observations is not an array (dict observation "
                                   f"spaces are not supported)")
            episodes.append({k: group[k][()] for k in keys})
    return episodes


def _missing_env_package(module: str, dataset_id: str, env_id: str | None) -> DatasetError:
    package, extra = ENV_PACKAGES.get(module, (module, None))
    install = f"pip install '.[{extra}]'" if extra else f"pip install {package}"
    env = f"its environment {env_id}" if env_id else "an environment"
    return DatasetError(f"Minari dataset '{dataset_id}' is evaluated in {env} that needs the "
                        f"optional package {package} (module {module}), not installed here: {install} "
                        f"(or `pip install {package}`)")


def check_env_package(dataset_id: str, env_spec=None) -> None:
    """Fail with the install command when the dataset's environment lives in a missing package:
    before a download (known ids), and after reading (the env spec's entry point)."""
    modules = [m for pattern, m in DATASET_ENV_MODULES.items() if pattern.match(dataset_id)]
    entry_point = getattr(env_spec, "entry_point", None)
    if isinstance(entry_point, str):
        modules.append(entry_point.split(":")[0].split(".")[0])
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise _missing_env_package(module, dataset_id, getattr(env_spec, "id", None))


def with_evaluation(data: OfflineData, use_minari_reference: bool = False,
                    eval_max_episode_steps: int | None = None, ref_min_score: float | None = None,
                    ref_max_score: float | None = None) -> OfflineData:
    """The dataset with the evaluation settings a config asks for (the paper's appendix G.5):

    - ``eval_max_episode_steps`` replaces the time limit of the dataset's environment spec, so the
      evaluator's ``gym.make(env_spec)`` runs episodes of that length;
    - ``ref_min_score`` / ``ref_max_score`` replace the dataset's (Minari's, D4RL's) reference
      scores used for the normalised score 100 (R - min) / (max - min).

    None keeps the dataset's own value; ``use_minari_reference`` ignores all three. What was chosen
    is recorded in ``data.metadata`` (``eval_max_episode_steps``, ``ref_scores_source``, ...)."""
    if use_minari_reference:
        eval_max_episode_steps = ref_min_score = ref_max_score = None
    spec = data.env_spec
    dataset_steps = getattr(spec, "max_episode_steps", None)
    if eval_max_episode_steps is not None:
        if spec is None:
            raise DatasetError(f"dataset '{data.dataset_id}' has no environment spec: "
                               f"eval_max_episode_steps={eval_max_episode_steps} cannot be applied")
        spec = dataclasses.replace(spec, max_episode_steps=int(eval_max_episode_steps))
    sources = {"min": "minari" if ref_min_score is None else "config",
               "max": "minari" if ref_max_score is None else "config"}
    low = data.ref_min_score if ref_min_score is None else float(ref_min_score)
    high = data.ref_max_score if ref_max_score is None else float(ref_max_score)
    steps = getattr(spec, "max_episode_steps", None)
    chosen = {"eval_max_episode_steps": steps, "dataset_max_episode_steps": dataset_steps,
              "eval_max_episode_steps_source": "minari" if eval_max_episode_steps is None else "config",
              "ref_scores_source": (sources["min"] if sources["min"] == sources["max"]
                                    else f"min: {sources['min']}, max: {sources['max']}"),
              "eval_ref_min_score": low, "eval_ref_max_score": high}
    if eval_max_episode_steps is not None or ref_min_score is not None or ref_max_score is not None:
        print(f"dataset {data.dataset_id}: evaluation episodes of {steps} steps "
              f"({chosen['eval_max_episode_steps_source']}; the dataset's environment: "
              f"{dataset_steps}), normalised scores with min {low} ({sources['min']}) and max "
              f"{high} ({sources['max']})", file=sys.stderr, flush=True)
    return dataclasses.replace(data, env_spec=spec, ref_min_score=low, ref_max_score=high,
                               metadata={**data.metadata, **chosen})


@declares({
    "dataset_id": Rule(lambda v: isinstance(v, str) and "/" in v,
                       "a Minari dataset id such as mujoco/hopper/medium-v0"),
    "download_if_missing": boolean(),
    "probe_timeout_s": positive_number(),
    # evaluation overrides (appendix G.5)
    "use_minari_reference": boolean(),
    "eval_max_episode_steps": optional(int_at_least(1), "the dataset's environment's time limit"),
    "ref_min_score": optional(any_number(), "the dataset's reference score"),
    "ref_max_score": optional(any_number(), "the dataset's reference score"),
})
def load_minari(dataset_id: str, download_if_missing: bool = True, probe_timeout_s: float = 8.0,
                use_minari_reference: bool = False, eval_max_episode_steps: int | None = None,
                ref_min_score: float | None = None, ref_max_score: float | None = None) -> OfflineData:
    """The ``_target_`` of official dataset configs: local cache first, else Minari's download;
    then the config's evaluation settings (see ``with_evaluation``)."""
    check_env_package(dataset_id)
    if not is_local(dataset_id):
        if not download_if_missing:
            raise DatasetError(f"Minari dataset '{dataset_id}' is not in the local cache (searched "
                               f"{dataset_path(dataset_id)}) and dataset.download_if_missing is "
                               f"false. {_generate_hint(dataset_id)}")
        download(dataset_id, probe_timeout_s)
    data = read_minari_dataset(dataset_id)
    check_env_package(dataset_id, data.env_spec)
    return with_evaluation(data, use_minari_reference, eval_max_episode_steps, ref_min_score,
                           ref_max_score)
