"""Drives the GPIO drivers of a running jmp-exporter with the unchanged upstream Python client
(0.9.0): `reset` (DigitalOutput), `button` (DigitalInput) and `power` (PowerSwitch), as in
config/gpio-demo.yaml.

Run as `python gpio_client.py SCENARIO [ARGS...]` with JUMPSTARTER_HOST set. Each scenario asserts
what the client sees and prints one JSON line last, which the Rust test checks as well; any
failure exits non-zero with the traceback. `wait` prints `calling` first, so the test knows the
call is about to be made.
"""

import json
import os
import sys
import time

from jumpstarter.client.core import DriverError, DriverInvalidArgument, DriverMethodNotImplemented
from jumpstarter.utils.env import env


def failure(e):
    return [type(e).__name__, str(e), isinstance(e, ValueError)]


def tree(client):
    classes = {name: type(getattr(client, name)).__name__ for name in ("reset", "button", "power")}
    assert classes == {
        "reset": "DigitalOutputClient",
        "button": "DigitalInputClient",
        "power": "PowerClient",
    }, classes
    return classes


def output(client):
    """Every DigitalOutputClient method: read, on, off, cycle (client-side off/sleep/on)."""
    from jumpstarter_driver_gpiod.client import PinState

    out = client.reset
    states = [out.read()]
    out.on()
    states.append(out.read())
    out.off()
    states.append(out.read())
    out.cycle(wait=0.1)
    states.append(out.read())
    assert all(isinstance(s, PinState) for s in states), states
    return {"states": [str(s) for s in states]}


def power(client):
    """Every PowerClient method on the PowerSwitch: on, off, cycle, read, rescue."""
    p = client.power
    p.off()
    after_off = p.call("read_pin")
    p.on()
    after_on = p.call("read_pin")
    p.cycle(wait=0.1)
    errors = {}
    try:
        list(p.read())
    except DriverMethodNotImplemented as e:
        errors["read"] = failure(e)
    try:
        p.rescue()
    except DriverMethodNotImplemented as e:
        errors["rescue"] = failure(e)
    assert set(errors) == {"read", "rescue"}, errors
    return {"read_pin": [after_off, after_on, p.call("read_pin")], "errors": errors}


def read(client):
    state = client.button.read()
    return {"state": str(state), "value": state.value}


def argument(text):
    if text == "none":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def wait(client, method, *args):
    """One DigitalInputClient wait (`wait_for_active`, `wait_for_inactive`, `wait_for_edge`)."""
    call = getattr(client.button, method)
    print("calling", flush=True)
    start = time.monotonic()
    try:
        call(*[argument(a) for a in args])
        outcome = "ok"
    except DriverError as e:
        outcome = failure(e)
    return {"outcome": outcome, "elapsed": time.monotonic() - start}


def errors(client):
    """Timeouts and a bad edge type, as the client's exceptions."""
    b = client.button
    seen = {}
    start = time.monotonic()
    try:
        b.wait_for_active(0.3)
    except DriverError as e:
        seen["wait_for_active"] = failure(e)
    seen["elapsed"] = time.monotonic() - start
    try:
        b.wait_for_edge("rising", 0.2)
    except DriverError as e:
        seen["wait_for_edge"] = failure(e)
    try:
        b.wait_for_edge("sideways", 1)
    except DriverInvalidArgument as e:
        seen["edge_type"] = failure(e)
    assert set(seen) == {"wait_for_active", "elapsed", "wait_for_edge", "edge_type"}, seen
    seen["still_reads"] = str(b.read())
    return seen


def gone(client):
    """Every kind of call while the chip is gone: each must raise, none may hang."""
    seen = {}
    for name, call in (
        ("reset.on", lambda: client.reset.on()),
        ("reset.read", lambda: client.reset.read()),
        ("power.off", lambda: client.power.off()),
        ("button.read", lambda: client.button.read()),
        ("button.wait_for_active", lambda: client.button.wait_for_active(5)),
    ):
        start = time.monotonic()
        try:
            call()
            seen[name] = "no error"
        except DriverError as e:
            seen[name] = failure(e)
        seen[name + ".seconds"] = time.monotonic() - start
    return seen


SCENARIOS = {f.__name__: f for f in (tree, output, power, read, wait, errors, gone)}


def codes(host):
    """The gRPC status codes behind those exceptions, and the wire type of read_pin."""
    import grpc
    from google.protobuf import empty_pb2, struct_pb2
    from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

    stub = jumpstarter_pb2_grpc.ExporterServiceStub(grpc.insecure_channel(f"unix://{host}"))
    report = stub.GetReport(empty_pb2.Empty(), timeout=10)
    uuid = {r.labels.get("jumpstarter.dev/name"): r.uuid for r in report.reports}

    def value(v):
        out = struct_pb2.Value()
        if v is None:
            out.null_value = struct_pb2.NULL_VALUE
        elif isinstance(v, str):
            out.string_value = v
        else:
            out.number_value = v
        return out

    def code(name, method, *args, streaming=False):
        request = dict(uuid=uuid[name], method=method, args=[value(a) for a in args])
        try:
            if streaming:
                list(stub.StreamingDriverCall(jumpstarter_pb2.StreamingDriverCallRequest(**request), timeout=10))
                return ["OK"]
            result = stub.DriverCall(jumpstarter_pb2.DriverCallRequest(**request), timeout=10).result
            return ["OK", result.WhichOneof("kind"), json.loads(json.dumps(getattr(result, result.WhichOneof("kind"))))]
        except grpc.RpcError as e:
            return [e.code().name, e.details()]

    return {
        "timeout": code("button", "wait_for_active", 0.2),
        "edge_timeout": code("button", "wait_for_edge", "falling", 0.2),
        "bad_edge": code("button", "wait_for_edge", "sideways", None),
        "power_read": code("power", "read", streaming=True),
        "read_pin": code("reset", "read_pin"),
        "wrong_kind": code("power", "on", streaming=True),
    }


def lease(_host):
    """Leases the exporter through the controller (CLIENT_CONFIG, EXPORTER_NAME) and drives the
    outputs through the router."""
    from jumpstarter.config.client import ClientConfigV1Alpha1

    config = ClientConfigV1Alpha1.from_file(os.environ["CLIENT_CONFIG"])
    with config.lease(exporter_name=os.environ["EXPORTER_NAME"]) as held:
        with held.connect() as client:
            return {"tree": tree(client), "output": output(client), "power": power(client)}


def control(command):
    """One command to the exporter's mock GPIO control socket (GPIO_CONTROL), as the board or
    another program on the host would act."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.environ["GPIO_CONTROL"])
        s.sendall(command.encode() + b"\n")
        return s.makefile().readline().strip()


def held(client):
    """A relay on a GPIO line another program holds: the rest of the exporter works, the relay
    says who holds the line, and works once that program lets go (no restart)."""
    client.power.on()
    try:
        client.relay.on()
        busy = None
    except DriverError as e:
        busy = [type(e).__name__, str(e)]
    client.power.off()
    released = control("unhold c1 0")
    client.relay.on()
    client.relay.off()
    return {"busy": busy, "released": released}


def held_lease(_host):
    """`held` through a lease from the controller (CLIENT_CONFIG, EXPORTER_NAME)."""
    from jumpstarter.config.client import ClientConfigV1Alpha1

    config = ClientConfigV1Alpha1.from_file(os.environ["CLIENT_CONFIG"])
    with config.lease(exporter_name=os.environ["EXPORTER_NAME"]) as lease:
        with lease.connect() as client:
            return held(client)


SCENARIOS["held"] = held
RAW = {"codes": codes, "lease": lease, "held_lease": held_lease}


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    if name in RAW:
        result = RAW[name](os.environ.get("JUMPSTARTER_HOST", ""))
    else:
        with env() as client:
            result = SCENARIOS[name](client, *args)
    print(json.dumps({"scenario": name, "result": result}))
