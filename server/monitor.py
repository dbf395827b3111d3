"""What an operator watches on a running server: /healthz, /metrics, and the lines about requests."""

from __future__ import annotations

import bisect
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .logs import clip
from .session import METHODS

if TYPE_CHECKING:
    from .database import Database
    from .session import Service, Session

__all__ = ["BUCKETS", "Monitor", "RecentWarnings", "document_count", "last_backup_path"]

log = logging.getLogger("montybase.server")

# Request latency buckets, in seconds: a get over the network takes about 0.2 ms; hashing a password 50 ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_OTHER = "other"  # the method label of a request whose method is not in the table: labels stay few
_JSON = "application/json"


WARNINGS_KEPT = 100  # the console's "recent warnings": this many WARNING+ lines, in memory only
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RecentWarnings(logging.Handler):
    """The last WARNINGS_KEPT lines at WARNING or above, for admins (serverStatus): a bounded ring,
    never written anywhere. Log lines never hold a key or a stored value (server/logs.py)."""

    def __init__(self, kept: int = WARNINGS_KEPT):
        super().__init__(logging.WARNING)
        self.lines: deque[dict[str, Any]] = deque(maxlen=kept)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = clip(record.getMessage(), 500)
        except Exception:  # a line with bad arguments still says where it came from
            message = clip(record.msg, 500)
        self.lines.append({"time": int(record.created * 1000), "level": record.levelname, "logger": record.name,
                           "message": message})

    def recent(self) -> list[dict[str, Any]]:
        """The lines kept, oldest first (emit runs under the handler's lock, on any thread)."""
        with self.lock:
            return list(self.lines)


def last_backup_path(storage: str) -> str:
    """Where `montybase backup` notes its last backup of `storage`, for the console's Server view."""
    return storage + ".last-backup"


def _rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; elsewhere None)."""
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def document_count(collections: dict[tuple[str, ...], dict[str, Any]]) -> int:
    """The documents of the data, leaving out the accounts' own store (reserved `__name__` collections)."""
    return sum(len(docs) for path, docs in list(collections.items()) if not path[0].startswith("__"))


class Monitor:
    """One server's numbers and the lines requests cause. Requests are counted on their way out
    (a few integer increments); everything else is read when /metrics or /healthz is asked."""

    def __init__(self, database: Database, service: Service, connections: Callable[[], tuple[int, int]]):
        """`connections()`: the connections open now, and how many of them are still in their handshake."""
        self.database, self.connections = database, connections
        self.started = time.monotonic()
        self.first_seq = database.seq  # journal records appended since start: seq minus this
        self.metrics: dict[str, Any] | None = None  # `metrics` of the config: None is off
        self.slow: float | None = 1.0  # seconds; a request slower than this is logged (`logSlowMs`)
        self.notification_frames = 0
        self.sent_bytes = 0
        self._lock = threading.Lock()  # requests are answered on the loop and on executor threads
        self._requests: Counter[tuple[str, str]] = Counter()
        self._latency: dict[str, list[float]] = {}  # method → [count per bucket…, +Inf count, sum]
        self._registry: CollectorRegistry | None = None
        self.warnings = RecentWarnings()  # attached to the "montybase" logger while serving (`montybase serve`)
        service.observe = self.request
        service.status = self.status

    def configure(self, metrics: dict[str, Any] | None, slow_ms: float | None) -> None:
        self.metrics = metrics
        self.slow = None if slow_ms is None else slow_ms / 1000

    # Requests

    def request(self, session: Session, message: Any, answer: dict[str, Any] | None, seconds: float) -> None:
        """Count one answered request; log it when it is slow, denied or rate limited (bounded
        per client address); log an ignored notification."""
        method = message.get("method") if isinstance(message, dict) else None
        label = method if type(method) is str and method in METHODS else _OTHER  # a list or an object is no key
        lines, number, address = session.service.throttle, session.number, session.address
        if answer is None:
            lines.log(logging.INFO, "notification", address, "connection %d: ignored a notification (method %s)",
                      number, clip(method))
            return
        error = answer.get("error")
        code = error["data"]["reason"] if error is not None else "OK"
        with self._lock:
            self._requests[label, code] += 1
            buckets = self._latency.get(label)
            if buckets is None:
                buckets = self._latency[label] = [0] * (len(BUCKETS) + 2)
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            buckets[-1] += seconds
        if code == "PERMISSION_DENIED":
            lines.log(logging.INFO, "permission denied", address, "connection %d from %s: %s", number, address,
                      clip(error["message"], 160))
        elif code == "RATE_LIMITED":
            lines.log(logging.WARNING, "rate limited", address, "connection %d from %s: rate limited: %s", number,
                      address, clip(error["message"], 160))
        if self.slow is not None and seconds >= self.slow:
            lines.log(logging.WARNING, "slow request", address, "slow request: %s %s took %.0f ms (connection %d, %s)",
                      label, _path(message), seconds * 1000, number, code)

    # /healthz

    def health(self) -> tuple[int, str, bytes]:
        """200 while the server can serve and write, else 503; counts only, never data or keys."""
        database = self.database
        storage = database.storage
        if database.closed:
            state = "closed"
        elif storage.failure is not None:
            state = "failed"
        elif storage.unreachable:  # PostgreSQL: reads go on from memory, writes are refused
            state = "unreachable"
        else:
            state = "ok" if storage.durable or storage.shared else "memory"
        snapshot = storage.snapshot_time
        body = {
            "status": "ok" if state in ("ok", "memory") else "unavailable",
            "uptimeSeconds": round(time.monotonic() - self.started, 3),
            "documents": document_count(database.tree.collections),
            "connections": self._connections(),
            "storage": state,
            "lastSnapshotAgeSeconds": None if snapshot is None else round(max(0.0, time.time() - snapshot), 3),
        }
        return (200 if body["status"] == "ok" else 503), _JSON, json.dumps(body).encode() + b"\n"

    # serverStatus: the console's Server view

    def status(self) -> dict[str, Any]:
        """Counters and gauges now (the page turns counters into rates), and the recent warnings."""
        database = self.database
        with self._lock:
            requests = sum(self._requests.values())
        total, pending = self.connections()
        snapshot = database.storage.snapshot_time
        return {
            "time": int(time.time() * 1000),
            "uptimeSeconds": round(time.monotonic() - self.started, 3),
            "documents": document_count(database.tree.collections),
            "connections": total - pending,
            "listeners": len(database.watcher),
            "requests": requests,
            "writes": database.seq - self.first_seq,
            "rssBytes": _rss_bytes(),
            "lastSnapshot": None if snapshot is None else int(snapshot * 1000),
            "lastBackup": self._last_backup(),
            "warnings": self.warnings.recent(),
        }

    def _last_backup(self) -> int | None:
        storage = self.database.storage
        path = getattr(storage, "path", None)
        if path is None or not storage.durable:
            return None
        try:
            with open(last_backup_path(str(path)), encoding="utf-8") as file:
                when = json.load(file).get("time")
        except (OSError, ValueError, AttributeError):
            return None
        return when if isinstance(when, int) else None

    def _connections(self) -> dict[str, int]:
        total, pending = self.connections()
        return {"authenticated": total - pending, "pending": pending}

    # /metrics

    def scrape(self, address: str, authorization: str | None) -> tuple[int, str, bytes, dict[str, str]]:
        """The Prometheus text for a caller the `metrics` config admits: 404 while metrics are off,
        401 without the bearer token, 403 from an address not allowed."""
        config = self.metrics
        if not config:
            return 404, "text/plain; charset=utf-8", b"Not found\n", {}
        token = config.get("token")
        if not (_allowed(address, config.get("allow") or ()) or (
                token and authorization is not None
                and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()))):
            if token:
                challenge = {"WWW-Authenticate": 'Bearer realm="metrics"'}
                return 401, "text/plain; charset=utf-8", b"Unauthorized\n", challenge
            return 403, "text/plain; charset=utf-8", b"Forbidden\n", {}
        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
            ProcessCollector(registry=self._registry)  # process_resident_memory_bytes and the like
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry), {}

    def collect(self) -> Iterator[Metric]:
        database = self.database
        with self._lock:
            requests = dict(self._requests)
            latency = {method: list(buckets) for method, buckets in self._latency.items()}
        family = CounterMetricFamily("montybase_requests", "Requests answered, by method and result code",
                                     labels=("method", "code"))
        for (method, code), count in sorted(requests.items()):
            family.add_metric((method, code), count)
        yield family
        histogram = HistogramMetricFamily("montybase_request_duration_seconds",
                                          "Time to answer a request (before a hot write's fsync)", labels=("method",))
        for method, buckets in sorted(latency.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), buckets[:-1]):
                running += count
                cumulative.append((bound, running))
            histogram.add_metric((method,), cumulative, buckets[-1])
        yield histogram
        connections = GaugeMetricFamily("montybase_connections", "Open connections, by handshake state",
                                        labels=("state",))
        for state, count in self._connections().items():
            connections.add_metric((state,), count)
        yield connections
        yield GaugeMetricFamily("montybase_listeners", "Active listeners", value=len(database.watcher))
        yield CounterMetricFamily("montybase_notification_frames", "Frames of listener notifications sent",
                                  value=self.notification_frames)
        yield CounterMetricFamily("montybase_sent_bytes", "Bytes of encrypted frames sent (answers and notifications)",
                                  value=self.sent_bytes)
        yield CounterMetricFamily("montybase_journal_appends", "Writes appended to the journal since start",
                                  value=database.seq - self.first_seq if database.storage.durable else 0)
        yield GaugeMetricFamily("montybase_documents", "Documents stored",
                                value=document_count(database.tree.collections))
        duration = database.snapshot_duration
        yield GaugeMetricFamily("montybase_snapshot_duration_seconds", "How long the last snapshot took",
                                value=duration if duration is not None else float("nan"))
        snapshot = database.storage.snapshot_time
        yield GaugeMetricFamily("montybase_snapshot_age_seconds", "Seconds since the snapshot on disk was written",
                                value=time.time() - snapshot if snapshot is not None else float("nan"))
        storage = database.storage
        yield GaugeMetricFamily("montybase_storage_up", "1 while the storage takes writes; 0 once it failed or is "
                                "unreachable", value=0 if storage.failure is not None or storage.unreachable else 1)
        yield GaugeMetricFamily("montybase_uptime_seconds", "Seconds since the server started",
                                value=time.monotonic() - self.started)


class _Collector:
    """prometheus_client's view of a Monitor."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        return self.monitor.collect()


def _allowed(address: str, allow: Any) -> bool:
    """Whether `address` is in `allow` (addresses or networks: "127.0.0.1", "10.0.0.0/8")."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _path(message: dict[str, Any]) -> str:
    """The path a request names (its document, collection or query), for a log line."""
    params = message.get("params")
    if not isinstance(params, dict):
        return "-"
    path = params.get("path")
    if path is None and isinstance(params.get("query"), dict):
        path = params["query"].get("path")
    if isinstance(path, list):
        return clip("/".join(map(str, path)))
    return "-" if path is None else clip(path)
