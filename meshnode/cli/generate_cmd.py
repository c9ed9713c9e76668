"""meshnode generate (hidden): write a synthetic study for tests, demos and benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli.output import EXIT_OK, emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    gen = sub.add_parser("generate", parents=[common])  # no help: hidden from the command list
    gen.add_argument("folder", type=Path)
    gen.add_argument("--kind", choices=["ct", "dx", "multiframe", "rle"], default="ct")
    gen.add_argument("--count", type=int, default=200, help="slices / images / frames")
    gen.add_argument("--rows", type=int, default=None)
    gen.add_argument("--columns", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshnode.dicom import synthetic  # numpy and pydicom: imported when used

    defaults = {"ct": (512, 512), "dx": (2048, 2048), "multiframe": (256, 256), "rle": (128, 128)}[args.kind]
    rows, columns = args.rows or defaults[0], args.columns or defaults[1]
    if args.kind == "ct":
        files = synthetic.generate_ct_study(args.folder, slices=args.count, seed=args.seed, rows=rows, columns=columns)
    elif args.kind == "dx":
        files = synthetic.generate_dx_study(args.folder, images=args.count, seed=args.seed, rows=rows, columns=columns)
    elif args.kind == "multiframe":
        files = synthetic.generate_multiframe(args.folder, frames=args.count, seed=args.seed, rows=rows,
                                              columns=columns)
    else:
        files = synthetic.generate_compressed(args.folder, images=args.count, seed=args.seed, rows=rows,
                                              columns=columns)
    total = sum(f.stat().st_size for f in files)
    emit({"files": len(files), "bytes": total, "folder": str(args.folder)}, args.json,
         f"wrote {len(files)} file(s), {total / 1e6:,.1f} MB to {args.folder}")
    return EXIT_OK
