"""Drives drivers that jmp-exporter runs in its Python driver host, with the unchanged upstream
Python client (0.9.0).

`python hosted_client.py SCENARIO [ARGS]` against JUMPSTARTER_HOST, or, with CLIENT_CONFIG and
EXPORTER_NAME set, through a lease from the controller (`lease:SCENARIO`). Prints one JSON line
`{"scenario": ..., "result": ...}`; any failure exits non-zero with the traceback.
"""

import hashlib
import json
import os
import sys
import tempfile

from jumpstarter.client.core import DriverError, DriverInvalidArgument
from jumpstarter.utils.env import env


def storage(client, mib="4", path="storage"):
    """write_local_file then read_local_file of a random file, byte-exact."""
    target = client
    for name in path.split("."):
        target = getattr(target, name)
    data = os.urandom(int(mib) << 20)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.img"), os.path.join(d, "out.img")
        with open(src, "wb") as f:
            f.write(data)
        target.write_local_file(src)
        target.read_local_file(dst)
        with open(dst, "rb") as f:
            back = f.read()
    assert back == data, (len(back), len(data))
    return {"bytes": len(back), "sha256": hashlib.sha256(back).hexdigest()[:16], "class": type(target).__name__}


def lab(client):
    """The lab's own driver: a call, a streaming call, a byte stream, a ValueError; and the entry
    whose constructor raised."""
    seen = {"class": type(client.counter).__name__}
    seen["add"] = [client.counter.add(2), client.counter.add(3)]
    seen["countdown"] = client.counter.countdown(3)
    with client.counter.stream() as s:
        s.send(b"ping")
        got = b""
        while len(got) < 4:
            got += s.receive()
    seen["stream"] = got.decode()
    try:
        client.counter.add(-1)
    except DriverInvalidArgument as e:
        seen["invalid"] = str(e)
    try:
        client.broken.call("add", 1)
    except DriverError as e:
        seen["broken"] = [type(e).__name__, str(e)]
    client.power.on()
    # Upstream's Shell: the method's exit code comes back from the call.
    seen["shell"] = client.shell.hello("api")
    seen["log"] = driver_record(os.environ["JUMPSTARTER_HOST"], "counter at 15")
    return seen


def driver_record(host, text):
    """The LogStream record whose message is `text`, as (severity, source)."""
    import grpc
    from google.protobuf import empty_pb2
    from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2_grpc

    stub = jumpstarter_pb2_grpc.ExporterServiceStub(grpc.insecure_channel(f"unix://{host}"))
    records = stub.LogStream(empty_pb2.Empty(), timeout=10)
    try:
        for record in records:
            if record.message == text:
                return [record.severity, common_pb2.LogSource.Name(record.source)]
    finally:
        records.cancel()


def after_host_death(client):
    """Every call to a hosted driver fails with a clear error; native drivers go on."""
    seen = {}
    try:
        client.counter.add(1)
    except DriverError as e:
        seen["hosted"] = str(e)
    client.power.on()
    seen["native"] = "ok"
    return seen


def counter(client):
    return {"add": client.counter.add(1)}


def reports(host, config_file):
    """Our GetReport and the list upstream's own tree gives for the same file, each entry as
    (name, uuid index, parent index, labels without the uuid-free name, description,
    methods_description)."""
    import grpc
    from google.protobuf import empty_pb2
    from jumpstarter.config.exporter import ExporterConfigV1Alpha1, ExporterConfigV1Alpha1DriverInstance
    from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2_grpc
    from pathlib import Path

    def shape(rows):
        order = []

        def index(u):
            if u not in order:
                order.append(u)
            return order.index(u)

        return [
            [name, index(u), None if p is None else index(p), labels, description, methods]
            for (name, u, p, labels, description, methods) in rows
        ]

    stub = jumpstarter_pb2_grpc.ExporterServiceStub(grpc.insecure_channel(f"unix://{host}"))
    report = stub.GetReport(empty_pb2.Empty(), timeout=10)
    ours = [
        (
            r.labels.get("jumpstarter.dev/name"),
            r.uuid,
            r.parent_uuid if r.HasField("parent_uuid") else None,
            dict(r.labels),
            r.description if r.HasField("description") else None,
            dict(r.methods_description),
        )
        for r in report.reports
    ]
    config = ExporterConfigV1Alpha1.load_path(Path(config_file))
    root = ExporterConfigV1Alpha1DriverInstance(
        type="jumpstarter_driver_composite.driver.Composite", children=config.export
    ).instantiate()
    theirs = []
    for u, parent, name, driver in root.enumerate():
        r = driver.report(parent=parent, name=name)
        theirs.append(
            (
                name,
                str(u),
                None if parent is None else str(parent.uuid),
                dict(r.labels),
                r.description if r.HasField("description") else None,
                dict(r.methods_description),
            )
        )
    root.close()
    return {"ours": shape(ours), "upstream": shape(theirs)}


SCENARIOS = {"storage": storage, "lab": lab, "after_host_death": after_host_death, "counter": counter}


def run(scenarios, name, args):
    """Runs one scenario against JUMPSTARTER_HOST, or through a lease (`lease:NAME`), and
    prints its result as one JSON line."""
    if name.startswith("lease:"):
        from jumpstarter.config.client import ClientConfigV1Alpha1

        config = ClientConfigV1Alpha1.from_file(os.environ["CLIENT_CONFIG"])
        with config.lease(exporter_name=os.environ["EXPORTER_NAME"]) as held:
            with held.connect() as client:
                result = scenarios[name.split(":", 1)[1]](client, *args)
    else:
        with env() as client:
            result = scenarios[name](client, *args)
    print(json.dumps({"scenario": name, "result": result}))


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    if name == "reports":
        print(json.dumps({"scenario": name, "result": reports(os.environ["JUMPSTARTER_HOST"], *args)}))
    else:
        run(SCENARIOS, name, args)
