"""The operator's own commands and patient reconciliation (review finding 12): `meshnode studies` and `show`
flag a study with received instances held back (waiting/rejected); `meshnode export` refuses it unless
--include-unreconciled is given; the share route refuses it the same way (meshnode share
--include-unreconciled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshnode.cli.main import main as meshnode_main
from meshnode.dicom.synthetic import generate_ct_study
from meshnode.gateway.reconcile_holds import check_not_held
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.errors import LocalProtocolError

M = CID.of(b"a received manifest waiting for a patient match")


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, str]:
    """A node holding one study, as received, whose manifest waits in the reconciliation queue."""
    home = tmp_path / "node"
    assert meshnode_main(["init", "--home", str(home), "--org", "RJ1"]) == 0
    files = generate_ct_study(tmp_path / "ct", slices=2, rows=16, columns=16, seed=3)
    assert meshnode_main(["ingest", "--home", str(home), "--no-progress", *map(str, files)]) == 0
    storage = NodeStorage.open(home)
    try:
        store = storage.metadata
        assert isinstance(store, SqliteMetadataStore)
        [study] = store.studies()
        uid = study.attributes.study_uid
        with store._tx() as db:  # as a received study is stored
            db.execute("UPDATE instances SET source = 'received'")
        keys = [(i.sop_instance_uid, i.digest) for i in store.instances(uid)]
        store.add_reconciliation(ReconciliationRow(M, uid, "RXX", ReconState.WAITING, 1), keys)
    finally:
        storage.close()
    return home, uid


def _json(args: list[str], capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert meshnode_main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_studies_and_show_flag_the_held_study(home: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, uid = home
    rows = _json(["studies", "--home", str(path)], capsys)
    assert isinstance(rows, list) and len(rows) == 1
    assert rows[0]["reconciliation"] == {"held_instances": 2, "states": ["waiting"]}
    shown = _json(["show", uid, "--home", str(path)], capsys)
    assert isinstance(shown, dict) and shown["reconciliation"]["held_instances"] == 2
    assert all(i["held_by_reconciliation"] for i in shown["instances_detail"])
    capsys.readouterr()
    assert meshnode_main(["studies", "--home", str(path)]) == 0
    assert "RECONCILIATION: 2 instance(s) waiting" in capsys.readouterr().out
    assert meshnode_main(["show", uid, "--home", str(path)]) == 0
    assert "RECONCILIATION" in capsys.readouterr().out


def test_export_refuses_a_held_study_unless_told(home: tuple[Path, str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, uid = home
    out = tmp_path / "out"
    capsys.readouterr()
    assert meshnode_main(["export", uid, str(out), "--home", str(path)]) != 0
    err = capsys.readouterr().err
    assert "held by patient reconciliation" in err and "--include-unreconciled" in err
    assert not out.exists() or not any(out.iterdir())
    assert meshnode_main(["export", uid, str(out), "--include-unreconciled", "--home", str(path)]) == 0
    assert len([f for f in out.rglob("*") if f.is_file()]) == 2


def test_the_share_check(home: tuple[Path, str]) -> None:
    path, uid = home
    storage = NodeStorage.open(path)
    try:
        with pytest.raises(LocalProtocolError, match="--include-unreconciled"):
            check_not_held(storage.metadata, uid, include_unreconciled=False, what="share")
        check_not_held(storage.metadata, uid, include_unreconciled=True, what="share")
        storage.metadata.update_reconciliation(ReconciliationRow(M, uid, "RXX", ReconState.MATCHED, 1),
                                               ReconState.WAITING)
        check_not_held(storage.metadata, uid, include_unreconciled=False, what="share")  # matched: nothing held
    finally:
        storage.close()
