"""The Flower ClientApp: a forwarder from the SuperNode to the organization's party host.

Flower starts this app afresh for each message, so it holds nothing: it hands the bundle to
the long-lived party host (:mod:`vfl.deploy.host`) on the Unix socket named in the node's
``--node-config`` (``socket``) and returns the outcomes. It imports no JAX and no key
material; the party, its keys and its compiled programs stay warm in the host.
"""

from __future__ import annotations

import os
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from vfl.deploy.host import forward

_IMPORTED = time.time()
app = ClientApp()


def process_start() -> float:
    """When this process started (seconds since the epoch; Linux), for the timing profile."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return float("nan")

#: Record and field names of a bundle and of its outcomes in a Flower message.
RECORD, BUNDLE, OUTCOMES, TIMING = "vfl", "bundle", "outcomes", "timing"


@app.query()
def relay(msg: Message, context: Context) -> Message:
    path = context.node_config.get("socket")
    if not isinstance(path, str) or not path:
        raise ValueError(
            "this SuperNode has no 'socket' in its --node-config; start it with "
            "`vfl deploy node`, which passes the party host's socket"
        )
    entered = time.time()
    outcomes = forward(path, bytes(msg.content[RECORD][BUNDLE]))
    # Where this message's time went on the node (the coordinator's profile): process start,
    # module imports done, relay entered, host answered.
    timing = [process_start(), _IMPORTED, entered, time.time()]
    return Message(
        RecordDict({RECORD: ConfigRecord({OUTCOMES: outcomes, TIMING: timing})}), reply_to=msg
    )
