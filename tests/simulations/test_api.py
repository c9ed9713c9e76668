"""The Python API (simulations.run): no disk, the CLI's results; Parquet beside CSV; provenance in the manifest."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import simulations
from simulations import outputs
from simulations.api import resolve
from simulations.cli import main
from simulations.scenario import ScenarioError

SMALL = {"scenario.duration": "1d", "scenario.replications": 2}
SMALL_ARGS = ["--set", "scenario.duration=1d", "--set", "scenario.replications=2"]
# five-trusts-faults' faults run to day 4: a 1-day run keeps them with a drain that reaches them (no new studies)
FAULTS = {**SMALL, "engine.drain": "4d"}


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_api_writes_nothing_and_equals_the_cli_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "notebook"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = simulations.run("five-trusts", SMALL, jobs=1)
    assert _tree(cwd) == []
    assert _tree(tmp_path) == ["notebook"]
    assert main(["run", "five-trusts", *SMALL_ARGS, "--jobs", "1", "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    cli = {p.name: p.read_bytes() for p in (tmp_path / "cli").iterdir()}
    assert json.loads(cli["summary.json"]) == json.loads(outputs.json_bytes(res.summary))
    assert cli == res.files  # every file, byte for byte (manifest included)
    # The records as a table: one row per CSV row, both replications, nulls where the CSV is empty.
    table = res.transfers
    csv_rows = sum(len(cli[f"transfers-r{k}.csv"].decode().splitlines()) - 1 for k in (0, 1))
    assert table.num_rows == csv_rows > 0
    assert table.column_names[0] == "replication" and set(table.column("replication").to_pylist()) == {0, 1}
    assert res.timeseries.num_rows > 0 and res.manifest["files"]["transfers-r1.parquet"]  # type: ignore[index]
    assert pq.read_table(io.BytesIO(cli["transfers-r0.parquet"])).equals(
        table.filter(table.column("replication").to_numpy() == 0))


def test_api_takes_toml_text_a_path_and_pairs(tmp_path: Path) -> None:
    text = (Path(simulations.__file__).parent / "scenarios" / "five-trusts.toml").read_text()
    a = simulations.run(text, [("scenario.duration", "1d")], replications=1, jobs=1)
    path = tmp_path / "s.toml"
    path.write_text(text)
    b = simulations.run(path, {"scenario.duration": "1d"}, replications=1, jobs=1)
    assert a.files["summary.json"] == b.files["summary.json"]
    assert a.summary["replications"] and len(a.summary["replications"]) == 1  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="hub.egress"):
        simulations.run("five-trusts", {"hub.egress": "-3Gbit/s"})
    with pytest.raises(ScenarioError, match="replications"):
        simulations.run("five-trusts", replications=0)
    with pytest.raises(ScenarioError, match="pairs"):
        simulations.run("five-trusts", ["scenario.duration=1d"])  # type: ignore[list-item]
    saved = b.save(tmp_path / "saved")
    assert (saved / "manifest.json").read_bytes() == b.files["manifest.json"]


def test_parquet_is_deterministic_and_hashed(tmp_path: Path) -> None:
    a = simulations.run("five-trusts-faults", FAULTS, jobs=1)
    b = simulations.run("five-trusts-faults", FAULTS, jobs=1)
    c = simulations.run("five-trusts-faults", {**FAULTS, "scenario.seed": 99}, jobs=1)
    for name in ("transfers-r0.parquet", "transfers-r1.parquet", "timeseries-r0.parquet"):
        assert a.files[name] == b.files[name]
        assert a.manifest["files"][name] == outputs.sha256_bytes(a.files[name])  # type: ignore[index]
    assert a.files["transfers-r0.parquet"] != c.files["transfers-r0.parquet"]
    table = pq.read_table(io.BytesIO(a.files["transfers-r0.parquet"]))
    delivered = table.column("delivered").to_pylist()
    status = table.column("status").to_pylist()
    assert all((d is None) == (s != "delivered") for d, s in zip(delivered, status))


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to make a checkout")
def test_provenance_commit_and_dirty_in_a_git_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary checkout holding a copy of outputs.py: its commit, clean then dirty; "unknown" outside git."""
    repo = tmp_path / "repo"
    pkg = repo / "simulations"
    pkg.mkdir(parents=True)
    source = Path(outputs.__file__).read_text()
    (pkg / "outputs.py").write_text(source)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "x")
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.setattr(outputs, "__file__", str(pkg / "outputs.py"))
    assert outputs.provenance() == {"git_commit": head, "git_dirty": False}
    (pkg / "outputs.py").write_text(source + "\n# changed\n")
    assert outputs.provenance() == {"git_commit": head, "git_dirty": True}
    (pkg / "outputs.py").write_text(source)
    (repo / "untracked.txt").write_text("a run's output folder is no change to the code")
    assert outputs.provenance()["git_dirty"] is False
    # Not tracked by the checkout it sits in (an installed copy inside another repository's tree): unknown.
    other = repo / "site-packages" / "simulations"
    other.mkdir(parents=True)
    (other / "outputs.py").write_text(source)
    monkeypatch.setattr(outputs, "__file__", str(other / "outputs.py"))
    assert outputs.provenance() == {"git_commit": "unknown", "git_dirty": "unknown"}
    loose = tmp_path / "loose"
    loose.mkdir()
    monkeypatch.setattr(outputs, "__file__", str(loose / "outputs.py"))
    assert outputs.provenance() == {"git_commit": "unknown", "git_dirty": "unknown"}
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert outputs.provenance() == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_manifest_records_this_checkout() -> None:
    res = simulations.run("five-trusts", {"scenario.duration": "1d"}, replications=1, jobs=1)
    prov = res.manifest["provenance"]
    assert isinstance(prov, dict)
    here = Path(simulations.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode == 0:
        assert prov["git_commit"] == head.stdout.strip() and isinstance(prov["git_dirty"], bool)
    else:
        assert prov["git_commit"] == "unknown"


def test_a_folder_named_like_a_bundled_scenario_does_not_shadow_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review 2 m5: a saved run folder `five-trusts` in the cwd is not the scenario; an existing file wins; a path
    with "[" is a path, not TOML text."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "five-trusts").mkdir()
    assert resolve("five-trusts").name == "five-trusts"
    bundled = (Path(simulations.__file__).parent / "scenarios" / "five-trusts.toml").read_text()
    (tmp_path / "runs[2]").mkdir()
    (tmp_path / "runs[2]" / "s.toml").write_text(bundled.replace('name = "five-trusts"', 'name = "mine"'))
    assert resolve("runs[2]/s.toml").name == "mine"
    (tmp_path / "five-trusts.toml").write_text(bundled.replace('name = "five-trusts"', 'name = "local"'))
    assert resolve("five-trusts.toml").name == "local"  # an existing file wins
    with pytest.raises(ScenarioError, match="is a directory"):
        resolve("runs[2]")


def test_gzip_records_decompress_to_the_csv_records(tmp_path: Path) -> None:
    """records = "csv.gz" (nhs-england's) wrote nothing: closing the in-memory gzip stream before detaching its
    text wrapper raised "I/O operation on closed file" at the end of every such run."""
    import gzip

    plain = simulations.run("five-trusts", SMALL, jobs=1)
    packed = simulations.run("five-trusts", {**SMALL, "output.records": "csv.gz"}, jobs=1)
    for k in (0, 1):
        data = packed.files[f"transfers-r{k}.csv.gz"]
        assert data[:2] == b"\x1f\x8b"
        assert gzip.decompress(data) == plain.files[f"transfers-r{k}.csv"]
    again = simulations.run("five-trusts", {**SMALL, "output.records": "csv.gz"}, jobs=1)
    assert again.files["transfers-r0.csv.gz"] == packed.files["transfers-r0.csv.gz"]  # no date in the header
