"""API keys per tenant. A key is ``aiapps_<key id>_<secret>``; the store keeps the key id,
the tenant and the SHA-256 of the whole key, never the key itself, and checks compare hashes
in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from saga.store import ApiKey, SagaStore

KEY_PREFIX = "aiapps"
_KEY = re.compile(rf"^{KEY_PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
# compared against when the key id is unknown, so a miss costs what a hit costs
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant every read and write is confined to, and by which key."""

    tenant: str
    key_id: str


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id in ``token``, or None if it is not shaped like one of our keys."""
    match = _KEY.match(token)
    return match.group("id") if match else None


def valid_tenant(tenant: str) -> bool:
    return bool(_TENANT.match(tenant))


async def create_api_key(store: SagaStore, tenant: str) -> tuple[ApiKey, str]:
    """A new key for ``tenant``: the stored record and the key itself (shown once)."""
    if not valid_tenant(tenant):
        raise ValueError(
            f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    key_id = secrets.token_hex(6)
    token = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    created = datetime.now(UTC)
    await store.put_api_key(key_id, tenant, hash_key(token), created)
    return ApiKey(key_id, tenant, hash_key(token), created), token


async def verify_api_key(store: SagaStore, token: str) -> Caller | None:
    """The caller ``token`` belongs to, or None if it is unknown, wrong or revoked."""
    key_id = key_id_of(token)
    record = await store.find_api_key(key_id) if key_id is not None else None
    stored = record.key_hash if record is not None else _DUMMY_HASH
    matches = hmac.compare_digest(stored.encode(), hash_key(token).encode())
    if record is None or not matches or not record.active:
        return None
    return Caller(tenant=record.tenant, key_id=record.key_id)
