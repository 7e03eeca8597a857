"""Background processes the page starts: a fine-tune (the trainer) or an application to the
whole source (the video command). One at a time; output to a log file in the project.

Each runs in its own session, so a Ctrl-C at the terminal reaches only the label
server, which then stops the job the way the job expects: SIGINT, once (the
trainer finishes its batch and saves ``last.pt``; the video command closes a
playable file), then waits for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["Job", "log_tail", "python_command"]


def python_command(module: str, args: Sequence[str]) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def log_tail(path: Path, lines: int = 12, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` lines of a log (progress bars' carriage returns count as line ends)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    parts = [p.rstrip() for p in text.replace("\r", "\n").split("\n")]
    return [p for p in parts if p.strip()][-lines:]


class Job:
    """A command running in the background with its output in ``log``.

    Args:
        kind: ``"train"`` or ``"apply"`` (for the page).
        cmd: The command.
        log: Its stdout and stderr go here (appended).
        info: Anything the page shows with it (round name, epochs...).
        on_exit: Called with the job in the waiting thread once it has ended.
    """

    def __init__(
        self,
        kind: str,
        cmd: list[str],
        log: Path,
        info: dict | None = None,
        on_exit: Callable[[Job], None] | None = None,
    ) -> None:
        self.kind = kind
        self.cmd = cmd
        self.log = log
        self.info = dict(info or {})
        self.on_exit = on_exit
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.stop_requested = False
        self.finished = threading.Event()

    def start(self) -> Job:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            out.write(("$ " + " ".join(self.cmd) + "\n").encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        threading.Thread(target=self._wait, daemon=True).start()
        return self

    def _wait(self) -> None:
        rc = self.proc.wait()
        self.returncode = rc
        self.ended = time.time()
        try:
            if self.on_exit is not None:
                self.on_exit(self)
        finally:
            self.finished.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and not self.finished.is_set()

    def stop(self, wait: float | None = None) -> None:
        """Ask it to stop (SIGINT, once); wait up to ``wait`` seconds for it to end."""
        if self.running and not self.stop_requested:
            self.stop_requested = True
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        if wait is not None:
            self.finished.wait(wait)

    def kill(self) -> None:
        """End it now (nothing more is saved)."""
        if self.running:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.finished.wait(10)

    @property
    def state(self) -> str:
        if self.running:
            return "stopping" if self.stop_requested else "running"
        if self.returncode == 0:
            return "done"
        if self.returncode in (130, -signal.SIGINT) or self.stop_requested:
            return "stopped"
        return "failed"

    def status(self) -> dict:
        return {
            "kind": self.kind,
            "state": self.state,
            "returncode": self.returncode,
            "pid": self.proc.pid if self.proc else None,
            "seconds": round((self.ended or time.time()) - self.started, 1),
            "log": log_tail(self.log),
            **self.info,
        }
