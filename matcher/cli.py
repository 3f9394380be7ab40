"""``python -m matcher``: the engine's command line.

    python -m matcher init                      create the store; load the demo data if it is empty
    python -m matcher import organisations FILE JSONL, JSON or CSV (optionally .gz), all or nothing
    python -m matcher import challenges FILE
    python -m matcher match --text "..." -k 10  ranked, explained matches
    python -m matcher reindex [--force]         embed what is missing or stale, rewrite index snapshots
    python -m matcher status                    what the store and indexes hold
    python -m matcher evaluate --pool P --queries Q   match quality on real consortia, beside the baselines
    python -m matcher train-ranker              train the learned ranker (leak-free 2021-2022 topics)
    python -m matcher digest [--since 7d] [--dry-run DIR] [--only ID]   e-mail digests of new matches
    python -m matcher batch --queries FILE --target organisations -k 20 --out FILE   batch matching (resumable)
    python -m matcher worker                    run queued batch jobs (gunicorn's master starts one)
    python -m matcher consortium --challenge-id ID --size 5   alternative consortia for a challenge
    python -m matcher schedule --participants FILE --slots FILE --out DIR   brokerage-event meetings
    python -m matcher keys create --tenant T --scopes read,match   a new API key (shown once)
    python -m matcher keys revoke KEY_ID | keys list [--tenant T]
    python -m matcher backup DIR                a consistent copy of the store while the service serves
    python -m matcher restore DIR [--force]     replace the store with a backup; rebuild the index snapshots
    python -m matcher tenant delete T           delete everything of one tenant (keys and snapshots included)
    python -m matcher settings [--markdown]     the settings in effect (or the README's table of them)

Commands that read or write a tenant's data take --tenant (default MATCHER_DEFAULT_TENANT); reindex, status
and digest without --tenant cover every tenant. Settings come from the MATCHER_* environment variables (see
the README).

A command that fails says why on stderr and exits with 2 (bad input: arguments, a file) or 1 (no such entity
or key).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from models.enums import EntityKind, OrgType
from models.errors import InvalidInput, MatcherError, NotFoundError


def _engine(args=None):
    """The engine of the command's --tenant (MATCHER_DEFAULT_TENANT when it has none)."""
    from matcher.engine import Engine
    from matcher.settings import Settings

    settings = Settings.from_env()
    tenant = getattr(args, "tenant", None) or settings.default_tenant
    engine = Engine(settings).open()
    return engine if tenant == engine.tenant else engine.for_tenant(tenant)


def _tenant(text: str) -> str:
    from models.store import check_tenant

    try:
        return check_tenant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _engines(args) -> list:
    """The engine of --tenant, or of every tenant when it is not given."""
    engine = _engine(args)
    return [engine] if getattr(args, "tenant", None) else engine.all_tenants()


def cmd_init(args) -> int:
    from matcher.demo import load_demo

    engine = _engine()
    empty = all(engine.store.count(kind) == 0 for kind in EntityKind)
    load = engine.settings.load_demo if args.demo is None else args.demo
    if empty and load:
        counts = load_demo(engine, progress=not args.quiet)
        print(f"loaded the demo data: {counts['organisations']} organisations, {counts['challenges']} challenges")
    for tenant_engine in engine.all_tenants():
        tenant_engine.load_indexes()
        if any(tenant_engine.stale.values()):
            print(f"embedding stale entities of tenant {tenant_engine.tenant}: {tenant_engine.stale}")
            tenant_engine.reindex()
    status = engine.status_all()
    print(f"store ready: {status['indexed']['organisations']} organisations, {status['indexed']['challenges']} challenges "
          f"in {status['tenants']} tenant(s), indexed with {status['model']} ({engine.settings.db_url.split('://')[0]})")
    if engine.settings.auth and not load:
        print("no demo key (MATCHER_LOAD_DEMO=0): create keys with "
              "python -m matcher keys create --tenant T --scopes read,match,write,admin")
    elif engine.settings.auth:
        key = demo_key(engine)
        print(f"demo tenant '{engine.tenant}', API key with every scope (kept in {demo_key_path(engine.settings)}):")
        print(f"  {key}")
        print(f"  e.g. curl -H 'Authorization: Bearer {key}' "
              f"http://{engine.settings.host}:{engine.settings.port}/v1/organisations")
    else:
        print(f"MATCHER_AUTH=off: tenant '{engine.tenant}' is served without keys (loopback addresses only)")
    print(f"web console: http://{engine.settings.host}:{engine.settings.port}/console/"
          + (" (sign in with an API key)" if engine.settings.auth else ""))
    return 0


def demo_key_path(settings):
    return settings.data_dir / "demo_key"


def demo_key(engine) -> str:
    """The demo tenant's API key: made once (every scope) and kept, readable by its owner only, in
    <data dir>/demo_key; made anew if that key was revoked."""
    import os

    from models.files import private_dir, write_private
    from models.keys import KeyStore

    path, keys = demo_key_path(engine.settings), KeyStore(engine.store)
    if path.exists():
        key = path.read_text().strip()
        if keys.verify(key) is not None:
            return key
    key, _ = keys.create(engine.tenant, "read,match,write,admin", label="demo key (make run)")
    tmp = private_dir(path.parent) / ".demo_key.tmp"
    write_private(tmp, key + "\n")
    os.replace(tmp, path)
    return key


def cmd_keys(args) -> int:
    from matcher.settings import Settings
    from models.keys import KeyStore
    from models.store import Store

    settings = Settings.from_env()
    store = Store(settings.db_url)
    store.create_all()
    keys = KeyStore(store)
    if args.keys_command == "create":
        key, record = keys.create(args.tenant, args.scopes, label=args.label, rate_limit=args.rate_limit)
        print(key)
        print(f"key {record['id']} for tenant {record['tenant']} with scopes {','.join(record['scopes'])}: "
              "keep it now, it is not shown again", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        if not keys.revoke(args.key_id):
            raise NotFoundError("active key", args.key_id)
        print(f"revoked key {args.key_id}")
        return 0
    for record in keys.list(args.tenant):
        state = f"revoked {record['revoked_at']}" if record["revoked_at"] else "active"
        print(f"{record['id']}  {record['tenant']}  {','.join(record['scopes'])}  {state}  {record['label'] or ''}")
    return 0


def cmd_import(args) -> int:
    from matcher.records import import_file

    engine = _engine(args)
    kind = EntityKind(args.kind)
    report = import_file(engine, kind, args.file, progress=not args.quiet)
    if report.errors:
        for error in report.errors[:200]:
            print(f"{args.file}: {error}", file=sys.stderr)
        if len(report.errors) > 200:
            print(f"... and {len(report.errors) - 200} more", file=sys.stderr)
        print(f"{len(report.errors)} problem(s) in {report.read} record(s); nothing was imported", file=sys.stderr)
        return 1
    print(f"imported {report.written} {kind.value} from {args.file}")
    return 0


def cmd_match(args) -> int:
    from models.schemas import MatchRequest, parse

    query = {"text": args.text, "challenge_id": args.challenge_id, "organisation_id": args.organisation_id}
    body = {
        "query": {k: v for k, v in query.items() if v is not None},
        "target": args.target,
        "k": args.k,
        "filters": {"types": args.type or [], "countries": args.country or [], "exclude_ids": args.exclude or []},
        "explain": not args.no_explain,
    }
    request = parse(MatchRequest, body)
    result = _engine(args).match(request)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for rank, m in enumerate(result["matches"], start=1):
        where = f", {m['country']}" if m.get("country") else ""
        kind = f" ({m['type']}{where})" if m.get("type") else (f" ({m['country']})" if m.get("country") else "")
        print(f"{rank:>3}. {m['score']:.3f}  {m['name']}{kind}  [{m['id']}]")
        if m.get("explanation"):
            print(f"      {m['explanation']['summary']}")
            if m["explanation"].get("closest_sentence"):
                print(f"      closest: \"{m['explanation']['closest_sentence']}\"")
    print(f"({len(result['matches'])} matches in {result['took_ms']} ms)")
    return 0


def cmd_reindex(args) -> int:
    from tqdm import tqdm

    for engine in _engines(args):
        engine.load_indexes()
        with tqdm(desc=f"embedding ({engine.tenant})", unit=" items", disable=args.quiet) as bar:
            counts = engine.reindex(force=args.force, progress=bar.update)
        print(f"tenant {engine.tenant}: re-embedded {counts}; indexes and snapshots rebuilt: {engine.status()['indexed']}")
    return 0


def cmd_status(args) -> int:
    engine = _engine(args)
    if args.tenant:
        engine.load_indexes()
        status = engine.status()
    else:
        for tenant_engine in engine.all_tenants():
            tenant_engine.load_indexes()
        status = engine.status_all()
    print(json.dumps({"settings": engine.settings.describe(), **status}, indent=2))
    return 0


def cmd_digest(args) -> int:
    from matcher import digest

    try:
        since = digest.parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise InvalidInput([{"field": "--since", "problem": str(exc)}]) from None
    logging.getLogger("matcher.digest").setLevel(logging.INFO)  # one line per organisation, by id
    engines = [_engine(args)] if args.only else _engines(args)  # --only: one organisation of one tenant
    ok = True
    for engine in engines:
        report = digest.run(engine, since=since, dry_run=args.dry_run, only=args.only)
        print(report.summary() if len(engines) == 1 else f"tenant {engine.tenant}: {report.summary()}")
        ok = ok and report.ok
    return 0 if ok else 1


def cmd_batch(args) -> int:
    from matcher.batch import run_batch_file

    engine = _engine(args)
    runner = args.runner or engine.settings.batch_runner
    filters = {"types": args.type or [], "countries": args.country or [], "exclude_ids": args.exclude or []}
    report = run_batch_file(engine, args.queries, args.out, target=args.target, k=args.k, filters=filters,
                            explain=not args.no_explain, runner=runner, actors=args.actors or engine.settings.ray_actors,
                            restart=args.restart, progress=not args.quiet)
    for error in report.errors:
        print(f"{args.queries}: {error}", file=sys.stderr)
    resumed = f" ({report.resumed} from an earlier run)" if report.resumed else ""
    print(f"{report.queries} of {report.read} queries matched{resumed}, {len(report.errors)} problem(s); "
          f"{report.rows} rows written to {report.out}")
    return 1 if report.errors else 0


def cmd_consortium(args) -> int:
    from matcher.consortium import build, parse_request

    body = {"size": args.size, "alternatives": args.alternatives,
            "required_types": [[t.strip() for t in group.split(",") if t.strip()] for group in args.require or []],
            "countries": args.country or [], "must_include": args.include or [], "exclude": args.exclude or []}
    body.update({"challenge_id": args.challenge_id} if args.challenge_id else {"text": args.text})
    result = build(_engine(args), parse_request(body))
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for n, team in enumerate(result["consortia"], start=1):
        missing = f"; missing {team['missing_types']}" if team["missing_types"] else ""
        print(f"Consortium {n}: coverage {team['coverage']:.3f}, types {', '.join(team['types'])}, "
              f"countries {', '.join(team['countries']) or '-'}{missing}")
        for m in team["members"]:
            print(f"  - {m['name']} ({m['type']}, {m.get('country') or '-'}) [{m['id']}]: {m['role']}")
            print(f"      {m['why']}")
    return 0


def cmd_schedule(args) -> int:
    from matcher.schedule import build_schedule, write_outputs
    from matcher.tables_io import read_table

    schedule = build_schedule(_engine(args), list(read_table(args.participants)), list(read_table(args.slots)))
    summary = write_outputs(schedule, args.out)
    for problem in summary["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{summary['meetings']} meetings for {summary['participants']} participants in {summary['slots']} slots; "
          f"requested meetings placed: {summary['requested_placed']} of {summary['requested_pairs']}; "
          f"mean match score {summary['mean_score']}; written to {args.out}")
    return 0


def cmd_settings(args) -> int:
    from matcher.settings import Settings, settings_table

    print(settings_table() if args.markdown else json.dumps(Settings.from_env().describe(), indent=2))
    return 0


def _kept_files(settings) -> dict:
    """The files of the data dir a backup keeps beside the database: the key that signs unsubscribe links (so the
    links already mailed keep working after a restore)."""
    return {"secret_key": settings.data_dir / "secret_key"}


def cmd_backup(args) -> int:
    from matcher.settings import Settings
    from models.backup import backup

    settings = Settings.from_env()
    manifest = backup(settings.db_url, args.dir, _kept_files(settings))
    print(f"backed up the {manifest['database']} store to {args.dir}: {', '.join(sorted(manifest['sha256']))}")
    return 0


def cmd_restore(args) -> int:
    import shutil

    from matcher.settings import Settings
    from models.backup import restore

    settings = Settings.from_env()
    restore(settings.db_url, args.dir, _kept_files(settings), force=args.force)
    shutil.rmtree(settings.index_dir, ignore_errors=True)  # snapshots are rebuilt from the restored store
    engine = _engine()
    for tenant_engine in engine.all_tenants():
        tenant_engine.load_indexes()
    status = engine.status_all()
    print(f"restored {args.dir}: {status['indexed']['organisations']} organisations, {status['indexed']['challenges']} "
          f"challenges in {status['tenants']} tenant(s); index snapshots rebuilt")
    if any(status["stale_embeddings"].values()):
        print(f"entities without an embedding of {status['model']}: {status['stale_embeddings']}; "
              "run python -m matcher reindex")
    return 0


def cmd_tenant(args) -> int:
    import shutil

    from matcher.settings import Settings
    from models.store import Store

    settings = Settings.from_env()
    store = Store(settings.db_url)
    store.create_all()
    if args.tenant not in store.tenant_ids():
        raise NotFoundError("tenant", args.tenant)
    counts = store.scoped(args.tenant).delete_tenant()
    shutil.rmtree(settings.index_dir / args.tenant, ignore_errors=True)  # its snapshots (LiveIndex.snapshot_path)
    print(f"deleted tenant {args.tenant}: " + (", ".join(f"{n} {table}" for table, n in sorted(counts.items())) or "no rows")
          + "; its index snapshots removed")
    return 0


def cmd_worker(args) -> int:
    from matcher.jobs import JobWorker

    JobWorker(_engine()).run_forever(once=args.once)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m matcher", description="Partner matching for innovation ecosystems.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # input_errors: what else a command reports as bad input (exit 2), e.g. an unreadable or malformed file
    parser.set_defaults(input_errors=())
    sub = parser.add_subparsers(dest="command", required=True)
    one_tenant = argparse.ArgumentParser(add_help=False)
    one_tenant.add_argument("--tenant", type=_tenant, help="the tenant whose data this reads and writes (default MATCHER_DEFAULT_TENANT)")
    any_tenant = argparse.ArgumentParser(add_help=False)
    any_tenant.add_argument("--tenant", type=_tenant, help="only this tenant (default: every tenant)")

    p = sub.add_parser("init", help="create the store; load the demo data when it is empty")
    p.add_argument("--demo", dest="demo", action="store_true", default=None, help="load the demo data if the store is empty")
    p.add_argument("--no-demo", dest="demo", action="store_false", help="never load the demo data")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", parents=[one_tenant], help="import organisations or challenges from a JSONL, JSON or CSV file")
    p.add_argument("kind", choices=[k.value for k in EntityKind])
    p.add_argument("file")
    p.set_defaults(func=cmd_import, input_errors=(OSError, ValueError))

    p = sub.add_parser("match", parents=[one_tenant], help="ranked, explained matches for a text, a challenge or an organisation")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--challenge-id")
    q.add_argument("--organisation-id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--target", choices=[k.value for k in EntityKind], default="organisations")
    p.add_argument("--type", action="append", choices=[t.value for t in OrgType], help="repeat for several")
    p.add_argument("--country", action="append", help="ISO code; repeat for several")
    p.add_argument("--exclude", action="append", help="an id to leave out; repeat for several")
    p.add_argument("--no-explain", action="store_true")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("reindex", parents=[any_tenant], help="embed missing or stale entities and rebuild the index snapshots")
    p.add_argument("--force", action="store_true", help="re-embed everything")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("status", parents=[any_tenant], help="settings, store and index state as JSON")
    p.set_defaults(func=cmd_status)

    # Commands with options of their own: everything after the name goes to them (see their --help).
    for name, module, text in (
        ("evaluate", "matcher.evaluation", "match quality on real consortia, the product beside the baselines"),
        ("train-ranker", "matcher.training", "train the learned ranker on leak-free 2021-2022 call topics"),
    ):
        sub.add_parser(name, help=text, add_help=False)
        DELEGATED[name] = module
    p = sub.add_parser("digest", parents=[any_tenant], help="e-mail each opted-in organisation its new matches (MATCHER_SMTP_* settings)")
    p.add_argument("--since", help="only matches added in this period, e.g. 7d, 36h (default: since "
                                   "each organisation's last digest, everything for a first one)")
    p.add_argument("--dry-run", metavar="DIR", help="write one .eml file per digest to DIR; send and record nothing")
    p.add_argument("--only", metavar="ID", help="only this organisation")
    p.set_defaults(func=cmd_digest, input_errors=(LookupError, ValueError))
    p = sub.add_parser("batch", parents=[one_tenant], help="match every query of a CSV, JSONL or XLSX file; resumable")
    p.add_argument("--queries", required=True, help="CSV, JSONL, JSON or XLSX: text, ids or profiles, one per row")
    p.add_argument("--out", required=True, help="CSV, JSONL or XLSX: one row per (query, match)")
    p.add_argument("--target", choices=[k.value for k in EntityKind], default="organisations")
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--type", action="append", choices=[t.value for t in OrgType], help="repeat for several")
    p.add_argument("--country", action="append", help="ISO code; repeat for several")
    p.add_argument("--exclude", action="append", help="an id to leave out; repeat for several")
    p.add_argument("--no-explain", action="store_true")
    p.add_argument("--runner", choices=["local", "ray"], help="default MATCHER_BATCH_RUNNER (local)")
    p.add_argument("--actors", type=int, help="Ray matcher actors (default MATCHER_RAY_ACTORS)")
    p.add_argument("--restart", action="store_true", help="ignore the checkpoint of an interrupted run")
    p.set_defaults(func=cmd_batch, input_errors=(OSError, ValueError))

    p = sub.add_parser("consortium", parents=[one_tenant], help="alternative consortia for a challenge, under constraints")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--challenge-id")
    q.add_argument("--text")
    p.add_argument("--size", type=int, default=5)
    p.add_argument("--require", action="append", metavar="TYPE[,TYPE]",
                   help="at least one member of these types; repeat for several groups, e.g. --require university,research_institute")
    p.add_argument("--country", action="append", help="allowed member country; repeat for several")
    p.add_argument("--include", action="append", help="an organisation id every consortium must contain")
    p.add_argument("--exclude", action="append", help="an organisation id to leave out")
    p.add_argument("--alternatives", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_consortium)

    p = sub.add_parser("schedule", parents=[one_tenant], help="1:1 meetings for a brokerage event: schedule, agendas, .ics files")
    p.add_argument("--participants", required=True, help="CSV, JSONL or XLSX: id or profile, available, max_meetings, requests, blocked")
    p.add_argument("--slots", required=True, help="CSV, JSONL or XLSX: id, start, end, tables, location")
    p.add_argument("--out", required=True, help="folder for schedule.csv/.xlsx, agendas/, calendars/, summary.json")
    p.set_defaults(func=cmd_schedule, input_errors=(OSError, ValueError))

    p = sub.add_parser("worker", help="run queued batch-match jobs from the store (every tenant's)")
    p.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="create, revoke and list API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="a new key, printed once (only its hash is stored)")
    k.add_argument("--tenant", required=True, type=_tenant, help="the tenant the key sees (recorded if new)")
    k.add_argument("--scopes", required=True, help="comma-separated: read, match, write, admin")
    k.add_argument("--label", help="what the key is for")
    k.add_argument("--rate-limit", type=int, help="requests a minute (default MATCHER_RATE_LIMIT)")
    k = keys.add_parser("revoke", help="revoke a key at once")
    k.add_argument("key_id", help="the key's id (the part after mk_) or the whole key")
    k = keys.add_parser("list", help="every key's id, tenant, scopes and state (never the key)")
    k.add_argument("--tenant", help="only this tenant's keys")
    p.set_defaults(func=cmd_keys, input_errors=(ValueError,))  # models.keys.KeyRequestError

    p = sub.add_parser("backup", help="a consistent copy of the store, taken while the service serves (snapshots are not copied)")
    p.add_argument("dir", help="a new (or empty) folder for the backup")
    p.set_defaults(func=cmd_backup, input_errors=(ValueError,))  # models.backup.BackupError
    p = sub.add_parser("restore", help="replace the store with a backup and rebuild the index snapshots (stop the service first)")
    p.add_argument("dir", help="a folder written by python -m matcher backup")
    p.add_argument("--force", action="store_true", help="replace a store that exists")
    p.set_defaults(func=cmd_restore, input_errors=(ValueError,))

    p = sub.add_parser("tenant", help="delete a tenant")
    tenant = p.add_subparsers(dest="tenant_command", required=True)
    t = tenant.add_parser("delete", help="delete everything of one tenant: entities, change log, digests, jobs, keys, snapshots")
    t.add_argument("tenant", type=_tenant)
    t.set_defaults(func=cmd_tenant)

    p = sub.add_parser("settings", help="the settings in effect as JSON (secrets masked)")
    p.add_argument("--markdown", action="store_true", help="the table of every setting (the README's), instead")
    p.set_defaults(func=cmd_settings)
    return parser


DELEGATED: dict[str, str] = {}


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = [a for a in argv[:1] if a in ("-q", "--quiet")]
    rest = argv[len(quiet):]
    if rest and rest[0] in DELEGATED:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return __import__(DELEGATED[rest[0]], fromlist=["main"]).main(rest[1:] + quiet)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (MatcherError, *args.input_errors) as exc:
        error = exc if isinstance(exc, MatcherError) else InvalidInput([], str(exc))
        for line in error.lines():
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
