"""bench/gateway.py: the node's hospital gateway against the real alternatives, in one run.

    .venv/bin/python bench/gateway.py [--slices 300] [--repeat 3] [--folder DIR] [--profile DIR]

Each measurement is one function returning a Row; `main` prints them as one
table. Today's measurements (DIMSE, C-STORE of one study over loopback):

- dcmtk `storescu` (TCP_NODELAY=1) -> dcmtk `storescp` (no fsync),
- `storescu` -> a bare pynetdicom SCP (bench/dimse_baselines.py (c): writes each
  data set to a file as it arrives, no fsync),
- `storescu` -> the node's C-STORE SCP (`meshnode run`, a real node process
  with a routing AE title): every C-STORE answered only once the instance is
  durable (blocks fdatasync'd and renamed, metadata and audit entry committed
  with SQLite synchronous=FULL).

Also the same three receivers with four concurrent associations: four
storescu processes started together, each sending its own study of a quarter
of the slices (distinct study, series and instance UIDs), to the node, to the
bare pynetdicom SCP (a thread per association) and to storescp --fork (a
process per association). The clock runs from the first "Requesting
Association" to the last storescu exit.

Then WADO-RS retrieval of the same study by dicomweb-client, from the node
and from Orthanc, in the same run (bench/wado.py; skip with --no-wado).

The clock runs from storescu logging "Requesting Association" to its exit,
the same for all three; each receiver is checked to hold every instance.
Verdicts (bench/summary.py), from this run's figures: the node's durable
ingest on one association >= the bare pynetdicom SCP and >= dcmtk storescp;
on four concurrent associations >= 600 images/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ensure_system_packages, print_table  # noqa: E402
from bench.wado import measure_wado, report_wado  # noqa: E402
from bench.dimse_baselines import (  # noqa: E402
    TransferResult,
    concurrent_storescu,
    dcmtk_concurrent,
    dcmtk_transfer,
    pynetdicom_concurrent,
    storescu_to_pynetdicom,
    study_files,
    timed_storescu,
)
from bench.profile import profiled  # noqa: E402
from bench.summary import at_least, record  # noqa: E402
from meshnode.demo.mesh import MeshDemo  # noqa: E402
from meshnode.demo.workspace import Workspace  # noqa: E402

CALLING_AE = "BENCHSCU"
ROUTE_AE = "MESH_BENCH"
CONCURRENT = 4
TARGET_CONCURRENT_IMAGES_PER_S = 600


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    runs: list[TransferResult]
    note: str = ""

    @property
    def best(self) -> TransferResult:
        return min(self.runs, key=lambda r: r.seconds)


# -- DIMSE C-STORE ---------------------------------------------------------------------------


class GatewayNode:
    """One real node process (authority, directory, `meshnode run`) with its DIMSE gateway on."""

    def __init__(self, work: Path) -> None:
        self.demo = MeshDemo(Workspace(work / "mesh"))
        nodes = self.demo.setup([("a", "BENCHA", "Bench org A")], start=False)
        self.node = nodes["a"]
        self.demo.configure(self.node, {"dimse.enabled": True, "dimse.port": 0})
        with open(self.node.home / "node.toml", "a") as fh:
            # a route, so that the measured path includes the announcement bookkeeping; the
            # quiet period is long enough that no share starts while the bench runs
            fh.write(f'\n[[caller]]\nae_title = "{CALLING_AE}"\n'
                     f'\n[[route]]\nname = "bench"\ncalled_ae = "{ROUTE_AE}"\nto = ["BENCHB"]\n'
                     f"quiet_period_seconds = 3600\n")
        self.demo.start(self.node)
        info = json.loads((self.node.home / "dimse.json").read_text())
        self.port = int(info["port"])

    def instances(self) -> int:
        studies = self.demo.cli(self.node, "studies")
        return sum(int(s["instances"]) for s in studies)

    def close(self) -> None:
        self.demo.close()


PROFILE: Path | None = None  # --profile: py-spy the node during each C-STORE measurement


def node_cstore(folder: Path, work: Path) -> TransferResult:
    """storescu -> the node's C-STORE SCP (a fresh node each run): durable before each response."""
    files = study_files(folder)
    node = GatewayNode(work / f"node-{len(list(work.iterdir()))}")
    try:
        with profiled({"node": node.demo.procs["a"].pid}, PROFILE, f"cstore-1-{node.demo.ws.root.parent.name}"):
            seconds = timed_storescu(folder, node.port, called_ae=ROUTE_AE, calling_ae=CALLING_AE)
        held = node.instances()
        if held != len(files):
            raise RuntimeError(f"the node holds {held} instances, {len(files)} were sent")
    finally:
        node.close()
    return TransferResult(seconds, sum(p.stat().st_size for p in files), len(files))


def node_concurrent(folders: list[Path], work: Path) -> TransferResult:
    """One storescu per folder, concurrently -> the node's C-STORE SCP (a fresh node each run)."""
    files = [f for folder in folders for f in study_files(folder)]
    node = GatewayNode(work / f"node-{len(list(work.iterdir()))}")
    try:
        with profiled({"node": node.demo.procs["a"].pid}, PROFILE,
                      f"cstore-{CONCURRENT}-{node.demo.ws.root.parent.name}"):
            seconds = concurrent_storescu(folders, node.port, called_ae=ROUTE_AE, calling_ae=CALLING_AE)
        held = node.instances()
        if held != len(files):
            raise RuntimeError(f"the node holds {held} instances, {len(files)} were sent")
    finally:
        node.close()
    return TransferResult(seconds, sum(p.stat().st_size for p in files), len(files))


ONE = "C-STORE, one association"
FOUR = f"C-STORE, {CONCURRENT} concurrent associations"


def dimse_rows(folder: Path, quarters: list[Path], work: Path, repeat: int) -> list[Row]:
    measure: list[tuple[str, str, Callable[[Path], TransferResult], str]] = [
        (ONE, "dcmtk storescp", lambda w: dcmtk_transfer(folder, w), "no fsync"),
        (ONE, "bare pynetdicom SCP", lambda w: storescu_to_pynetdicom(folder, w),
         "no fsync; pynetdicom's polling reactors"),
        (ONE, "meshnode C-STORE SCP", lambda w: node_cstore(folder, w), "durable before each C-STORE-RSP"),
        (FOUR, "dcmtk storescp", lambda w: dcmtk_concurrent(quarters, w), "--fork: a process per association"),
        (FOUR, "bare pynetdicom SCP", lambda w: pynetdicom_concurrent(quarters, w), "a thread per association"),
        (FOUR, "meshnode C-STORE SCP", lambda w: node_concurrent(quarters, w), "durable before each C-STORE-RSP"),
    ]
    runs: dict[tuple[str, str], list[TransferResult]] = {(section, what): [] for section, what, _, _ in measure}
    for _ in range(repeat):  # round robin: a change in the machine's load hits every receiver alike
        for section, what, fn, _ in measure:
            runs[(section, what)].append(fn(work))
    return [Row(section, what, runs[(section, what)], note) for section, what, _, note in measure]


def quarter_studies(work: Path, slices: int) -> list[Path]:
    """CONCURRENT synthetic CT studies (distinct UIDs), `slices` // CONCURRENT slices each."""
    from meshnode.dicom import synthetic

    folders = []
    for i in range(CONCURRENT):
        folder = work / f"quarter-{i}"
        synthetic.generate_ct_study(folder, slices=max(1, slices // CONCURRENT), seed=101 + i)
        folders.append(folder)
    return folders


def verdicts(rows: list[Row]) -> None:
    best = {(r.section, r.what): r.best.images_per_s for r in rows}
    node, pyn, dcm = (best[(ONE, w)] for w in ("meshnode C-STORE SCP", "bare pynetdicom SCP", "dcmtk storescp"))
    node4, pyn4, dcm4 = (best[(FOUR, w)] for w in ("meshnode C-STORE SCP", "bare pynetdicom SCP", "dcmtk storescp"))
    record(
        at_least("C-STORE ingest, durable, one association >= bare pynetdicom SCP", node, pyn, "img/s",
                 peer=f"bare pynetdicom {pyn:,.0f} img/s (no fsync)", peer_value=pyn),
        at_least("C-STORE ingest, durable, one association >= dcmtk storescp", node, dcm, "img/s",
                 peer=f"dcmtk storescp {dcm:,.0f} img/s (no fsync)", peer_value=dcm),
        at_least(f"C-STORE ingest, durable, {CONCURRENT} associations >= {TARGET_CONCURRENT_IMAGES_PER_S} img/s",
                 node4, TARGET_CONCURRENT_IMAGES_PER_S, "img/s",
                 peer=f"pynetdicom {pyn4:,.0f}, storescp --fork {dcm4:,.0f} img/s", peer_value=dcm4),
    )


# -- command ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is printed)")
    parser.add_argument("--folder", type=Path, help="send this study folder instead of a synthetic CT")
    parser.add_argument("--no-wado", action="store_true", help="skip WADO-RS retrieval against Orthanc")
    parser.add_argument("--profile", type=Path, help="py-spy the node during each C-STORE run, raw stacks here")
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    ensure_system_packages("dcmtk")
    work = Path(tempfile.mkdtemp(prefix="dicom-mesh-gateway-"))
    try:
        if args.folder is not None:
            folder, name = args.folder, str(args.folder)
        else:
            from meshnode.dicom import synthetic

            folder, name = work / "ct", f"CT {args.slices} x 512x512"
            synthetic.generate_ct_study(folder, slices=args.slices, seed=1)
        quarters = quarter_studies(work, len(study_files(folder)))
        rows = dimse_rows(folder, quarters, work, args.repeat)
        table = []
        for row in rows:
            best = row.best
            baseline = next(r for r in rows if r.section == row.section and r.what == "bare pynetdicom SCP").best
            dcmtk = next(r for r in rows if r.section == row.section and r.what == "dcmtk storescp").best
            table.append([row.section, row.what, best.images, f"{best.images_per_s:,.0f}", f"{best.mb_per_s:,.0f}",
                          f"{best.images_per_s / baseline.images_per_s:.2f}x",
                          f"{best.images_per_s / dcmtk.images_per_s:.2f}x",
                          " ".join(f"{r.images_per_s:,.0f}" for r in row.runs), row.note])
        size = rows[0].best
        print_table(f"Gateway, {name}: {size.images} files, {size.bytes / 1e6:,.0f} MB, best of {args.repeat}",
                    ["section", "receiver", "images", "images/s", "MB/s", "vs bare pynetdicom", "vs storescp",
                     "images/s each run", "note"], table)
        verdicts(rows)
        if not args.no_wado:
            wado_work = work / "wado"
            wado_work.mkdir()
            report_wado(measure_wado(folder, wado_work, args.repeat), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
