"""Mutations applied to the shards of one loaded version, all at once for searches.

``Applied`` holds the lock a mutation takes to reach every shard (a search snapshots every
shard's state under it, so it never sees a mutation half applied), checks that logged
mutations come in sequence, and remembers how many live ids each recent one removed (for a
delete's answer).
"""

from __future__ import annotations

import threading

import numpy as np

from shards.errors import LogGap, SequenceBehind
from shards.live import LiveState
from shards.log import Mutation
from shards.shard import Shard

REMOVED_KEPT = 65536  # mutations whose removal count is remembered


class Applied:
    """The applied state of ``shards`` (shard number -> Shard) of version ``version``."""

    def __init__(self, shards: dict[int, Shard], version: str) -> None:
        self.shards, self.version = shards, version
        self._lock = threading.Lock()
        self._removed: dict[int, int] = {}  # sequence -> live ids it removed (recent ones)

    @property
    def sequence(self) -> int:
        """The mutation log position every shard has applied (0: none)."""
        return min(s.sequence for s in self.shards.values())

    def states(self) -> list[LiveState]:
        """One state of every shard (in ``shards`` order), from between two mutations."""
        with self._lock:
            return [shard.state for shard in self.shards.values()]

    def try_states(self) -> list[LiveState] | None:
        """``states()``, or None at once while a mutation is being applied (no wait)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return [shard.state for shard in self.shards.values()]
        finally:
            self._lock.release()

    def apply(self, m: Mutation, owner: np.ndarray | None) -> int:
        """Apply ``m`` to every shard at once (``owner``: the shard number of each upserted
        row); how many ids were live before (0 for a logged mutation applied already).

        Raises:
            LogGap: a logged mutation that does not follow the applied sequence.
        """
        with self._lock:
            if m.sequence:
                if m.sequence <= self.sequence:
                    return 0
                if m.sequence != self.sequence + 1:
                    raise LogGap(
                        f"mutation {m.sequence} does not follow sequence {self.sequence} "
                        f"of version {self.version}: catch up from the log first"
                    )
            gone = sum(
                shard.apply(m, None if owner is None else owner == number)
                for number, shard in self.shards.items()
            )
        if m.sequence:
            self._removed[m.sequence] = gone
            while len(self._removed) > REMOVED_KEPT:
                self._removed.pop(next(iter(self._removed)))
        return gone

    def removed_at(self, sequence: int) -> int:
        """How many live ids the logged mutation at ``sequence`` removed (replaced or
        deleted).

        Raises:
            SequenceBehind: it is not applied here, or too long ago to remember.
        """
        if sequence not in self._removed:
            raise SequenceBehind(f"mutation {sequence} is not among the last applied here")
        return self._removed[sequence]
