"""``python launch.py ...`` without paying its imports each time: a process that imported once what
every launch imports (torch, MLflow, Hydra, gymnasium, Minari: ~8 s here) forks a child per launch
(``multiprocessing``'s forkserver). The child is a process of its own, as ``subprocess`` gives one:
its own environment, working directory, ``sys.argv``, signal handlers, stdout and stderr (files,
read back), exit status (``SystemExit``'s code; ``-N`` when signal N ended it), atexit handlers.

What the forkserver imported, it imported under the environment of its start, not the launch's:
a launch whose environment differs from that one in a variable read while Python, torch or the
libraries start (``READ_AT_START``) runs as a plain subprocess instead. What those imports print
(warnings), they printed once, in the forkserver: tests of what a user sees on stderr keep one
real subprocess each (``fork=False``). Tests that need the real interpreter start -- Ctrl-C during
the imports, SLURM's jobs -- use ``subprocess``. ``start`` is ``subprocess.Popen`` the same way
(a launch to signal or kill while it runs). ``OFFLINE_RL_TEST_FORK=0`` makes ``run`` a plain
``subprocess.run`` and ``start`` a plain ``Popen`` (to compare, or to debug).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# what every launch imports, imported once in the forkserver. The last four cost a forked smoke
# launch 3.4 of its 6.9 s of CPU when they were left to the child (python -X importtime, measured
# 2026-12-03): MLflow's sqlite store (1.5 s), Dynamo (1.4 s: torch.optim imports it), Minari's
# HDF5 storage, gymnasium's MuJoCo environments. None starts a thread or a process.
PRELOAD = ["numpy", "torch", "mlflow", "mlflow.tracking", "sqlalchemy", "hydra", "omegaconf",
           "gymnasium", "minari", "scipy.stats", "pandas", "tqdm",
           "mlflow.store.tracking.sqlalchemy_store", "torch._dynamo",
           "minari.dataset._storages.hdf5_storage", "gymnasium.envs.mujoco.mujoco_env"]

# environment variables read as Python, OpenMP/BLAS, torch, Dynamo/Inductor (their configs, loaded
# with torch._dynamo above) or MuJoCo start, not when a launch asks. A launch whose environment
# differs from the forkserver's in one of them starts for real.
READ_AT_START = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "TORCH_", "TORCHDYNAMO_",
                 "TORCHINDUCTOR_", "INDUCTOR_", "AOT", "CXX", "MUJOCO_GL", "PYOPENGL_", "LD_")
# ... except what Inductor sets in the environment itself -- in the test worker once it compiles,
# in the forkserver as torch._dynamo loads -- and reads again on every use
# (runtime/cache_dir_utils.py: cache_dir()): were it counted, a worker's launches would start for
# real once it had compiled (a 16 min CI, measured)
READ_WHEN_USED = {"TORCHINDUCTOR_CACHE_DIR"}

_context: multiprocessing.context.ForkServerContext | None = None
_start_env: dict[str, str] = {}  # the forkserver's environment when it started


#: processes run so far (tests/conftest.py: a fast-tier test that starts one fails)
started = 0


def enabled() -> bool:
    return os.environ.get("OFFLINE_RL_TEST_FORK", "1") != "0"


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        _start_env.update(os.environ)
    return _context


def _startup_differs(env: dict[str, str]) -> bool:
    """Whether ``env`` differs from the forkserver's in a variable read at start."""
    start = _start_env or os.environ
    keys = {k for k in (*env, *start) if k.startswith(READ_AT_START) and k not in READ_WHEN_USED}
    return any(env.get(k) != start.get(k) for k in keys)


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """Runs in the forked child: becomes ``argv`` as ``python`` would run it, then exits."""
    import atexit
    import io
    import runpy
    import signal
    import threading
    import traceback

    os.setsid()  # a group of its own: what it starts (a sweep's job processes) is killed with it
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # chosen again from this TMPDIR (importing torch._dynamo fixed it in the server)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))  # else block-buffered, as into a pipe
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  line_buffering=unbuffered, write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = [module, *argv[2:]] if module else list(argv)
    # what `python script.py` / `python -m module` put first on the path
    sys.path[0] = cwd if module else str(Path(argv[0]).resolve().parent)
    code, interrupted = 0, False
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # the interpreter's way: the traceback, then dies of SIGINT
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 -- what the interpreter does with an uncaught one
        sys.excepthook(*sys.exc_info())
        code = 1
    try:  # what the interpreter does on its way out: wait for threads, then atexit
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if interrupted:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _forkable(cmd: list[str], env: dict[str, str], fork: bool) -> bool:
    return (fork and enabled() and len(cmd) > 1 and cmd[0] == sys.executable
            and (cmd[1] == "-m" or not str(cmd[1]).startswith("-")) and not _startup_differs(env))


class Forked:
    """A launch running in a forked child: what ``subprocess.Popen`` gives that the tests use --
    ``pid`` (to signal it), ``poll``, ``wait``, ``kill``, ``communicate``, ``returncode``, and
    ``stdout``/``stderr`` readable while it runs (files the child writes)."""

    def __init__(self, cmd: list[str], cwd: str, env: dict[str, str]):
        self.args = cmd
        self._folder = tempfile.mkdtemp(prefix="forked-")
        out, err = os.path.join(self._folder, "stdout"), os.path.join(self._folder, "stderr")
        for path in (out, err):  # made here, so that they can be read from the start
            open(path, "w").close()
        self.stdout = open(out, encoding="utf-8", errors="replace")
        self.stderr = open(err, encoding="utf-8", errors="replace")
        self._process = _forkserver().Process(target=_child, args=([str(c) for c in cmd[1:]], env, cwd,
                                                                    out, err))
        try:
            self._process.start()
        except BaseException:  # not started (or interrupted while starting): nothing left behind
            self._process = None
            self.close()
            raise
        self.pid = self._process.pid

    def __enter__(self) -> "Forked":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def kill(self) -> None:
        """SIGKILL to it and to every process of its group (it leads one: ``_child``), and to it
        alone too: a kill in the child's first instants, before its ``setsid()``, finds no group."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is gone already, or not made yet
            pass
        if self._process is not None and self._process.exitcode is None:
            self._process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits, then (stdout, stderr) from the start (a read ``stdout``/``stderr`` too)."""
        self.wait(timeout)
        return (Path(self.stdout.name).read_text(encoding="utf-8", errors="replace"),
                Path(self.stderr.name).read_text(encoding="utf-8", errors="replace"))

    def close(self) -> None:
        """Kills it and what it started (which may outlive it: a sweep's job processes) if still
        running; removes its output files."""
        if self._process is not None:
            self.kill()
            self._process.join()
        self.stdout.close()
        self.stderr.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def start(cmd: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None,
          fork: bool = True, stdout: int = subprocess.PIPE) -> Forked | subprocess.Popen:
    """``subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=PIPE, text=True,
    start_new_session=True)``, forked where ``run`` would fork it (its stdout then goes to a file
    whatever ``stdout`` says); close it with ``close``. Either way it leads a process group of its
    own: ``os.killpg(proc.pid, ...)`` reaches it and what it started, and nothing else."""
    global started
    started += 1
    cwd, env = str(cwd or os.getcwd()), dict(os.environ if env is None else env)
    if not _forkable(cmd, env, fork):
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    return Forked(cmd, cwd, env)


def close(proc: Forked | subprocess.Popen) -> None:
    """A ``start``ed process done with: killed (-9) with its group if it still runs, its output
    closed."""
    if isinstance(proc, Forked):
        proc.close()
        return
    try:  # also when it has ended: what it started (compile or joblib workers) may not have
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def run(cmd: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None,
        timeout: float | None = None, check: bool = False, fork: bool = True) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    check=check)`` for ``cmd = [sys.executable, script, *args]`` or ``[sys.executable, "-m",
    module, *args]``, run in a forked child; any other command, and any with ``fork=False``, by
    ``subprocess.run``."""
    global started
    env = dict(os.environ if env is None else env)
    if not _forkable(cmd, env, fork):
        started += 1
        return subprocess.run(cmd, cwd=str(cwd or os.getcwd()), env=env, capture_output=True, text=True,
                              timeout=timeout, check=check)
    child = start(cmd, cwd, env)
    try:  # a timeout, or the test itself interrupted: the child does not outlive it
        out, err = child.communicate(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        out, err = child.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    finally:
        child.close()
    result = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if check:
        result.check_returncode()
    return result
