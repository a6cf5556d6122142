"""The site while a night happens: 32 concurrent clients call homepage.get_homepage
(psycopg2, loopback) before, during and after a publish and a retention run.

    python bench/serving.py --users 100000 --clients 32

Creates and drops its own database on 127.0.0.1:5432. Every page carries its version in
each item id, so a client detects a mixed page (items of two versions) as well as an
empty one or an error. Prints p50/p99/max latency per phase as a markdown table, plus
the publish's rows/s and the bytes stored per user.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid

import numpy as np
import psycopg2

from recsys.publish import db

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def page(version: str, user: int) -> str:
    """A page of the size the demo publishes: 5 sections, 44 slots, tagged with version."""
    rng = random.Random(user)
    secs = []
    for key, n in (("top_picks", 12), ("because_you_viewed", 8), ("trending", 8), ("new_for_you", 8), ("discover", 8)):
        secs.append({"key": key, "title": key.replace("_", " ").title(), "items": [
            {"item_id": f"{version}:i{rng.randrange(100000):06d}", "score": round(rng.random(), 6),
             "source": "two_tower", "reason": "Picked for your interests"} for _ in range(n)]})  # fmt: skip
    return json.dumps(secs, separators=(",", ":"))


def publish(engine, version: str, users: int, keep: int) -> dict:  # type: ignore[no-untyped-def]
    import datetime as dt

    day = dt.date(2026, 11, 1) + dt.timedelta(days=int(version[1:]))
    rows = [(f"u{u:07d}", page(version, u)) for u in range(users)]  # built before the clock starts
    t0 = time.time()
    with engine.begin() as c:
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


class Clients:
    def __init__(self, dsn: dict, n: int, users: int) -> None:
        self.dsn, self.n, self.users = dsn, n, users
        self.phase = "before"
        self.stop = threading.Event()
        self.lat: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.bad: dict[str, int] = {}
        self.lock = threading.Lock()

    def run(self, i: int) -> None:
        conn = psycopg2.connect(**self.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        rng = random.Random(i)
        local: dict[str, list[float]] = {}
        while not self.stop.is_set():
            phase = self.phase
            u = rng.randrange(int(self.users * 1.1))  # 10% unknown users: the segment fallback
            t = time.perf_counter()
            try:
                cur.execute("SELECT homepage.get_homepage(%s)", (f"u{u:07d}",))
                p = cur.fetchone()[0]
            except psycopg2.Error:
                with self.lock:
                    self.errors[phase] = self.errors.get(phase, 0) + 1
                conn = psycopg2.connect(**self.dsn)
                conn.autocommit = True
                cur = conn.cursor()
                continue
            local.setdefault(phase, []).append(time.perf_counter() - t)
            versions = {it["item_id"].split(":")[0] for s in (p or {}).get("sections", []) for it in s["items"]}
            if not p or not p["sections"] or len(versions) != 1:
                with self.lock:
                    self.bad[phase] = self.bad.get(phase, 0) + 1
        with self.lock:
            for k, v in local.items():
                self.lat.setdefault(k, []).extend(v)
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--settle-s", type=float, default=5.0, help="seconds measured before and after")
    args = ap.parse_args()
    name = f"recsys_serving_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = db.make_engine(ADMIN.rsplit("/", 1)[0] + "/" + name)
    try:
        with engine.begin() as c:
            db.apply_migrations(c)
        first = publish(engine, "v1", args.users, keep=1)
        publish(engine, "v2", args.users, keep=1)
        with engine.connect() as c:
            size = c.exec_driver_sql(f"SELECT pg_total_relation_size('{first['run']['slates_table']}')").scalar_one()
        clients = Clients(
            {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": name}, args.clients, args.users
        )
        threads = [threading.Thread(target=clients.run, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.settle_s)
        clients.phase = "during publish (COPY, switch)"
        info = publish(engine, "v3", args.users, keep=10)  # retention separately below (the pages of v3
        # are generated inside this phase too: the clients see a busy machine, as on a real night)
        clients.phase = "during retention (drop v1)"
        t0 = time.time()
        with engine.begin() as c:
            dropped, deferred = db.apply_retention(c, 1)
        t_ret = time.time() - t0
        time.sleep(1.0)
        clients.phase = "after"
        time.sleep(args.settle_s)
        clients.stop.set()
        for t in threads:
            t.join()
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
    print(f"\n{args.users} users, {args.clients} clients; publish {info['rows_per_s']:,.0f} rows/s "
          f"(load {info['load_s']:.1f} s, switch {info['switch_s'] * 1000:.1f} ms); retention {t_ret:.2f} s "
          f"dropped {dropped} deferred {deferred}; {size / args.users:.0f} bytes per user stored\n")  # fmt: skip
    print("| phase | calls | p50 ms | p99 ms | max ms | errors | empty or mixed pages |")
    print("|---|---|---|---|---|---|---|")
    for phase in ("before", "during publish (COPY, switch)", "during retention (drop v1)", "after"):
        lat = np.array(clients.lat.get(phase, [])) * 1000
        if len(lat) == 0:
            print(f"| {phase} | 0 | | | | {clients.errors.get(phase, 0)} | {clients.bad.get(phase, 0)} |")
            continue
        print(f"| {phase} | {len(lat)} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | "
              f"{lat.max():.1f} | {clients.errors.get(phase, 0)} | {clients.bad.get(phase, 0)} |")  # fmt: skip


if __name__ == "__main__":
    main()
