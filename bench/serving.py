"""The site while a night happens: 32 concurrent clients call homepage.get_homepage
(psycopg2, loopback) before, during and after a publish and a retention run.

    python bench/serving.py --users 100000 --clients 32 [--rate 2000]

Each client is its own process with its own connection (32 threads in one Python
process measured the GIL, not the lookup). --rate R offers R calls/s in all (open loop,
Poisson arrivals, latency from the scheduled arrival), the way a site's page views
arrive; without it every client calls back to back, which on a shared 2-core machine
measures saturation (latency = clients / throughput), not the lookup.
Creates and drops its own database on 127.0.0.1:5432. Every page carries its version in
each item id, so a client detects a mixed page (items of two versions) as well as an
empty one or an error. Prints p50/p99/max latency per phase as a markdown table, plus
the publish's rows/s and the bytes stored per user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg2

from recsys.publish import db

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[tuple[Any, str]]:
    """(engine, name) of a fresh database with the homepage migrations applied, dropped
    after the block (the benchmarks never touch an existing database)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = db.make_engine(ADMIN.rsplit("/", 1)[0] + "/" + name)
    try:
        with engine.begin() as c:
            db.apply_migrations(c)
        yield engine, name
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def page(version: str, user: int) -> str:
    """A page of the size the demo publishes: 5 sections, 44 slots, tagged with version."""
    rng = random.Random(user)
    secs = []
    for key, n in (("top_picks", 12), ("because_you_viewed", 8), ("trending", 8), ("new_for_you", 8), ("discover", 8)):
        secs.append({"key": key, "title": key.replace("_", " ").title(), "items": [
            {"item_id": f"{version}:i{rng.randrange(100000):06d}", "score": round(rng.random(), 6),
             "source": "two_tower", "reason": "Picked for your interests"} for _ in range(n)]})  # fmt: skip
    return json.dumps(secs, separators=(",", ":"))


def publish(engine, version: str, users: int, keep: int, nice: int = 0, cpu: int | None = None) -> dict:  # type: ignore[no-untyped-def]
    import datetime as dt

    day = dt.date(2026, 11, 1) + dt.timedelta(days=int(version[1:]))
    rows = [(f"u{u:07d}", page(version, u)) for u in range(users)]  # built before the clock starts
    t0 = time.time()
    with engine.begin() as c:
        if nice:  # the COPY's server backend too (needs the right to renice postgres' processes)
            os.setpriority(os.PRIO_PROCESS, c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one(), nice)
        if cpu is not None:
            os.sched_setaffinity(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one(), {cpu})
        run = db.begin_run(c, day, "main", {}, {})
        sent = db.load_tables(c, run, rows, [("all", page(version, -1))])
        db.validate_loaded(c, run, sent, 0.0)
    t_load = time.time() - t0
    with engine.begin() as c:
        db.switch(c, run)
    t_switch = time.time() - t0 - t_load
    with engine.begin() as c:
        dropped, deferred = db.apply_retention(c, keep)
    return {"version": version, "load_s": t_load, "switch_s": t_switch, "rows_per_s": users / t_load,
            "dropped": dropped, "deferred": deferred, "run": run}  # fmt: skip


PHASES = ("before", "during publish (COPY, switch)", "during retention (drop v1)", "after")


def connect(dsn: dict, cpus: set[int] | None) -> Any:
    """An autocommit connection; cpus: pin this process and its server backend there."""
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    if cpus:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            os.sched_setaffinity(cur.fetchone()[0], cpus)
        os.sched_setaffinity(0, cpus)
    return conn


def client(i: int, dsn: dict, users: int, rate: float, phase: Any, stop: Any, out: Any, cpus: set[int] | None) -> None:
    """One site connection in its own process (no GIL shared with the other clients).

    rate > 0: open loop, Poisson arrivals at `rate` calls/s; latency counts from the
    scheduled arrival, so a call that had to wait behind a slow one is charged for the
    wait (no coordinated omission). rate 0: closed loop, the next call as soon as the
    last returns (the machine's saturation: latency = clients / throughput).
    """
    conn = connect(dsn, cpus)
    cur = conn.cursor()
    rng = random.Random(i)
    lat: dict[int, list[float]] = {}
    errors: dict[int, int] = {}
    bad: dict[int, int] = {}
    due = time.perf_counter()
    while not stop.is_set():
        if rate > 0:
            due += rng.expovariate(rate)
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        ph = phase.value
        u = rng.randrange(int(users * 1.1))  # 10% unknown users: the segment fallback
        t = due if rate > 0 else time.perf_counter()
        try:
            cur.execute("SELECT homepage.get_homepage(%s)", (f"u{u:07d}",))
            p = cur.fetchone()[0]
        except psycopg2.Error:
            errors[ph] = errors.get(ph, 0) + 1
            conn = connect(dsn, cpus)
            cur = conn.cursor()
            continue
        lat.setdefault(ph, []).append(time.perf_counter() - t)
        versions = {it["item_id"].split(":")[0] for s in (p or {}).get("sections", []) for it in s["items"]}
        if not p or not p["sections"] or len(versions) != 1:
            bad[ph] = bad.get(ph, 0) + 1
    conn.close()
    out.put((lat, errors, bad))


class Clients:
    """n client processes; `phase` tags each call with the phase it started in."""

    def __init__(self, dsn: dict, n: int, users: int, rate: float, cpus: set[int] | None = None) -> None:
        ctx = mp.get_context("fork")
        self.phase = ctx.Value("i", 0)
        self.stop = ctx.Event()
        self.out: Any = ctx.Queue()
        self.procs = [ctx.Process(target=client, args=(i, dsn, users, rate / n if rate else 0.0, self.phase,
                                                        self.stop, self.out, cpus)) for i in range(n)]  # fmt: skip
        self.lat: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.bad: dict[str, int] = {}

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def set_phase(self, name: str) -> None:
        self.phase.value = PHASES.index(name)

    def finish(self) -> None:
        self.stop.set()
        for _ in self.procs:
            lat, errors, bad = self.out.get(timeout=120)
            for k, v in lat.items():
                self.lat.setdefault(PHASES[k], []).extend(v)
            for k, v in errors.items():
                self.errors[PHASES[k]] = self.errors.get(PHASES[k], 0) + v
            for k, v in bad.items():
                self.bad[PHASES[k]] = self.bad.get(PHASES[k], 0) + v
        for p in self.procs:
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="calls/s over all clients (open loop, Poisson); 0 = closed loop (saturation)",
    )
    ap.add_argument("--settle-s", type=float, default=5.0, help="seconds measured before and after")
    ap.add_argument("--publisher-nice", type=int, default=0,
                    help="niceness of the publishing process (the pages' JSON is built in it): a real night's "
                         "batch worker is not on the database host; 19 (this process and its COPY's server backend) approximates "
                         "that on one machine")  # fmt: skip
    ap.add_argument("--publisher-cpu", type=int, default=None,
                    help="pin the publishing process and its COPY's backend to this core, and the clients "
                         "(and their backends, forked from the postmaster) to the others")  # fmt: skip
    args = ap.parse_args()
    with scratch_database("recsys_serving") as (engine, name):
        first = publish(engine, "v1", args.users, keep=1)
        publish(engine, "v2", args.users, keep=1)
        with engine.connect() as c:
            size = c.exec_driver_sql(f"SELECT pg_total_relation_size('{first['run']['slates_table']}')").scalar_one()
        clients = Clients(
            {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": name},
            args.clients,
            args.users,
            args.rate,
            None if args.publisher_cpu is None else set(os.sched_getaffinity(0)) - {args.publisher_cpu},
        )
        clients.start()
        time.sleep(1.0)  # connections open before the clock starts
        secs = {}
        t_ph = time.time()
        time.sleep(args.settle_s)
        secs["before"], t_ph = time.time() - t_ph, time.time()
        clients.set_phase("during publish (COPY, switch)")
        os.nice(args.publisher_nice)  # after the clients forked: they keep niceness 0
        info = publish(
            engine, "v3", args.users, keep=10, nice=args.publisher_nice
        )  # retention separately below (the pages of v3
        # are generated inside this phase too: the clients see a busy machine, as on a real night)
        secs["during publish (COPY, switch)"], t_ph = time.time() - t_ph, time.time()
        clients.set_phase("during retention (drop v1)")
        t0 = time.time()
        with engine.begin() as c:
            dropped, deferred = db.apply_retention(c, 1)
        t_ret = time.time() - t0
        time.sleep(1.0)
        secs["during retention (drop v1)"], t_ph = time.time() - t_ph, time.time()
        clients.set_phase("after")
        time.sleep(args.settle_s)
        secs["after"] = time.time() - t_ph
        clients.finish()
    mode = f"open loop at {args.rate:,.0f} calls/s" if args.rate else "closed loop"
    print(f"\n{args.users} users, {args.clients} client processes, {mode}; publish {info['rows_per_s']:,.0f} rows/s "
          f"(load {info['load_s']:.1f} s, switch {info['switch_s'] * 1000:.1f} ms); retention {t_ret:.2f} s "
          f"dropped {dropped} deferred {deferred}; {size / args.users:.0f} bytes per user stored\n")  # fmt: skip
    print("| phase | calls | calls/s | p50 ms | p99 ms | max ms | errors | empty or mixed pages |")
    print("|---|---|---|---|---|---|---|---|")
    for phase in PHASES:
        lat = np.array(clients.lat.get(phase, [])) * 1000
        err, bad = clients.errors.get(phase, 0), clients.bad.get(phase, 0)
        if len(lat) == 0:
            print(f"| {phase} | 0 | | | | | {err} | {bad} |")
            continue
        print(f"| {phase} | {len(lat):,} | {len(lat) / secs[phase]:,.0f} | {np.percentile(lat, 50):.2f} | "
              f"{np.percentile(lat, 99):.2f} | {lat.max():.1f} | {err} | {bad} |")  # fmt: skip


if __name__ == "__main__":
    main()
