"""``whisperx-serve``: the operator's command (API keys, migrations).

It reads the database URL from the same settings as the service
(``WHISPERX_SERVE_DATABASE_URL``, else the SQLite file under ``WHISPERX_SERVE_DATA_DIR``)
and migrates the schema first, so it works on a fresh database. No Ray is started.

    whisperx-serve keys create --name NAME [--admin] [--max-active N] [--per-minute M]
    whisperx-serve keys list [--json]
    whisperx-serve keys revoke ID|NAME
    whisperx-serve keys signing-secret ID|NAME
    whisperx-serve migrate
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from common.settings import Settings
from ingress.auth import create_key
from storage import api_keys
from storage.db import Database, migrate
from storage.models import ApiKeyRow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisperx-serve", description="Operate a whisperx-serve database: API keys."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="upgrade the database schema to the latest version")
    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key and print its secret (once)")
    create.add_argument("--name", required=True, help="who the key is for (unique among active)")
    create.add_argument("--admin", action="store_true", help="the key sees every task")
    create.add_argument(
        "--max-active", type=int, metavar="N", help="its queued+running tasks (overrides config)"
    )
    create.add_argument(
        "--per-minute", type=int, metavar="M", help="its submissions per minute (overrides)"
    )
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = keys.add_parser("revoke", help="revoke a key: it stops working within seconds")
    revoke.add_argument("key", metavar="ID|NAME")
    secret = keys.add_parser(
        "signing-secret", help="print the secret that signs a key's task callbacks"
    )
    secret.add_argument("key", metavar="ID|NAME")
    return parser


def _positive(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise SystemExit(f"whisperx-serve: {flag} must be at least 1")
    return value


def _describe(row: ApiKeyRow) -> dict[str, object]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix + "…",
        "admin": row.is_admin,
        "max_active": row.max_active_tasks,
        "per_minute": row.max_submissions_per_minute,
        "created_at": row.created_at.isoformat(timespec="seconds"),
        "revoked_at": row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else None,
    }


def _find(db: Database, id_or_name: str) -> ApiKeyRow:
    row = api_keys.resolve_key(db, id_or_name=id_or_name)
    if row is None:
        raise SystemExit(f"whisperx-serve: no key with id or active name {id_or_name!r}")
    return row


def _keys(db: Database, args: argparse.Namespace) -> int:
    if args.action == "create":
        try:
            new, row = create_key(
                db,
                name=args.name,
                is_admin=args.admin,
                max_active_tasks=_positive(args.max_active, "--max-active"),
                max_submissions_per_minute=_positive(args.per_minute, "--per-minute"),
            )
        except api_keys.KeyNameTaken:
            raise SystemExit(
                f"whisperx-serve: an active key is already named {args.name!r}"
            ) from None
        print(f"created key {row.id} ({row.name}{', admin' if row.is_admin else ''})")
        print(f"api key:        {new.key}")
        print(f"signing secret: {new.callback_secret}")
        print("The API key is shown only now; the database keeps its SHA-256 alone.")
        return 0
    if args.action == "list":
        rows = api_keys.list_api_keys(db)
        if args.json:
            for row in rows:
                print(json.dumps(_describe(row)))
            return 0
        print(f"{'ID':<17} {'NAME':<20} {'PREFIX':<14} {'ADMIN':<5} {'CREATED':<25} REVOKED")
        for row in rows:
            d = _describe(row)
            print(
                f"{row.id:<17} {row.name[:20]:<20} {d['prefix']!s:<14} "
                f"{'yes' if row.is_admin else 'no':<5} {d['created_at']!s:<25} "
                f"{d['revoked_at'] or '-'}"
            )
        return 0
    if args.action == "revoke":
        row = _find(db, args.key)
        if not api_keys.revoke_api_key(db, key_id=row.id):
            print(f"key {row.id} ({row.name}) was already revoked")
            return 1
        print(f"revoked key {row.id} ({row.name})")
        return 0
    if args.action == "signing-secret":
        print(_find(db, args.key).callback_secret)
        return 0
    raise AssertionError(args.action)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = Settings().resolved_database_url()
    migrate(url)
    db = Database(url)
    try:
        if args.command == "migrate":
            print(f"database {db.url} is at the latest schema")
            return 0
        return _keys(db, args)
    finally:
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())
