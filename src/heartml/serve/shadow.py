"""The shadowed challenger: a second model that scores every answered row, off the request path.

Which model, by ``HEARTML_SHADOW``:

* ``auto`` (default): the family's ``best_model=true`` version when it is not the champion, a
  retrain the gate refused or one waiting for a person; none when the best is the champion.
  A server of an exported model has no registry to ask, so ``auto`` shadows nothing there.
* ``NAME/VERSION``: that version (read from the registry, also by a server of an export).
* ``off``: none.

The champion answers alone. The request hands its rows and its answer to a bounded queue
(:mod:`heartml.serve.background`); one thread scores them with the challenger in batches,
counts agreement, and passes each answer on to the prediction log with the challenger's
probability. When the queue is full the rows are not shadowed (counted in
``heartml_background_dropped_total{queue="shadow"}``) and the answer goes to the log without
a shadow probability.

The challenger is chosen again after every look the model holder takes at the registry, so it
follows promotions: promote the challenger and it becomes the champion, and ``auto`` shadows
the next best-tagged version, if any. Agreement on ``/model`` is counted per pair of champion
and challenger; the Prometheus counters run on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from heartml.errors import one_line
from heartml.registry import utc_now_iso
from heartml.serve.background import BATCH, BackgroundQueue
from heartml.serve.holder import ModelRef, ServedModel, freeze_heap
from heartml.serve.livemetrics import observe_many
from heartml.settings import AUTO, OFF, parse_shadow_setting

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from heartml.model.engine import Engine
    from heartml.registry import FamilyState, VersionInfo
    from heartml.serve.holder import LoadedModel
    from heartml.serve.livemetrics import LiveMetrics
    from heartml.serve.predlog import Answered
    from heartml.settings import Settings

logger = logging.getLogger(__name__)


def choose_challenger(
    state: FamilyState, setting: str, champion: tuple[str, int] | None
) -> tuple[VersionInfo | None, str]:
    """The version to shadow under ``setting`` while ``champion`` serves, and why (pure)."""
    from heartml.registry import NotFoundError

    wanted = parse_shadow_setting(setting)
    if wanted == OFF:
        return None, "shadowing is off (HEARTML_SHADOW=off)"
    if wanted == AUTO:
        try:
            best = state.best_tagged()
        except NotFoundError:
            return None, "no version is tagged best_model=true"
        if (best.name, best.version) == champion:
            return None, f"the best-tagged version {best.ref} is the champion"
        return best, f"{best.ref} is tagged best_model=true and is not the champion"
    if isinstance(wanted, str):
        raise ValueError(f"unknown HEARTML_SHADOW value {wanted!r}")
    name, version = wanted
    if (name, version) == champion:
        return None, f"{name}/{version} (HEARTML_SHADOW) is the champion"
    try:
        return state.find(name, version), f"{name}/{version} is named by HEARTML_SHADOW"
    except NotFoundError as exc:
        return None, f"HEARTML_SHADOW names {name}/{version}: {exc}"


@dataclass(frozen=True, slots=True)
class PairStats:
    """Agreement of one champion and one challenger so far."""

    champion: str
    challenger: str
    since: str
    rows: int = 0
    disagreements: int = 0
    abs_diff_sum: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "since": self.since,
            "rows": self.rows,
            "disagreements": self.disagreements,
            "agreement": None if not self.rows else 1 - self.disagreements / self.rows,
            "mean_abs_diff": None if not self.rows else self.abs_diff_sum / self.rows,
        }


class CpuSlicer:
    """Scores rows in slices of about ``SLICE_S`` of CPU, yielding the CPU between them.

    The kernel lets a thread that has the CPU keep it for a whole time slice (a millisecond or
    more), nice value or not, when the event loop is busy rather than waking up. One call for
    a whole batch of a slow challenger (a k-NN takes ~18 us a row) then holds the loop back by
    that much: with a k-NN shadowed the answer's p99 was 1.24-1.25x the plain server's in one
    call per batch, 0.95-1.13x in slices (bench/shadow.py; its noise floor 0.97-1.06x). How
    many rows fit in a slice is learnt from the last call.
    """

    SLICE_S = 0.0005
    MIN_ROWS = 8

    def __init__(self) -> None:
        self.rows_per_slice = 32

    def predict_proba(self, engine: Engine, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        if not len(rows):
            return np.empty((0, 2), dtype=np.float64)
        parts = []
        start = 0
        while start < len(rows):
            if start:
                _yield_cpu()
            size = self.rows_per_slice
            part = rows[start : start + size]
            # This thread's CPU time, not the clock's: a preempted slice did not cost more.
            # (ONNX Runtime runs single-threaded, in the calling thread.)
            began = time.thread_time()
            parts.append(np.asarray(engine.predict_proba(part), dtype=np.float64))
            if len(part) == size or start == 0:  # a short tail slice says little per row
                per_row = max(1e-9, (time.thread_time() - began) / len(part))
                self.rows_per_slice = max(self.MIN_ROWS, min(BATCH, int(self.SLICE_S / per_row)))
            start += len(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _yield_cpu() -> None:
    # Releases the GIL too; sched_yield lets a waiting thread of this CPU run first.
    if hasattr(os, "sched_yield"):
        os.sched_yield()
    else:
        time.sleep(0)


class Shadow:
    """The challenger being shadowed, how it is chosen, and the thread that scores with it."""

    def __init__(
        self,
        settings: Settings,
        metrics: LiveMetrics,
        queue_size: int,
        forward: Callable[[list[Answered]], object] | None,
        load: Callable[[ModelRef], LoadedModel] | None = None,
        read_state: Callable[[], FamilyState] | None = None,
    ) -> None:
        self.settings = settings
        self.setting = settings.shadow
        self.metrics = metrics
        self.forward = forward
        # Replaceable (tests): how a challenger is loaded, how the family is read.
        self.loader = load or self._load_from_registry
        self.state_reader = read_state or self._read_registry
        self.queue: BackgroundQueue[Answered] = BackgroundQueue(
            "shadow", self._score, queue_size, metrics.dropped.labels("shadow").inc
        )
        self.current: ServedModel | None = None
        self.reason = "not chosen yet"
        self.last_error: str | None = None
        self.pair: PairStats | None = None
        self._lock = threading.Lock()
        self._slicer = CpuSlicer()

    @property
    def enabled(self) -> bool:
        return self.setting != OFF

    # --- following the registry (the holder's reload thread) -------------------------------

    def follow(self, champion: ServedModel | None) -> None:
        """Choose and load the challenger for ``champion``. Never raises."""
        if not self.enabled:
            self.reason = "shadowing is off (HEARTML_SHADOW=off)"
            return
        if self.setting == AUTO and self.settings.model_dir is not None:
            self.reason = (
                "serving an export: HEARTML_SHADOW=auto needs the registry (name a version)"
            )
            return
        served = None if champion is None else (champion.ref.name, champion.ref.version)
        try:
            chosen, self.reason = choose_challenger(self.state_reader(), self.setting, served)
        except Exception as exc:
            self.last_error = f"could not read the registry: {one_line(exc)}"
            return
        current = self.current
        if chosen is None:
            if current is not None:
                logger.info("no longer shadowing %s: %s", current.ref.ref, self.reason)
            self._swap(None, champion)
            return
        if current is not None and (current.ref.name, current.ref.version) == (
            chosen.name,
            chosen.version,
        ):
            self._swap(current, champion)  # same challenger; the champion may be new
            return
        ref = ModelRef(**chosen.summary.summary_fields(), source="registry", uri=chosen.uri)
        try:
            loaded = self.loader(ref)
        except Exception as exc:
            self.last_error = f"could not load challenger {ref.ref}: {one_line(exc)}"
            logger.warning(self.last_error)
            return
        self.last_error = None
        served_model = ServedModel(
            ref=ref,
            engine=loaded.engine,
            loaded_at=utc_now_iso(timespec="milliseconds"),
            profile=loaded.profile,
        )
        logger.info("shadowing %s (%s)", ref.ref, self.reason)
        self._swap(served_model, champion)
        freeze_heap()

    def _swap(self, challenger: ServedModel | None, champion: ServedModel | None) -> None:
        with self._lock:
            self.current = challenger
            if challenger is None or champion is None:
                self.pair = None
            elif self.pair is None or (self.pair.champion, self.pair.challenger) != (
                champion.ref.ref,
                challenger.ref.ref,
            ):
                self.pair = PairStats(
                    champion.ref.ref, challenger.ref.ref, utc_now_iso(timespec="seconds")
                )
        if challenger is None:
            self.metrics.show_shadow(None, None)
        else:
            self.metrics.show_shadow(challenger.ref.name, challenger.ref.version)

    def _read_registry(self) -> FamilyState:
        from heartml.registry import read_family

        return read_family(self.settings)

    def _load_from_registry(self, ref: ModelRef) -> LoadedModel:
        from heartml.serve.holder import RegistrySource

        return RegistrySource(self.settings).load_model(ref)

    # --- scoring (the shadow thread) -------------------------------------------------------

    def offer(self, answered: Answered) -> bool:
        """Shadow this answer; False when the queue was full (the caller logs it unshadowed)."""
        return self.queue.offer(answered)

    def _score(self, batch: list[Answered]) -> None:
        # Whole-batch numpy: this thread holds the GIL the event loop needs, so its Python
        # loops run once per answer at most, never per value (ONNX Runtime releases the GIL).
        challenger = self.current
        if challenger is None:
            self._pass_on(batch)
            return
        rows = np.concatenate([a.rows for a in batch])
        try:
            proba = self._slicer.predict_proba(challenger.engine, rows)
        except Exception as exc:
            self.metrics.shadow_errors.inc()
            self.last_error = f"challenger {challenger.ref.ref} failed: {one_line(exc)}"
            self._pass_on(batch)
            return
        count = len(rows)
        theirs = proba[:, 1]
        their_class = (proba[:, 1] > proba[:, 0]).astype(np.int64)  # ties to 0, as the champion
        ours = np.fromiter(chain.from_iterable(a.probabilities for a in batch), np.float64, count)
        our_class = np.fromiter(chain.from_iterable(a.classes for a in batch), np.int64, count)
        diff = np.abs(ours - theirs)
        disagree = their_class != our_class
        disagreements = int(disagree.sum())
        self.metrics.shadow_predictions.inc(count)
        if disagreements:
            self.metrics.shadow_disagreements.inc(disagreements)
        observe_many(self.metrics.shadow_abs_diff, diff)
        with self._lock:
            pair = self.pair
            if pair is not None and pair.challenger == challenger.ref.ref:
                # Only the answers of the pair's champion count towards its agreement.
                mine = _answered_by(batch, pair.champion, count)
                self.pair = PairStats(
                    pair.champion,
                    pair.challenger,
                    pair.since,
                    pair.rows + int(mine.sum()),
                    pair.disagreements + int((disagree & mine).sum()),
                    pair.abs_diff_sum + float(diff[mine].sum()),
                )
        if self.forward is not None:
            name = challenger.ref.ref
            theirs_list = theirs.tolist()
            start = 0
            for answered in batch:
                end = start + len(answered.rows)
                answered.shadow_model = name
                answered.shadow_probabilities = theirs_list[start:end]
                start = end
            self.forward(batch)

    def _pass_on(self, batch: list[Answered]) -> None:
        if self.forward is not None:
            self.forward(batch)

    def describe(self) -> dict[str, Any]:
        """What ``/model`` shows under ``shadow``."""
        challenger = self.current
        with self._lock:
            pair = self.pair
        return {
            "setting": self.setting,
            "challenger": None
            if challenger is None
            else {
                **challenger.ref.summary_fields(),
                "uri": challenger.ref.uri,
                "engine": challenger.engine.name,
                "loaded_at": challenger.loaded_at,
            },
            "reason": self.reason,
            "last_error": self.last_error,
            "agreement": None if pair is None else pair.as_dict(),
            "dropped": self.queue.dropped,
            "pending": self.queue.pending,
        }

    def start(self) -> None:
        if self.enabled:
            self.queue.start()

    def close(self, timeout: float) -> None:
        """Score what is queued, within ``timeout``; what is not reaches neither the metrics
        nor the log (its ``seq`` numbers stay missing), and the warning says how much."""
        if not self.queue.close(timeout):
            logger.warning(
                "shadow: %d answers not scored before the deadline%s",
                self.queue.pending,
                "" if self.forward is None else ": their records are missing from the log",
            )


def _answered_by(batch: list[Answered], champion: str, rows: int) -> NDArray[np.bool_]:
    """Which of the batch's ``rows`` were answered by ``champion`` ("name/version")."""
    served = {(a.model_name, a.model_version) for a in batch}
    if len(served) == 1:  # the usual case: one champion answered the whole batch
        ((name, version),) = served
        return np.full(rows, f"{name}/{version}" == champion)
    return np.repeat(
        [f"{a.model_name}/{a.model_version}" == champion for a in batch],
        [len(a.rows) for a in batch],
    )


__all__ = ["AUTO", "OFF", "PairStats", "Shadow", "choose_challenger", "parse_shadow_setting"]
