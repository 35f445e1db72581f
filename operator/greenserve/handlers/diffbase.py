"""kopf's diff base (the last handled spec of each ModelService) kept in the operator's memory.

kopf detects a spec change by comparing the object with the last state its change handlers handled. Its
stock storages keep that state on the object itself (an annotation or a status field), which costs one
PATCH of the ModelService after every handled creation and spec change: at a spec change of 1,000
ModelServices that was a third of the operator's requests, and the slowest (a write of the main
resource, with its CEL validation and a watch event of the whole object to every watcher). Nothing
needs the state to outlive the process: after a restart every ModelService is reconciled once anyway
(kopf's resume, the same level-based reconcile as a creation), so an empty memory costs nothing more.
"""

from __future__ import annotations

from typing import Any

import kopf

from greenserve.api import constants as c

#: The annotation kopf's stock storage wrote; on objects handled by an older version it stays, unread.
LEGACY_KEY = "last-handled-configuration"


class MemoryDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """The last handled essence per object uid, in memory; `store` adds nothing to kopf's patch.

    Built as the annotations storage builds it (so an older version's annotation never counts as a
    change), fetched from and stored to a dict. `forget` drops a deleted object's entry."""

    def __init__(self) -> None:
        super().__init__(prefix=c.GROUP, key=LEGACY_KEY)
        self._essences: dict[str, Any] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        essence: kopf.BodyEssence | None = self._essences.get(str(body.metadata.uid))
        return essence

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._essences[str(body.metadata.uid)] = essence

    def forget(self, uid: str | None) -> None:
        if uid:
            self._essences.pop(uid, None)

    def __len__(self) -> int:
        return len(self._essences)


class UnmarkedProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress of a handler (a retry's attempt count and delay) in annotations under our API
    group, as kopf stores it, without the `<group>/kopf-managed` marker kopf adds to an object the
    first time it stores any progress. kopf stores and purges the progress of every handled cause in
    the same patch, so for a handler that succeeds at once that patch would hold only the marker: one
    PATCH of each new ModelService. The marker tells kopf to leave the group's annotations out of its
    diff, which `clear` does anyway for every annotation under the group."""

    def __init__(self) -> None:
        super().__init__(prefix=c.GROUP)

    def store(
        self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch
    ) -> None:
        marker = f"{self.prefix}/kopf-managed"
        had = marker in patch.metadata.annotations
        super().store(key=key, record=record, body=body, patch=patch)
        if not had and marker in patch.metadata.annotations:
            del patch.metadata.annotations[marker]


#: The process's storage: installed by handlers/startup.py, emptied of deleted ModelServices by
#: handlers/cache.py.
DIFFBASE = MemoryDiffBaseStorage()
