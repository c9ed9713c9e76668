"""dcmtk's command-line DICOM tools (storescu, findscu, getscu, movescu, echoscu) as real child processes."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meshnode.dicom.structure import scan_layout

TOOL_TIMEOUT = 180.0


@dataclass(frozen=True)
class ToolResult:
    code: int
    output: str


#: where dcmtk's tools are looked up: never the virtualenv's bin/, whose pynetdicom console scripts have the
#: same names (storescu, findscu, getscu, movescu, echoscu, storescp, ...) and other command lines
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin", "/bin")


def dcmtk_tool(name: str) -> str:
    """The absolute path of dcmtk's `name` (a path is returned as it is)."""
    if "/" in name:
        return name
    for folder in DCMTK_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise FileNotFoundError(f"dcmtk's {name} is not installed in {', '.join(DCMTK_DIRS)} (make system-deps)")


def run_tool(*args: str, cwd: Path | None = None) -> ToolResult:
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run([dcmtk_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                          env=env, stdin=subprocess.DEVNULL, cwd=cwd)
    return ToolResult(proc.returncode, proc.stdout + proc.stderr)


def dimse_endpoint(home: Path) -> tuple[str, int, str]:
    """(host, port, AE title) of a running node's DIMSE gateway, from its dimse.json."""
    info = json.loads((home / "dimse.json").read_text())
    return str(info["host"]), int(info["port"]), str(info["ae_title"])


def storescu(port: int, calling: str, called: str, folder: Path, host: str = "127.0.0.1") -> ToolResult:
    return run_tool("storescu", "-aet", calling, "-aec", called, "+sd", "+r", host, str(port), str(folder))


def findscu(port: int, calling: str, called: str, keys: list[str], *, patient_root: bool = False,
            host: str = "127.0.0.1") -> ToolResult:
    return run_tool("findscu", "-P" if patient_root else "-S", "-aet", calling, "-aec", called,
                    *[a for k in keys for a in ("-k", k)], host, str(port))


def getscu(port: int, calling: str, called: str, out: Path, keys: list[str], host: str = "127.0.0.1") -> ToolResult:
    out.mkdir(parents=True, exist_ok=True)
    return run_tool("getscu", "-S", "+B", "-aet", calling, "-aec", called, "-od", str(out),  # +B: as received
                    *[a for k in keys for a in ("-k", k)], host, str(port))


def movescu(port: int, calling: str, called: str, out: Path, keys: list[str], listen_port: int,
            host: str = "127.0.0.1") -> ToolResult:
    """C-MOVE to this movescu itself (its AE title `calling`, listening on listen_port).

    With +B (files exactly as received) movescu writes into its working folder, not -od's.
    """
    out.mkdir(parents=True, exist_ok=True)
    return run_tool("movescu", "-S", "+B", "-aet", calling, "-aec", called, "-aem", calling, "--port", str(listen_port),
                    "-od", str(out), *[a for k in keys for a in ("-k", k)], host, str(port), cwd=out)


def dataset_bytes(data: bytes | Path) -> bytes:
    """A Part 10 file's data set: what DIMSE carries, byte for byte (the meta header is each writer's own)."""
    if isinstance(data, Path):
        layout = scan_layout(data)
        return data.read_bytes()[layout.dataset_offset:]
    from meshnode.dicom.structure import scan_layout_bytes

    return data[scan_layout_bytes(data).dataset_offset:]


def datasets(folder: Path) -> list[bytes]:
    return sorted(dataset_bytes(p) for p in folder.rglob("*") if p.is_file())


def find_answers(output: str) -> list[dict[str, str]]:
    """findscu's printed responses: one {keyword: value} per answer (the bracketed values)."""
    answers: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in output.splitlines():
        text = line[3:] if line.startswith(("I: ", "W: ")) else line
        if "Find Response:" in text:
            current = {}
            answers.append(current)
        elif current is not None and text.startswith("(") and "[" in text and "#" in text:
            value = text[text.index("[") + 1:text.rindex("]")]
            keyword = text.rsplit(" ", 1)[-1]
            current[keyword] = value.strip()
    return answers
