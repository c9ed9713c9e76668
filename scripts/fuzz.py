#!/usr/bin/env python3
"""Bounded coverage-guided fuzzing of every decoder of untrusted bytes (atheris / libFuzzer).

    scripts/fuzz.py                     # every target, about --seconds in total (default 60)
    scripts/fuzz.py --seconds 600 --targets cbor_decode,document_manifest
    scripts/fuzz.py --write-seeds       # regenerate tests/fuzz/corpus/ from valid encodings
    scripts/fuzz.py --list

Targets are tests/fuzz/targets.py's TARGETS. Each runs in its own process (libFuzzer stops a
process at its first crash) starting from its committed seeds and every crasher found before.
An input that makes a target raise anything but its documented errors, hang (-timeout) or use
too much memory is saved to tests/fuzz/crashers/<target>/ (commit it: test_crashers.py replays
it in `make test`) and the run exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
CORPUS = FUZZ / "corpus"
CRASHERS = FUZZ / "crashers"
HANG_SECONDS = 10  # one input taking longer than this is a finding
RSS_LIMIT_MB = 2048
PER_TARGET_OVERHEAD = 1.5  # first guess of what a target costs beyond -max_total_time (1.3-1.8 s idle)
STARTUP_ALLOWANCE = 60  # seconds a child may take beyond its fuzzing time before it is killed


def run_target(name: str, libfuzzer_args: list[str]) -> None:
    """In the child: instrument our packages, then hand the target to libFuzzer (never returns)."""
    import atheris  # type: ignore[import-untyped]  # only the fuzz run needs it (test_crashers.py does not)

    sys.path.insert(0, str(ROOT))
    # pydicom too for the DICOM target: coverage of its reader guides the fuzzer into what
    # read_attributes does with pydicom's output
    packages = ["protocol", "meshnode", "tests.fuzz", *(["pydicom"] if name.startswith("dicom") else [])]
    with atheris.instrument_imports(include=packages):
        from tests.fuzz.targets import TARGETS, check
    import logging

    logging.disable(logging.CRITICAL)
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        check(target, data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


class Budget:
    """Shares the total time among the targets still to run, learning what each run costs beyond
    its -max_total_time (whole seconds, overshot by about a second, plus the child's start-up;
    more on a loaded machine), so that the whole run stays close to the total."""

    def __init__(self, seconds: int, targets: int, jobs: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.left = targets
        self.jobs = jobs
        self.overheads: list[float] = []
        self.lock = threading.Lock()

    def next_share(self) -> int:
        with self.lock:
            overhead = sum(self.overheads) / len(self.overheads) if self.overheads else PER_TARGET_OVERHEAD
            share = (self.deadline - time.monotonic()) * self.jobs / self.left - overhead
            self.left -= 1
            return max(1, int(share))

    def finished(self, out: Outcome) -> None:
        with self.lock:
            self.overheads.append(max(0.0, out.seconds - out.fuzz_seconds))


@dataclass(frozen=True)
class Outcome:
    name: str
    status: int
    new: list[Path]  # inputs saved to crashers/ by this run
    runs: str
    fuzz_seconds: int  # the -max_total_time it was given
    seconds: float  # how long it took
    output: str


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def fuzz_one(name: str, max_len: int, seconds: int) -> Outcome:
    """Fuzz one target for `seconds` in a child process."""
    crashers = CRASHERS / name
    crashers.mkdir(parents=True, exist_ok=True)
    before = set(crashers.iterdir())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
        args = [
            f"-max_total_time={seconds}",
            f"-timeout={HANG_SECONDS}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={max_len}",
            f"-artifact_prefix={crashers}/",
            "-print_final_stats=1",
            work,  # new inputs go here (the first corpus directory), not into the committed seeds
            str(CORPUS / name),
            str(crashers),
        ]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-target", name, "--", *args]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=seconds + HANG_SECONDS + STARTUP_ALLOWANCE)
            output, status = _text(proc.stdout) + _text(proc.stderr), proc.returncode
        except subprocess.TimeoutExpired as exc:
            output, status = _text(exc.stdout) + _text(exc.stderr), -1
    new = sorted(set(crashers.iterdir()) - before)
    runs = next((line.split()[-1] for line in output.splitlines() if "stat::number_of_executed_units" in line), "?")
    return Outcome(name, status, new, runs, seconds, time.monotonic() - t0, output)


def fuzz_all(names: list[str], seconds: int, jobs: int, verbose: bool) -> int:
    from tests.fuzz.targets import TARGETS

    budget = Budget(seconds, len(names), jobs)
    findings: list[Outcome] = []
    started = time.monotonic()

    def run(name: str) -> Outcome:
        out = fuzz_one(name, TARGETS[name].max_len, budget.next_share())
        budget.finished(out)
        return out

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run, name) for name in names]
        for future in as_completed(futures):
            out = future.result()
            ok = out.status == 0 and not out.new
            print(f"{out.name:34} {out.seconds:5.1f} s  {out.runs:>8} runs  "
                  + ("ok" if ok else f"FINDING (status {out.status})"), flush=True)
            if not ok:
                findings.append(out)
                print("\n".join(out.output.splitlines()[-40:]), file=sys.stderr)
            elif verbose:
                print(out.output, file=sys.stderr)
    print(f"{len(names)} targets, {jobs} at a time: {time.monotonic() - started:.0f} s")
    for out in findings:
        saved = ", ".join(str(p.relative_to(ROOT)) for p in out.new) or "no input saved"
        print(f"finding in {out.name} (status {out.status}): {saved}")
    if findings:
        print("commit the saved inputs, fix the decoder, and check with: "
              "python -m pytest tests/fuzz/test_crashers.py")
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-target"]:
        name, rest = argv[1], argv[2:]
        run_target(name, rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                        help="total fuzzing time, shared by the targets (default 60)")
    parser.add_argument("--targets", help="comma-separated target names (default: all)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="targets fuzzed at the same time (default: 2, or 1 on one CPU)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--write-seeds", action="store_true", help="regenerate tests/fuzz/corpus/")
    parser.add_argument("-v", "--verbose", action="store_true", help="print libFuzzer's output for every target")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.write_seeds:
        from tests.fuzz.seeds import write_seeds

        for name, count in write_seeds(CORPUS).items():
            print(f"{name:34} {count} seeds")
        return 0
    names = list(TARGETS) if not args.targets else args.targets.split(",")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install -e '.[test]' (Linux, CPython 3.8-3.12)", file=sys.stderr)
        return 2
    return fuzz_all(names, args.seconds, max(1, args.jobs), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
