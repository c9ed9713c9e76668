"""Parameter sweeps: one derived scenario per combination of values, run on a Dask cluster or as job-array lines.

`meshsim sweep SCENARIO --vary design.kind=hub,mesh --vary hub.egress=1Gbit/s,10Gbit/s --out DIR`
writes DIR/points.csv and, per combination, DIR/pNNN/scenario.toml. It then runs every (point, replication)
as one task on Dask (`distributed`): a LocalCluster of worker processes by default, the scheduler at
--scheduler ADDRESS (a shared cluster), or a Slurm/PBS cluster through dask-jobqueue (--jobqueue). Results
are gathered as they finish; each point's folder is written once all its replications are in, by the same
code as `meshsim run` (so it is byte-identical to a plain run of that point). With --emit-commands it only
writes one `meshsim run` command per point and replication (plain job arrays); `meshsim collect DIR` then
gathers each point's rK/ folders into a point folder like a plain run's (files, summary.json, manifest.json)
and refuses, naming them, when replications are missing.

A mesh point whose hub-only values (hub.*) differ from the first of their --vary lists would run the same
simulation as the point with the first values: it is not run, and points.csv/sweep.csv say "same as pNNN".
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib
import itertools
import json
import logging
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations import outputs
from simulations.results import ReplicationResult
from simulations.runner import ProgressHook, default_jobs, simulate, write_outputs
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import DesignKind, Scenario
from simulations.scenario.overrides import apply, parse_value
from simulations.scenario.parse import load_scenario
from simulations.summary import KEY_METRICS
from simulations.topology import build_topology

log = logging.getLogger(__name__)

NOTE = "note"
SAME_AS = "same as "
HUB_ONLY_PREFIX = "hub."
JOBQUEUE_COMMANDS = {"slurm": "sbatch", "pbs": "qsub"}
DEFAULT_SCHEDULER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Point:
    name: str
    values: tuple[tuple[str, object], ...]
    scenario: Scenario
    same_as: str | None = None  # a mesh point differing only in hub-only values from this point: not run


@dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run: a local cluster (default), a scheduler address, or a dask-jobqueue cluster."""

    jobs: int | None = None
    scheduler: str | None = None
    scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT
    jobqueue: str | None = None
    jobqueue_options: tuple[tuple[str, object], ...] = ()


def parse_vary(texts: list[str]) -> list[tuple[str, list[object]]]:
    """--vary KEY=V1,V2,...: a key given twice (the last assignment would win while points.csv showed both
    columns) and a value given twice within a key (the same point run twice) are refused."""
    out: list[tuple[str, list[object]]] = []
    for text in texts:
        if "=" not in text:
            raise ScenarioError(f"--vary {text!r}: expected KEY=V1,V2,...")
        key, values = (x.strip() for x in text.split("=", 1))
        if any(k == key for k, _ in out):
            raise ScenarioError(f"--vary {key}: given twice (give every value in one --vary {key}=V1,V2,...)")
        items = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not items:
            raise ScenarioError(f"--vary {text!r}: no values")
        for i, item in enumerate(items):
            if item in items[:i]:
                raise ScenarioError(f"--vary {key}: value {_cell(item)} given twice")
        out.append((key, items))
    return out


def points(base: Scenario, vary: list[tuple[str, list[object]]]) -> list[Point]:
    keys = [k for k, _ in vary]
    first = {k: v[0] for k, v in vary}
    combos = [tuple(zip(keys, combo)) for combo in itertools.product(*[v for _, v in vary])]
    names = {values: f"p{i:03d}" for i, values in reversed(list(enumerate(combos)))}
    out = []
    for i, values in enumerate(combos):
        scenario = apply(base, values)
        same_as = None
        if scenario.design.kind is DesignKind.MESH:
            twin = tuple((k, first[k] if k.startswith(HUB_ONLY_PREFIX) else v) for k, v in values)
            if twin != values:
                same_as = names[twin]
        out.append(Point(f"p{i:03d}", values, scenario, same_as))
    return out


def _cell(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def prepare(base: Scenario, vary: list[tuple[str, list[object]]], out_dir: Path) -> list[Point]:
    pts = points(base, vary)
    skipped = any(p.same_as for p in pts)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "points.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["point"] + [k for k, _ in vary] + ([NOTE] if skipped else []))
        for p in pts:
            note = [SAME_AS + p.same_as if p.same_as else ""] if skipped else []
            w.writerow([p.name] + [_cell(v) for _, v in p.values] + note)
            if p.same_as is None:
                (out_dir / p.name).mkdir(exist_ok=True)
                (out_dir / p.name / "scenario.toml").write_text(p.scenario.source, encoding="utf-8")
    return pts


def commands(pts: list[Point], out_dir: Path) -> list[str]:
    """One shell command per (point, replication): each is a separate process with its own seed streams."""
    lines = []
    for p in pts:
        if p.same_as is not None:
            continue
        folder = out_dir / p.name
        for k in range(p.scenario.replications):
            lines.append(" ".join(shlex.quote(x) for x in ("meshsim", "run", str(folder / "scenario.toml"), "--out",
                                                             str(folder / f"r{k}"), "--replication", str(k),
                                                             "--jobs", "1", "--no-progress")))
    return lines


def parse_option(text: str) -> tuple[str, object]:
    """--jobqueue-option KEY=VALUE: an integer, a float, true/false, a JSON list or object, or the text."""
    if "=" not in text:
        raise ScenarioError(f"--jobqueue-option {text!r}: expected KEY=VALUE, e.g. memory=4GB")
    key, raw = (x.strip() for x in text.split("=", 1))
    if not key.isidentifier():
        raise ScenarioError(f"--jobqueue-option {text!r}: {key!r} is not an option name")
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    elif raw.startswith(("[", "{")):
        try:
            value = json.loads(raw)
        except ValueError:
            raise ScenarioError(f"--jobqueue-option {text!r}: not a JSON list or object") from None
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return key, value


def _module(name: str) -> Any:
    """distributed and dask_jobqueue have no type hints: used through Any, imported when a sweep runs."""
    return importlib.import_module(name)


def _probe(address: str, timeout: float) -> None:
    """Ask the scheduler at `address` who it is, within `timeout` seconds in all (TimeoutError, OSError).

    distributed.Client(address, timeout=...) bounds the TCP connect but not the handshake after it: a peer
    that accepts connections and never answers (a wrong port, a stopped process) keeps it waiting for
    ever. This asks the scheduler's `identity` under asyncio.wait_for first."""
    rpc = _module("distributed.core").rpc

    async def identity() -> object:
        async with rpc(address, timeout=timeout) as remote:
            return await remote.identity()

    async def bounded() -> object:
        return await asyncio.wait_for(identity(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(bounded())  # the usual case (the command line); inside a running loop Client's own bound
                                # has to do


def _worker_name() -> str:
    try:
        return str(_module("distributed").get_worker().address)
    except ValueError:  # not in a worker (a test calling the task directly)
        return "this process"


def _replication(scenario: Scenario, replication: int) -> tuple[ReplicationResult, str, dict[str, object]]:
    """One Dask task: one replication of one point, every time slice in this worker process; with the
    worker's address and the identity of the code it ran (outputs.code_identity), checked by the sweep."""
    result = simulate(scenario, [replication], 1, None, scenario.output.records != "none")[0]
    return result, _worker_name(), outputs.code_identity()


def check_code(worker: str, theirs: object, ours: dict[str, object]) -> None:
    """Refuse a worker whose code differs from this process's (another version, commit, dirty state or source):
    its results would be recorded under this checkout's provenance."""
    if theirs != ours:
        differ = sorted(k for k in ours if not isinstance(theirs, dict) or theirs.get(k) != ours[k])
        got = {k: theirs.get(k) for k in differ} if isinstance(theirs, dict) else theirs
        raise ScenarioError(f"Dask worker {worker} runs other code than this sweep ({', '.join(differ)}: "
                            f"{got} there, {({k: ours[k] for k in differ})} here); start the workers from this "
                            f"checkout or install this version on them")


def check_workers(client: Any, timeout: float, where: str) -> int:
    """At least one running worker within `timeout` s (else a ScenarioError), each running this process's
    code (`check_code`). Returns how many there are."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ScenarioError(f"{where}: no running Dask worker within {timeout:g} s ({exc}); start workers "
                            f"(`dask worker ADDRESS`) or give more time with --scheduler-timeout") from None
    ours = outputs.code_identity()
    theirs = client.run(outputs.code_identity)
    for worker, identity in sorted(theirs.items()):
        check_code(str(worker), identity, ours)
    log.info("%s: %d Dask worker(s), running this code (%s)", where, len(theirs), ours.get("source_sha256"))
    return len(theirs)


@contextlib.contextmanager
def client_for(spec: ClusterSpec, tasks: int) -> Iterator[Any]:
    """A distributed.Client on the cluster `spec` names, closed (and a cluster this made, shut down) after."""
    dist = _module("distributed")  # its import sets the "distributed" logger to INFO (dask's logging config)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # so quiet it unless the program wants INFO (-v)
        logging.getLogger("distributed").setLevel(logging.WARNING)
    Client, LocalCluster = dist.Client, dist.LocalCluster
    if spec.scheduler is not None:
        try:
            _probe(spec.scheduler, spec.scheduler_timeout)
            client = Client(spec.scheduler, timeout=spec.scheduler_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ScenarioError(f"--scheduler {spec.scheduler}: no Dask scheduler answered within "
                                f"{spec.scheduler_timeout:g} s ({exc})") from None
        with client:
            check_workers(client, spec.scheduler_timeout, f"--scheduler {spec.scheduler}")
            yield client
        return
    if spec.jobqueue is not None:
        command = JOBQUEUE_COMMANDS.get(spec.jobqueue)
        if command is None:
            raise ScenarioError(f"--jobqueue {spec.jobqueue}: expected one of {', '.join(JOBQUEUE_COMMANDS)}")
        if shutil.which(command) is None:
            raise ScenarioError(f"--jobqueue {spec.jobqueue}: the batch command {command!r} is not on PATH "
                                f"(run the sweep where {spec.jobqueue} jobs can be submitted)")
        dask_jobqueue = _module("dask_jobqueue")
        cls = dask_jobqueue.SLURMCluster if spec.jobqueue == "slurm" else dask_jobqueue.PBSCluster
        try:
            cluster = cls(**dict(spec.jobqueue_options))
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"--jobqueue {spec.jobqueue}: {exc} (give it with --jobqueue-option KEY=VALUE)") \
                from None
        with cluster:
            cluster.scale(n=min(tasks, spec.jobs or tasks))
            with Client(cluster, set_as_default=False) as client:
                yield client
        return
    # memory_limit=0: no nanny memory limit, as the process pool of `meshsim run` has none.
    with LocalCluster(n_workers=max(1, min(spec.jobs or default_jobs(), tasks)), threads_per_worker=1,
                      processes=True, dashboard_address=None, memory_limit=0,
                      silence_logs=logging.WARNING) as cluster, Client(cluster, set_as_default=False) as client:
        check_workers(client, max(spec.scheduler_timeout, 60.0), "local Dask cluster")
        yield client


def runs(pts: list[Point]) -> int:
    """How many (point, replication) tasks the sweep runs (points the same as another are not run)."""
    return sum(p.scenario.replications for p in pts if p.same_as is None)


def run_all(pts: list[Point], out_dir: Path, client: Any, progress: ProgressHook | None,
            stall: float | None = DEFAULT_SCHEDULER_TIMEOUT) -> None:
    """Every (point, replication) as one task on `client`'s cluster, gathered as they finish; a point's
    folder is written (by runner.write_outputs, as `meshsim run` writes it) once its replications are in.
    Each result's code identity is checked against this process's (`check_code`). When nothing finishes
    for `stall` seconds and the cluster has no worker left, the sweep stops naming the unfinished runs
    (None: wait for workers however long, as batch jobs may queue)."""
    dist = _module("distributed")
    todo = [p for p in pts if p.same_as is None]
    total = runs(pts)
    if total == 0:
        return
    ours = outputs.code_identity()
    by_name = {p.name: p for p in todo}
    futures = []
    which: dict[str, tuple[str, int]] = {}
    for p in todo:
        for k in range(p.scenario.replications):
            fut = client.submit(_replication, p.scenario, k, pure=False)
            futures.append(fut)
            which[fut.key] = (p.name, k)
    done: dict[str, dict[int, ReplicationResult]] = {p.name: {} for p in todo}
    if progress is not None:
        progress(0.0)
    pending = list(futures)
    finished = 0
    while pending:
        try:
            with client.as_current():  # distributed.wait uses the current client (ours is not the default)
                ready, rest = dist.wait(pending, timeout=stall, return_when="FIRST_COMPLETED")
        except TimeoutError:
            if client.scheduler_info(n_workers=-1).get("workers"):
                continue  # workers are busy with long tasks: keep waiting
            unfinished = sorted(f"{which[f.key][0]}/r{which[f.key][1]}" for f in pending)
            raise ScenarioError(f"{out_dir}: no Dask worker left and nothing finished for {stall:g} s; "
                                f"{len(unfinished)} run(s) unfinished: {', '.join(unfinished[:20])}") from None
        pending = list(rest)
        for fut in sorted(ready, key=lambda f: which[f.key]):
            name, k = which[fut.key]
            try:
                result, worker, identity = fut.result()
            except ScenarioError:
                raise
            except Exception as exc:  # a task boundary: name the run that failed on the cluster
                raise ScenarioError(f"{out_dir / name}: replication {k} failed on the cluster: "
                                    f"{type(exc).__name__}: {exc}") from exc
            check_code(worker, identity, ours)
            fut.release()
            done[name][k] = result
            finished += 1
            if progress is not None:
                progress(finished / total)
            p = by_name[name]
            if len(done[name]) == p.scenario.replications:
                results = [done[name][i] for i in range(p.scenario.replications)]
                write_outputs(out_dir / name, p.scenario, build_topology(p.scenario), results)
                del done[name]
                log.info("sweep point %s: %d replication(s) in, written to %s", name, len(results),
                         out_dir / name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: not a JSON object")
    return data


def _replications_in(path: Path) -> list[dict[str, Any]]:
    """The per-replication summaries in a summary.json (a ScenarioError when it is not shaped like one)."""
    reps = _read_json(path).get("replications")
    if not isinstance(reps, list) or not all(isinstance(r, dict) for r in reps):
        raise ScenarioError(f"{path}: no list of replications (not a meshsim summary)")
    return reps


def _files_in(path: Path) -> dict[str, str]:
    """A manifest.json's file hashes (a ScenarioError when it is not shaped like one)."""
    files = _read_json(path).get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ScenarioError(f"{path}: no table of files (not a meshsim manifest)")
    return files


def _replication_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("r*") if p.is_dir() and p.name[1:].isdigit())


def _verified_files(folder: Path) -> dict[str, str]:
    """The file hashes of `folder`'s manifest.json, each file (summary.json included) checked against its
    SHA-256; a ScenarioError naming the first file that is missing or differs."""
    files = _files_in(folder / outputs.MANIFEST)
    if outputs.SUMMARY not in files:
        raise ScenarioError(f"{folder / outputs.MANIFEST}: does not list {outputs.SUMMARY}")
    for name, digest in sorted(files.items()):
        if "/" in name or "\\" in name or name.startswith(".") or name in (outputs.MANIFEST, "scenario.toml"):
            raise ScenarioError(f"{folder / outputs.MANIFEST}: unexpected file name {name!r}")
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise ScenarioError(f"{folder / name}: listed in {folder / outputs.MANIFEST} but cannot be read "
                                f"({exc.strerror})") from None
        if outputs.sha256_bytes(data) != digest:
            raise ScenarioError(f"{folder / name}: differs from the SHA-256 in {folder / outputs.MANIFEST} "
                                f"(changed after the run?)")
    return files


def _check_scenario(folder: Path, scenario: Scenario, toml: Path) -> None:
    scen = _read_json(folder / outputs.MANIFEST).get("scenario")
    if not isinstance(scen, dict) or scen.get("sha256") != outputs.scenario_hash(scenario):
        raise ScenarioError(f"{folder}: ran a different scenario than {toml} (stale folder from another sweep "
                            f"or an earlier preparation? remove it and run it again)")


def _check_point(folder: Path, scenario: Scenario) -> list[str]:
    """The runs of this point that are missing (as "pNNN/rK"); raises on runs of a different scenario, on
    files that differ from their manifest's hashes and on replication folders the scenario does not have."""
    reps = scenario.replications
    toml = folder / "scenario.toml"
    dirs = _replication_dirs(folder)
    if dirs:
        extra = [d.name for d in dirs if int(d.name[1:]) >= reps]
        if extra:
            raise ScenarioError(f"{folder}: replication folder(s) {', '.join(extra)} beyond the scenario's "
                                f"{reps} replication(s) (left from an earlier sweep? remove them)")
        missing = []
        for k in range(reps):
            rd = folder / f"r{k}"
            if not (rd / outputs.MANIFEST).exists() or not (rd / outputs.SUMMARY).exists():
                missing.append(f"{folder.name}/r{k}")
                continue
            _check_scenario(rd, scenario, toml)
            _verified_files(rd)
            got = [s.get("replication") for s in _replications_in(rd / outputs.SUMMARY)]
            if got != [k]:
                raise ScenarioError(f"{rd}: holds replication(s) {got}, expected [{k}]")
        return missing
    if not (folder / outputs.SUMMARY).exists() or not (folder / outputs.MANIFEST).exists():
        return [f"{folder.name}/r{k}" for k in range(reps)]
    # A point folder written directly (a Dask sweep, or an earlier collect): the same checks as for rK/.
    _check_scenario(folder, scenario, toml)
    _verified_files(folder)
    got = [s.get("replication") for s in _replications_in(folder / outputs.SUMMARY)]
    if any(k not in range(reps) for k in got) or len(set(got)) != len(got):
        raise ScenarioError(f"{folder / outputs.SUMMARY}: holds replication(s) {got}, expected some of "
                            f"{list(range(reps))}")
    return [f"{folder.name}/r{k}" for k in range(reps) if k not in got]


def gather(folder: Path, scenario: Scenario) -> None:
    """Make a point folder from its rK/ folders what a plain `meshsim run` of the point writes: every rK
    file (checked against its rK manifest), summary.json over all replications, manifest.json (seeds of
    every replication, hashes of the gathered files). Rebuilt at every collect, so never stale."""
    per_rep: list[dict[str, object]] = []
    hashes: dict[str, str] = {}
    manifests = []
    outputs.begin(folder)
    for k in range(scenario.replications):
        rd = folder / f"r{k}"
        man = _read_json(rd / outputs.MANIFEST)
        manifests.append(man)
        files = _verified_files(rd)  # summary.json included: its replications are what the point reports
        per_rep.extend(_replications_in(rd / outputs.SUMMARY))
        for name, digest in sorted(files.items()):
            if name == outputs.SUMMARY:
                continue
            data = (rd / name).read_bytes()
            if outputs.sha256_bytes(data) != digest:  # changed since _check_point: refuse, write nothing more
                raise ScenarioError(f"{rd / name}: differs from the SHA-256 in {rd / outputs.MANIFEST} "
                                    f"(changed after the run?)")
            target = folder / name
            if not target.exists() or target.read_bytes() != data:
                target.write_bytes(data)
            hashes[name] = digest
    summary = outputs.summarise(scenario, per_rep)
    summary_bytes = outputs.json_bytes(summary)
    hashes[outputs.SUMMARY] = outputs.sha256_bytes(summary_bytes)
    provenances = [m.get("provenance") for m in manifests]
    source: dict[str, object]
    if all(p == provenances[0] for p in provenances) and isinstance(provenances[0], dict):
        source = provenances[0]
    else:
        source = {"git_commit": "mixed", "git_dirty": "unknown",
                  "by_replication": {str(k): p for k, p in enumerate(provenances)}}
    settings = manifests[0].get("design_settings", {}) if manifests else {}
    man = outputs.manifest(scenario, build_topology(scenario), settings, list(range(scenario.replications)),
                           hashes, source)
    (folder / outputs.SUMMARY).write_bytes(summary_bytes)
    (folder / "scenario.toml").write_text(scenario.source, encoding="utf-8")
    outputs.remove_stale(folder, scenario, set(hashes))
    outputs.write_json(folder / outputs.MANIFEST, man)


def collect(out_dir: Path) -> list[list[str]]:
    """Each point's folder complete (gathered from rK/ folders of cluster runs when there are any) and
    DIR/sweep.csv. Refuses, naming them, when runs are missing; then nothing is written."""
    try:
        rows_in = list(csv.reader((out_dir / "points.csv").open(encoding="utf-8")))
    except OSError as exc:
        raise ScenarioError(f"{out_dir}: no points.csv ({exc.strerror}); is it a sweep folder?") from None
    if not rows_in:
        raise ScenarioError(f"{out_dir}/points.csv is empty")
    header_in, body = rows_in[0], rows_in[1:]
    note = header_in.index(NOTE) if NOTE in header_in else None
    names = {row[0] for row in body}
    scenarios: dict[str, Scenario] = {}
    missing: list[str] = []
    rows_by_name = {row[0]: row for row in body}
    twins: list[tuple[list[str], str]] = []
    for row in body:
        if len(row) != len(header_in):
            raise ScenarioError(f"{out_dir}/points.csv: row {row[0] if row else '?'} has {len(row)} cells, "
                                f"expected {len(header_in)}")
        twin = row[note][len(SAME_AS):] if note is not None and row[note].startswith(SAME_AS) else None
        if twin is not None:
            if twin not in names:
                raise ScenarioError(f"{out_dir}/points.csv: {row[0]} is the same as {twin!r}, which is no point")
            twins.append((row, twin))
            continue
        folder = out_dir / row[0]
        scenario = load_scenario(folder / "scenario.toml")
        scenarios[row[0]] = scenario
        missing.extend(_check_point(folder, scenario))
    for row, twin in twins:  # re-derived, not trusted: both mesh, equal apart from hub.* values
        other = rows_by_name[twin]
        differ = [header_in[i] for i in range(1, len(header_in))
                  if i != note and row[i] != other[i] and not header_in[i].startswith(HUB_ONLY_PREFIX)]
        if twin not in scenarios or scenarios[twin].design.kind is not DesignKind.MESH or differ:
            why = (f"which differs in {', '.join(differ)}" if differ else
                   f"which is not a run mesh point")
            raise ScenarioError(f"{out_dir}/points.csv: {row[0]} is marked the same as {twin}, {why} (only mesh "
                                f"points that differ in hub.* values are the same; prepare the sweep again)")
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ScenarioError(f"{out_dir}: {len(missing)} run(s) missing: {shown} (run them, e.g. the lines of "
                            f"--emit-commands for those folders, then collect again)")
    for name, scenario in scenarios.items():
        if _replication_dirs(out_dir / name):
            gather(out_dir / name, scenario)
    table = [header_in + [".".join(k) for k in KEY_METRICS]]
    cells_of: dict[str, list[str]] = {}
    for name in scenarios:
        acr = _read_json(out_dir / name / outputs.SUMMARY).get("across_replications", {})
        cells = []
        for path in KEY_METRICS:
            cell = acr.get(".".join(path))
            cells.append("" if not isinstance(cell, dict) or cell.get("mean") is None else f"{cell['mean']:.6g}")
        cells_of[name] = cells
    for row in body:
        twin = row[note][len(SAME_AS):] if note is not None and row[note].startswith(SAME_AS) else row[0]
        table.append(row + cells_of[twin])
    with (out_dir / "sweep.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(table)
    return table


def write_commands(lines: list[str], path: Path | None) -> None:
    text = "\n".join(lines) + "\n"
    if path is None:
        sys.stdout.write(text)
    else:
        path.write_text(text, encoding="utf-8")
