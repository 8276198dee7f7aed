"""The fleet's own Redis clients, from one URL: a server (``redis://``, ``rediss://``) or a Sentinel
group (``sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379``, optionally ``/db``).

With Sentinel the client asks the sentinels where the master is (OFFERS_REDIS_SENTINEL_MASTER names
it) and asks again on every reconnect, so it follows a failover to the promoted replica. A password
in the first URL is the master's; OFFERS_REDIS_SENTINEL_PASSWORD, the sentinels' own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from config.settings import Settings

SENTINEL_SCHEME = "sentinel://"
#: What a sentinel listens on when its URL names no port.
SENTINEL_PORT = 26379


def is_sentinel(url: str | None) -> bool:
    return bool(url and url.startswith(SENTINEL_SCHEME))


@dataclass(frozen=True)
class SentinelGroup:
    """A ``sentinel://`` URL, parsed."""

    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelGroup:
    """The sentinels' addresses; the database, user and password of the first URL (kombu's reading)."""
    shape = "a Sentinel URL is sentinel://host:port, several separated by ';'"
    parts = [urlsplit(u.strip()) for u in url.split(";") if u.strip()]
    try:
        sentinels = [(p.hostname or "", p.port or SENTINEL_PORT) for p in parts]
    except ValueError:  # a port that is no number; urllib's message would quote it
        raise ValueError(shape) from None
    if not parts or any(p.scheme != "sentinel" or not p.hostname for p in parts):
        raise ValueError(shape)
    first = parts[0]
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("a Sentinel URL's path is a database number")
    return SentinelGroup(
        sentinels,
        int(path or 0),
        unquote(first.username) if first.username else None,
        unquote(first.password) if first.password else None,
    )


def sentinel_kwargs(password: str | None, socket_timeout: float = 5) -> dict[str, Any]:
    """How to talk to the sentinels themselves (not the master): their password, if they need one."""
    return {"socket_timeout": socket_timeout, **({"password": password} if password else {})}


def redis_client(
    target: Settings | str,
    *,
    master_name: str | None = None,
    sentinel_password: str | None = None,
    **options: Any,
) -> redis.Redis:
    """A client of the fleet's Redis (``target``: the settings, for OFFERS_REDIS_URL or a Redis broker)
    or of a URL; ``options`` go to redis-py's client (socket_timeout, decode_responses…). With a
    ``sentinel://`` URL, a client of the master the sentinels name, found again after a failover."""
    if isinstance(target, str):
        url = target
    else:
        url = target.effective_redis_url or ""
        master_name = master_name or target.redis_sentinel_master
        sentinel_password = sentinel_password or target.secret("redis_sentinel_password") or None
    if not url:
        raise ValueError("no Redis URL: set OFFERS_BROKER_URL to a Redis URL or OFFERS_REDIS_URL")
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    if not master_name:
        raise ValueError("OFFERS_REDIS_SENTINEL_MASTER is required with a sentinel:// URL")
    group = parse_sentinel_url(url)
    timeout = options.get("socket_timeout") or 5
    sentinel = Sentinel(group.sentinels, sentinel_kwargs=sentinel_kwargs(sentinel_password, timeout))
    credentials: dict[str, Any] = {k: v for k, v in (("username", group.username), ("password", group.password)) if v}
    return sentinel.master_for(master_name, db=group.db, **credentials, **options)


def broker_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of a Redis broker (OFFERS_BROKER_URL), which OFFERS_REDIS_URL may differ from."""
    return redis_client(
        settings.broker_url or "",
        master_name=settings.redis_sentinel_master,
        sentinel_password=settings.secret("redis_sentinel_password") or None,
        **options,
    )
