"""The Flower ServerApp: the coordinator of a deployed run.

``flwr run`` starts it on the SuperLink's machine with the run config of the Flower app that
:func:`vfl.deploy.app.write_app` writes. It connects to the parties' nodes
(:class:`~vfl.deploy.transport.FlowerTransport`), runs the job the run config names (the
same coordinator scripts as in one process: PSI, the vertical trainer, the horizontal server,
the erasure step) and writes the job's result as JSON on its own machine. Its log, which
``flwr run --stream`` shows on the operator's terminal, says what happens as it happens.

Jobs are looked up in :data:`JOBS` by name; nothing is imported by a name that came in a
run config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from vfl.deploy.host import PROFILE, SAVE, resolve, write_json
from vfl.deploy.transport import FlowerTransport

#: Job name -> ``module:function(transport, config, log) -> dict``.
JOBS = {
    "vertical": "vfl.vertical.deployed:run_job",
    "horizontal": "horizontal.deployed:run_job",
    "cox": "vfl.survival.deployed:run_job",
}

app = ServerApp()


def job_function(name: str):
    return resolve(JOBS, name, "job")


def execute(job, transport: FlowerTransport, config: dict, log=print) -> dict:
    """Run ``job`` (a function, or a name in :data:`JOBS`), then ask every party to save its
    state on its own machine (unless ``config["save"]`` is false) and for its time profile;
    the job's result with ``saved`` and ``profile`` added."""
    fn = job_function(job) if isinstance(job, str) else job
    result = fn(transport, config, log)
    parties = list(config["parties"])
    if config.get("save", True):
        result["saved"] = transport.ask_all(SAVE, parties)
    result["profile"] = transport.ask_all(PROFILE, parties)
    return result


def log(text: str) -> None:
    print(f"[vfl] {text}", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    config = json.loads(Path(str(rc["job-config"])).read_text())
    captured: list[bytes] = []
    capture_path = str(rc.get("capture", "") or "")
    transport = FlowerTransport(
        grid,
        reply_timeout=float(rc.get("reply-timeout", 120.0)),
        capture=captured.append if capture_path else None,
        log=log,
    )
    t0 = time.perf_counter()
    transport.connect(list(config["parties"]), wait=float(rc.get("connect-timeout", 120.0)))
    result = execute(str(rc["job"]), transport, config, log)
    result["deployment"] = {
        "seconds": time.perf_counter() - t0,
        "round_trips": transport.round_trips,
        "wave_seconds": transport.waits,
        "node_timings": transport.timings,
        "network_bytes": transport.network_bytes,
        "transcript": transport.transcript.summary(),
        "sealed_messages": sum(e.sealed for e in transport.transcript),
        "messages": len(transport.transcript),
    }
    if capture_path:
        Path(capture_path).write_bytes(b"".join(
            len(b).to_bytes(8, "big") + b for b in captured
        ))
    write_json(Path(str(rc["result"])), result)
    log(f"done in {result['deployment']['seconds']:.1f} s; result written to {rc['result']}")
