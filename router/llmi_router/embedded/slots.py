"""The embedded control plane's state, events and effects: frozen data, no behaviour.

``step.py`` decides over these; the supervisor's one owner task applies its effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from llmi import planner
from llmi.catalog.scan import ModelEntry


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # no new requests; stops (or parks) once in-flight ones finish
    STOPPING = "stopping"  # the process is being stopped (or reaped after a crash)
    PARKING = "parking"
    PARKED = "parked"  # weights in host memory; the process lives
    WAKING = "waking"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.FAILED, State.STOPPING}),  # STOPPING: cancelled or hung
    State.READY: frozenset({State.DRAINING, State.STOPPING}),  # STOPPING: the process died
    State.DRAINING: frozenset({State.READY, State.STOPPING, State.PARKING}),  # READY: nobody needs the room
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.PARKING: frozenset({State.PARKED, State.STOPPING}),
    State.PARKED: frozenset({State.WAKING, State.STOPPING}),
    State.WAKING: frozenset({State.READY, State.STOPPING}),
    State.FAILED: frozenset({State.STARTING}),
}
# What /v1/models shows (ARCHITECTURE: available/loading/ready/parked/failed, plus unloading).
PUBLIC_STATE: dict[State, Literal["available", "loading", "ready", "parked", "unloading", "failed"]] = {
    State.STOPPED: "available",
    State.STARTING: "loading",
    State.READY: "ready",
    State.DRAINING: "unloading",
    State.STOPPING: "unloading",
    State.PARKING: "unloading",
    State.PARKED: "parked",
    State.WAKING: "loading",
    State.FAILED: "failed",
}
# States whose process holds part of the budget (PARKED holds its residue).
HOLDING = frozenset(State) - {State.STOPPED, State.FAILED}
GOING = frozenset({State.DRAINING, State.STOPPING})


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One model and, when it runs, its runtime. ``attempt`` numbers each start, so outcomes of
    an earlier start (a late exit, a stale stop) are told apart from the current one."""

    entry: ModelEntry
    state: State = State.STOPPED
    attempt: int = 0
    url: str | None = None
    placement: str | None = None
    footprint: int = 0  # bytes of the budget held now
    host_bytes: int = 0  # host memory held while parked
    measured: int | None = None  # what the runtime reported (or remembered)
    measured_placement: str | None = None  # the placement it was measured in (None: remembered, any)
    in_flight: int = 0
    answered: int = 0  # requests this runtime finished; its first answer is measured again
    last_used: float = 0.0
    since: float = 0.0  # when the current state began
    failures: int = 0  # failed loads in a row; a good load resets it
    crashes: int = 0  # quick crashes in a row; a runtime that lived long resets it
    retry_at: float = 0.0
    error: str | None = None
    removed: bool = False  # the folder is gone; no new requests
    removed_at: float = 0.0
    drain_for: str | None = None  # why DRAINING: a model name, or "idle", "removed", "close", "admin"
    fail_after_stop: bool = False
    last_load_s: float | None = None  # how long the last good load took (for progress while loading)
    progress_at: float = 0.0  # when the last progress note of this load was given
    pinned: bool | None = None  # set by an operator (admin endpoint); None: the folder's llmi.yaml

    @property
    def is_pinned(self) -> bool:
        return self.entry.pinned if self.pinned is None else self.pinned


@dataclass(frozen=True)
class Waiter:
    id: int
    model: str
    since: float


@dataclass(frozen=True)
class World:
    slots: Mapping[str, Slot] = field(default_factory=dict)
    waiters: tuple[Waiter, ...] = ()
    closing: bool = False
    close_deadline: float = 0.0

    def queued(self, model: str) -> int:
        return sum(1 for w in self.waiters if w.model == model)

    def planned_bytes(self) -> int:
        return sum(s.footprint for s in self.slots.values() if s.state in HOLDING)


@dataclass(frozen=True)
class Config:
    budget: planner.Budget
    reserved_bytes: int = 0  # held by the launcher itself (a pre-imported parent), counted in the budget
    host_budget_bytes: int = 0  # room for parked models in host memory; 0 turns parking off
    park_residue_bytes: int = 512 * 2**20  # what a parked process keeps on the GPU until measured
    max_queue: int = 256
    max_concurrent: int = 256
    fairness_s: float = 10.0
    # A model that served several requests and just went idle keeps its room this long: the
    # clients it answered are often sending their next request already (``_lingers``).
    linger_s: float = 0.0
    load_timeout_s: float = 900.0
    idle_timeout_s: float = float("inf")
    drain_timeout_s: float = 30.0
    max_failures: int = 5
    load_retry_s: float = 30.0
    quick_crash_s: float = 60.0
    progress_s: float = 5.0  # a loading model reports its progress this often
    removed_grace_s: float = 30.0  # a loaded model whose folder vanished is kept this long, in case it returns

    def effective(self) -> planner.Budget:
        return replace(self.budget, total_bytes=max(0, self.budget.total_bytes - self.reserved_bytes))


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    waiter: int
    model: str


@dataclass(frozen=True)
class Cancel:
    """The waiter left (its client went away, or its deadline passed)."""

    waiter: int


@dataclass(frozen=True)
class Release:
    model: str


@dataclass(frozen=True)
class Started:
    model: str
    attempt: int
    url: str
    seconds: float


@dataclass(frozen=True)
class StartFailed:
    model: str
    attempt: int
    error: str


@dataclass(frozen=True)
class Exited:
    model: str
    attempt: int
    code: int
    reason: str


@dataclass(frozen=True)
class Stopped:
    model: str
    attempt: int


@dataclass(frozen=True)
class Parked:
    model: str
    attempt: int
    residue_bytes: int | None  # measured GPU bytes the parked process keeps


@dataclass(frozen=True)
class Woken:
    model: str
    attempt: int


@dataclass(frozen=True)
class Measured:
    model: str
    attempt: int
    bytes: int


@dataclass(frozen=True)
class Tick:
    """Time passed: deadlines, idle timeouts, backoffs and fairness are looked at again."""


@dataclass(frozen=True)
class Remeasure:
    """What the runtimes share with their launcher shifted (a spare runtime finished warming up and
    made its copies of their common pages): each ready runtime's PSS share grew; measure again."""


@dataclass(frozen=True)
class CatalogChanged:
    entries: tuple[ModelEntry, ...]
    measured: Mapping[str, int] = field(default_factory=dict)  # remembered figures by model name


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Unload:
    """An operator asks for the model to be unloaded now (its in-flight requests finish)."""

    model: str


@dataclass(frozen=True)
class Pin:
    model: str
    pinned: bool


Event = (
    Want
    | Cancel
    | Release
    | Started
    | StartFailed
    | Exited
    | Stopped
    | Parked
    | Woken
    | Measured
    | Tick
    | Remeasure
    | CatalogChanged
    | Close
    | Unload
    | Pin
)


# -- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    model: str
    attempt: int
    placement: str
    footprint: int


@dataclass(frozen=True)
class Stop:
    model: str
    attempt: int
    # Drained, idle, and its room awaited by another model: kill it at once (it serves nothing,
    # and a graceful exit would add its shutdown to the switch).
    quick: bool = False


@dataclass(frozen=True)
class Park:
    model: str
    attempt: int


@dataclass(frozen=True)
class Wake:
    model: str
    attempt: int


@dataclass(frozen=True)
class Measure:
    model: str
    attempt: int


@dataclass(frozen=True)
class Grant:
    waiter: int
    model: str
    url: str


RefusalKind = Literal["not_found", "queue_full", "failed", "too_large", "no_room", "closing"]


@dataclass(frozen=True)
class Refuse:
    waiter: int
    model: str
    kind: RefusalKind
    message: str
    retry_after: float = 1.0


NoteKind = Literal[
    "found",
    "gone",
    "back",
    "loading",
    "ready",
    "failed",
    "evicting",
    "parking",
    "parked",
    "waking",
    "idle",
    "crashed",
    "stopped",
    "unloading",
    "pinned",
    "progress",
]


@dataclass(frozen=True)
class Note:
    """Something worth a log line, a metric and an event on the stream."""

    kind: NoteKind
    model: str
    detail: str = ""
    seconds: float | None = None


Effect = Spawn | Stop | Park | Wake | Measure | Grant | Refuse | Note
