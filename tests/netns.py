"""Worker hosts on one machine: Linux network namespaces on a bridge, each with its own address,
and a relay on the main host so they reach its loopback-only services (Postgres, Redis, RabbitMQ,
the sandbox) as a remote host reaches a database server: over a link that can be cut.

The relay forwards bytes and nothing else. When a host's link goes down, its connections through
the relay go silent, as they would across a real network: the services find out only from their
own timeouts (AMQP heartbeats, Postgres' idle-in-transaction timeout, Redis' visibility timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


def namespaces_unavailable(probe_name: str) -> str | None:
    """Why worker hosts cannot be built here (not root, no iproute2, no namespaces), or None."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    try:
        ip("netns", "add", probe_name)
    except RuntimeError as exc:
        return f"network namespaces cannot be created here ({exc})"
    ip("netns", "del", probe_name)
    return None


@dataclass
class Host:
    name: str
    netns: str
    address: str
    #: The bridge's end of the host's cable: set down to cut the host off.
    link: str


@dataclass
class HostNetwork:
    """A bridge on the main host (``gateway``) and namespaces plugged into it."""

    tag: str  # a few characters unique to the run: interface names allow 15
    subnet: str  # "10.a.b"
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"ow{self.tag}b"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def __enter__(self) -> HostNetwork:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        host = Host(name, f"offers-{self.tag}-{name}", f"{self.subnet}.{10 + n}", f"ow{self.tag}{n}")
        ip("netns", "add", host.netns)
        self.hosts[name] = host
        ip("link", "add", host.link, "type", "veth", "peer", "name", f"{host.link}p")
        ip("link", "set", f"{host.link}p", "netns", host.netns)
        ip("link", "set", host.link, "master", self.bridge)
        ip("link", "set", host.link, "up")
        ip("link", "set", f"{host.link}p", "name", "eth0", netns=host.netns)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        ip("link", "set", "eth0", "up", netns=host.netns)
        ip("link", "set", "lo", "up", netns=host.netns)
        return host

    def cut(self, name: str) -> None:
        ip("link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        ip("link", "set", self.hosts[name].link, "up")

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", host.netns)
            with contextlib.suppress(RuntimeError):
                ip("link", "del", host.link)
        with contextlib.suppress(RuntimeError):
            ip("link", "del", self.bridge)


#: What a relay forwards to: a loopback TCP port, or a Unix socket path (embedded Postgres has
#: only that, and a path is reachable from every namespace, so it must go through the relay too).
Target = int | str


class Relay:
    """TCP relays on ``listen_host``, one per target, in a thread of their own."""

    def __init__(self, listen_host: str, targets: set[Target]) -> None:
        self.listen_host = listen_host
        self.targets = targets
        self.relayed: dict[Target, int] = {}  # target -> relay port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Relay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        for target in sorted(self.targets, key=str):
            server = await asyncio.start_server(lambda r, w, t=target: self._pipe(r, w, t), self.listen_host, 0)
            self._servers.append(server)
            self.relayed[target] = server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target) -> None:
        try:
            if isinstance(target, int):
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            else:
                up_reader, up_writer = await asyncio.open_unix_connection(target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                # One side gone: close both, as a peer's socket would be.
                for w in (writer, up_writer):
                    w.close()
                    self._writers.discard(w)

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for w in list(self._writers):
                w.close()
            # Let the pipes see their sockets closed and finish, rather than be destroyed pending.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait(pending, timeout=2) if pending else None

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


LOOPBACK = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)")


def _database_target(conninfo: str) -> Target:
    params = conninfo_to_dict(conninfo)
    port = int(params.get("port") or 5432)
    host = str(params.get("host") or "")
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else port


def loopback_targets(env: dict[str, str]) -> set[Target]:
    """Every loopback service the environment's URLs point at (what a worker host must reach)."""
    targets: set[Target] = {
        int(m) for key, value in env.items() if key != "OFFERS_DATABASE_URL" for m in LOOPBACK.findall(value)
    }
    if "OFFERS_DATABASE_URL" in env:
        targets.add(_database_target(env["OFFERS_DATABASE_URL"]))
    return targets


def rehosted(env: dict[str, str], relay: Relay) -> dict[str, str]:
    """The environment as a worker host sees it: every loopback service through the relay."""

    def swap(match: re.Match[str]) -> str:
        return f"{relay.listen_host}:{relay.relayed[int(match.group(1))]}"

    out = {k: LOOPBACK.sub(swap, v) for k, v in env.items() if k != "OFFERS_DATABASE_URL"}
    if "OFFERS_DATABASE_URL" in env:
        url = env["OFFERS_DATABASE_URL"]
        out["OFFERS_DATABASE_URL"] = make_conninfo(
            url, host=relay.listen_host, port=relay.relayed[_database_target(url)]
        )
    return out


@contextlib.contextmanager
def relayed_network(tag: str, subnet: str, env: dict[str, str]) -> Iterator[tuple[HostNetwork, Relay]]:
    with HostNetwork(tag, subnet) as network, Relay(network.gateway, loopback_targets(env)) as relay:
        yield network, relay
