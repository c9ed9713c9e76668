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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
CORPUS = FUZZ / "corpus"
CRASHERS = FUZZ / "crashers"
HANG_SECONDS = 10  # one input taking longer than this is a finding
RSS_LIMIT_MB = 2048
PER_TARGET_OVERHEAD = 1.5  # seconds each target costs beyond its -max_total_time (measured: 1.3-1.8)
STARTUP_ALLOWANCE = 60  # seconds a child may take beyond its fuzzing time before it is killed


def run_target(name: str, libfuzzer_args: list[str]) -> None:
    """In the child: instrument our packages, then hand the target to libFuzzer (never returns)."""
    import atheris  # type: ignore[import-untyped]  # only the fuzz run needs it (test_crashers.py does not)

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["protocol", "meshnode", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS, check
    import logging

    logging.disable(logging.CRITICAL)
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        check(target, data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def fuzz_all(names: list[str], seconds: int, verbose: bool) -> int:
    # libFuzzer's -max_total_time is whole seconds and a run overshoots it by about a second,
    # plus the child's start: leave that overhead out of each target's share
    per_target = max(1, round(seconds / len(names) - PER_TARGET_OVERHEAD))
    findings: list[tuple[str, list[Path], int]] = []
    started = time.monotonic()
    from tests.fuzz.targets import TARGETS

    for name in names:
        target = TARGETS[name]
        seeds = CORPUS / name
        crashers = CRASHERS / name
        crashers.mkdir(parents=True, exist_ok=True)
        before = set(crashers.iterdir())
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
            args = [
                f"-max_total_time={per_target}",
                f"-timeout={HANG_SECONDS}",
                f"-rss_limit_mb={RSS_LIMIT_MB}",
                f"-max_len={target.max_len}",
                f"-artifact_prefix={crashers}/",
                "-print_final_stats=1",
                work,  # new inputs go here (the first corpus directory), not into the committed seeds
                str(seeds),
                str(crashers),
            ]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run-target", name, "--", *args]
            t0 = time.monotonic()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace",
                                      timeout=per_target + HANG_SECONDS + STARTUP_ALLOWANCE)
                output, status = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                output = (exc.stdout or "") + (exc.stderr or "") if isinstance(exc.stdout, str) else ""
                status = -1
        new = sorted(set(crashers.iterdir()) - before)
        runs = next((line.split()[-1] for line in output.splitlines() if "stat::number_of_executed_units" in line), "?")
        print(f"{name:34} {time.monotonic() - t0:5.1f} s  {runs:>8} runs  "
              + ("ok" if status == 0 and not new else f"FINDING (status {status})"), flush=True)
        if status != 0 or new:
            findings.append((name, new, status))
            print("\n".join(output.splitlines()[-40:]), file=sys.stderr)
        elif verbose:
            print(output, file=sys.stderr)
    print(f"{len(names)} targets in {time.monotonic() - started:.0f} s")
    for name, new, status in findings:
        saved = ", ".join(str(p.relative_to(ROOT)) for p in new) or "no input saved"
        print(f"finding in {name} (status {status}): {saved}")
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
    return fuzz_all(names, args.seconds, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
