"""A RabbitMQ cluster of three nodes on this machine, of the test's own: the Debian package's
rabbitmq-server run three times with its own node names, ports and data directories, joined into
one cluster, with the faults a drill applies to a node (kill -9, stop and start, pause).

The nodes share one Erlang cookie (a HOME of the cluster's own), use ``pause_minority`` (RabbitMQ's
advice for three nodes) and a 5 s ``net_ticktime``, so a paused node is marked down in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from offers_workers.local.embedded import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: Seconds without a word before a node counts another as down (Erlang's default is 60).
NET_TICKTIME = 5
USER, PASSWORD = "offers", "cluster-test-password"


def rabbit_cluster_unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not (RABBITMQ_BIN / tool).exists():
            return f"{RABBITMQ_BIN / tool} is not installed (Debian's rabbitmq-server package)"
    return None


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    #: SIGSTOPped: its port still takes connections (the kernel's), but nothing answers.
    paused: bool = False

    @property
    def short(self) -> str:
        """c1, c2, c3: what the drill table names."""
        return self.name.split("-")[1]


@dataclass
class Cluster:
    folder: Path
    nodes: list[Node]
    vhost: str = "offers"
    env: dict[str, str] = field(default_factory=dict)

    # --- addresses ---

    def url(self, nodes: list[Node] | None = None) -> str:
        """The fleet's broker setting: one URL per node, ';'-separated (Celery fails over along it)."""
        return ";".join(
            f"amqp://{USER}:{PASSWORD}@localhost:{n.port}/{quote(self.vhost, safe='')}" for n in nodes or self.nodes
        )

    def node(self, name_or_short: str) -> Node:
        return next(n for n in self.nodes if name_or_short in (n.name, n.short))

    # --- rabbitmqctl ---

    def ctl(self, node: Node, *args: str, timeout: float = 60, tool: str = "rabbitmqctl") -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / tool), "-n", node.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} -n {node.name} {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-400:]}"
            )
        return result.stdout

    def any_running(self) -> Node:
        """A node that answers: where cluster-wide questions go."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None and not node.paused and _port_open(node.port):
                return node
        raise RuntimeError("no node of the cluster is running")

    def running_nodes(self, asked: Node | None = None) -> set[str]:
        status = json.loads(self.ctl(asked or self.any_running(), "cluster_status", "--formatter", "json", timeout=30))
        return set(status.get("running_nodes", []))

    def partitions(self, asked: Node) -> dict[str, list[str]]:
        """The partitions ``asked`` has recorded (Mnesia's running_partitioned_network), by node."""
        status = json.loads(self.ctl(asked, "cluster_status", "--formatter", "json", timeout=30))
        return status.get("partitions") or {}

    def restart_app(self, node: Node) -> None:
        """RabbitMQ's recovery from a partition: restart the rabbit app of the side not trusted."""
        self.ctl(node, "stop_app")
        self.ctl(node, "start_app", timeout=120)

    def sees(self, asked: Node, other: Node) -> bool:
        """Whether ``asked`` is connected to ``other`` (Erlang's own view: no call to other nodes,
        so it answers while a node hangs)."""
        return f"'{other.name}'" in self.ctl(asked, "eval", "nodes().", timeout=15)

    def queues(self) -> dict[str, tuple[str, list[str], list[str]]]:
        """Each queue of the vhost: its leader, its members and those of them online."""
        out = self.ctl(
            self.any_running(),
            "list_queues",
            "-p",
            self.vhost,
            "name",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
            timeout=15,
        )
        return {
            q["name"]: (q.get("leader", ""), q.get("members") or [], q.get("online") or []) for q in json.loads(out)
        }

    def leaders(self, names: list[str]) -> dict[str, str]:
        """The leader of each queue named, asked of each live node about its own queues: a listing
        of members (or of every node's queues) waits on a hung node."""
        found: dict[str, str] = {}
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None or node.paused or not _port_open(node.port):
                continue
            out = self.ctl(
                node, "list_queues", "-p", self.vhost, "name", "leader", "--local", "--formatter", "json", timeout=15
            )
            found.update((q["name"], q["leader"]) for q in json.loads(out) if q["name"] in names)
        return found

    # --- faults ---

    def start(self, node: Node) -> None:
        """Start (or start again, on its data directory: it rejoins) the node's Erlang VM."""
        env = {
            **self.env,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(node.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(node.folder / "pid"),
            # Three nodes on a shared machine: schedulers that sleep when idle instead of spinning.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel net_ticktime {NET_TICKTIME} +sbwt none +sbwtdcpu none +sbwtdio none",
        }
        with (node.folder / "out.log").open("ab") as out:
            node.proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self, node: Node, timeout: float = 120) -> None:
        """Until the node takes AMQP connections and its rabbit app runs."""
        deadline = time.monotonic() + timeout
        while not _port_open(node.port):
            if node.proc is None or node.proc.poll() is not None or time.monotonic() > deadline:
                log = (node.folder / "out.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"RabbitMQ node {node.name} did not start: {log}")
            time.sleep(0.2)

    def kill(self, node: Node) -> None:
        """kill -9 of the node's VM (and its port programs)."""
        assert node.proc is not None
        with suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait()

    def stop(self, node: Node) -> None:
        """A clean stop of the node, as `rabbitmqctl stop` does it."""
        assert node.proc is not None
        try:
            self.ctl(node, "stop", timeout=60)
            node.proc.wait(60)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill(node)

    def pause(self, node: Node) -> None:
        """The node hangs: SIGSTOP of its VM. Its sockets stay open; the others hear nothing."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGSTOP)
        node.paused = True

    def resume(self, node: Node) -> None:
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGCONT)
        node.paused = False

    def wait_clustered(self, timeout: float = 120) -> None:
        """Until every node runs and each counts all three as running."""
        deadline = time.monotonic() + timeout
        expected = {n.name for n in self.nodes}
        while True:
            try:
                if all(_port_open(n.port) and self.running_nodes(n) == expected for n in self.nodes):
                    return
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not come back to {sorted(expected)} in {timeout:g} s")
            time.sleep(1)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def rabbit_cluster(folder: Path, tag: str, size: int = 3) -> Iterator[Cluster]:
    """Three nodes (``offers-c1-TAG@localhost``, ...) clustered, with a vhost whose default queue
    type is quorum and the operations guide's delivery-limit policy. Every node stopped after."""
    from tests.brokers import delivery_limit_policy

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rabbitmq.conf").write_text(
        f"default_user = {USER}\n"
        f"default_pass = {PASSWORD}\n"
        "cluster_partition_handling = pause_minority\n"
        "log.console = true\n"
        "log.file = false\n"
    )
    (folder / "advanced.config").write_text("[].\n")
    (folder / "enabled_plugins").write_text("[].\n")
    cookie = folder / ".erlang.cookie"
    cookie.write_text(f"OFFERSCLUSTER{tag.upper()}")
    cookie.chmod(0o400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
    env["HOME"] = str(folder)  # the one cookie every node and rabbitmqctl reads
    nodes = []
    for i in range(1, size + 1):
        node_dir = folder / f"c{i}"
        node_dir.mkdir()
        nodes.append(Node(f"offers-c{i}-{tag}@localhost", free_port(), free_port(), node_dir))
    cluster = Cluster(folder, nodes, env=env)
    with ExitStack() as stack:

        @stack.callback
        def _stop_all() -> None:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(node.proc.pid, signal.SIGCONT)
                        os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait()

        # Each node takes seconds to boot: all at once, then the second and third join the first.
        for node in nodes:
            cluster.start(node)
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(cluster.wait_up, nodes))
        first = nodes[0]
        for node in nodes[1:]:
            cluster.ctl(node, "stop_app")
            cluster.ctl(node, "join_cluster", first.name)
            cluster.ctl(node, "start_app")
        cluster.wait_clustered()
        cluster.ctl(first, "add_vhost", cluster.vhost, "--default-queue-type", "quorum")
        cluster.ctl(first, "set_permissions", "-p", cluster.vhost, USER, ".*", ".*", ".*")
        policy = list(delivery_limit_policy(cluster.vhost))
        cluster.ctl(first, *policy)
        yield cluster
