"""Small builders for storage tests."""

from __future__ import annotations

import hashlib

from meshnode.storage.records import InstanceRecord, SeriesAttributes, Source, StudyAttributes
from protocol.cid import CID

STUDY = "1.2.826.0.1.3680043.8.498.100"


def instance(
    n: int, *, study: str = STUDY, series: int = 1, payload: bytes | None = None, modality: str = "CT",
    source: Source = Source.LOCAL, patient_id: str = "9434765919",
) -> InstanceRecord:
    header = f"header {study} {n}".encode()
    pixels = payload if payload is not None else f"pixels {n}".encode() * 10
    blocks = (CID.of(header), CID.of(pixels))
    return InstanceRecord(
        sop_instance_uid=f"{study}.{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series=SeriesAttributes(f"{study}.{series}", modality, series, "AXIAL"),
        study=StudyAttributes(study, "DOE^JANE", patient_id, "19700101", "F", "20251231", "101500",
                              "CT HEAD", "ACC1"),
        transfer_syntax="1.2.840.10008.1.2.1",
        size=len(header) + len(pixels),
        digest=hashlib.sha256(header + pixels).digest(),
        blocks=blocks,
        block_sizes=(len(header), len(pixels)),
        instance_number=n,
        rows=512,
        columns=512,
        frames=1,
        source=source,
    )
