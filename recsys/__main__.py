"""Command line: `python -m recsys <command>`; `python -m recsys --help` lists them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from recsys.config import Config, ConfigError, load_config, parse_date, parse_set_overrides
from recsys.pipeline import STAGES

log = logging.getLogger("recsys")

EXIT_INPUT, EXIT_GATE, EXIT_PUBLISH = 2, 3, 4


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "httpx", "urllib3", "filelock", "transformers", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _common(p: argparse.ArgumentParser, date: bool = True) -> None:
    g = p.add_argument_group("configuration (defaults -> --config YAML -> RECSYS__* env -> these flags)")
    g.add_argument("--config", help="YAML config file (also RECSYS_CONFIG)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set train.time_budget_s=30")  # fmt: skip
    g.add_argument("--data-root", help="input contract root (events/, catalog/)")
    g.add_argument("--work-root", help="where run directories (and the SQLite file) live")
    g.add_argument("--database-url", help="postgresql://... (default: SQLite file in the work root)")
    g.add_argument("--holdout-days", type=int, help="days held out for evaluation; 0 = train on everything")
    g.add_argument("--exclude", choices=["purchased", "interacted", "none"], help="exclusion policy")
    g.add_argument("--run-id", help="run directory name under runs/<date>/ (default: main)")
    if date:
        p.add_argument("--date", required=True, help="logical date YYYY-MM-DD (reads events before it)")


def _config(args: argparse.Namespace) -> Config:
    over: dict[str, Any] = parse_set_overrides(args.set)
    flags = {
        ("paths", "data_root"): args.data_root,
        ("paths", "work_root"): args.work_root,
        ("publish", "database_url"): args.database_url,
        ("evaluate", "holdout_days"): args.holdout_days,
        ("events", "exclude_policy"): args.exclude,
    }
    for (sec, key), val in flags.items():
        if val is not None:
            over.setdefault(sec, {})[key] = val
    if args.run_id:
        over["run_id"] = args.run_id
    return load_config(args.config, over)


def cmd_run(args: argparse.Namespace) -> int:
    from recsys.pipeline import run_pipeline

    cfg = _config(args)
    date = parse_date(args.date)
    results = run_pipeline(cfg, date, args.from_stage, args.to_stage)
    _summary(cfg, date, results)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from recsys.pipeline import run_stage

    cfg = _config(args)
    info = run_stage(args.command, cfg, parse_date(args.date))
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=2, default=str))
    return 0


def _summary(cfg: Config, date: dt.date, results: dict[str, dict[str, Any]]) -> None:
    from recsys.rundir import RunDir

    rd = RunDir(cfg, date)
    print(f"\nrun {date} / {rd.run_id}: {rd.root}")
    for stage, info in results.items():
        print(f"  {stage:<10} {info.get('seconds', 0):>7.1f}s")
    mpath = rd.path("metrics.json")
    if mpath.is_file():
        m = json.loads(mpath.read_text())
        gm = cfg.evaluate.gate_metric
        if m.get("methods"):
            print(f"\nholdout metrics ({m.get('users_evaluated')} users, {m.get('holdout_days')} days):")
            cols = [f"recall@{k}" for k in cfg.evaluate.ks] + [f"ndcg@{k}" for k in cfg.evaluate.ks]
            print(f"  {'method':<13}" + "".join(f"{c:>11}" for c in cols))
            for name, row in m["methods"].items():
                print(f"  {name:<13}" + "".join(f"{row[c]:>11.4f}" for c in cols))
        print(f"  gate ({gm}): {'passed' if m['gate']['passed'] else 'FAILED'}  report: {rd.path('report.html')}")
    if "publish" in results:
        print(f"\npublished: {results['publish'].get('message')}")


def cmd_generate(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(
        n_users=args.users, n_items=args.items, days=args.days, end_date=parse_date(args.end_date),
        seed=args.seed, corrupt_rate=args.corrupt_rate, bot_users=args.bot_users,
    )  # fmt: skip
    counts = generate(args.out, spec)
    print(json.dumps({"out": args.out, **counts}, indent=2))
    return 0


def cmd_import_movielens(args: argparse.Namespace) -> int:
    from recsys.data.movielens import import_movielens

    info = import_movielens(args.src, args.out)
    print(json.dumps({"out": args.out, **info}, indent=2))
    return 0


def _titles(cfg: Config) -> dict[str, str]:
    """item_id -> title from the newest run's catalog (for display only)."""
    import pyarrow.parquet as pq

    cands = sorted(cfg.local_work_root().glob("runs/*/*/features/catalog"))
    if not cands:
        return {}
    t = pq.read_table(cands[-1], columns=["item_id", "title"])
    return dict(zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True))


def show_homepage(cfg: Config, user_id: str | None, segment: str = "all") -> int:
    from sqlalchemy import text

    from recsys.publish import db

    engine = db.make_engine(cfg.database_url())
    with engine.connect() as conn:
        if user_id is None:
            # Pick a real user from the live homepage so the demo shows a personal page.
            n = db.names_for(conn)
            user_id = conn.execute(text(f"SELECT user_id FROM {n.current} ORDER BY user_id LIMIT 1")).scalar()
            if user_id is None:
                print("nothing is published yet")
                return 1
        page = db.get_homepage(conn, user_id, segment)
    engine.dispose()
    if page is None:
        print("nothing is published yet")
        return 1
    titles = _titles(cfg)
    kind = page["kind"] + (f" ({page.get('segment')})" if page["kind"] == "segment" else "")
    print(f"\nHomepage for user {user_id}: {kind}, version {page.get('run_key')}")
    for sec in page["sections"]:
        print(f"\n  == {sec['title']} ==")
        for i, it in enumerate(sec["items"], 1):
            name = titles.get(it["item_id"], "")
            print(f"  {i:>2}. {it['item_id']:<12} {name[:48]:<48}  [{it['source']}] {it['reason']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    return show_homepage(_config(args), args.user, args.segment)


def cmd_runs(args: argparse.Namespace) -> int:
    from recsys.publish import db

    engine = db.make_engine(_config(args).database_url())
    with engine.connect() as conn:
        for r in db.list_runs(conn, args.limit):
            print(
                f"{r['run_key']:<28} {r['logical_date']!s:<11} {r['status']:<11} users={r['users']} {r['message'] or ''}"
            )
    engine.dispose()
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from recsys.publish import db

    engine = db.make_engine(_config(args).database_url())
    with engine.begin() as conn:
        print(db.rollback(conn, args.to))
    engine.dispose()
    return 0


def cmd_db_setup(args: argparse.Namespace) -> int:
    """Deployment step, run once by an administrator: schema migrations, the site's
    read-only role and its grants. Nightly publishes need no role privileges."""
    from recsys.publish import db

    engine = db.make_engine(_config(args).database_url())
    with engine.begin() as conn:
        applied = db.apply_migrations(conn)
        db.grant_reader(conn, args.reader_role, args.grant_to)
    engine.dispose()
    print(f"migrations applied: {applied or 'none (up to date)'}; reader role {args.reader_role}"
          + (f" granted to {', '.join(args.grant_to)}" if args.grant_to else ""))  # fmt: skip
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Refresh the live homepage's freshness gauge (cron, between nights)."""
    from recsys.monitoring import record_live

    path = record_live(_config(args))
    print(path or "could not write the metrics file (see the log)")
    return 0 if path else 1


def cmd_preview(args: argparse.Namespace) -> int:
    from recsys.preview.app import serve

    serve(_config(args), args.host, args.port)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False))
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    from recsys.device import describe

    print(json.dumps(describe(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate synthetic data (if absent), run the whole night, show a homepage."""
    from recsys.data.synthetic import SyntheticSpec, generate
    from recsys.pipeline import run_pipeline

    cfg = _config(args)
    date = parse_date(args.date)
    if not (Path(cfg.paths.data_root) / "events").is_dir():
        log.info("demo: generating synthetic data in %s", cfg.paths.data_root)
        generate(cfg.paths.data_root, SyntheticSpec(end_date=date - dt.timedelta(days=1)))
    results = run_pipeline(cfg, date)
    _summary(cfg, date, results)
    return show_homepage(cfg, None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recsys", description="Nightly precomputed personalised homepages.")
    p.add_argument("--log-level", default=os.environ.get("RECSYS_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="synthetic data -> whole pipeline -> show a published homepage")
    _common(s, date=False)
    s.add_argument("--date", default="2026-11-22", help="logical date (default 2026-11-22)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run every stage for a logical date (or a --from/--to range)")
    _common(s)
    s.add_argument("--from", dest="from_stage", choices=list(STAGES), help="first stage")
    s.add_argument("--to", dest="to_stage", choices=list(STAGES), help="last stage")
    s.set_defaults(func=cmd_run)

    from recsys.pipeline import STAGE_FUNCTIONS

    for name in STAGES:
        doc = STAGE_FUNCTIONS[name][2]
        s = sub.add_parser(name, help=f"stage: {doc}")
        _common(s)
        s.set_defaults(func=cmd_stage)

    s = sub.add_parser("generate", help="write synthetic data in the input contract")
    s.add_argument("--out", required=True)
    s.add_argument("--users", type=int, default=3000)
    s.add_argument("--items", type=int, default=2000)
    s.add_argument("--days", type=int, default=28)
    s.add_argument("--end-date", default="2026-11-21", help="last day with events")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--corrupt-rate", type=float, default=0.002, help="share of bad rows injected")
    s.add_argument("--bot-users", type=int, default=None, help="crawler accounts (default: one per 3,000 users)")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("import-movielens", help="MovieLens (ml-latest-small layout) -> input contract")
    s.add_argument("--src", required=True, help="directory with ratings.csv and movies.csv")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_import_movielens)

    s = sub.add_parser("show", help="print the published homepage of a user (get_homepage)")
    _common(s, date=False)
    s.add_argument("--user", help="user id (default: the first published user)")
    s.add_argument("--segment", default="all", help="fallback segment for users without a homepage")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("runs", help="list published versions (homepage.runs)")
    _common(s, date=False)
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("rollback", help="serve an earlier kept version again")
    _common(s, date=False)
    s.add_argument("--to", required=True, metavar="RUN_KEY")
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("db-setup", help="administrator, once: migrations + the site's read-only role")
    _common(s, date=False)
    s.add_argument("--reader-role", default="homepage_reader")
    s.add_argument("--grant-to", nargs="*", default=[], metavar="LOGIN", help="site login roles")
    s.set_defaults(func=cmd_db_setup)

    s = sub.add_parser("metrics", help="write the live homepage's age for Prometheus (textfile collector)")
    _common(s, date=False)
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("preview", help="read-only web app: any user's homepage, versions, segment pages, runs")
    _common(s, date=False)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    s.add_argument("--port", type=int, default=8765)
    s.set_defaults(func=cmd_preview)

    s = sub.add_parser("config", help="print the resolved configuration")
    _common(s, date=False)
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("device", help="print what torch and faiss see (CPU/GPU)")
    s.set_defaults(func=cmd_device)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from recsys.aggregate import RejectRateError
    from recsys.contract import InputError
    from recsys.device import DeviceError
    from recsys.evaluation.evaluate import GateFailed
    from recsys.publish.db import PublishError
    from recsys.rundir import RunLockedError

    try:
        return int(args.func(args) or 0)
    except GateFailed as e:
        log.error("%s", e)
        return EXIT_GATE
    except PublishError as e:
        log.error("publish: %s", e)
        return EXIT_PUBLISH
    except (ConfigError, InputError, RejectRateError, DeviceError, FileNotFoundError, ValueError,
            RunLockedError) as e:  # fmt: skip
        log.error("%s", e)
        return EXIT_INPUT
    except Exception as e:
        # No bare traceback for an operator: one line here; the stage's traceback is in
        # the run's manifest.json and at --log-level DEBUG.
        log.error("%s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        log.debug("traceback", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
