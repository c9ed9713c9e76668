"""meshnode ingest|studies|show|export|scrub|gc: the node's local store."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.cli.output import EXIT_ERROR, EXIT_OK, emit
from common.cli.progress import ProgressBar
from meshnode.config import load_config
from meshnode.gateway.reconcile_holds import check_not_held, held_view
from meshnode.home import resolve_home
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import StudySummaryRow, hash_uid
from protocol.conflict import DEFAULT_POLICY, ConflictPolicy
from protocol.errors import NotFoundError, SchemaError


@contextmanager
def open_storage(args: argparse.Namespace) -> Iterator[NodeStorage]:
    storage = NodeStorage.open(resolve_home(args.home))
    try:
        yield storage
    finally:
        storage.close()


def find_study(storage: NodeStorage, key: str) -> StudySummaryRow:
    """A study by its UID, or by a unique prefix of at least 6 characters."""
    exact = storage.metadata.study(key)
    if exact is not None:
        return exact
    if len(key) >= 6:
        matches = [s for s in storage.metadata.studies() if s.attributes.study_uid.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SchemaError(f"{len(matches)} studies start with {key!r}; give more of the UID")
    raise NotFoundError(f"no study {key!r} on this node (see `meshnode studies`)")


def node_conflict_policy(args: argparse.Namespace) -> ConflictPolicy:
    """node.toml's [conflicts] default, or the safe default when there is no readable node.toml."""
    path = resolve_home(args.home) / "node.toml"
    if not path.exists():
        return DEFAULT_POLICY
    return load_config(path).gateway.conflict_default


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    ing = sub.add_parser("ingest", parents=[common], help="ingest DICOM files and folders (recursively)")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel worker processes (default: one per core)")
    ing.add_argument("--no-progress", action="store_true")
    ing.add_argument("--on-conflict", choices=[p.value for p in ConflictPolicy],
                     help="a file whose SOP Instance UID is stored with other bytes: reject (held for "
                          "`meshnode conflicts`), replace or keep-both (default: node.toml [conflicts] default, "
                          "else reject)")
    ing.add_argument("--json", action="store_true")
    ing.set_defaults(func=run_ingest)
    st = sub.add_parser("studies", parents=[common], help="list the studies on this node")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_studies)
    show = sub.add_parser("show", parents=[common], help="show one study: series, instances, blocks")
    show.add_argument("study", help="Study Instance UID (or a unique prefix)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)
    exp = sub.add_parser("export", parents=[common], help="write a study to a folder, byte-exact")
    exp.add_argument("study")
    exp.add_argument("folder", type=Path)
    exp.add_argument("--include-unreconciled", action="store_true",
                     help="also export instances patient reconciliation holds back (the sender's identity)")
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(func=run_export)
    scrub = sub.add_parser("scrub", parents=[common], help="verify every block, quarantine corrupt ones")
    scrub.add_argument("--json", action="store_true")
    scrub.set_defaults(func=run_scrub)
    gc = sub.add_parser("gc", parents=[common], help="remove blocks nothing references")
    gc.add_argument("--orphan-grace", type=int, default=3600, metavar="SECONDS",
                    help="keep unrecorded block files younger than this (an ingest may be running)")
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=run_gc)


def run_ingest(args: argparse.Namespace) -> int:
    from meshnode.study.ingest import Ingester  # pydicom: imported when used, so other commands start quickly

    policy = ConflictPolicy(args.on_conflict) if args.on_conflict else node_conflict_policy(args)
    with open_storage(args) as storage:
        bar = ProgressBar("ingest", enabled=not args.no_progress and not args.json)
        report = Ingester(storage, workers=args.workers, conflict_policy=policy).ingest(args.paths, bar.update)
    mb = report.bytes / 1e6
    data = {
        "files": report.files, "instances": report.instances, "added": report.added,
        "duplicates": report.duplicates, "conflicts": report.conflicts, "replaced": report.replaced,
        "conflict_policy": policy.value, "studies": len(report.studies),
        "bytes": report.bytes, "seconds": round(report.seconds, 3),
        "images_per_second": round(report.images_per_second, 1),
        "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
        "flagged": [{"path": p, "flags": list(f)} for p, f in report.flagged],
    }
    lines = [
        f"ingested {report.instances} instance(s) in {len(report.studies)} study(ies): {report.added} new, "
        f"{report.duplicates} already stored, {report.conflicts} UID conflict(s) held (policy {policy.value}"
        + (": `meshnode conflicts`" if report.conflicts and policy is not ConflictPolicy.KEEP_BOTH else "") + ")"
        + (f", {report.replaced} replaced" if report.replaced else ""),
        f"{mb:,.1f} MB in {report.seconds:.2f} s: {report.images_per_second:,.0f} images/s, "
        f"{mb / report.seconds if report.seconds else 0:,.1f} MB/s (durable)",
    ]
    lines += [f"skipped {p}: {r}" for p, r in report.skipped]
    lines += [f"flagged {p}: {', '.join(f)} (kept, audited)" for p, f in report.flagged]
    emit(data, args.json, "\n".join(lines))
    return EXIT_OK if report.instances or not report.files else EXIT_ERROR


def _study_view(s: StudySummaryRow) -> dict[str, object]:
    a = s.attributes
    return {
        "study_uid": a.study_uid, "patient_name": a.patient_name, "patient_id": a.patient_id,
        "study_date": a.study_date, "description": a.description, "accession": a.accession,
        "modalities": list(s.modalities), "series": s.series_count, "instances": s.instance_count,
        "bytes": s.total_bytes, "sources": list(s.sources), "uid_conflicts": s.conflicts,
    }


def run_studies(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        studies = storage.metadata.studies()
        held = {s.attributes.study_uid: held_view(storage.metadata, s.attributes.study_uid) for s in studies}
    lines = [
        f"{s.attributes.study_uid}  {s.attributes.study_date or '--------'}  {'/'.join(s.modalities) or '-':<6} "
        f"{s.series_count:>3} series {s.instance_count:>5} inst {s.total_bytes / 1e6:>9,.1f} MB  "
        f"{s.attributes.description}"
        + (f"  [{held[s.attributes.study_uid].flag()}]" if held[s.attributes.study_uid].held_instances else "")
        for s in studies
    ] or ["no studies yet (meshnode ingest PATH...)"]
    emit([{**_study_view(s), "reconciliation": held[s.attributes.study_uid].json()} for s in studies], args.json,
         "\n".join(lines))
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        study = find_study(storage, args.study)
        instances = storage.metadata.instances(study.attributes.study_uid)
        held = held_view(storage.metadata, study.attributes.study_uid)
        held_keys = storage.metadata.held_instances(study.attributes.study_uid)
    view = _study_view(study)
    view["reconciliation"] = held.json()
    view["instances_detail"] = [
        {"sop_instance_uid": i.sop_instance_uid, "series_uid": i.series_uid, "sop_class_uid": i.sop_class_uid,
         "transfer_syntax": i.transfer_syntax, "size": i.size, "digest": i.digest.hex(),
         "blocks": [str(b) for b in i.blocks], "flags": list(i.flags),
         "held_by_reconciliation": (i.sop_instance_uid, i.digest) in held_keys}
        for i in instances
    ]
    a = study.attributes
    lines = [f"study {a.study_uid}", f"patient {a.patient_name} ({a.patient_id}), born {a.birth_date}, {a.sex}",
             f"{a.study_date} {a.description}; accession {a.accession}",
             f"{study.series_count} series, {study.instance_count} instances, {study.total_bytes:,} bytes"]
    if held.held_instances:
        lines.append(f"{held.flag()}: held back (not in DICOMweb, C-FIND, C-GET/C-MOVE; not forwarded to the "
                     "PACS); `meshnode reconcile list`")
    series_seen: set[str] = set()
    for i in instances:
        if i.series_uid not in series_seen:
            series_seen.add(i.series_uid)
            lines.append(f"  series {i.series_uid} {i.series.modality} #{i.series.series_number} "
                         f"{i.series.description}")
        shown_flags = [*i.flags, *(["held-by-reconciliation"] if (i.sop_instance_uid, i.digest) in held_keys else [])]
        flags = f" [{', '.join(shown_flags)}]" if shown_flags else ""
        lines.append(f"    {i.sop_instance_uid}  {i.size:>10,} B  {len(i.blocks)} block(s){flags}")
    emit(view, args.json, "\n".join(lines))
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from meshnode.study.export import export_study  # pydicom: imported when used

    with open_storage(args) as storage:
        study = find_study(storage, args.study)
        check_not_held(storage.metadata, study.attributes.study_uid,
                       include_unreconciled=args.include_unreconciled, what="export")
        report = export_study(storage, study.attributes.study_uid, args.folder)
    emit({"study": hash_uid(report.study_uid), "folder": str(report.folder), "instances": report.instances,
          "bytes": report.bytes}, args.json,
         f"exported {report.instances} instance(s), {report.bytes:,} bytes to {report.folder} (digests verified)")
    return EXIT_OK


def run_scrub(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        result = storage.scrub()
    emit({"checked": result.checked, "corrupt": [str(c) for c in result.corrupt], "stray": list(result.stray)},
         args.json,
         f"checked {result.checked} block(s): {len(result.corrupt)} corrupt (quarantined), "
         f"{len(result.stray)} stray file(s)")
    return EXIT_ERROR if result.corrupt else EXIT_OK


def run_gc(args: argparse.Namespace) -> int:
    with open_storage(args) as storage:
        result = storage.gc(orphan_grace_s=args.orphan_grace)
    emit({"blocks_removed": result.blocks_removed, "orphans_removed": result.orphans_removed,
          "bytes_freed": result.bytes_freed}, args.json,
         f"removed {result.blocks_removed} unreferenced and {result.orphans_removed} orphan block(s), "
         f"{result.bytes_freed:,} bytes freed")
    return EXIT_OK
