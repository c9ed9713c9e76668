"""bench/profile.py: sample processes with py-spy while a bench measures them (`--profile DIR`).

    with profiled({"sender": pid_a, "recipient": pid_b}, Path("prof"), "transfer-1"):
        ...  # the measured work

writes DIR/transfer-1-sender.txt per process: py-spy's raw collapsed stacks ("frame;frame;... count"
per line; non-idle samples only), and prints each one's top frames as shares of its samples
(`python bench/profile.py FILE [N]` prints them again). One sampler per process at 100 Hz,
--nonblocking (the process is never paused). py-spy comes with the `bench` extra (`make bench`
installs it). With `out` None nothing is started.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

STOP_TIMEOUT = 30.0  # py-spy writes its file after SIGINT


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: `.venv/bin/pip install -e '.[bench]'` (make bench does it)")
    return found


def top_frames(path: Path, n: int = 15) -> list[tuple[float, str]]:
    """The `n` frames with the largest inclusive share (%) of the samples in a raw py-spy file."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")[1:]):  # the first entry names the thread
            inclusive[frame] += int(count)
    return [(100 * c / total, f) for f, c in inclusive.most_common(n)] if total else []


def print_top(path: Path, n: int = 15) -> None:
    print(f"\n{path}: top frames, inclusive share of the non-idle samples")
    for share, frame in top_frames(path, n):
        print(f"{share:5.1f} %  {frame}")


@contextmanager
def profiled(pids: Mapping[str, int], out: Path | None, label: str) -> Iterator[None]:
    """py-spy record (raw collapsed stacks) of each pid for the duration of the block."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    tool = py_spy()
    procs: list[subprocess.Popen[bytes]] = []
    files = [out / f"{label}-{name}.txt" for name in pids]
    try:
        for pid, path in zip(pids.values(), files):
            procs.append(subprocess.Popen(
                [tool, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking",
                 "--output", str(path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for path in files:
        if path.exists():
            print_top(path)


if __name__ == "__main__":
    print_top(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)
