"""Drives a running jmp-exporter with the unchanged upstream Python client (0.9.0).

Run as `python drive.py SCENARIO` with JUMPSTARTER_HOST (and, for TCP, JMP_GRPC_INSECURE /
JMP_GRPC_PASSPHRASE) set. Each scenario asserts what the client sees and prints one JSON line
that the Rust test checks as well; any failure exits non-zero with the traceback.
"""

import json
import sys
import uuid

from jumpstarter.client.core import DriverError, DriverInvalidArgument, DriverMethodNotImplemented
from jumpstarter.utils.env import env


def tree(client):
    names = {
        "root": type(client).__name__,
        "power": type(client.power).__name__,
        "echo": type(client.echo).__name__,
        "serial": type(client.serial).__name__,
        "console": type(client.console).__name__,
    }
    assert names == {
        "root": "CompositeClient",
        "power": "PowerClient",
        "echo": "NetworkClient",
        "serial": "PySerialClient",
        "console": "PySerialClient",
    }, names
    assert client.console.uuid == client.serial.uuid
    return {"classes": names, "description": client.description}


def power(client):
    client.power.on()
    client.power.off()
    client.power.cycle(wait=0.1)
    readings = [[r.voltage, r.current, r.apparent_power] for r in client.power.read()]
    assert readings == [[0.0, 0.0, 0.0], [5.0, 2.0, 10.0]], readings
    return {"readings": readings}


def serial(client):
    with client.serial.stream() as s:
        s.send(b"hello serial")
        got = b""
        while len(got) < 12:
            got += s.receive()
    assert got == b"hello serial", got
    with client.serial.pexpect() as p:
        p.sendline("ping 42")
        p.expect("ping 42", timeout=10)
    return {"echoed": got.decode()}


def echo(client):
    payload = bytes(range(256)) * 4096  # 1 MiB
    with client.echo.stream() as s:
        s.send(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += s.receive()
    assert bytes(got) == payload
    return {"bytes": len(got)}


def errors(client):
    seen = {}
    try:
        client.power.call("explode")
    except DriverMethodNotImplemented as e:
        seen["unknown_method"] = str(e)
    try:
        client.power.call("on", 1)
    except DriverInvalidArgument as e:
        seen["bad_args"] = str(e)
    try:
        list(client.power.streamingcall("on"))
    except DriverError as e:
        seen["wrong_kind"] = str(e)
    real = client.power.uuid
    client.power.uuid = uuid.UUID("00000000-0000-4000-8000-000000000000")
    try:
        client.power.call("on")
    except DriverError as e:
        seen["unknown_driver"] = str(e)
    finally:
        client.power.uuid = real
    client.power.on()  # the session still works after every error
    assert set(seen) == {"unknown_method", "bad_args", "wrong_kind", "unknown_driver"}, seen
    return seen


def strict(client):
    """Driver calls after EndSession made the exporter AVAILABLE: what each kind of call
    meets (refused in strict mode with the client's own exception class, else "ok")."""
    import os
    import time

    import grpc
    from jumpstarter.client.core import ExporterNotReady
    from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

    client.power.on()
    stub = jumpstarter_pb2_grpc.ExporterServiceStub(grpc.insecure_channel(f"unix://{os.environ['JUMPSTARTER_HOST']}"))
    stub.EndSession(jumpstarter_pb2.EndSessionRequest(), timeout=10)
    deadline = time.monotonic() + 10
    while stub.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=5).status != common_pb2.EXPORTER_STATUS_AVAILABLE:
        assert time.monotonic() < deadline, "never AVAILABLE after EndSession"
        time.sleep(0.05)
    seen = {}
    try:
        client.power.on()
        seen["call"] = "ok"
    except ExporterNotReady as e:
        seen["call"] = str(e)
    try:
        list(client.power.read())
        seen["streaming"] = "ok"
    except ExporterNotReady as e:
        seen["streaming"] = str(e)
    try:
        with client.echo.stream() as s:
            s.send(b"x")
            seen["byte_stream"] = "ok" if s.receive() == b"x" else "wrong bytes"
    except Exception as e:  # the byte-stream API has no class of its own for this
        seen["byte_stream"] = type(e).__name__
    return seen


def refs(client):
    """Aliases as upstream lays them out (the config in python_client.rs): an alias of a
    composite has the composite's children, at every depth, and an alias of a leaf is the leaf;
    the serial console has `cps: 0` (no throttling)."""
    client.proxy1.power1.on()
    client.composite1.power1.off()
    client.proxy0.on()
    client.early.inner.leaf.on()
    client.outer.inner.leaf.off()
    client.deep.leaf.cycle(wait=0.01)
    client.deep.alias.on()
    same = {
        "proxy1.power1": client.proxy1.power1.uuid == client.composite1.power1.uuid,
        "proxy0": client.proxy0.uuid == client.power0.uuid,
        "early.inner": client.early.inner.uuid == client.outer.inner.uuid,
        "deep.leaf": client.deep.leaf.uuid == client.outer.inner.leaf.uuid,
        "deep.alias": client.deep.alias.uuid == client.solo.uuid,
    }
    payload = bytes(range(256)) * 256  # 64 KiB: seconds at any throttled rate
    with client.console.stream() as s:
        s.send(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += s.receive()
    assert bytes(got) == payload
    return {"same": same, "classes": {"proxy1": type(client.proxy1).__name__, "deep.leaf": type(client.deep.leaf).__name__}, "echoed": len(got)}


SCENARIOS = {f.__name__: f for f in (tree, power, serial, echo, errors, strict, refs)}


def report_shapes(host):
    """The GetReport list of the exporter at `host` and the list upstream's own driver tree
    enumerates for the same file (CONFIG_FILE), each as (name, uuid, parent) with uuids
    replaced by the order of first appearance: they must be equal entry for entry."""
    import os

    from hosted_client import reports

    full = reports(host, os.environ["CONFIG_FILE"])
    return {side: [row[:3] for row in rows] for side, rows in full.items()}


def session_rpcs(host):
    """GetStatus, LogStream and EndSession through the upstream generated stubs."""
    import grpc
    from google.protobuf import empty_pb2
    from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{host}")
    stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
    status = stub.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=10)
    assert status.status == common_pb2.EXPORTER_STATUS_LEASE_READY, status
    assert status.message == "Ready for commands", status
    report = stub.GetReport(empty_pb2.Empty(), timeout=10)
    power = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "power")
    stub.DriverCall(jumpstarter_pb2.DriverCallRequest(uuid=power, method="on"), timeout=10)
    records = stub.LogStream(empty_pb2.Empty(), timeout=10)
    seen = None
    for record in records:
        if record.message == "power on":
            seen = {"severity": record.severity, "source": common_pb2.LogSource.Name(record.source)}
            break
    records.cancel()
    assert seen == {"severity": "INFO", "source": "LOG_SOURCE_DRIVER"}, seen
    try:
        stub.Reset(jumpstarter_pb2.ResetRequest(), timeout=10)
        raise AssertionError("Reset answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
    ended = stub.EndSession(jumpstarter_pb2.EndSessionRequest(), timeout=10)
    # The end of the session is handled after EndSession returns, as upstream: poll as a
    # client does.
    import time

    deadline = time.monotonic() + 10
    while True:
        after = stub.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=10)
        if after.status == common_pb2.EXPORTER_STATUS_AVAILABLE or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert after.status == common_pb2.EXPORTER_STATUS_AVAILABLE, after
    assert after.previous_status == common_pb2.EXPORTER_STATUS_LEASE_READY, after
    return {
        "version_before": status.status_version,
        "version_after": after.status_version,
        "end": [ended.success, ended.message],
        "log": seen,
    }


def end_session(host):
    """EndSession, then GetStatus polling until AVAILABLE, as `jmp shell` does at its end."""
    import time

    import grpc
    from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

    stub = jumpstarter_pb2_grpc.ExporterServiceStub(grpc.insecure_channel(f"unix://{host}"))
    ended = stub.EndSession(jumpstarter_pb2.EndSessionRequest(), timeout=10)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = stub.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=5)
        name = common_pb2.ExporterStatus.Name(status.status)
        if not seen or seen[-1] != [name, status.message]:
            seen.append([name, status.message])
        if status.status == common_pb2.EXPORTER_STATUS_AVAILABLE:
            break
        time.sleep(0.1)
    return {"success": ended.success, "statuses": seen}


def descriptors(_host):
    """The serialized FileDescriptorProto of every upstream protocol file, base64."""
    import base64
    from google.protobuf import descriptor_pb2
    from jumpstarter_protocol.jumpstarter.client.v1 import client_pb2
    from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2, kubernetes_pb2, router_pb2

    out = {}
    for module in (common_pb2, kubernetes_pb2, router_pb2, jumpstarter_pb2, client_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        out[proto.name] = base64.b64encode(proto.SerializeToString()).decode()
    return out


def hold_logstream(host):
    """Keeps a LogStream open until the exporter closes the connection."""
    import grpc
    from google.protobuf import empty_pb2
    from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2_grpc

    channel = grpc.insecure_channel(host if ":" in host else f"unix://{host}")
    stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
    records = stub.LogStream(empty_pb2.Empty())
    print("holding", flush=True)
    try:
        for _ in records:
            pass
    except grpc.RpcError as e:
        return {"ended": e.code().name}
    return {"ended": "OK"}


def tls_report(host):
    """GetReport over the standalone TLS listener, trusting the test's CA file."""
    import os

    import grpc
    from google.protobuf import empty_pb2
    from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2_grpc

    with open(os.environ["TEST_CA_FILE"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    channel = grpc.secure_channel(host, creds)
    stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
    metadata = [("x-jumpstarter-passphrase", os.environ["JMP_GRPC_PASSPHRASE"])]
    report = stub.GetReport(empty_pb2.Empty(), timeout=10, metadata=metadata)
    return {"names": [r.labels.get("jumpstarter.dev/name", "") for r in report.reports]}


def lease(_host):
    """Leases the exporter through the controller with the Python lease API and drives it
    through the router."""
    import os

    from jumpstarter.config.client import ClientConfigV1Alpha1

    config = ClientConfigV1Alpha1.from_file(os.environ["CLIENT_CONFIG"])
    with config.lease(exporter_name=os.environ["EXPORTER_NAME"]) as held:
        with held.connect() as client:
            return {
                "lease": held.name,
                "tree": tree(client),
                "power": power(client),
                "serial": serial(client),
                "echo": echo(client),
                "errors": errors(client),
            }


RAW = {"report_shapes": report_shapes, "session_rpcs": session_rpcs, "end_session": end_session, "lease": lease, "tls_report": tls_report, "descriptors": descriptors, "hold_logstream": hold_logstream}


if __name__ == "__main__":
    name = sys.argv[1]
    if name in RAW:
        import os

        result = RAW[name](os.environ.get("JUMPSTARTER_HOST", ""))
    else:
        with env() as client:
            result = SCENARIOS[name](client)
    print(json.dumps({"scenario": name, "result": result}))
