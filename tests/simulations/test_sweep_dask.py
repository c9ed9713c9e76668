"""meshsim sweep on Dask: a real LocalCluster of worker processes; an unanswering scheduler; dask-jobqueue errors."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import simulations
from simulations.cli import main

SMALL = ["--set", "scenario.duration=1d", "--set", "scenario.replications=2"]
VARY = ["--vary", "design.kind=hub,mesh", "--vary", "hub.egress=1Gbit/s,10Gbit/s"]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_dask_sweep_on_a_local_cluster_equals_plain_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two worker processes (the default LocalCluster, --jobs 2): each point's folder is what `meshsim run`
    of its scenario.toml writes, byte for byte; the mesh point with the second hub.egress is not run."""
    out = tmp_path / "sweep"
    assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    points = list(csv.reader((out / "points.csv").open()))
    assert points[0] == ["point", "design.kind", "hub.egress", "note"]
    assert [r[3] for r in points[1:]] == ["", "", "", "same as p002"]
    assert not (out / "p003").exists()
    sweep_rows = list(csv.reader((out / "sweep.csv").open()))
    assert sweep_rows[4][:4] == ["p003", "mesh", "10Gbit/s", "same as p002"]
    assert sweep_rows[4][4:] == sweep_rows[3][4:] and sweep_rows[3][4]  # copied, and not empty
    for name in ("p000", "p002"):
        assert main(["run", str(out / name / "scenario.toml"), "--out", str(tmp_path / f"plain-{name}"),
                     "--jobs", "1", "--no-progress"]) == 0
        assert files(out / name) == files(tmp_path / f"plain-{name}")
    assert {"transfers-r1.parquet", "timeseries-r0.parquet", "manifest.json"} <= set(files(out / "p001"))
    capsys.readouterr()
    assert main(["report", str(out / "p002")]) == 0


def test_a_scheduler_that_does_not_answer_fails_clearly_within_the_timeout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A socket that accepts TCP connections but never speaks Dask: a clear error after --scheduler-timeout,
    and nothing written."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    out = tmp_path / "sweep"
    try:
        started = time.monotonic()
        assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--scheduler", address,
                     "--scheduler-timeout", "2", "--no-progress"]) == 1
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert f"--scheduler {address}: no Dask scheduler answered within 2 s" in err
    assert elapsed < 60  # bounded (2 s asked; generous for a loaded machine), not a hang
    assert not out.exists()


def test_jobqueue_without_its_batch_command_or_options_fails_clearly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sweep"
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ.get("PATH", ""))
    assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--jobqueue", "pbs"]) == 1
    assert "--jobqueue pbs: the batch command 'qsub' is not on PATH" in capsys.readouterr().err
    # With an sbatch on PATH, dask-jobqueue's own complaint (no cores/memory) comes back as a clear error.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--jobqueue", "slurm",
                 "--jobqueue-option", "walltime=00:10:00"]) == 1
    err = capsys.readouterr().err
    assert "--jobqueue slurm:" in err and "cores" in err and "--jobqueue-option" in err
    assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--jobqueue", "slurm",
                 "--jobqueue-option", "no equals sign"]) == 1
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not out.exists()


FAKE_SBATCH = """#!/bin/sh
# A stand-in for Slurm's sbatch: runs (a copy of) dask-jobqueue's job script here, in its own process group.
cp "$1" "$FAKE_SLURM_DIR/job-$$.sh"
setsid sh "$FAKE_SLURM_DIR/job-$$.sh" > "$FAKE_SLURM_DIR/job-$$.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/sh
echo "$1" >> "$FAKE_SLURM_DIR/cancelled"
kill -- "-$1" 2>/dev/null || kill "$1" 2>/dev/null
exit 0
"""


@pytest.mark.slow
def test_jobqueue_slurm_starts_workers_as_batch_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dask-jobqueue's real SLURMCluster with sbatch/scancel stand-ins that run the job scripts on this machine
    (127.0.0.1 only): one job per task up to --jobs, options passed through, jobs cancelled afterwards."""
    fake = tmp_path / "slurm"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(fake) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(fake))
    out = tmp_path / "sweep"
    try:
        assert main(["sweep", "five-trusts", *SMALL, "--vary", "design.kind=hub,mesh", "--out", str(out),
                     "--jobqueue", "slurm", "--jobs", "2", "--jobqueue-option", "cores=1",
                     "--jobqueue-option", "memory=1GB", "--jobqueue-option", "interface=lo",
                     "--jobqueue-option", "walltime=00:10:00", "--jobqueue-option", "job_name=meshsim-test",
                     "--jobqueue-option", 'scheduler_options={"dashboard_address": ":0"}', "--no-progress"]) == 0
        scripts = sorted(fake.glob("job-*.sh"))
        assert len(scripts) == 2  # four tasks, --jobs 2
        assert all("#SBATCH -J meshsim-test" in s.read_text() and "#SBATCH -t 00:10:00" in s.read_text()
                   for s in scripts)
        assert main(["run", str(out / "p001" / "scenario.toml"), "--out", str(tmp_path / "plain"), "--jobs", "1",
                     "--no-progress"]) == 0
        assert files(out / "p001") == files(tmp_path / "plain")
        assert len((fake / "cancelled").read_text().split()) == 2
    finally:  # whatever happened, no worker outlives the test
        for line in (fake / "cancelled").read_text().split() if (fake / "cancelled").exists() else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(line), signal.SIGKILL)
    for pgid in (int(x) for x in (fake / "cancelled").read_text().split()):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"process group {pgid} of a batch job still runs after the sweep")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _dask_process(args: list[str], tmp_path: Path, name: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """A real `dask scheduler` / `dask worker` process, killed (its whole process group) whatever happens."""
    log = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def _scheduler(tmp_path: Path) -> tuple[str, contextlib.AbstractContextManager[None]]:
    port = _free_port()
    return f"tcp://127.0.0.1:{port}", _dask_process(
        ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        tmp_path, "scheduler")


def _wait_listening(address: str) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return
        time.sleep(0.2)
    raise AssertionError(f"no scheduler at {address} within 60 s")


@pytest.mark.slow
def test_a_scheduler_without_workers_fails_clearly_within_the_timeout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 M4: a real scheduler with no worker: a clear error after --scheduler-timeout, nothing written."""
    address, scheduler = _scheduler(tmp_path)
    out = tmp_path / "sweep"
    with scheduler:
        _wait_listening(address)
        assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--scheduler", address,
                     "--scheduler-timeout", "3", "--no-progress"]) == 1
    assert f"--scheduler {address}: no running Dask worker within 3 s" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_worker_running_other_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """review 2 M5: a real worker importing a copy of the code with one engine file changed (as a worker with
    another checkout would): the sweep refuses it, naming the worker, and writes no point."""
    here = Path(simulations.__file__).resolve().parent.parent
    copy = tmp_path / "other-checkout"
    for package in ("simulations", "protocol", "common"):
        shutil.copytree(here / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "simulations" / "engine" / "__init__.py").open("a") as fh:
        fh.write("# a local change on the worker's machine\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(copy)}
    address, scheduler = _scheduler(tmp_path)
    out = tmp_path / "sweep"
    with scheduler:
        _wait_listening(address)
        worker = _dask_process(["distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
                                "--no-dashboard", "--host", "127.0.0.1"], tmp_path, "worker", env)
        with worker:
            assert main(["sweep", "five-trusts", *SMALL, *VARY, "--out", str(out), "--scheduler", address,
                         "--scheduler-timeout", "60", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Dask worker tcp://127.0.0.1:" in err and "runs other code than this sweep" in err
    assert "source_sha256" in err
    assert not out.exists()
