"""What patient reconciliation holds back of a study, for the operator's own commands (review finding 12).

`meshnode studies` / `show` flag a study with received instances still waiting for (or refused by) a
patient match; `meshnode export` and `meshnode share` refuse such a study unless the operator says so
explicitly (`--include-unreconciled`): those instances carry the sending organisation's patient identity and
no local record has been confirmed for them, so handing them on outside the reconciliation queue is a
decision a person makes on purpose, never a default.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconState
from protocol.errors import LocalProtocolError


@dataclass(frozen=True)
class HeldView:
    held_instances: int  # 0: nothing held
    states: tuple[str, ...]  # the unmatched rows' states (waiting, rejected, ...)

    def json(self) -> dict[str, object]:
        return {"held_instances": self.held_instances, "states": list(self.states)}

    def flag(self) -> str:
        """"" or a short flag for the operator's listings."""
        return f"RECONCILIATION: {self.held_instances} instance(s) {'/'.join(self.states)}" if self.held_instances \
            else ""


def held_view(store: MetadataStore, study_uid: str) -> HeldView:
    held = store.held_instances(study_uid)
    states = sorted({r.state.value for r in store.study_reconciliations(study_uid)
                     if r.state is not ReconState.MATCHED}) if held else []
    return HeldView(len(held), tuple(states))


def check_not_held(store: MetadataStore, study_uid: str, *, include_unreconciled: bool, what: str) -> None:
    """LocalProtocolError when reconciliation holds instances of the study back and the operator did not say
    to include them."""
    view = held_view(store, study_uid)
    if view.held_instances and not include_unreconciled:
        raise LocalProtocolError(
            f"{view.held_instances} instance(s) of that study are held by patient reconciliation "
            f"({'/'.join(view.states)}): "
            "they carry the sending organisation's patient identity, not a confirmed local record. Decide them "
            f"first (meshnode reconcile), or {what} them anyway with --include-unreconciled")
