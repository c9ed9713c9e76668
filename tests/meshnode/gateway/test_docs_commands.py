"""The dcmtk commands in README.md and docs/operators.md work as printed (issue 15, part 5: the README's
`storescu ... node 11112 study/` failed with dcmtk).

Every line of a ```sh block that runs a dcmtk tool (storescu, dcmsend, findscu, getscu, movescu, echoscu) is
run, in document order, with bash, in a folder holding the files the commands name, against a gateway
configured as the docs say (AE title RGT_MESH, caller RGT_PACS, route MESH_STROKE, move destination RGT_PACS).
Only the host (`node`), the ports (11112, 11113) and the example Study Instance UID are replaced. PATH has
the system folders only: dcmtk's tools, never a virtualenv's same-named pynetdicom scripts.

Each retrieval line (getscu, movescu) runs against the study in mixed syntaxes the docs' dcmsend line
stores (JPEG baseline US, JPEG 2000 NM, JPEG-LS MR, implicit-VR RT plan), and what it wrote is held to what
the docs promise for its options: an instance whose stored syntax the tool accepts (uncompressed always;
JPEG baseline with +xy; every syntax with movescu +xa) byte for byte, any other decompressed to the same
pixels; every instance delivered, no error in the output (getscu exits 0 when sub-operations failed).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import trio
from pydicom.data import get_testdata_file

from meshnode.dicom import synthetic
from meshnode.gateway.config import Caller, DicomPeer, DimseSettings, GatewayConfig
from meshnode.gateway.routes import Route, RouteTable
from protocol.manifest import Priority
from tests.e2e.dimse_tools import DCMTK_DIRS, dataset_bytes
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway

pytestmark = pytest.mark.e2e  # real dcmtk processes

ROOT = Path(__file__).resolve().parents[3]
DOCS = ("README.md", "docs/operators.md")
TOOLS = ("storescu", "dcmsend", "findscu", "getscu", "movescu", "echoscu")
EXAMPLE_UID = "1.2.826.0.1.3680043.8.498.1"


def commands(doc: str) -> list[str]:
    """The dcmtk command lines of the document's ```sh blocks, in order."""
    text = (ROOT / doc).read_text()
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = re.split(r"[\s()&;]+", line.strip())
            if any(w in TOOLS for w in words[:8]) and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MIXED_STUDY = "1.2.826.0.1.3680043.8.498.77"
MIXED = ("examples_ybr_color.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "rtplan.dcm")
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
#: the transfer syntaxes a retrieval line's options make the tool accept (None: every syntax)
ACCEPTS: dict[str, set[str] | None] = {"+xy": UNCOMPRESSED | {"1.2.840.10008.1.2.4.50"}, "+xa": None}


def _workdir(tmp_path: Path) -> tuple[Path, list[Path]]:
    """The files the commands name: ct-study/ (uncompressed CT), study/ (one study in mixed syntaxes),
    us-jpeg.dcm."""
    work = tmp_path / "work"
    ct = synthetic.generate_ct_study(work / "ct-study", slices=4, rows=32, columns=32, seed=17)
    (work / "study").mkdir()
    for name in MIXED:
        ds = pydicom.dcmread(str(get_testdata_file(name)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = MIXED_STUDY, f"{MIXED_STUDY}.{MIXED.index(name) + 1}"
        ds.save_as(work / "study" / name)  # pixel data and encoding untouched
    shutil.copy(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")), work / "us-jpeg.dcm")
    return work, ct


def _output_folder(line: str) -> str | None:
    found = re.search(r"mkdir -p (\S+)", line)
    return found.group(1) if found else None


def _accepted(line: str) -> set[str] | None:
    for option, syntaxes in ACCEPTS.items():
        if f" {option} " in f" {line} ":
            return syntaxes
    return UNCOMPRESSED


async def _check_retrieved(gw: Gateway, line: str, folder: Path) -> None:
    """What the line wrote into `folder` against what the node stores for the mixed study."""
    records = await gw.db.run(lambda s: s.instances(MIXED_STUDY))
    assert len(records) == len(MIXED), f"`{line}` runs before the docs store the study in mixed syntaxes"
    got = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir() if p.is_file()}
    assert set(got) == {r.sop_instance_uid for r in records}, f"`{line}`: not every instance delivered"
    accepted = _accepted(line)
    for rec in records:
        data = b"".join(gw.storage.blocks.get(c) for c in rec.blocks)
        if accepted is None or rec.transfer_syntax in accepted:
            assert dataset_bytes(got[rec.sop_instance_uid]) == dataset_bytes(data), \
                f"`{line}`: {rec.transfer_syntax} instance not returned byte for byte"
        else:
            copy = pydicom.dcmread(got[rec.sop_instance_uid])
            assert not copy.file_meta.TransferSyntaxUID.is_compressed, f"`{line}`: {rec.transfer_syntax}"
            assert np.array_equal(copy.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array), \
                f"`{line}`: {rec.transfer_syntax} instance decompressed to other pixels"


def _config(move_port: int) -> GatewayConfig:
    return GatewayConfig(
        dimse=DimseSettings(enabled=True, ae_title="RGT_MESH", host="127.0.0.1", port=0),
        callers=(Caller("RGT_PACS"),),
        routes=RouteTable([Route("stroke", ("RJ1", "RAJ"), called_ae="MESH_STROKE", priority=Priority.URGENT,
                                 quiet_period_s=3600)]),
        move_destinations=(DicomPeer("RGT_PACS", "127.0.0.1", move_port),))


async def _run(line: str, work: Path, gw: Gateway, move_port: int, study: str) -> subprocess.CompletedProcess[str]:
    command = (line.replace(" node 11112", f" 127.0.0.1 {gw.port}").replace("--port 11113", f"--port {move_port}")
               .replace(EXAMPLE_UID, study))
    env = {**os.environ, "PATH": ":".join(DCMTK_DIRS)}
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL))


def test_the_docs_have_the_commands() -> None:
    readme, operators = (commands(d) for d in DOCS)
    assert {c.split()[0] for c in readme} >= {"storescu", "dcmsend", "findscu"}
    assert any("getscu" in c for c in readme)
    assert {t for t in TOOLS if any(t in c for c in operators)} == set(TOOLS)
    assert all(" node 11112" in c for c in readme + operators)


@pytest.mark.parametrize("doc", DOCS)
async def test_every_dcmtk_command_works_as_printed(doc: str, gateways: GatewayFactory, tmp_path: Path) -> None:
    move_port = _free_port()
    gw = await gateways(_config(move_port))
    work, ct = _workdir(tmp_path)
    study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    retrievals = 0
    for line in commands(doc):
        retrieval = any(line.split("&&")[-1].strip(" (").startswith(t) for t in ("getscu", "movescu"))
        done = await _run(line, work, gw, move_port, MIXED_STUDY if retrieval else study)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{doc}: `{line}` failed:\n{output}"
        assert not re.search(r"^[EF]: ", output, re.M), f"{doc}: `{line}` reported an error:\n{output}"
        folder = _output_folder(line)
        if retrieval and folder:
            await _check_retrieved(gw, line, work / folder)
            retrievals += 1
    assert retrievals == sum(1 for c in commands(doc) if "getscu" in c or "movescu" in c)
    held = {s.attributes.study_uid: s.instance_count for s in await gw.db.run(lambda s: s.studies())}
    assert held[study] == len(ct)
    if any(c.startswith("dcmsend") for c in commands(doc)):
        # dcmsend -dn: the compressed files are stored in their own transfer syntax
        syntaxes: set[str] = set()
        for uid in held:
            syntaxes |= {rec.transfer_syntax for rec in await gw.db.run(lambda st, u=uid: st.instances(u))}  # type: ignore[misc]
        assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"} <= syntaxes
