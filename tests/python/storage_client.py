"""Drives jmp-exporter's native storage drivers (MockStorageMux, MockStorageMuxFlasher,
MockFlasher) with the unchanged upstream Python client (0.9.0): uploads and dumps through
resource streams, compressed and not.

`python storage_client.py SCENARIO [ARGS]` against JUMPSTARTER_HOST, or `lease:SCENARIO` with
CLIENT_CONFIG and EXPORTER_NAME set. Prints one JSON line `{"scenario": ..., "result": ...}`;
any failure exits non-zero with the traceback.
"""

import bz2
import gzip
import lzma
import os
import sys
import tempfile

from backports import zstd
from jumpstarter.client.core import DriverError
from jumpstarter.streams.encoding import Compression

from hosted_client import run, storage

COMPRESSORS = {"gzip": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress, "zstd": zstd.compress}
DECOMPRESSORS = {"gzip": gzip.decompress, "xz": lzma.decompress, "bz2": bz2.decompress, "zstd": zstd.decompress}


def image(mib):
    """An image that compresses as a real one does: runs of zeros between random blocks."""
    block = os.urandom(64 << 10)
    return b"".join(block if i % 3 == 0 else bytes(64 << 10) for i in range(int(mib) * 16))


def target_of(client, path):
    for name in path.split("."):
        client = getattr(client, name)
    return client


def compressed(client, path="mux", mib="4"):
    """flash of a compressed file with --compression, read back raw; dump with compression,
    decompressed here: the same image every time, for every encoding."""
    target = target_of(client, path)
    raw = image(mib)
    done = []
    with tempfile.TemporaryDirectory() as d:
        for name, compress in COMPRESSORS.items():
            src, back, dumped = (os.path.join(d, f"{name}.{x}") for x in ("img", "back", "dump"))
            with open(src, "wb") as f:
                f.write(compress(raw))
            target.flash(src, compression=Compression(name))
            target.read_local_file(back)
            with open(back, "rb") as f:
                assert f.read() == raw, f"{name}: the flashed image differs"
            target.dump(dumped, compression=Compression(name))
            with open(dumped, "rb") as f:
                assert DECOMPRESSORS[name](f.read()) == raw, f"{name}: the dump differs"
            done.append(name)
    return {"encodings": done}


def dumps(client, path="mux", mib="4"):
    """write_local_file of an image, then a compressed dump of it in every encoding,
    decompressed here."""
    target = target_of(client, path)
    raw = image(mib)
    done = []
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "raw.img")
        with open(src, "wb") as f:
            f.write(raw)
        target.write_local_file(src)
        for name in COMPRESSORS:
            dumped = os.path.join(d, f"{name}.dump")
            target.dump(dumped, compression=Compression(name))
            with open(dumped, "rb") as f:
                assert DECOMPRESSORS[name](f.read()) == raw, f"{name}: the dump differs"
            done.append(name)
    return {"encodings": done}


def flasher(client, path="flasher"):
    """MockFlasher: one file per partition, `default` when none is named; a partition never
    flashed is an error."""
    target = target_of(client, path)
    a, b = os.urandom(3 << 20), os.urandom(1 << 20)
    seen = {}
    with tempfile.TemporaryDirectory() as d:
        pa, pb, out = (os.path.join(d, n) for n in ("a", "b", "out"))
        for p, data in ((pa, a), (pb, b)):
            with open(p, "wb") as f:
                f.write(data)
        target.flash(pa, target="boot")
        target.flash(pb)
        target.dump(out, target="boot")
        with open(out, "rb") as f:
            seen["boot"] = f.read() == a
        target.dump(out)
        with open(out, "rb") as f:
            seen["default"] = f.read() == b
        try:
            target.dump(out, target="never")
        except* DriverError as group:  # the client raises it from a task group
            seen["never"] = str(group.exceptions[0])
    return seen


def from_url(client, path, url, expected):
    """flash of an http:// URL: the client hands over a presigned GET and the exporter fetches
    the image itself; what is read back is the file the server has."""
    target = target_of(client, path)
    target.flash(url)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "back")
        if hasattr(target, "read_local_file"):
            target.read_local_file(out)
        else:
            target.dump(out)
        with open(out, "rb") as f, open(expected, "rb") as g:
            return {"same": f.read() == g.read()}


def to_url(client, path, url, image):
    """flash of a local file, then a dump into a presigned PUT: the exporter uploads the
    device's contents itself. (0.9.0's opendal FlasherClient cannot dump to a URL: its opendal
    HTTP operator has no write; the handle is the one 0.9.0's generic flasher client sends.)"""
    from jumpstarter.common.resources import PresignedRequestResource

    target = target_of(client, path)
    target.flash(image)
    handle = PresignedRequestResource(headers={}, url=url, method="PUT").model_dump(mode="json")
    target.call("dump", handle, None)
    return {"dumped": True}


def dutlink(client, path="dutlink"):
    """DUT Link's three children as upstream's client builds them: power (a reading from
    the streaming `read`), storage (an image written and read back), console (an echo)."""
    board = target_of(client, path)
    seen = {name: type(getattr(board, name)).__name__ for name in ("power", "storage", "console")}
    board.power.on()
    board.power.rescue()
    readings = board.power.read()
    seen["reading"] = next(iter(readings)).model_dump()
    readings.close()
    storage(client, "2", f"{path}.storage")
    with board.console.stream() as s:
        s.send(b"ping")
        got = b""
        while len(got) < 4:
            got += s.receive()
    seen["console"] = got.decode()
    board.power.off()
    return seen


def bench_flash(client, path, image, compression=""):
    """For the benchmark: one flash of `image`, timed, with the client's own CPU time."""
    import resource
    import time

    target = target_of(client, path)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    target.flash(image, compression=Compression(compression) if compression else None)
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": seconds, "client_cpu_s": cpu}


def overfill(client, path, mib):
    """Writes MIB MiB to a card too small for it: the error the client gets, then whether the
    same driver still answers."""
    target = target_of(client, path)
    data = os.urandom(int(mib) << 20)
    seen = {}
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.img")
        with open(src, "wb") as f:
            f.write(data)
        try:
            target.write_local_file(src)
            seen["error"] = None
        except BaseException as e:
            text = f"{type(e).__name__}: {e}"
            for inner in getattr(e, "exceptions", ()):
                text += " | " + str(inner)
            seen["error"] = text
    target.dut()
    seen["after"] = "answered"
    return seen


SCENARIOS = {"overfill": overfill, "storage": storage, "compressed": compressed, "dumps": dumps, "flasher": flasher, "from_url": from_url, "to_url": to_url, "dutlink": dutlink, "bench_flash": bench_flash}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
