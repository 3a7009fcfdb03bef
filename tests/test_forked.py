"""tests/forked.py: a forked launch behaves as ``subprocess.run`` of the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import forked

SCRIPT = r"""
import atexit, os, sys, threading, time
atexit.register(lambda: print("atexit ran", flush=True))
what = sys.argv[1]
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("FORKED_PROBE"))
print("path0", sys.path[0])
if what == "thread":  # a non-daemon thread: the interpreter waits for it before atexit
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
elif what == "exit3":
    sys.exit(3)
elif what == "exit-text":
    sys.exit("a message")
elif what == "raise":
    raise ValueError("boom")
elif what == "ctrl-c":
    raise KeyboardInterrupt
elif what == "killed":
    os.kill(os.getpid(), 9)
elif what == "sleep":
    time.sleep(60)
print("stderr line", file=sys.stderr)
"""


@pytest.mark.slow  # starts processes
def test_a_forked_run_gives_what_subprocess_run_gives(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "FORKED_PROBE": "seen"}
    for what in ("plain", "thread", "exit3", "exit-text", "raise", "ctrl-c", "killed"):
        cmd = [sys.executable, str(script), what, "x y"]
        real = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        fork = forked.run(cmd, tmp_path, env, timeout=60)
        assert fork.returncode == real.returncode, (what, fork, real)
        assert fork.stdout == real.stdout, what
        last = real.stderr.strip().splitlines()[-1:] if real.stderr.strip() else []
        assert fork.stderr.strip().splitlines()[-1:] == last, (what, fork.stderr, real.stderr)
    assert forked.run([sys.executable, str(script), "killed"], tmp_path, env).returncode == -signal.SIGKILL
    assert "thread done" in forked.run([sys.executable, str(script), "thread"], tmp_path, env).stdout
    with pytest.raises(subprocess.CalledProcessError):
        forked.run([sys.executable, str(script), "exit3"], tmp_path, env, check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        forked.run([sys.executable, str(script), "sleep"], tmp_path, env, timeout=2)
    # python -m: the module run as __main__, the working directory first on the path
    (tmp_path / "probe_module.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "probe_module", "plain"]
    real = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    fork = forked.run(cmd, tmp_path, env, timeout=60)
    assert (fork.returncode, fork.stdout) == (real.returncode, real.stdout)


@pytest.mark.slow  # starts processes
def test_a_started_launch_gives_what_popen_gives(tmp_path):
    """``forked.start`` (conftest.launched) against ``subprocess.Popen`` of the same script: its
    output, the pid a signal reaches, -N for signal N, a timeout."""
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "FORKED_PROBE": "seen"}
    for fork in (True, False):
        proc = forked.start([sys.executable, str(script), "thread"], tmp_path, env, fork=fork)
        assert isinstance(proc, forked.Forked) == fork
        try:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == proc.poll() == 0 and "thread done" in out and "stderr line" in err
        finally:
            forked.close(proc)
        proc = forked.start([sys.executable, str(script), "sleep"], tmp_path, env, fork=fork)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
            assert proc.poll() is None and proc.returncode is None
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == proc.returncode == -signal.SIGKILL
        finally:
            forked.close(proc)


@pytest.mark.slow  # starts processes
def test_a_launch_killed_the_instant_it_started_ends(tmp_path):
    """``kill`` right after ``start``, before the child's ``setsid()`` made its process group
    (there is no group to kill yet): the child still gets the SIGKILL."""
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    for _ in range(5):
        proc = forked.start([sys.executable, str(script), "sleep"], tmp_path, dict(os.environ))
        try:
            proc.kill()
            assert proc.wait(timeout=20) == -signal.SIGKILL
        finally:
            forked.close(proc)


def test_a_launch_whose_startup_environment_differs_runs_as_a_plain_subprocess(monkeypatch):
    monkeypatch.setattr(forked, "_start_env", {"OMP_NUM_THREADS": "1", "HOME": "/root"})
    assert not forked._startup_differs({"OMP_NUM_THREADS": "1", "HOME": "/elsewhere", "NEW": "x"})
    assert forked._startup_differs({"OMP_NUM_THREADS": "2", "HOME": "/root"})
    assert forked._startup_differs({"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    assert forked._startup_differs({"HOME": "/root"})  # unset where it was set
    # read when torch._dynamo (preloaded) loads its config
    assert forked._startup_differs({"OMP_NUM_THREADS": "1", "TORCHDYNAMO_VERBOSE": "1"})
    assert forked._startup_differs({"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"})
    # what Inductor sets in the worker once it compiled: read by modules the child imports itself
    assert not forked._startup_differs({"OMP_NUM_THREADS": "1", "HOME": "/root",
                                        "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_root",
                                        "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR": "1"})


PROBE_MARKS = '''
import subprocess, sys
import pytest, torch

def test_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.slow
def test_starts_a_process_marked_slow():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_compiles():
    torch.compile(lambda x: x * 2 + 1, backend="eager")(torch.ones(2))

@pytest.mark.compiles
def test_compiles_marked():
    torch.compile(lambda x: x * 3 - 1, backend="eager")(torch.ones(2))

def test_neither():
    torch.ones(2) * 2

def test_imports_a_module_that_starts_one_on_import():
    import starts_a_process_on_import  # as glfw does: whichever test imports it first
    assert starts_a_process_on_import.ran
'''


@pytest.mark.slow  # starts a process
def test_the_fast_tier_marks_are_enforced(tmp_path):
    """tests/conftest.py fails a test that starts a process without ``slow``, or compiles a graph
    without ``compiles``, naming the mark; marked tests and plain ones pass, and so does one that
    imports a module which starts a process as it is imported."""
    (tmp_path / "test_probe_marks.py").write_text(PROBE_MARKS)
    (tmp_path / "starts_a_process_on_import.py").write_text(
        "import subprocess, sys\nran = subprocess.run([sys.executable, '-c', 'pass']).returncode == 0\n")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OFFLINE_RL_TEST_FORK": "0"}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                             "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_probe_marks.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert "2 failed, 4 passed" in out, out[-3000:]
    assert "test_starts_a_process starts a process: mark it @pytest.mark.slow" in out
    assert "test_compiles compiles update steps (torch.compile): mark it @pytest.mark.compiles" in out


PROBE_GROUPS = '''
import os, time, pytest

@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("i", range(3))
def test_grouped(i):
    print("worker", os.environ["PYTEST_XDIST_WORKER"], flush=True)
    time.sleep(0.3)

@pytest.mark.parametrize("i", range(3))
def test_free(i):
    time.sleep(0.3)
'''


@pytest.mark.slow  # starts a process
def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    """make test's ``--dist loadgroup`` runs the SLURM tests (``xdist_group("slurm")``) on one
    worker, whose session fixture starts and stops the cluster. pytest 9.2.0 broke that silently
    (pytest-dev/pytest-xdist#1386: the tests spread over the workers and one stopped SLURM under
    the other's job); pyproject.toml pins pytest below it, and this fails if it breaks again."""
    (tmp_path / "test_probe_groups.py").write_text(PROBE_GROUPS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup",
                             "-p", "no:cacheprovider", "test_probe_groups.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "6 passed" in result.stdout, result.stdout[-3000:]
    workers = {line.split()[0] for line in result.stdout.splitlines()
               if "PASSED" in line and "test_grouped" in line}
    assert len(workers) == 1, result.stdout[-3000:]
