"""Project keys at rest (0600, as the node key) and keyed pseudonyms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshnode.study.pseudonyms import Pseudonymiser, project_key, project_key_path
from protocol.errors import ConfigError, StorageError


def test_a_project_key_is_created_once_private_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    key = project_key(tmp_path, "lung")
    assert project_key(tmp_path, "lung") == key and len(key) == 32
    path = project_key_path(tmp_path, "lung")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert project_key(tmp_path, "other") != key
    os.chmod(path, 0o640)
    with pytest.raises(StorageError, match="readable by others"):
        project_key(tmp_path, "lung")
    with pytest.raises(StorageError, match="no key"):
        project_key(tmp_path, "absent", create=False)
    with pytest.raises(ConfigError):
        project_key(tmp_path, "../../etc/passwd")


def test_pseudonyms_are_keyed_stable_and_well_formed() -> None:
    one, two = Pseudonymiser("p", b"\x01" * 32), Pseudonymiser("p", b"\x02" * 32)
    uid = one.uid("1.2.826.0.1.3680043.9.7.100")
    assert uid == one.uid("1.2.826.0.1.3680043.9.7.100") != two.uid("1.2.826.0.1.3680043.9.7.100")
    assert uid.startswith("2.25.") and len(uid) <= 44 and uid[5:].isdigit() and not uid[5:].startswith("0")
    pid = one.patient_id("9434765919")
    assert pid == one.patient_id("9434765919") and len(pid) == 17 and pid != two.patient_id("9434765919")
    assert -730 <= one.shift_days("9434765919") <= -62


def test_a_failed_key_creation_leaves_no_empty_key_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 13: the name was created (O_EXCL) before the key was written; a failure (or a crash)
    between the two left an empty key file and the project broken for good."""
    real = os.fsync
    failing = [True]

    def fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match="cannot create"):
        project_key(tmp_path, "lung")
    assert not project_key_path(tmp_path, "lung").exists()
    assert [p.name for p in project_key_path(tmp_path, "lung").parent.iterdir()] == []  # no temp file left
    failing[0] = False
    assert len(project_key(tmp_path, "lung")) == 32


def test_relink_csv_cells_cannot_run_as_spreadsheet_formulas() -> None:
    from meshnode.cli.deid_cmd import _cell
    assert [_cell(v) for v in ("=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "\tx", "R4BXQ", "1.2.3")] == \
        ["'=HYPERLINK(\"x\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "R4BXQ", "1.2.3"]
