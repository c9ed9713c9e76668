"""PS3.15 Table E.1-1, the Basic Profile's action for each attribute, from a maintained library.

dicom-anonymizer (KitwareMedical) ships Table E.1-1 as tag lists per action, scraped from the standard
and updated with its releases (here the 2026c edition): that is the table this node applies, rather
than a hand-typed copy. Its anonymiser itself is not used (random UIDs from a process-wide map, no
keyed pseudonyms, no options): meshnode.study.deidentify applies the actions, with protocol.deid_actions
on top (the rows Annex E's options change, and the node's choices for composite actions).

Composite actions (X/Z, X/D, Z/D, X/Z/D) become Z: the least destructive action that keeps no original
value, so that a type 1 or 2 attribute stays present. D rows become Z too (an empty value carries no
identity; the patient's ID and name get keyed pseudonyms, and dicognito gives dummy names, IDs and
addresses elsewhere). U rows and every UI, DA, DT and TM element are handled by VR (keyed UIDs; dates
removed or shifted). X/Z/U* sequences are kept with their UIDs replaced (references between instances of
the copy stay consistent); range rows (curves 50xx, overlays 60xx) are removed by group.
"""

from __future__ import annotations

from dicomanonymizer.dicomfields_selector import (  # type: ignore[import-untyped]
    dicom_anonymization_database_selector,
)

from protocol.deid_actions import Action

EDITION = "dicomfields_2026c"

_ACTIONS = {
    "X_TAGS": Action.REMOVE,
    "Z_TAGS": Action.EMPTY,
    "D_TAGS": Action.EMPTY,
    "Z_D_TAGS": Action.EMPTY,
    "X_Z_TAGS": Action.EMPTY,
    "X_D_TAGS": Action.EMPTY,
    "X_Z_D_TAGS": Action.EMPTY,
    "X_Z_U_STAR_TAGS": Action.KEEP,  # items processed: their UIDs replaced by VR
}


def _load() -> dict[int, Action]:
    lists: dict[str, list[tuple[int, ...]]] = dicom_anonymization_database_selector(EDITION)
    table: dict[int, Action] = {}
    for name, action in _ACTIONS.items():
        for tag in lists[name]:
            if len(tag) == 2:  # (group, element); masked ranges (curves, overlays) are removed by group
                table[(tag[0] << 16) | tag[1]] = action
    return table


#: tag -> what the Basic Profile does to it (U rows left out: UIDs are handled by VR)
BASIC: dict[int, Action] = _load()
