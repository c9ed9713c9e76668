"""bench/dimse_baselines.py: plain DIMSE C-STORE baselines for moving one study over loopback.

    .venv/bin/python bench/dimse_baselines.py [--slices 300] [--repeat 2] [--folder DIR]

Two separate processes each time, same study folder, receiver writing every
instance to a fresh temp folder (neither receiver fsyncs):

(b) dcmtk `storescu` -> `storescp`, TCP_NODELAY=1 in both environments, both
    at dcmtk's largest receive PDU (`-pdu 131072`; the default is 16384).
    storescp is started first and polled with `echoscu` until it answers; the
    clock runs from storescu logging "Requesting Association" (after it has
    scanned the input files, just before it connects: the first byte sent) to
    storescu's exit.
(c) pynetdicom -> pynetdicom: this file re-run as a receiver process
    (`_receive`: an AE accepting the storage SOP classes, writing each C-STORE
    as it arrives with `event.encoded_dataset()`, i.e. the raw bytes plus file
    meta, no decode) and as a sender process (`_send`: one association, one
    `send_c_store(path)` per file). The sender times itself from
    `ae.associate` to the end of `assoc.release()`.
    pynetdicom never sets TCP_NODELAY itself (3.0.4 only sets SO_REUSEADDR),
    so both sides set it from an EVT_CONN_OPEN handler on the connected
    socket. Both advertise maximum_pdu_size = 0 (unlimited, PS3.8 D.1.1), so
    each dataset goes out as a single P-DATA-TF PDU. With `chunked=True` the
    sender uses pynetdicom's STORE_SEND_CHUNKED_DATASET (streams the file
    from disk instead of `dcmread` + re-encode).

Each function checks that the receiver holds as many files as were sent and
raises otherwise. Importable: `dcmtk_transfer(folder, work)` and
`pynetdicom_transfer(folder, work)` return a TransferResult.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ensure_system_packages, free_port, print_table  # noqa: E402

HOST = "127.0.0.1"
SCP_AET = "BENCHSCP"
SCU_AET = "BENCHSCU"
DCMTK_MAX_PDU = 131072  # the largest dcmtk accepts (4096..131072)
PYNETDICOM_MAX_PDU = 0  # unlimited
STARTUP_TIMEOUT = 30.0  # receiver start, echo polling
TRANSFER_TIMEOUT = 600.0  # one whole study
STOP_TIMEOUT = 10.0  # graceful stop before kill


@dataclass(frozen=True)
class TransferResult:
    seconds: float
    bytes: int
    images: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def study_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` (what `storescu +sd +r` sends), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate, then kill, a child we started; never blocks unboundedly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _check_received(kind: str, received: Path, sent: int) -> None:
    got = _count_files(received)
    if got != sent:
        raise RuntimeError(f"{kind}: receiver wrote {got} files, {sent} were sent")


def _tail(path: Path, chars: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -------------------------------------------------------------------- (b) dcmtk


def _wait_for_echo(port: int, scp: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        echo = subprocess.run(["echoscu", "-to", "5", "-aec", SCP_AET, HOST, str(port)],
                              capture_output=True, timeout=STARTUP_TIMEOUT)
        if echo.returncode == 0:
            return
        if scp.poll() is not None:
            raise RuntimeError(f"storescp exited early ({scp.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError("storescp did not answer C-ECHO")
        time.sleep(0.05)


def _watch_for(stream: IO[bytes], marker: bytes, seen: queue.Queue[float], log: list[bytes]) -> None:
    """Drain `stream`; put the perf_counter time of the first line holding `marker`."""
    found = False
    for line in stream:
        if not found and marker in line:
            seen.put(time.perf_counter())
            found = True
        log.append(line)


@dataclass(frozen=True)
class StorescuTiming:
    """One storescu run on two clocks (the parent's perf_counter): from its first byte (it logs "Requesting
    Association" once it has scanned its input files) to its exit, and its whole process (spawn to exit)."""

    first_byte_at: float  # perf_counter when it logged "Requesting Association"
    spawned_at: float
    ended_at: float

    @property
    def first_byte_s(self) -> float:
        return self.ended_at - self.first_byte_at

    @property
    def process_s(self) -> float:
        return self.ended_at - self.spawned_at


def storescu_timing(folder: Path, port: int, called_ae: str = SCP_AET, calling_ae: str = SCU_AET,
                    files: list[Path] | None = None) -> StorescuTiming:
    """Send every file under `folder` (or exactly `files`) with dcmtk storescu (TCP_NODELAY=1, -pdu 131072)
    to 127.0.0.1:port, one association. Raises when storescu fails (any C-STORE not successful makes it
    exit non-zero)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    inputs = ["+sd", "+r", str(folder)] if files is None else [str(f) for f in files]
    spawned = time.perf_counter()
    scu = subprocess.Popen(
        ["storescu", "-v", "-aet", calling_ae, "-aec", called_ae, "-pdu", str(DCMTK_MAX_PDU), HOST, str(port),
         *inputs],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert scu.stdout is not None
        seen: queue.Queue[float] = queue.Queue()
        lines: list[bytes] = []
        reader = threading.Thread(target=_watch_for, args=(scu.stdout, b"Requesting Association", seen, lines),
                                  daemon=True)
        reader.start()
        returncode = scu.wait(timeout=TRANSFER_TIMEOUT)
        ended = time.perf_counter()
        reader.join(timeout=STOP_TIMEOUT)
    finally:
        _stop(scu)
    output = b"".join(lines).decode(errors="replace")
    if returncode != 0:
        raise RuntimeError(f"storescu failed ({returncode}): {output[-800:]}")
    try:
        started = seen.get_nowait()
    except queue.Empty:
        raise RuntimeError(f"storescu never logged 'Requesting Association': {output[-800:]}") from None
    return StorescuTiming(started, spawned, ended)


def timed_storescu(folder: Path, port: int, called_ae: str = SCP_AET, calling_ae: str = SCU_AET) -> float:
    """Seconds from storescu's first byte ("Requesting Association") to its exit: see storescu_timing."""
    return storescu_timing(folder, port, called_ae, calling_ae).first_byte_s


def storescp(work: Path, *, fork: bool = False) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A dcmtk storescp (TCP_NODELAY=1, -pdu 131072, no fsync) answering C-ECHO: (process, port, folder).
    `fork`: one child process per association (--fork), so that concurrent associations run concurrently."""
    run = work / f"dcmtk-{time.monotonic_ns()}"
    received = run / "received"
    received.mkdir(parents=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    port = free_port()
    with open(run / "storescp.log", "wb") as log_fh:
        scp = subprocess.Popen(
            ["storescp", *(["--fork"] if fork else []), "-od", str(received), "-aet", SCP_AET, "-pdu",
             str(DCMTK_MAX_PDU), str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        _wait_for_echo(port, scp)
    except BaseException:
        _stop(scp)
        raise
    return scp, port, received


def dcmtk_transfer(folder: Path, work: Path) -> TransferResult:
    """(b) storescu -> storescp over loopback, TCP_NODELAY=1, max PDU 131072 both ways."""
    files = study_files(folder)
    size = sum(p.stat().st_size for p in files)
    scp, port, received = storescp(work)
    try:
        seconds = timed_storescu(folder, port)
        _check_received("storescp", received, len(files))
    finally:
        _stop(scp)
    shutil.rmtree(received.parent, ignore_errors=True)
    return TransferResult(seconds, size, len(files))


# --------------------------------------------------------------- (c) pynetdicom


def _set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY on the association's connected socket."""
    sock: socket.socket = event.assoc.dul.socket.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _receiver_main(out: Path) -> int:
    """Child: accept storage associations on an ephemeral port, write each dataset as it arrives.

    Prints `READY <port>`, serves until stdin reaches EOF, then prints {"received": n}.
    """
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    received = 0
    lock = threading.Lock()

    def handle_store(event: Any) -> int:
        nonlocal received
        uid = str(event.request.AffectedSOPInstanceUID)
        (out / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        with lock:
            received += 1
        return 0x0000

    ae = AE(ae_title=SCP_AET)
    ae.maximum_pdu_size = PYNETDICOM_MAX_PDU
    # Every storage SOP class with pynetdicom's default syntaxes (implicit/explicit LE,
    # deflated, explicit BE), plus the common lossless compressed ones for CT.
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(CTImageStorage, [JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless])
    server = ae.start_server((HOST, 0), block=False,
                             evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay), (evt.EVT_C_STORE, handle_store)])
    assert server is not None  # block=False returns the running server
    try:
        print(f"READY {server.server_address[1]}", flush=True)
        sys.stdin.read()  # parent closes stdin (or dies) to stop us
    finally:
        server.shutdown()
    print(json.dumps({"received": received}), flush=True)
    return 0


def _sender_main(port: int, folder: Path, chunked: bool) -> int:
    """Child: one association, send_c_store every file, print timing as JSON."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config, evt

    _config.STORE_SEND_CHUNKED_DATASET = chunked
    files = study_files(folder)
    contexts: dict[str, set[str]] = {}
    for path in files:
        meta = read_file_meta_info(path)
        contexts.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    ae = AE(ae_title=SCU_AET)
    ae.maximum_pdu_size = PYNETDICOM_MAX_PDU
    for sop_class, syntaxes in sorted(contexts.items()):
        ae.add_requested_context(sop_class, sorted(syntaxes))

    started = time.perf_counter()
    assoc = ae.associate(HOST, port, ae_title=SCP_AET, max_pdu=PYNETDICOM_MAX_PDU,
                         evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)])
    if not assoc.is_established:
        print("association not established", file=sys.stderr)
        return 1
    failed = 0
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0x0000:
                failed += 1
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "sent": len(files), "failed": failed}), flush=True)
    return 0 if failed == 0 else 1


def _read_line(stream: IO[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"no line from child within {timeout:.0f} s") from None


class PynetdicomReceiver:
    """The bare pynetdicom SCP of (c) (`_receive`, a child process), for any sender."""

    def __init__(self, work: Path) -> None:
        self.run = work / f"pynetdicom-{time.monotonic_ns()}"
        self.received = self.run / "received"
        self.received.mkdir(parents=True)
        self.log = self.run / "receiver.log"
        with open(self.log, "wb") as log_fh:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_receive",
                                          str(self.received)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log_fh, text=True)
        assert self.proc.stdout is not None
        ready = _read_line(self.proc.stdout, STARTUP_TIMEOUT).split()
        if len(ready) != 2 or ready[0] != "READY":
            _stop(self.proc)
            raise RuntimeError(f"receiver did not start: {ready} {_tail(self.log)}")
        self.port = int(ready[1])

    def finish(self, sent: int) -> None:
        """Stop the receiver; raise unless it stored exactly `sent` instances."""
        try:
            rest, _ = self.proc.communicate(timeout=STOP_TIMEOUT)  # closes stdin: receiver stops, reports
            reported = json.loads(rest.strip().splitlines()[-1])["received"] if rest.strip() else None
            if reported != sent:
                raise RuntimeError(f"pynetdicom receiver reports {reported} stores, {sent} were sent")
            _check_received("pynetdicom receiver", self.received, sent)
        finally:
            _stop(self.proc)
            shutil.rmtree(self.run, ignore_errors=True)


def pynetdicom_transfer(folder: Path, work: Path, *, chunked: bool = False) -> TransferResult:
    """(c) pynetdicom sender process -> pynetdicom receiver process, TCP_NODELAY, unlimited PDU."""
    files = study_files(folder)
    size = sum(p.stat().st_size for p in files)
    receiver = PynetdicomReceiver(work)
    me = str(Path(__file__).resolve())
    try:
        sender_cmd = [sys.executable, me, "_send", str(receiver.port), str(folder), *(["--chunked"] if chunked else [])]
        sender = subprocess.Popen(sender_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            out, err = sender.communicate(timeout=TRANSFER_TIMEOUT)
        finally:
            _stop(sender)
        if sender.returncode != 0:
            raise RuntimeError(f"pynetdicom sender failed ({sender.returncode}): {err[-800:]}")
        report = json.loads(out.strip().splitlines()[-1])
    finally:
        receiver.finish(len(files))
    return TransferResult(float(report["seconds"]), size, len(files))


def concurrent_storescu(folders: list[Path], port: int, called_ae: str = SCP_AET,
                        calling_ae: str = SCU_AET) -> float:
    """One storescu process per folder, all started together, each one association to 127.0.0.1:port.

    Returns the seconds from the first of them logging "Requesting Association" to the last exit."""
    timings: list[StorescuTiming] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(folder: Path) -> None:
        try:
            timing = storescu_timing(folder, port, called_ae, calling_ae)
        except BaseException as exc:  # reported below, in the caller's thread
            with lock:
                errors.append(exc)
            return
        with lock:
            timings.append(timing)

    threads = [threading.Thread(target=one, args=(f,), daemon=True) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TRANSFER_TIMEOUT + STOP_TIMEOUT)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(folders)} storescu runs failed: {errors[0]}")
    if len(timings) != len(folders):
        raise RuntimeError("a storescu run did not finish")
    return max(t.ended_at for t in timings) - min(t.first_byte_at for t in timings)


def dcmtk_concurrent(folders: list[Path], work: Path) -> TransferResult:
    """One storescu per folder, concurrently -> one storescp --fork (a child per association)."""
    files = [f for folder in folders for f in study_files(folder)]
    scp, port, received = storescp(work, fork=True)
    try:
        seconds = concurrent_storescu(folders, port)
        _check_received("storescp --fork", received, len(files))
    finally:
        _stop(scp)
    shutil.rmtree(received.parent, ignore_errors=True)
    return TransferResult(seconds, sum(p.stat().st_size for p in files), len(files))


def pynetdicom_concurrent(folders: list[Path], work: Path) -> TransferResult:
    """One storescu per folder, concurrently -> the bare pynetdicom SCP (a thread per association)."""
    files = [f for folder in folders for f in study_files(folder)]
    receiver = PynetdicomReceiver(work)
    try:
        seconds = concurrent_storescu(folders, receiver.port)
    finally:
        receiver.finish(len(files))
    return TransferResult(seconds, sum(p.stat().st_size for p in files), len(files))


def storescu_to_pynetdicom(folder: Path, work: Path) -> TransferResult:
    """dcmtk storescu -> the bare pynetdicom SCP (c): what the node's C-STORE SCP is measured against."""
    files = study_files(folder)
    size = sum(p.stat().st_size for p in files)
    receiver = PynetdicomReceiver(work)
    try:
        seconds = timed_storescu(folder, receiver.port)
    finally:
        receiver.finish(len(files))
    return TransferResult(seconds, size, len(files))


# --------------------------------------------------------------------- command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is printed)")
    parser.add_argument("--folder", type=Path, help="send this study folder instead of a synthetic CT")
    args = parser.parse_args()
    ensure_system_packages("dcmtk")
    work = Path(tempfile.mkdtemp(prefix="dicom-mesh-dimse-"))
    try:
        if args.folder is not None:
            folder, name = args.folder, str(args.folder)
        else:
            from meshnode.dicom import synthetic

            folder, name = work / "ct", f"CT {args.slices} x 512x512"
            synthetic.generate_ct_study(folder, slices=args.slices, seed=1)
        runs: dict[str, list[TransferResult]] = {
            "(b) dcmtk storescu -> storescp": [dcmtk_transfer(folder, work) for _ in range(args.repeat)],
            "(c) pynetdicom -> pynetdicom": [pynetdicom_transfer(folder, work) for _ in range(args.repeat)],
            "(c) same, chunked send": [pynetdicom_transfer(folder, work, chunked=True) for _ in range(args.repeat)],
        }
        rows: list[list[object]] = []
        for label, results in runs.items():
            best = min(results, key=lambda r: r.seconds)
            rows.append([label, f"{best.seconds:.3f}", f"{best.mb_per_s:,.0f}", f"{best.images_per_s:,.0f}",
                         " ".join(f"{r.mb_per_s:,.0f}" for r in results)])
        size = runs["(b) dcmtk storescu -> storescp"][0]
        print_table(f"C-STORE over loopback, {name}: {size.images} files, {size.bytes / 1e6:,.0f} MB, "
                    f"best of {args.repeat}",
                    ["sender -> receiver", "seconds", "MB/s", "images/s", "MB/s each run"], rows)
        print(f"dcmtk: TCP_NODELAY=1, -pdu {DCMTK_MAX_PDU} both sides, clock from 'Requesting Association' to "
              f"storescu exit. pynetdicom: TCP_NODELAY via EVT_CONN_OPEN, max PDU 0 (unlimited) both sides, "
              f"clock from associate to release. No receiver fsyncs.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dimse_baselines.py")
    sub = parser.add_subparsers(dest="role", required=True)
    receive = sub.add_parser("_receive")
    receive.add_argument("out", type=Path)
    send = sub.add_parser("_send")
    send.add_argument("port", type=int)
    send.add_argument("folder", type=Path)
    send.add_argument("--chunked", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "_receive":
        return _receiver_main(args.out)
    return _sender_main(args.port, args.folder, args.chunked)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_receive", "_send"):
        sys.exit(_child(sys.argv[1:]))
    main()
