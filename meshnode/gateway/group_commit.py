"""Group commit for callers on plain threads: pynetdicom's association threads.

    commits = ThreadGroupCommit(intake, trio_token)
    stored = commits.commit(prepared, route)     # on an association thread; durable on return

Each association has at most one C-STORE outstanding (the caller waits for
the response before it sends the next instance), so a group can only form
across associations. The first thread to arrive leads: it takes every
instance queued (its own included) and makes the group's blocks durable on
its own thread (fdatasync'd in parallel, renamed to their CIDs, folders
synced: StudyIntake.make_durable). It then waits until the previous group's
transaction is done, hands the lead to the oldest instance queued meanwhile
(whose thread takes everything queued and syncs that group's blocks), and
commits its own group's metadata in one SQLite transaction on its own
thread (StudyIntake.commit_group_here, exclusive with the node's database
thread: DatabaseThread.run_blocking). So at most one group syncs blocks
while one commits; the slower the database, the larger the groups; and no
response waits for a hop into the trio loop and back (profiled: those hops,
`trio.from_thread.run` then `to_thread.run_sync`, were about a quarter of
an association thread's time, and 45% of the GIL with four associations).

Every caller returns only once the group holding its instance is committed;
if the group's commit fails, every caller of the group gets the error (and
answers a failure status), and nothing of the group is recorded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import trio

from meshnode.gateway.intake import (
    PendingCommit,
    PreparedInstance,
    StoredInstance,
    StudyIntake,
)
from protocol.errors import MeshError, UnavailableError

if TYPE_CHECKING:
    from meshnode.gateway.routes import Route

log = logging.getLogger(__name__)


@dataclass
class _Waiter:
    pending: PendingCommit
    wake: threading.Event = field(default_factory=threading.Event)


class ThreadGroupCommit:
    def __init__(self, intake: StudyIntake, token: trio.lowlevel.TrioToken) -> None:
        self.intake = intake
        self.token = token
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._leading = False
        self._committing = threading.Lock()  # held by the group whose transaction is being committed
        self.groups = 0  # groups committed (or failed) so far
        self.sizes: deque[int] = deque(maxlen=256)  # instances in each of the latest groups

    def commit(self, prepared: PreparedInstance, route: Route | None) -> StoredInstance:
        """Commit `prepared` with whatever other threads are committing; returns once it is durable.
        Raises what the group's commit raised (a MeshError), or UnavailableError when the node stops."""
        me = _Waiter(PendingCommit(prepared, route))
        with self._lock:
            self._queue.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            me.wake.wait()  # set when my group is done, or when I am to lead the next one
        if not me.pending.done:
            self._lead()
        return me.pending.outcome()

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue, []
        self.sizes.append(len(group))
        committing = False
        try:
            try:
                unsynced = [w for x in group for w in x.pending.prepared.unsynced]
                if unsynced:
                    self.intake.make_durable(unsynced)
                for x in group:
                    x.pending.prepared = replace(x.pending.prepared, unsynced=())
                self._committing.acquire()  # the previous group's transaction is done
                committing = True
            finally:
                self._hand_over()  # the next group's blocks are synced while this group's metadata commits
            self.intake.commit_group_here([w.pending for w in group], self.token)
        except MeshError as exc:  # the group's blocks could not be made durable: nothing of it is recorded
            log.error("cannot commit %d instance(s): %s", len(group), exc)
            self._fail(group, exc)
        except trio.RunFinishedError:
            self._fail(group, UnavailableError("the node is shutting down"))
        except BaseException as exc:  # a bug, or the loop cancelled it: no one of the group may hear success
            self._fail(group, exc)
            raise
        finally:
            if committing:
                self._committing.release()
            with self._lock:
                self.groups += 1
            for w in group:
                w.wake.set()

    def _hand_over(self) -> None:
        """The lead goes to the oldest instance queued, if any (its thread wakes and leads)."""
        with self._lock:
            successor = self._queue[0] if self._queue else None
            self._leading = successor is not None
        if successor is not None:
            successor.wake.set()

    @staticmethod
    def _fail(group: list[_Waiter], exc: BaseException) -> None:
        for w in group:
            if not w.pending.done:
                w.pending.done, w.pending.error = True, exc
