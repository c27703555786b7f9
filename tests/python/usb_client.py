"""Drives the USB power drivers (UsbHubPort, Ykush) of a running jmp-exporter with the
unchanged upstream Python client (0.9.0).

Run as `python usb_client.py SCENARIO NAME...` with JUMPSTARTER_HOST set; NAME is a child of
the exporter root. Prints one JSON line that the Rust test checks; any unexpected failure exits
non-zero with the traceback.
"""

import json
import sys

from jumpstarter.client.core import DriverError, DriverMethodNotImplemented
from jumpstarter.utils.env import env


def power(client, name):
    """on, off, cycle (off, wait, on on the client side) and read, which must be a clean
    'not implemented'."""
    p = getattr(client, name)
    assert type(p).__name__ == "PowerClient", type(p)
    p.on()
    p.off()
    p.cycle(wait=0.1)
    try:
        list(p.read())
    except DriverMethodNotImplemented as e:
        read = str(e)
    else:
        raise AssertionError("read() should be not implemented")
    return {"class": type(p).__name__, "read": read}


def fails(client, name):
    """The exception `off` raises, by class and message."""
    try:
        getattr(client, name).off()
    except DriverError as e:
        return {"type": type(e).__name__, "message": str(e)}
    raise AssertionError(f"{name}.off() should fail")


SCENARIOS = {"power": power, "fails": fails}


if __name__ == "__main__":
    scenario, names = sys.argv[1], sys.argv[2:]
    with env() as client:
        result = {name: SCENARIOS[scenario](client, name) for name in names}
    print(json.dumps({"scenario": scenario, "result": result}))
