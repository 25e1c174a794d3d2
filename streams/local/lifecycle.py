"""Child processes end with their parent (``rating demo``, ``run`` and ``bench``).

Two layers:

* ``stop_on_signals``: SIGTERM and SIGHUP raise ``SystemExit`` in the parent's main thread, so its
  ``with`` and ``finally`` blocks run and stop the broker and the workers in order, as Ctrl-C does.
* ``end_with_parent`` (Linux): each child asks the kernel for SIGTERM when its parent dies, so even
  a parent killed with SIGKILL, or one signalled while it is already cleaning up, leaves no broker
  or worker behind.
"""

from __future__ import annotations

import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when its parent exits.
    Runs in the child between fork and exec; async-signal-safe (one system call)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # noqa: BLE001 (never fail a start over the safety net)
        pass


def child_preexec():
    """What to pass as ``preexec_fn``: ``end_with_parent`` when starting from the main thread (the
    kernel ties the signal to the thread that forks: a child of a short-lived thread would be
    stopped when that thread ends), else nothing."""
    return end_with_parent if threading.current_thread() is threading.main_thread() else None


def _raise_exit(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop this process as an exception would: cleanup runs, children stop."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
