"""Make helper processes die with the process they work for (Linux), and tell live pids from dead.

Why: a build's heavy work runs in child processes - the ``state_simulations`` worker pool
(~1.8 GB each) and, under Dagster's multiprocess executor, one process per step. When the
parent is killed with ``SIGKILL`` nothing runs in it to stop them: a ``spawn`` pool worker or a
step process just keeps computing, writes its results (a step even records a materialization)
and then idles until killed by hand. The kernel can do it for us: ``prctl(PR_SET_PDEATHSIG,
SIGKILL)`` asks it to send ``SIGKILL`` to this process as soon as its parent exits.

* :func:`die_with_parent` - call it first thing in a child (a pool ``initializer``): it arms the
  parent-death signal, then re-checks ``os.getppid()`` against the parent it expects, because a
  parent that died before ``prctl`` ran will never trigger the signal (the child has already been
  re-parented); in that case the child exits at once. Caveat of the kernel: the signal is tied to
  the parent *thread* that created the child, so create such children from a thread that lives as
  long as the parent's interest in them (the main thread, as ``ProcessPoolExecutor.map`` does).
* :func:`die_with_process` - for a child whose immediate parent is not the process it works for
  (a ``forkserver`` child: its parent is the fork server, which stays up while its children hold
  its pipe): a daemon thread polls that process and kills this one when it is gone.
* :func:`worker_pool` - a ``ProcessPoolExecutor`` whose workers die with the creating process.
* :func:`process_alive`, :func:`process_start_time` - liveness with a guard against pid reuse
  (used to find runs whose run-worker process died).

On other systems (no ``prctl``) the arming functions do nothing and return the reason; the
liveness helpers fall back to ``os.kill(pid, 0)`` without a start time.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_STAT_STARTTIME = 19  # index of field 22 (starttime) among the fields after "(comm)"
_STAT_STATE = 0  # field 3 (state)


def _prctl():
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl, ctypes


def die_with_parent(expected_parent: int | None = None, sig: int = signal.SIGKILL) -> str | None:
    """Arrange for this process to receive ``sig`` (default ``SIGKILL``) when its parent exits.

    ``expected_parent``: the pid the parent had when it created this process (pass
    ``os.getpid()`` of the creator through ``initargs``); when ``os.getppid()`` differs after
    arming, the parent already died and this process exits immediately (status 1). ``None``
    takes the current parent, which only closes the race from here on.

    Returns None when armed, else why nothing was done (non-Linux, prctl failed)."""
    if not sys.platform.startswith("linux"):
        return f"parent-death signal not available on {sys.platform} (Linux prctl only)"
    expected = os.getppid() if expected_parent is None else int(expected_parent)
    try:
        prctl, ctypes = _prctl()
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            return f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}"
    except (OSError, AttributeError) as exc:
        return f"prctl unavailable: {exc}"
    if os.getppid() != expected:
        # the parent died before the signal was armed: nobody will send it now
        os._exit(1)
    return None


def die_with_process(pid: int, interval: float = 0.5, sig: int = signal.SIGKILL) -> str | None:
    """Kill this process with ``sig`` once process ``pid`` (not necessarily its parent) is gone.

    A daemon thread checks every ``interval`` seconds (:func:`process_alive`, guarded against pid
    reuse by the start time read now). Exits at once when ``pid`` is already gone. Returns None
    when watching, else the reason it cannot (no ``/proc``)."""
    pid = int(pid)
    started = process_start_time(pid)
    if not process_alive(pid):
        os._exit(1)
    if started is None and not sys.platform.startswith("linux"):
        reason = "no /proc: watching by os.kill(pid, 0) only (pid reuse not detected)"
    else:
        reason = None

    def watch():
        while process_alive(pid, started_before=started):
            time.sleep(interval)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name=f"die-with-{pid}", daemon=True).start()
    return reason


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


_BOOT_TIME: float | None = None


def _boot_time() -> float | None:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("btime "):
                        _BOOT_TIME = float(line.split()[1])
                        break
        except OSError:
            return None
    return _BOOT_TIME


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, ~1 s accuracy: the boot time in
    ``/proc/stat`` has whole seconds); None when it does not exist or there is no ``/proc``."""
    fields = _stat_fields(pid)
    boot = _boot_time()
    if fields is None or boot is None:
        return None
    try:
        ticks = int(fields[_STAT_STARTTIME])
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, started_before: float | None = None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (on this host).

    ``started_before`` (epoch seconds): also require the process to have started no later than
    that (1 s tolerance for the boot time's accuracy) - a process that started afterwards reused
    the pid of the one that was meant, which is dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(pid)
    if fields is None:
        return not sys.platform.startswith("linux")  # vanished meanwhile, or no /proc
    if fields[_STAT_STATE] in ("Z", "X"):
        return False
    if started_before is not None:
        start = process_start_time(pid)
        if start is not None and start > started_before + 1.0:
            return False
    return True


def close_pool(pool) -> None:
    """Shut a :func:`worker_pool` down and wait for its workers to exit.

    Waiting is what makes the workers' CPU time and peak memory count as this process's
    children (``os.times().children_*``, ``getrusage(RUSAGE_CHILDREN)``): a pool shut down
    without waiting leaves them unreaped, and the step metadata (``assets/_metadata.py``) would
    book them to whichever step runs next in this process (measured on the full build:
    ``state_simulations`` showed 37 s of CPU and the next step 888 s). The wait is the workers'
    teardown, about 10 s after a 26,000-household stack."""
    pool.shutdown(wait=True, cancel_futures=True)


def worker_pool(max_workers: int, mp_context=None):
    """A ``concurrent.futures.ProcessPoolExecutor`` (``spawn`` by default) whose workers get
    :func:`die_with_parent` as initializer: killing this process, even with ``SIGKILL``, kills
    them too instead of leaving them to finish their tasks and idle."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=max_workers,
                               mp_context=mp_context or mp.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
