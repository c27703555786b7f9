"""Drives jmp-exporter's native SNMPServer with the unchanged upstream Python client (0.9.0)
against the snmpd the Rust test runs. `python snmp_client.py snmp` with JUMPSTARTER_HOST set;
prints one JSON line `{"scenario": ..., "result": ...}`; anything unexpected exits non-zero."""

import sys
import time

from jumpstarter.client.core import DriverError

from hosted_client import run


def failure(call):
    """What the client raises from `call`, by class and message, and how long it took."""
    started = time.monotonic()
    try:
        call()
    except DriverError as e:
        return {"type": type(e).__name__, "message": str(e), "seconds": time.monotonic() - started}
    raise AssertionError("the call should have failed")


def snmp(client):
    """on/off through each security level; read is not there; refused credentials, an agent
    error status and an agent that never answers are errors from the client's point of view,
    and the exporter keeps serving after them."""
    seen = {}
    for name in ("authpriv", "authnopriv", "des"):
        outlet = getattr(client, name)
        outlet.on()
        outlet.off()
        seen[name] = {"class": type(outlet).__name__}
    # The client drops what on/off answer; the raw call shows it.
    seen["answer"] = client.authpriv.call("on")
    seen["read"] = failure(lambda: list(client.authpriv.read()))
    seen["wrong_key"] = failure(client.wrong_key.on)
    seen["unknown_user"] = failure(client.unknown_user.off)
    seen["wrong_priv_key"] = failure(client.wrong_priv_key.on)
    seen["not_writable"] = failure(client.not_writable.on)
    seen["nowhere"] = failure(client.nowhere.on)
    # Still serving, and the agent still switches.
    client.authpriv.off()
    return seen


SCENARIOS = {"snmp": snmp}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
