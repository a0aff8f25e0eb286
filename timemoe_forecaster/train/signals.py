"""Ctrl-C and SIGTERM ask a training run to save a checkpoint and stop, instead of killing it.

A cluster's scheduler sends SIGTERM before it kills a job (Slurm waits ``KillWait``, 30 s by default; torchrun
forwards the signal to its workers and kills them 30 s later), and a person at a terminal presses Ctrl-C. Before,
either one lost every step since the last ``--save-every`` checkpoint. Now the first signal is a request: the
step in progress finishes, every process agrees to stop at that same step (the time-limit vote of
``Trainer.train_step``), and the run saves a checkpoint that ``--resume`` continues from.

A second signal more than :data:`REPEAT_AFTER_S` seconds after the first stops at once, unsaved, as before. One
sooner is taken for the same request arriving twice: a scheduler that signals a job's every process reaches torchrun
and its workers together, and torchrun then forwards its own copy to each worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_AFTER_S = 2.0


class StopRequest:
    """While entered (in the main thread), SIGINT and SIGTERM set :attr:`received` instead of ending the process.

    ``received``: the first signal's name ("SIGINT", "SIGTERM"), or None. Outside the main thread, where Python
    cannot install handlers, entering does nothing and signals keep their usual effect."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                # A run started with the signal ignored (a script's `timemoe pretrain ... &`, which must not stop
                # at the Ctrl-C meant for the script's foreground job, or nohup) keeps ignoring it.
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.received is None:
            self.received, self._first_at = name, now
            log.warning(
                "%s received: the run saves a checkpoint after the step in progress and stops (send it again to "
                "stop at once, unsaved)",
                name,
            )
            return
        if now - self._first_at < REPEAT_AFTER_S:
            return  # the same request forwarded by torchrun, or a double press
        # A second request: what the signal did before this run took it over.
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.__exit__()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)
