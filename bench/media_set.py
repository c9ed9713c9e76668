"""bench/media_set.py: how fast a patient's ZIP download is produced, beside a plain copy of the same files.

    .venv/bin/python bench/media_set.py [--slices 120] [--repeat 3]

One synthetic CT study (512x512, 16-bit) is ingested into a fresh node store (default 1 MiB blocks). Then,
in the same run, best of --repeat each:

- export + copy: the study exported with `export_study` (verified, fsynced), then its files read back and
  copied to /dev/null with shutil (the floor: reading the same bytes from files);
- media set, cold: `plan_media_set` + `read(0, size)` to the end with the CRC-32 cache empty (a study's
  first download: each instance read twice, once for its CRC-32 before its header, once for its data);
- media set, warm: the same with the CRC-32s remembered (a resumed or repeated download).

Prints MB/s of archive bytes for each and the ratio to the copy. No verdict: a figure to compare
before/after a change in the same sitting.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table  # noqa: E402
from meshnode.dicom import synthetic  # noqa: E402
from meshnode.storage.node_storage import NodeStorage  # noqa: E402
from meshnode.study import media_set as media  # noqa: E402
from meshnode.study.export import export_study  # noqa: E402
from meshnode.study.ingest import Ingester  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic.generate_ct_study(work / "src", slices=args.slices, seed=1)
        home = work / "node"
        home.mkdir()
        storage = NodeStorage.open(home)
        try:
            Ingester(storage).ingest([work / "src"])
            [study] = storage.metadata.studies()
            uid = study.attributes.study_uid

            def copy() -> int:
                out = work / f"export-{time.monotonic_ns()}"
                export_study(storage, uid, out)
                start = time.perf_counter()
                total = 0
                with open("/dev/null", "wb") as sink:
                    for path in sorted(out.rglob("*.dcm")):
                        with path.open("rb") as fh:
                            shutil.copyfileobj(fh, sink)
                        total += path.stat().st_size
                shutil.rmtree(out)
                timings.append(time.perf_counter() - start)
                return total

            def download(cold: bool) -> int:
                if cold:
                    media._crc_cache.clear()
                start = time.perf_counter()
                ms = media.plan_media_set(storage, [uid], readme=media.readme_text("Bench", 1, args.slices))
                total = sum(len(piece) for piece in ms.read(0, ms.size))
                timings.append(time.perf_counter() - start)
                return total

            rows = []
            base = 0.0
            for label, run in (("export, then copy the files", copy),
                               ("media set, cold CRC cache", lambda: download(True)),
                               ("media set, warm CRC cache", lambda: download(False))):
                timings: list[float] = []
                size = 0
                for _ in range(args.repeat):
                    size = run()
                rate = size / min(timings) / 1e6
                base = base or rate
                rows.append((label, f"{size / 1e6:.1f}", f"{rate:.0f}", f"{rate / base:.2f}"))
            print_table(f"patient download, CT {args.slices} x 512x512", ["what", "MB", "MB/s", "x copy"], rows)
        finally:
            storage.close()


if __name__ == "__main__":
    main()
