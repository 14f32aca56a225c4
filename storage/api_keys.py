"""API keys: create, look up by hash, list and revoke. Keyword-only, one transaction each.

The database holds the SHA-256 of each key, never the key. A key is 256 random bits, so a
fast hash is enough: no one can search that space, and unlike a deliberately slow password
hash (scrypt, argon2) it costs microseconds on every request. The per-key callback secret
is stored as is: HMAC needs it, and it can only sign callbacks, never call the API.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select, update

from common.schemas import utcnow
from storage.db import Database
from storage.models import ApiKeyRow


class KeyNameTaken(Exception):
    """An active key already has this name."""


def create_api_key(
    db: Database,
    *,
    key_id: str,
    name: str,
    key_hash: str,
    prefix: str,
    callback_secret: str,
    is_admin: bool = False,
    max_active_tasks: int | None = None,
    max_submissions_per_minute: int | None = None,
) -> ApiKeyRow:
    with db.session() as session:
        taken = session.scalar(
            select(ApiKeyRow.id).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
        )
        if taken is not None:
            raise KeyNameTaken(name)
        row = ApiKeyRow(
            id=key_id,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            is_admin=is_admin,
            callback_secret=callback_secret,
            max_active_tasks=max_active_tasks,
            max_submissions_per_minute=max_submissions_per_minute,
            created_at=utcnow(),
        )
        session.add(row)
    return row


def find_active_key(db: Database, *, key_hash: str) -> ApiKeyRow | None:
    """The unrevoked key with this hash, if any."""
    with db.session() as session:
        return session.scalar(
            select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None))
        )


def resolve_key(db: Database, *, id_or_name: str) -> ApiKeyRow | None:
    """The key with this id, else the active key with this name."""
    with db.session() as session:
        by_id = session.get(ApiKeyRow, id_or_name)
        if by_id is not None:
            return by_id
        return session.scalar(
            select(ApiKeyRow).where(ApiKeyRow.name == id_or_name, ApiKeyRow.revoked_at.is_(None))
        )


def list_api_keys(db: Database, *, include_revoked: bool = True) -> list[ApiKeyRow]:
    stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    if not include_revoked:
        stmt = stmt.where(ApiKeyRow.revoked_at.is_(None))
    with db.session() as session:
        return list(session.scalars(stmt))


def revoke_api_key(db: Database, *, key_id: str) -> bool:
    """Revoke the key; False if it does not exist or was already revoked."""
    with db.session() as session:
        result = session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class KeyCounts:
    total: int
    """Every key ever created, revoked ones included (``auth: auto`` turns on at 1)."""
    active: int


def count_api_keys(db: Database) -> KeyCounts:
    with db.session() as session:
        total, active = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((ApiKeyRow.revoked_at.is_(None), 1), else_=0)), 0),
            ).select_from(ApiKeyRow)
        ).one()
        return KeyCounts(total=int(total), active=int(active))


def callback_secret_for(db: Database, *, key_id: str) -> str | None:
    """The signing secret of the key that owns a task (revoked keys still sign)."""
    with db.session() as session:
        return session.scalar(select(ApiKeyRow.callback_secret).where(ApiKeyRow.id == key_id))
