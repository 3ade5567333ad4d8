"""What the scheduler and the nannies say about Dask workers that died under `DaskMapper`'s
walkers: which walkers were running on them (Dask re-runs them; they count as recovered), how
each worker process ended, and the error for a walker lost more often than allowed."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import distributed

from .dask_worker import EXIT_TOPIC
from .errors import WorkerException
from .mapper import TaskSpec
from .pool import describe_exitcode
from .worker import TaskFailure

logger = logging.getLogger(__name__)

#: seconds to wait for a nanny's exit report after a KilledWorker
EXIT_REPORT_WAIT = 2.0


class WorkerDeaths:
    """Listens to the scheduler's events on ``client`` from construction to `close`.

    A client holds one handler per topic, so a handler the user had on ``"all"`` (or on the
    nannies' exit topic) is called with every event meanwhile, and given its topic back by `close`.
    """

    def __init__(self, client: distributed.Client, key_prefix: str) -> None:
        self.client, self.key_prefix = client, key_prefix
        self.lost: Counter[str] = Counter()  # task key -> times its worker died under it
        self._exits: dict[int, int | None] = {}  # pid -> exit code, as the nannies report them
        self._exit_reported = threading.Condition()
        handlers = getattr(client, "_event_handlers", {})
        self._user_handlers = {t: handlers.get(t) for t in ("all", EXIT_TOPIC)}
        client.subscribe_topic("all", self._on_event)
        client.subscribe_topic(EXIT_TOPIC, self._on_exit)

    def _pass_on(self, topic: str, event: tuple) -> Any:
        handler = self._user_handlers[topic]
        return handler(event) if handler is not None else None

    def _on_event(self, event: tuple) -> Any:
        """Count the walkers (our task keys) that were running on a worker that died."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and not msg.get("expected"):
            for key in msg.get("processing-tasks", ()):
                if isinstance(key, str) and key.startswith(self.key_prefix):
                    self.lost[key] += 1
                    logger.warning("Dask worker %s died while running %s; Dask re-runs it", msg.get("worker"), key)
        return self._pass_on("all", event)

    def _on_exit(self, event: tuple) -> Any:
        """Keep a nanny's exit report and wake `exitcode`, which may be waiting for it."""
        self._record(event[1])
        return self._pass_on(EXIT_TOPIC, event)

    def _record(self, msg: Any) -> None:
        if isinstance(msg, dict) and isinstance(msg.get("pid"), int):
            with self._exit_reported:
                self._exits[msg["pid"]] = msg.get("exitcode")
                self._exit_reported.notify_all()

    def recovered(self, keys: Iterable[str]) -> int:
        """Re-runs of the tasks ``keys`` after their worker died, each forgotten once counted."""
        return sum(self.lost.pop(k, 0) for k in keys)

    def close(self) -> None:
        for topic, handler in self._user_handlers.items():
            if handler is not None:
                self.client.subscribe_topic(topic, handler)
            else:
                self.client.unsubscribe_topic(topic)
                # distributed keeps the handler it no longer calls: the next listener must not take it for the user's
                getattr(self.client, "_event_handlers", {}).pop(topic, None)

    def exitcode(self, pid: int | None) -> int | None:
        """The exit code a nanny reported for worker process ``pid``; the report may lag the
        KilledWorker a little, so wait up to `EXIT_REPORT_WAIT` seconds for it to arrive."""
        if pid is None:
            return None
        deadline = time.monotonic() + EXIT_REPORT_WAIT
        self._read_log()  # for a report that came before the subscription took effect
        with self._exit_reported:
            if self._exit_reported.wait_for(lambda: pid in self._exits, timeout=deadline - time.monotonic()):
                return self._exits[pid]
        self._read_log()  # none came: the last chance, for one that crossed the subscription
        return self._exits.get(pid)

    def _read_log(self) -> None:
        try:
            for _, msg in self.client.get_events(EXIT_TOPIC):
                self._record(msg)
        except Exception as exc:
            logger.debug("could not read exit reports: %s", exc)

    def task_error(self, spec: TaskSpec, exc: Exception, index: dict[Any, int]) -> Exception:
        """The exception for a walker whose task erred in Dask rather than in its segment;
        ``index`` maps worker names to worker indices."""
        where = {"walker_idx": spec.walker_idx, "cycle_idx": spec.cycle_idx}
        if isinstance(exc, distributed.KilledWorker):
            last = exc.last_worker
            code = self.exitcode(last.pid)
            how = describe_exitcode(code) if code is not None else "exit code unknown (no nanny report)"
            idx = index.get(last.name)
            return WorkerException(
                f"walker {spec.walker_idx} of cycle {spec.cycle_idx} was lost {exc.allowed_failures + 1} time(s), "
                f"more than max_retries={exc.allowed_failures} (the scheduler's allowed-failures); "
                f"last: worker {idx} (pid {last.pid}, {last.address}) died: {how}",
                worker_idx=idx, pid=last.pid, exitcode=code, **where)
        f = TaskFailure.capture(exc)  # e.g. a walker or a result that cannot be pickled
        f = replace(f, exc_message=f"the task failed in Dask, outside the segment: {f.exc_message}")
        return f.to_exception(worker_idx=None, pid=None, **where)
