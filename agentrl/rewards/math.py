"""Math answer checking with Math-Verify (symbolic equivalence, not string rules).

The policy's answer is the content of its *last* ``\\boxed{...}``; it is parsed and compared with
the label by :mod:`math_verify` (``1/2``, ``0.5`` and ``\\frac{1}{2}`` are the same answer).

:func:`score_math_answer` scores in the calling thread. From an event loop use a
:class:`MathScorer` (or the process-wide :func:`shared_math_scorer`), which scores in worker
processes with a hard timeout. Math-Verify bounds its own work with ``SIGALRM``, which works only
on a process's main thread and cannot stop a computation inside C: sympy evaluating
``\\boxed{9^{9^{9}}}`` holds the GIL for minutes, so a thread pool would stall the event loop
and keep a core busy. A worker answers on its main thread (where Math-Verify's own timeouts
apply) and is killed and replaced when it has not answered in time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

from agentrl.errors import EnvError

log = logging.getLogger(__name__)

_BOXED = "\\boxed"
_BOXED_ONLY = [
    LatexExtractionConfig(
        boxed_match_priority=0,
        try_extract_without_anchor=False,
        normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True),
    )
]
TIMEOUT_S = 2
"""Math-Verify's own bound on parsing and on comparing one answer (main thread only)."""
SCORE_TIMEOUT_S = 10.0
""":class:`MathScorer`'s default hard bound on scoring one answer, in seconds."""
STARTUP_TIMEOUT_S = 120.0
"""How long a scoring worker may take to import Math-Verify and report ready."""
_WORKER_MAIN = "from agentrl.rewards.math import worker_main; worker_main()"


@dataclass(frozen=True)
class MathScore:
    """The verdict on one response.

    Attributes:
        reward: 1.0 for a correct boxed answer, else 0.0.
        format_ok: the response has a ``\\boxed{}`` whose content parses as math and names no
            unknown the label does not (``\\boxed{ANSWER}`` or ``\\boxed{N}`` is a placeholder,
            not an answer, unless the label itself is in terms of ``N``).
        extracted: the parsed answer as text, or ``None``.
        timed_out: scoring ran out of time (:class:`MathScorer`); reward 0, format not ok.
    """

    reward: float
    format_ok: bool
    extracted: str | None
    timed_out: bool = False


def score_math_answer(response: str, label: str | int | float) -> MathScore:
    """Score ``response`` against ``label``: 1.0 iff its last ``\\boxed{}`` equals the label.

    Safe to call from any thread, but bounded in time only on the main thread (Math-Verify's
    signal-based timeout works nowhere else); blocking: from an event loop use :class:`MathScorer`.
    """
    start = response.rfind(_BOXED)
    if start < 0:
        return MathScore(0.0, False, None)
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    answer = parse(response[start:], extraction_config=_BOXED_ONLY, parsing_timeout=timeout)
    if not answer:
        return MathScore(0.0, False, None)
    gold = parse(_as_latex(label), parsing_timeout=timeout)
    correct = bool(gold) and verify(gold, answer, timeout_seconds=timeout)
    well_formed = correct or _unknowns(answer) <= _unknowns(gold)
    return MathScore(1.0 if correct else 0.0, well_formed, str(answer[-1]))


def _unknowns(parsed: list[object]) -> set[str]:
    """Names of the free symbols in a Math-Verify parse (its first item is the sympy object)."""
    symbols: set[object] = getattr(parsed[0], "free_symbols", set()) if parsed else set()
    return {str(symbol) for symbol in symbols}


def _as_latex(label: str | int | float) -> str:
    text = str(label).strip()
    return text if text.startswith("$") or _BOXED in text else f"${text}$"


class MathScorer:
    """Scores answers with :func:`score_math_answer` in worker processes, off the event loop.

    Every answer is scored on the main thread of a worker process. A worker that has not
    answered within ``timeout_s`` is killed (a fresh one starts on the next call) and the answer
    scores 0 with ``timed_out`` set and a warning: a model's unparseable answer is the model's
    mistake, not an infrastructure failure. Workers start on first use (about a second each).
    Call :meth:`close` when done.

    Args:
        workers: processes, hence answers scored at once; more calls wait their turn.
        timeout_s: hard bound on scoring one answer, in seconds, not counting the wait for a
            free worker or a worker's start.
    """

    def __init__(self, *, workers: int = min(4, os.cpu_count() or 1), timeout_s: float = SCORE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="math-scorer")
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()  # None: not started yet
        for _ in range(workers):
            self._idle.put(None)
        self._closed = False

    async def score(self, response: str, label: str | int | float) -> MathScore:
        """Score ``response`` against ``label`` (see :func:`score_math_answer`) without blocking
        the event loop.

        Raises:
            EnvError: a worker failed to start, died, or Math-Verify raised.
            RuntimeError: the scorer is closed.
        """
        if self._closed:
            raise RuntimeError("this MathScorer is closed; create a new one")
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._score, response, label)

    def close(self) -> None:
        """Wait for the answers being scored, then stop every worker. Safe to call twice."""
        self._closed = True
        self._threads.shutdown(wait=True, cancel_futures=True)
        while not self._idle.empty():
            worker = self._idle.get()
            if worker is not None:
                worker.close()

    def _score(self, response: str, label: str | int | float) -> MathScore:
        """On a scorer thread: score in an idle worker, replacing it when it hangs or dies."""
        worker, keep = self._idle.get(), False
        try:
            worker = worker or _Worker()
            reply = worker.ask({"response": response, "label": str(label)}, self.timeout_s)
            keep = reply is not None
        finally:
            if worker is not None and not keep:
                worker.close()
            self._idle.put(worker if keep else None)
        answer = response[max(response.rfind(_BOXED), 0) :][:200]
        if reply is None:
            log.warning("Math-Verify timed out after %s s on %r; scored 0 (a fresh worker takes over)", self.timeout_s, answer)
            return MathScore(0.0, False, None, timed_out=True)
        if "error" in reply:
            raise EnvError(f"Math-Verify raised {reply['error']} scoring {answer!r}")
        return MathScore(**reply)


@functools.cache
def shared_math_scorer() -> MathScorer:
    """The process-wide :class:`MathScorer` (default settings) that :class:`~agentrl.envs.math_env.MathEnv`
    and ``--rm-type math`` use unless given one; its workers are stopped at exit."""
    scorer = MathScorer()
    atexit.register(scorer.close)
    return scorer


class _Worker:
    """One scoring process: a JSON request per line on its stdin, a JSON reply per line on its
    stdout. Its own session, so a Ctrl-C reaches only the parent; it exits when stdin closes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, start_new_session=True)
        line = self._read_line(STARTUP_TIMEOUT_S)
        if line != "ready\n":
            self.close()
            failure = f"did not start within {STARTUP_TIMEOUT_S:.0f} s" if line is None else f"exited at start with code {self.process.returncode}"
            raise EnvError(f"a Math-Verify worker {failure}; its error is on stderr above ({_WORKER_MAIN!r} failed)")

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The worker's reply, or ``None`` when it has not come within ``timeout_s``.

        Raises:
            EnvError: the worker died.
        """
        try:
            self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
        except OSError as e:
            raise EnvError(f"a Math-Verify worker died (exit code {self.process.poll()}): {e}") from e
        line = self._read_line(timeout_s)
        if line == "":
            raise EnvError(f"a Math-Verify worker died while scoring (exit code {self.process.wait()}); its error is on stderr above")
        return None if line is None else json.loads(line)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        self.process.stdout.close()  # type: ignore[union-attr]

    def _read_line(self, timeout_s: float) -> str | None:
        """The next line ("" at end of file), or ``None`` when none came within ``timeout_s``."""
        stdout = self.process.stdout
        assert stdout is not None, "started with stdout=PIPE"
        readable, _, _ = select.select([stdout], [], [], timeout_s)
        return stdout.readline() if readable else None


def worker_main() -> None:
    """The loop of a :class:`MathScorer` worker process: reads requests ``{"response", "label"}``
    from stdin and writes each :class:`MathScore` (or ``{"error": ...}``) to stdout as JSON."""
    replies, sys.stdout = sys.stdout, sys.stderr  # nothing but replies on the pipe
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = dataclasses.asdict(score_math_answer(request["response"], request["label"]))
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=replies, flush=True)
