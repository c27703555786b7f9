"""Drives jmp-exporter's native Shell driver with the unchanged upstream Python client (0.9.0).
`python shell_client.py SCENARIO [ARGS]` against JUMPSTARTER_HOST (or `lease:SCENARIO` through a
lease); prints one JSON line `{"scenario": ..., "result": ...}`."""

import contextlib
import io
import sys
import time

from hosted_client import run

FORBIDDEN = ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "BASH_ENV", "KUBECONFIG",
             "HOME", "LD_AUDIT", "BASH_FUNC_f"]


def error_text(e):
    text = f"{type(e).__name__}: {e}"
    for inner in getattr(e, "exceptions", ()):
        text += " | " + error_text(inner)
    return text


def shell(client):
    """The client's own method call, the chunks as they come (with when), the timeout, and
    each refused environment name."""
    seen = {"class": type(client.sh).__name__}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        seen["code"] = client.sh.greet("a b", "c", GREETING="hi")
    seen["stdout"], seen["stderr"] = out.getvalue(), err.getvalue()
    start = time.monotonic()
    chunks = []
    for stdout, stderr, code in client.sh.streamingcall("call_method", "interleave", {}):
        chunks.append([stdout, stderr, code, round(time.monotonic() - start, 3)])
    seen["chunks"] = chunks
    seen["timeout"] = list(client.sh.streamingcall("call_method", "stubborn", {}))[-1]
    refused = {}
    for name in FORBIDDEN:
        try:
            client.sh.greet(**{name: "x"})
            refused[name] = None
        except Exception as e:
            refused[name] = error_text(e)
    seen["refused"] = refused
    try:
        client.sh.missing()
        seen["missing"] = None
    except Exception as e:
        seen["missing"] = error_text(e)
    return seen


def hang(client, pidfile):
    """Starts a script that waits forever (its child's pid in PIDFILE); the test kills us."""
    for _ in client.sh.streamingcall("call_method", "hang", {}, pidfile):
        pass
    return "the script ended"


SCENARIOS = {"shell": shell, "hang": hang}

if __name__ == "__main__":
    run(SCENARIOS, sys.argv[1], sys.argv[2:])
