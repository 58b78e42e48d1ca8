"""SecAgg+ benchmark: seconds per aggregation round with SecAgg+ against plain aggregation of
the same quantized vectors, at 10, 100 and 500 clients and 10k and 1M parameters, with 10%
of the clients dropping out; Flower's SecAgg+ on the same workload side by side.

The workload of a cell (``n`` clients, ``L`` parameters): the cohort's setup exactly as a
training round makes it (``SecAggConfig().setup``: ``k`` and ``t`` from ``n`` for 10% dropout
and 10% corruption, Harary graph, ring ``Z_2^32``), one uniform update in ``[-1, 1]^L`` per
client quantized with the cohort's quantizer, and ``ceil(0.1 n)`` clients spread over the
ring that drop out: the first half (rounded up) after sending their shares and before their
masked input (their pairwise masks are rebuilt), the rest after their masked input and before
answering the unmask request (their self-masks are rebuilt from the others' shares).

Measured, in one process (all clients and the server run one after the other, so the total
is the protocol's whole computation; on separate machines the clients' parts run in
parallel):

* **plain**: summing the survivors' quantized vectors (``ring_sum``) and decoding the sum:
  what the server does without secure aggregation;
* **SecAgg+**: the four rounds of :mod:`horizontal.secagg.protocol`, every client's and the
  server's step functions (``horizontal.secagg.simulate`` with a timer around each call),
  decoding included; the server's share and the mean and largest per-client time are
  reported separately. Before every timed round the server's caches (Lagrange coefficients)
  are cleared: each round is timed as a fresh server would run it. The unmasked sum is
  checked bitwise against the plain one.

Bytes per client are the protocol messages' payloads as ``vfl.core.wire`` encodes them, sent
(advertised keys, encrypted shares, masked input, revealed shares) and received (neighbours'
keys, ciphertexts addressed to it, the unmask request), averaged over clients.

Flower: ``flwr.simulation.run_simulation`` needs Ray (its simulation engine always builds a
Ray backend), which is not installed, so Flower's own SecAgg+ -- the legacy
``SecAggPlusWorkflow`` driving ``secaggplus_mod`` clients (``NumPyClient`` returning the same
update) -- runs in this process through a loopback ``Grid`` that hands every message, deep
copied as a transport would, to the node's ``ClientApp``; the same dropouts are simulated by
nodes that do not reply from the corresponding stage on (``num_shares = k + 1``,
``reconstruction_threshold = t``, ``clipping_range = 1``). Its plain counterpart is Flower's
default fit round on the same loopback. The copies are timed and left out of Flower's
seconds.

    PYTHONPATH=. python benchmarks/secagg.py --quick --json /tmp/secagg.json
    PYTHONPATH=. python benchmarks/secagg.py --from-json /tmp/secagg.json \
        --markdown docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.markdown_doc import (  # noqa: E402
    add_output_flags,
    emit,
    markers,
    section,
    table_head,
    write_section,
)
from horizontal.secagg import masks, shamir  # noqa: E402
from horizontal.secagg import protocol as P  # noqa: E402
from horizontal.secagg.config import SecAggConfig  # noqa: E402
from vfl.core import wire  # noqa: E402

MD_BEGIN, MD_END = markers("secagg")
DROPOUT = 0.1
CLIENTS = (10, 100, 500)
PARAMS = (10_000, 1_000_000)
GOAL = {"clients": 100, "params": 10_000, "added_seconds": 0.5}
#: Flower cells run by default (seconds per cell measured here: 10 x 10k ~1 s, 100 x 10k
#: ~26 s); 500 x 1M is left out unless --flower-all (its pure-Python Shamir and per-pair
#: numpy PRG would take several minutes).
FLOWER_QUICK = {(10, 10_000), (100, 10_000), (10, 1_000_000)}
FLOWER_FULL = FLOWER_QUICK | {(100, 1_000_000), (500, 10_000)}
STAGE_NAMES = ("no masked input", "no unmask answer")


# -- the workload ---------------------------------------------------------------------------
def workload(n: int, length: int, seed: int = 0):
    """The setup, quantizer, quantized vectors and dropouts of one cell."""
    cohort = [f"client_{i:03d}" for i in range(n)]
    setup, quantizer = SecAggConfig(dropout=DROPOUT, corruption=0.1).setup(
        cohort, round=1, attempt=0, length=length, context="secagg-benchmark")
    rng = np.random.default_rng(seed)
    vectors = {u: quantizer.quantize(rng.uniform(-1.0, 1.0, length), n) for u in cohort}
    d = math.ceil(DROPOUT * n)
    picked = list(setup.graph.order)[:: max(1, n // d)][:d]
    drops = {u: 2 if i < (d + 1) // 2 else 3 for i, u in enumerate(picked)}
    return setup, quantizer, vectors, drops


def _clocks() -> np.ndarray:
    """Wall and CPU seconds (this process; everything measured is single-threaded)."""
    return np.array([time.perf_counter(), time.process_time()])


def run_plain(setup, quantizer, vectors, included) -> tuple[np.ndarray, np.ndarray]:
    t0 = _clocks()
    total = masks.ring_sum((vectors[u] for u in included), setup.length, setup.bits)
    quantizer.dequantize(total)
    return _clocks() - t0, total


def run_secagg(setup, quantizer, vectors, drops, *, count_bytes: bool = False) -> dict:
    """:func:`horizontal.secagg.simulate` with a timer around every call."""
    names = setup.graph.names
    client_s = {u: np.zeros(2) for u in names}  # (wall, cpu) seconds
    server_s = np.zeros(2)
    sent = dict.fromkeys(names, 0)
    received = dict.fromkeys(names, 0)

    def alive(stage):
        return [u for u in names if drops.get(u, math.inf) > stage]

    def client(u, fn, *args):
        t0 = _clocks()
        out = fn(*args)
        client_s[u] += _clocks() - t0
        if count_bytes:
            sent[u] += len(wire.dumps(out[1]))
            if len(args) > 1 and isinstance(args[1], dict):
                received[u] += len(wire.dumps(args[1]))
        return out

    def server(fn, *args):
        t0 = _clocks()
        out = fn(*args)
        server_s[:] += _clocks() - t0
        return out

    state = server(P.server_start, setup)
    clients, msgs = {}, {}
    for u in alive(0):
        clients[u], msgs[u] = client(u, P.client_advertise, setup, u)
    state, to = server(P.server_collect_keys, state, msgs)
    msgs = {}
    for u in alive(1):
        clients[u], msgs[u] = client(u, P.client_share_keys, clients[u], to[u])
    state, to = server(P.server_collect_shares, state, msgs)
    msgs = {}
    for u in alive(2):
        clients[u], msgs[u] = client(u, P.client_masked_input, clients[u], to[u], vectors[u])
    state, to = server(P.server_collect_masked, state, msgs)
    msgs = {}
    for u in alive(3):
        clients[u], msgs[u] = client(u, P.client_unmask, clients[u], to[u])
    result = server(P.server_unmask, state, msgs)
    t0 = _clocks()
    quantizer.dequantize(result.total)
    server_s += _clocks() - t0
    per_client = np.array([client_s[u] for u in names])  # (client, wall/cpu)
    total = server_s + per_client.sum(axis=0)
    return {"result": result, "total": float(total[0]), "server": float(server_s[0]),
            "cpu_total": float(total[1]), "cpu_server": float(server_s[1]),
            "client_mean": float(per_client[:, 0].mean()),
            "client_max": float(per_client[:, 0].max()),
            "bytes_sent": float(np.mean([sent[u] for u in names])),
            "bytes_received": float(np.mean([received[u] for u in names]))}


def measure_cell(n: int, length: int, reps: int, console: Console) -> dict:
    setup, quantizer, vectors, drops = workload(n, length)
    plain, secagg = [], []
    equal = True
    for rep in range(reps):
        getattr(shamir, "clear_caches", lambda: None)()  # older versions: no caches
        s = run_secagg(setup, quantizer, vectors, drops, count_bytes=rep == 0)
        p_s, p_total = run_plain(setup, quantizer, vectors, s["result"].included)
        equal &= bool(np.array_equal(p_total, s["result"].total))
        plain.append(p_s)  # (wall, cpu)
        secagg.append(s)
        if rep == 0:
            bytes_sent, bytes_received = s["bytes_sent"], s["bytes_received"]
    mid = sorted(secagg, key=lambda r: r["total"])[len(secagg) // 2]  # the median round
    plain_s = statistics.median(p[0] for p in plain)
    plain_cpu = statistics.median(p[1] for p in plain)
    cpu = statistics.median(r["cpu_total"] for r in secagg)
    row = {
        "clients": n, "params": length, "dropout": DROPOUT,
        "dropped_before_masked_input": sum(1 for s in drops.values() if s == 2),
        "dropped_after_masked_input": sum(1 for s in drops.values() if s == 3),
        "k": setup.graph.k, "t": setup.t, "complete_graph": setup.graph.complete,
        "rounds_timed": reps,
        "plain_seconds": plain_s, "secagg_seconds": mid["total"],
        "added_seconds": mid["total"] - plain_s,
        "ratio": mid["total"] / plain_s if plain_s > 0 else float("inf"),
        "server_seconds": mid["server"], "server_share": mid["server"] / mid["total"],
        "plain_cpu_seconds": plain_cpu, "secagg_cpu_seconds": cpu,
        "added_cpu_seconds": cpu - plain_cpu,
        "secagg_seconds_min": min(r["total"] for r in secagg),
        "secagg_seconds_max": max(r["total"] for r in secagg),
        "server_cpu_seconds": statistics.median(r["cpu_server"] for r in secagg),
        "client_seconds_mean": mid["client_mean"], "client_seconds_max": mid["client_max"],
        "bytes_sent_per_client": bytes_sent, "bytes_received_per_client": bytes_received,
        "plain_bytes_per_client": length * np.dtype(setup.dtype).itemsize,
        "sum_equal_to_plain": equal,
    }
    console.print(f"  {n:>3} clients x {length:>9,} params: plain {plain_s:.4f} s, SecAgg+ "
                  f"{mid['total']:.3f} s (server {mid['server']:.3f} s), {reps} round(s)")
    return row


# -- where the time goes ---------------------------------------------------------------------
#: (category, how to recognise its functions in cProfile's keys): cumulative time of the
#: outermost matching function, so nested calls are not counted twice.
CATEGORIES = (
    ("X25519 agreements", lambda f, n: n in ("agree_many", "agree") and f.endswith("keys.py")),
    ("X25519 key generation", lambda f, n: n == "generate" and f.endswith("keys.py")),
    ("HKDF", lambda f, n: n == "_hkdf"),
    ("ChaCha20-Poly1305 shares", lambda f, n: n in ("encrypt_share", "decrypt_share")),
    ("ChaCha20 masks + ring adds", lambda f, n: f.endswith("masks.py") and n in (
        "_add", "self_mask", "pairwise_mask", "ring_sum")),
    ("Shamir split", lambda f, n: n in ("split_many", "split") and f.endswith("shamir.py")),
    ("Shamir reconstruct", lambda f, n: n in ("reconstruct_many", "reconstruct")
     and f.endswith("shamir.py")),
    ("share encoding / checks", lambda f, n: f.endswith("shamir.py") and n in (
        "from_bytes", "to_bytes", "__init__", "__post_init__")),
)


def profile_cell(n: int, length: int, top: int = 15) -> dict:
    """cProfile of one SecAgg+ round: the top functions by own time, and categories."""
    setup, quantizer, vectors, drops = workload(n, length)
    getattr(shamir, "clear_caches", lambda: None)()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    run_secagg(setup, quantizer, vectors, drops)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # own times add up to the profiled time
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    functions = [{"function": f"{os.path.basename(f)}:{line}({name})" if f != "~" else name,
                  "calls": int(v[1]), "own_seconds": v[2], "cumulative_seconds": v[3],
                  "share": v[2] / total} for (f, line, name), v in entries]
    categories = {}
    for label, match in CATEGORIES:
        hits = {key for key in stats.stats if match(key[0], key[2])}
        # outermost only: drop a hit whose callers include another hit
        outer = [k for k in hits if not (set(stats.stats[k][4]) & hits)]
        categories[label] = sum(stats.stats[k][3] for k in outer)
    categories["everything else (protocol checks, quantize, Python)"] = max(
        0.0, total - sum(categories.values()))
    return {"cell": {"clients": n, "params": length}, "profiled_seconds": total,
            "wall_seconds_under_profiler": wall,
            "categories": {k: {"seconds": v, "share": v / total} for k, v in categories.items()},
            "top_functions": functions}


# -- Flower's SecAgg+ ------------------------------------------------------------------------
def flower_cell(n: int, length: int, k: int, t: int) -> dict:
    """Flower's legacy SecAgg+ workflow and its plain fit round on the loopback grid."""
    import copy
    import logging
    from uuid import uuid4

    import flwr
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.serverapp import Grid
    from flwr.supercore.logger import FLOWER_LOGGER
    from flwr.supercore.task_identity import TaskIdentity

    FLOWER_LOGGER.setLevel(logging.ERROR)
    TaskIdentity.run_id, TaskIdentity.task_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    ids = list(range(1001, 1001 + n))
    rng = np.random.default_rng(0)
    updates = {i: rng.uniform(-1.0, 1.0, length).astype(np.float32) for i in ids}
    d = math.ceil(DROPOUT * n)
    picked = ids[:: max(1, n // d)][:d]
    early = set(picked[: (d + 1) // 2])  # silent from "collect_masked_vectors" on
    late = set(picked[(d + 1) // 2:])  # silent at "unmask"

    class Loopback(Grid):
        def __init__(self, app, silent):
            self.app, self.silent, self.replies = app, silent, {}
            self.contexts = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(),
                                        run_config={}) for i in ids}
            self.client_seconds = self.copy_seconds = 0.0

        def set_run(self, run):
            # Grid's abstract interface; the SecAgg+ workflow measured here never reads a Run.
            self._run = run

        @property
        def run(self):
            raise RuntimeError("the loopback grid carries no Flower Run; the SecAgg+ workflow "
                               "benchmarked here does not read one")

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return list(ids)

        def push_messages(self, messages):
            out = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = mid = str(uuid4())
                out.append(mid)
                records = msg.content.config_records
                stage = (records[RECORD_KEY_CONFIGS].get(SecAggKey.STAGE)
                         if RECORD_KEY_CONFIGS in records else "fit")
                if self.silent(msg.metadata.dst_node_id, stage):
                    continue
                t0 = time.perf_counter()
                delivered = copy.deepcopy(msg)  # each node gets its own copy, as over a wire
                t1 = time.perf_counter()
                self.replies[mid] = self.app(delivered, self.contexts[msg.metadata.dst_node_id])
                self.copy_seconds += t1 - t0
                self.client_seconds += time.perf_counter() - t1
            return out

        def pull_messages(self, message_ids):
            return [self.replies.pop(m) for m in message_ids if m in self.replies]

        def send_and_receive(self, messages, *, timeout=None):
            return self.pull_messages(self.push_messages(messages))

    class Client(NumPyClient):
        def __init__(self, nid):
            self.nid = nid

        def fit(self, parameters, config):
            return [updates[self.nid]], 1, {}

    def one_round(secure: bool) -> dict:
        if secure:
            def silent(nid, stage):
                return (nid in early and stage in ("collect_masked_vectors", "unmask")) or (
                    nid in late and stage == "unmask")
        else:
            def silent(nid, stage):
                return nid in early or nid in late
        app = ClientApp(client_fn=lambda ctx: Client(ctx.node_id).to_client(),
                        mods=[secaggplus_mod] if secure else [])
        grid = Loopback(app, silent)
        manager = SimpleClientManager()
        for i in ids:
            manager.register(GridClientProxy(i, grid, 1))
        strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n,
                          fraction_evaluate=0.0)
        context = LegacyContext(
            Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: 1, Key.START_TIME: time.time()})
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([np.zeros(length, np.float32)]), keep_input=True)
        workflow = (SecAggPlusWorkflow(num_shares=k + 1, reconstruction_threshold=t,
                                       clipping_range=1.0) if secure else default_fit_workflow)
        t0 = time.perf_counter()
        workflow(grid, context)
        wall = time.perf_counter() - t0
        agg = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))[0]
        included = [i for i in ids if i not in early and (secure or i not in late)]
        ref = np.mean([updates[i] for i in included], axis=0, dtype=np.float64)
        return {"seconds": wall - grid.copy_seconds, "client_seconds": grid.client_seconds,
                "copy_seconds": grid.copy_seconds, "included": len(included),
                "max_abs_error_of_mean": float(np.max(np.abs(agg - ref)))}

    secure = one_round(True)
    plain = one_round(False)
    return {"flower_version": flwr.__version__, "secagg": secure, "plain": plain,
            "ratio": secure["seconds"] / plain["seconds"]}


# -- output ----------------------------------------------------------------------------------
def print_rows(res: dict, console: Console) -> None:
    t = Table(title=f"seconds per aggregation round, {int(DROPOUT * 100)}% dropout "
              "(all clients + server, one process)")
    for col in ("clients", "params", "k", "t", "plain s", "SecAgg+ s", "added s", "ratio",
                "server s", "per client s", "KiB sent/client", "equal"):
        t.add_column(col)
    for r in res["rows"]:
        t.add_row(str(r["clients"]), f"{r['params']:,}", str(r["k"]), str(r["t"]),
                  f"{r['plain_seconds']:.4f}", f"{r['secagg_seconds']:.3f}",
                  f"{r['added_seconds']:.3f}", f"{r['ratio']:.0f}x",
                  f"{r['server_seconds']:.3f}", f"{r['client_seconds_mean']:.4f}",
                  f"{r['bytes_sent_per_client'] / 1024:,.1f}",
                  "yes" if r["sum_equal_to_plain"] else "NO")
    console.print(t)
    for note in res.get("skipped", []):
        console.print(f"skipped: {note}")
    goal = res.get("goal")
    if goal:
        console.print(f"goal ({goal['clients']} clients x {goal['params']:,} params, "
                      f"{int(DROPOUT * 100)}% dropout): SecAgg+ adds "
                      f"{goal['added_cpu_seconds']:.3f} CPU s ({goal['added_seconds']:.3f} s "
                      f"wall) per round (limit {goal['limit']} s): "
                      f"{'met' if goal['met'] else 'NOT met'}")
    speed = res.get("machine_speed")
    if speed:
        console.print(_speed_line(speed))
    fl = res.get("flower", {})
    if fl.get("rows"):
        f = Table(title=f"Flower {fl.get('version', '')} SecAgg+ (legacy workflow, loopback grid)"
                  " vs ours, same workload")
        for col in ("clients", "params", "Flower plain s", "Flower SecAgg+ s", "Flower ratio",
                    "Flower clients s", "ours SecAgg+ s", "Flower / ours"):
            f.add_column(col)
        for r in fl["rows"]:
            f.add_row(str(r["clients"]), f"{r['params']:,}", f"{r['plain_seconds']:.3f}",
                      f"{r['secagg_seconds']:.2f}", f"{r['ratio']:.0f}x",
                      f"{r['client_seconds']:.2f}", f"{r['ours_secagg_seconds']:.3f}",
                      f"{r['flower_over_ours']:.0f}x")
        console.print(f)
    for note in fl.get("notes", []):
        console.print(f"Flower: {note}")
    prof = res.get("profile")
    if prof:
        p = Table(title=f"where a SecAgg+ round's time goes ({prof['cell']['clients']} clients x "
                  f"{prof['cell']['params']:,} params, cProfile, "
                  f"{prof['profiled_seconds']:.3f} s profiled)")
        for col in ("category", "seconds", "share"):
            p.add_column(col)
        for k, v in prof["categories"].items():
            p.add_row(k, f"{v['seconds']:.3f}", f"{100 * v['share']:.0f}%")
        console.print(p)


def markdown_section(res: dict) -> str:
    lines = [f"Seconds per aggregation round, {int(DROPOUT * 100)}% of the clients dropping out "
             "(half before their masked input, half after it); all clients and the server in "
             "one process, one after the other (median of the timed rounds). *plain*: summing "
             "the survivors' quantized vectors and decoding; *SecAgg+*: the four rounds, every "
             "client's and the server's work. The unmasked sum equals the plain sum bitwise in "
             "every cell. Bytes are the wire-encoded protocol messages, averaged over all "
             "clients, dropouts included (which send less).", "",
             *table_head("clients", "params", "k", "t", "plain s", "SecAgg+ s",
                         "added s (CPU s)", "ratio", "server s (share)", "per client s (max)",
                         "KiB sent / received per client (plain)", "rounds")]
    for r in res["rows"]:
        lines.append(
            f"| {r['clients']} | {r['params']:,} | {r['k']} | {r['t']} | "
            f"{r['plain_seconds']:.4f} | {r['secagg_seconds']:.3f} | {r['added_seconds']:.3f} "
            f"({r['added_cpu_seconds']:.3f}) | "
            f"{r['ratio']:,.0f}x | {r['server_seconds']:.3f} ({100 * r['server_share']:.0f}%) | "
            f"{r['client_seconds_mean']:.4f} ({r['client_seconds_max']:.4f}) | "
            f"{r['bytes_sent_per_client'] / 1024:,.1f} / "
            f"{r['bytes_received_per_client'] / 1024:,.1f} "
            f"({r['plain_bytes_per_client'] / 1024:,.1f}) | {r['rounds_timed']} |")
    for note in res.get("skipped", []):
        lines += ["", f"Not measured: {note}."]
    speed = res.get("machine_speed")
    if speed:
        lines += ["", _speed_line(speed) + "; wall seconds carry that load, CPU seconds (this "
                  "process's, everything measured being single-threaded) much less."]
    goal = res.get("goal")
    if goal:
        lines += ["", f"**Goal** (issue #13): SecAgg+ adds at most {goal['limit']} s per round at "
                  f"{goal['clients']} clients, {goal['params']:,} parameters, "
                  f"{int(DROPOUT * 100)}% dropout: it adds **{goal['added_cpu_seconds']:.3f} CPU "
                  f"s** ({goal['added_seconds']:.3f} s wall) here, all {goal['clients']} clients' "
                  f"and the server's work together, median of {goal['rounds']} rounds (wall "
                  f"{goal['secagg_seconds_min']:.3f} - {goal['secagg_seconds_max']:.3f} s) "
                  f"({'met' if goal['met'] else 'not met'}); the "
                  f"server's part is {goal['server_seconds']:.3f} s and a client's "
                  f"{goal['client_seconds']:.4f} s on average."]
    prof = res.get("profile")
    if prof:
        c = prof["cell"]
        lines += ["", f"Where the time of one SecAgg+ round goes ({c['clients']} clients, "
                  f"{c['params']:,} parameters, cProfile: {prof['profiled_seconds']:.3f} s "
                  "profiled; cumulative time of the outermost call of each kind):", "",
                  *table_head("category", "seconds", "share")]
        for k, v in prof["categories"].items():
            lines.append(f"| {k} | {v['seconds']:.3f} | {100 * v['share']:.0f}% |")
        lines += ["", "Top functions by own time:", "",
                  *table_head("function", "calls", "own s", "share")]
        for f in prof["top_functions"][:10]:
            lines.append(f"| `{f['function']}` | {f['calls']} | {f['own_seconds']:.3f} | "
                         f"{100 * f['share']:.0f}% |")
    fl = res.get("flower", {})
    if fl.get("rows"):
        lines += ["", f"Flower {fl['version']}'s SecAgg+ on the same workload (legacy "
                  "`SecAggPlusWorkflow` with `secaggplus_mod` clients, `num_shares = k + 1`, "
                  "`reconstruction_threshold = t`, in this process through a loopback `Grid`; "
                  "message copies left out), against Flower's own plain fit round and ours:", "",
                  *table_head("clients", "params", "Flower plain s", "Flower SecAgg+ s",
                              "Flower ratio", "Flower clients s", "ours SecAgg+ s",
                              "Flower / ours")]
        for r in fl["rows"]:
            lines.append(
                f"| {r['clients']} | {r['params']:,} | {r['plain_seconds']:.3f} | "
                f"{r['secagg_seconds']:.2f} | {r['ratio']:,.0f}x | {r['client_seconds']:.2f} | "
                f"{r['ours_secagg_seconds']:.3f} | {r['flower_over_ours']:.0f}x |")
    for note in fl.get("notes", []):
        lines += ["", f"Flower: {note}"]
    return section(MD_BEGIN, MD_END, res, lines)


def _plain(obj):
    """numpy scalars as Python numbers in the JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _speed_line(speed: dict) -> str:
    b, a = speed["before"], speed["after"]
    return (f"Machine speed: one X25519 agreement took {b['x25519_exchange_us']:.0f} us before "
            f"and {a['x25519_exchange_us']:.0f} us after the run (1-minute load average "
            f"{b['load_average_1min']:.1f} -> {a['load_average_1min']:.1f} on "
            f"{os.cpu_count()} cores shared with other work)")


def write_markdown(res: dict, path: str) -> None:
    write_section(path, MD_BEGIN, MD_END, markdown_section(res))


# -- main ------------------------------------------------------------------------------------
def machine_speed() -> dict:
    """How fast this machine is right now: one X25519 agreement (the unit of most of a
    round's work) and the 1-minute load average (the cores are shared with other work)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key, peer = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    best = min(_timed(lambda: [key.exchange(peer) for _ in range(200)]) for _ in range(5))
    return {"x25519_exchange_us": best / 200 * 1e6, "load_average_1min": os.getloadavg()[0]}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reps_for(n: int, length: int, quick: bool) -> int:
    if (n, length) == (GOAL["clients"], GOAL["params"]):
        return 9  # the goal's cell: the median of many rounds, the cores being shared
    work = n * length
    if work <= 1_000_000:
        return 3 if quick else 7
    if work <= 10_000_000:
        return 1 if quick else 3
    return 1


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, no 500 x 1M cell, fewer Flower cells (a few minutes)")
    add_output_flags(ap, "SecAgg+")
    ap.add_argument("--clients", type=int, nargs="*", default=list(CLIENTS))
    ap.add_argument("--params", type=int, nargs="*", default=list(PARAMS))
    ap.add_argument("--no-flower", action="store_true", help="skip Flower's SecAgg+")
    ap.add_argument("--flower-all", action="store_true",
                    help="run Flower on every measured cell (500 x 1M takes many minutes)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = ap.parse_args(argv)
    console = Console(highlight=False)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        res = measure(args, console)
    return emit(res, args, console, lambda r: print_rows(r, console), write_markdown,
                json_default=_plain)


def measure(args, console: Console) -> dict:
    started = time.perf_counter()
    speed_before = machine_speed()
    run_secagg(*workload(10, 1000))  # warm imports and numpy
    rows, skipped = [], []
    cells = [(n, length) for length in args.params for n in args.clients]
    for n, length in cells:
        if args.quick and n >= 500 and length >= 1_000_000:
            skipped.append(f"{n} clients x {length:,} parameters (left out by --quick; about "
                           "a minute and 4 GiB of vectors without it)")
            continue
        rows.append(measure_cell(n, length, reps_for(n, length, args.quick), console))
    res = {"benchmark": "secagg",
           "command": "python benchmarks/secagg.py" + (" --quick" if args.quick else ""),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                      f"{platform.python_version()}, numpy {np.__version__}",
           "rows": rows, "skipped": skipped}
    goal = next((r for r in rows if r["clients"] == GOAL["clients"]
                 and r["params"] == GOAL["params"]), None)
    if goal:
        res["goal"] = {"clients": goal["clients"], "params": goal["params"],
                       "limit": GOAL["added_seconds"], "added_seconds": goal["added_seconds"],
                       "added_cpu_seconds": goal["added_cpu_seconds"],
                       # CPU seconds: the cores are shared, wall time carries others' load
                       "met": goal["added_cpu_seconds"] <= GOAL["added_seconds"],
                       "met_wall": goal["added_seconds"] <= GOAL["added_seconds"],
                       "server_seconds": goal["server_seconds"],
                       "client_seconds": goal["client_seconds_mean"],
                       "rounds": goal["rounds_timed"],
                       "secagg_seconds_min": goal["secagg_seconds_min"],
                       "secagg_seconds_max": goal["secagg_seconds_max"]}
    if not args.no_profile:
        console.print("profiling one round (cProfile)")
        res["profile"] = profile_cell(GOAL["clients"], GOAL["params"])
    if not args.no_flower:
        res["flower"] = flower(rows, args, console)
    res["machine_speed"] = {"before": speed_before, "after": machine_speed()}
    res["benchmark_seconds"] = time.perf_counter() - started
    return res


def flower(rows, args, console: Console) -> dict:
    notes = [
        "`flwr.simulation.run_simulation` cannot run here: its simulation engine always "
        "builds a Ray backend and `ray` is not installed (flwr without the `simulation` "
        "extra; it exits with Flower's code 701, 'Extra dependencies required for simulation "
        "are missing'). Flower's own workflow and client mod run instead through a loopback "
        "`Grid` in this process, which is what the engine would do minus Ray's actors."]
    out = {"notes": notes, "rows": []}
    try:
        import flwr
        out["version"] = flwr.__version__
    except ImportError as exc:
        notes.append(f"not run: flwr is not importable ({exc})")
        return out
    wanted = FLOWER_QUICK if args.quick else FLOWER_FULL
    left_out = []
    for r in rows:
        cell = (r["clients"], r["params"])
        if not args.flower_all and cell not in wanted:
            left_out.append(f"{cell[0]} x {cell[1]:,}")
            continue
        console.print(f"  Flower SecAgg+: {cell[0]} clients x {cell[1]:,} params")
        try:
            f = flower_cell(cell[0], cell[1], r["k"], r["t"])
        except Exception as exc:  # report why, keep the rest of the benchmark
            notes.append(f"{cell[0]} x {cell[1]:,} failed: {type(exc).__name__}: {exc}")
            continue
        out["rows"].append({
            "clients": cell[0], "params": cell[1], "plain_seconds": f["plain"]["seconds"],
            "secagg_seconds": f["secagg"]["seconds"], "ratio": f["ratio"],
            "client_seconds": f["secagg"]["client_seconds"],
            "copy_seconds": f["secagg"]["copy_seconds"],
            "max_abs_error_of_mean": f["secagg"]["max_abs_error_of_mean"],
            "ours_secagg_seconds": r["secagg_seconds"],
            "flower_over_ours": f["secagg"]["seconds"] / r["secagg_seconds"],
        })
    if left_out:
        notes.append("not run on " + ", ".join(left_out) + " (Flower's pure-Python Shamir and "
                     "per-pair numpy mask generation would take minutes per round there; "
                     "`--flower-all` runs them)")
    return out


if __name__ == "__main__":
    main()
