"""The support report (SPEC 10.2): one document a user can attach to a question.

For one operation it holds what the seed's "Providing Useful Information"
asks for: the operation type and spec, status, error code, message and
suggestion, the retries and the attempt timeline, the system resources now
(free space where the file goes and in the state directory, memory), the
host's reachability measured now (`check_host`: a DNS lookup and one TCP
connect, each limited to `NETWORK_LIMIT_S`), the settings in force, versions
and the operation's recent log lines. Without an operation it covers the
engine (every operation's summary, breakers, statistics, recent history).

Two sources feed it: a running engine (`live_operation_report`,
`live_engine_report`), or the state directory read without taking its lock
(`read_state_dir`), so ``recovery report`` works with no engine running and
never starts or changes anything there.

Nothing in it is a credential: specs are shown as events show them (the
kind's ``describe``: header values and URL secrets replaced), the log lines
were redacted when they were written, and the finished document passes
through `scrub`, which redacts every URL in every string with the same
`redact_url` as events and replaces the value of every credential-named key.
"""

from __future__ import annotations

import collections
import os
import platform
import re
import shutil
import socket
import sys
import time
import urllib.parse
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import attrs
import msgpack
import trio

from ._convert import converter
from ._download._names import redact_url
from ._history import History, summarize
from ._settings import load_settings
from ._specs import redact_headers
from ._store import OpSnapshot
from ._units import human_bytes

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "NETWORK_LIMIT_S",
    "StateDirView",
    "check_host",
    "engine_report",
    "live_engine_report",
    "live_operation_report",
    "operation_report",
    "read_state_dir",
    "report_text",
    "scrub",
]

#: The limit on each network measurement (DNS lookup, TCP connect).
NETWORK_LIMIT_S = 3.0
_LOG_LINES = 40
_LOG_TAIL_BYTES = 4 * 1024 * 1024
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
_SECRET_KEY = re.compile(r"token|secret|auth|password|passwd|cookie|api[-_]?key|credential", re.IGNORECASE)
_REDACTED = "***"


# --- redaction --------------------------------------------------------------------------


def scrub(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) with every URL redacted and every credential-named key's value hidden."""
    if isinstance(value, str):
        return _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and _SECRET_KEY.search(key) and isinstance(item, str):
                out[key] = _REDACTED if item else item
            else:
                out[key] = scrub(item)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


# --- what is measured now ---------------------------------------------------------------


async def check_host(host: str, port: int, *, limit_s: float = NETWORK_LIMIT_S) -> dict[str, Any]:
    """Resolve ``host`` and open (then close) one TCP connection to ``port``, each within ``limit_s``.

    Says what it measured: the addresses the resolver answered and how long
    it took, then the address connected to and the connect time, or for
    each step the reason it failed (an error, or no answer within the limit).
    """
    result: dict[str, Any] = {"host": host, "port": port, "limit_s": limit_s, "measured_at": time.time()}
    t0 = time.perf_counter()
    infos: list[Any] = []
    dns: dict[str, Any] = {"ok": False}
    with trio.move_on_after(limit_s) as scope:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            dns = {"ok": bool(addresses), "addresses": addresses}
            if not addresses:
                dns["error"] = "the resolver returned no address"
        except OSError as exc:
            dns = {"ok": False, "error": f"lookup failed: {exc.strerror or exc}"}
    if scope.cancelled_caught:
        dns = {"ok": False, "error": f"no answer within {limit_s:g} s"}
    dns["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    result["dns"] = dns
    if not dns["ok"]:
        result["tcp"] = {"ok": False, "error": "not tried: the DNS lookup failed"}
        result["ok"] = False
        return result
    family, _type, proto, _name, address = infos[0]
    tcp: dict[str, Any] = {"ok": False, "address": str(address[0])}
    t1 = time.perf_counter()
    sock = trio.socket.socket(family, socket.SOCK_STREAM, proto)
    with sock:
        with trio.move_on_after(limit_s) as scope:
            try:
                await sock.connect(address)
                tcp["ok"] = True
            except OSError as exc:
                tcp["error"] = f"connect failed: {exc.strerror or exc}"
        if scope.cancelled_caught:
            tcp["error"] = f"no connection within {limit_s:g} s"
    tcp["elapsed_ms"] = round((time.perf_counter() - t1) * 1000, 1)
    result["tcp"] = tcp
    result["ok"] = bool(tcp["ok"])
    return result


def _host_port(spec: dict[str, Any]) -> tuple[str, int] | None:
    url = spec.get("url")
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def _space(path: Path | None) -> dict[str, Any] | None:
    """Free and total bytes on the file system holding ``path`` (its nearest existing ancestor)."""
    if path is None:
        return None
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"path": str(path), "error": exc.strerror or str(exc)}
    return {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}


def _memory() -> dict[str, Any]:
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
        return {"available_bytes": fields.get("MemAvailable"), "total_bytes": fields.get("MemTotal")}
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "win32":  # no sysconf there
        return {"available_bytes": None, "total_bytes": None}
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return {"available_bytes": os.sysconf("SC_AVPHYS_PAGES") * page,
                "total_bytes": os.sysconf("SC_PHYS_PAGES") * page}
    except (ValueError, OSError, AttributeError):
        return {"available_bytes": None, "total_bytes": None}


def _versions() -> dict[str, str]:
    try:
        engine_version = metadata.version("recovery-engine")
    except metadata.PackageNotFoundError:
        engine_version = "unknown"
    return {"engine": engine_version, "python": sys.version.split()[0], "os": platform.platform()}


def _log_lines(state_dir: Path, op_id: str | None, limit: int = _LOG_LINES) -> list[str]:
    """The last ``limit`` lines of the log (naming ``op_id`` when given), oldest first."""
    logs = state_dir / "logs"
    found: collections.deque[str] = collections.deque(maxlen=limit)
    for path in (logs / "recovery.log.1", logs / "recovery.log"):
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                data = f.read()
        except OSError:
            continue
        for raw in data.decode("utf-8", "replace").splitlines():
            if op_id is None or op_id in raw:
                found.append(raw)
    return list(found)


def _dest_path(op: dict[str, Any], settings: dict[str, Any]) -> Path | None:
    spec = op.get("spec") or {}
    root = settings.get("download_root") or "."
    dest = spec.get("dest")
    if isinstance(dest, str) and dest:
        path = Path(dest).expanduser()
        return (path if path.is_absolute() else Path(root) / path).parent
    return Path(root)


# --- the documents ----------------------------------------------------------------------


def _operation_part(op: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "kind", "status", "spec", "error", "last_error", "attempt", "max_retries", "retries_total",
            "bytes_done", "bytes_total", "created_at", "updated_at", "resource", "step", "steps_done",
            "steps_total", "output_tail")
    return {k: op.get(k) for k in keys if k in op}


async def operation_report(op: dict[str, Any], *, settings: dict[str, Any], state_dir: Path,
                           source: str, network: bool = True) -> dict[str, Any]:
    """The report of one operation (``op`` as `Operation.to_dict` shows it)."""
    target = _host_port(op.get("spec") or {})
    if not network:
        net: dict[str, Any] = {"checked": False, "reason": "not asked for"}
    elif target is None:
        net = {"checked": False, "reason": "this operation names no network host"}
    else:
        net = {"checked": True, **await check_host(*target)}
    error = op.get("error") or op.get("last_error")
    # Read from the state dir, the settings the operation last ran with (a run's --set included) are the
    # ones in force for it, not settings.json alone.
    ran_with = op.get("settings_in_force")
    if source == "engine":
        settings_source = "the running engine"
    elif ran_with:
        settings, settings_source = {**settings, **ran_with}, "the operation's last snapshot"
    else:
        settings_source = "settings.json (the operation recorded none)"
    doc = {
        "report": "operation",
        "generated_at": time.time(),
        "source": source,
        "operation": _operation_part(op),
        "summary": {
            "kind": op.get("kind"), "status": op.get("status"),
            "code": error.get("code") if error else None,
            "message": error.get("message") if error else None,
            "suggestion": error.get("suggestion") if error else None,
            "retries": op.get("retries_total", 0), "attempt": op.get("attempt", 0),
            "max_retries": op.get("max_retries"), "attempts": len(op.get("timeline") or ()),
        },
        "timeline": list(op.get("timeline") or ()),
        "resources": {
            "destination": _space(_dest_path(op, settings)),
            "state_dir": _space(state_dir),
            "memory": _memory(),
        },
        "network": net,
        "settings": dict(settings),
        "settings_source": settings_source,
        "versions": _versions(),
        "log_lines": _log_lines(state_dir, str(op.get("id"))),
    }
    return scrub(doc)


def engine_report(ops: Iterable[dict[str, Any]], *, settings: dict[str, Any], state_dir: Path,
                  statistics: dict[str, Any] | None, breakers: list[dict[str, Any]] | None,
                  history: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The report of the whole engine: every operation's summary, breakers, statistics, history."""
    summaries = []
    for op in ops:
        err = op.get("error") or op.get("last_error")
        summaries.append({
            "id": op.get("id"), "kind": op.get("kind"), "status": op.get("status"),
            "code": err.get("code") if err else None, "message": err.get("message") if err else None,
            "retries": op.get("retries_total", 0), "bytes_done": op.get("bytes_done", 0),
            "bytes_total": op.get("bytes_total"), "target": _target_of(op.get("spec") or {}),
        })
    doc = {
        "report": "engine",
        "generated_at": time.time(),
        "source": source,
        "operations": summaries,
        "breakers": breakers,
        "statistics": statistics,
        "history_24h": history,
        "resources": {"download_root": _space(Path(settings.get("download_root") or ".")),
                      "state_dir": _space(state_dir), "memory": _memory()},
        "settings": dict(settings),
        "versions": _versions(),
        "log_lines": _log_lines(state_dir, None),
    }
    return scrub(doc)


def _target_of(spec: dict[str, Any]) -> str | None:
    for key in ("url", "name", "dest"):
        if isinstance(spec.get(key), str):
            return str(spec[key])
    return None


async def live_operation_report(engine: "Engine", op_id: str, *, network: bool = True) -> dict[str, Any]:
    """The report of one operation of a running engine (`RefusedError` ``E_NOT_FOUND`` if unknown)."""
    op = engine.get(op_id).to_dict()
    return await operation_report(op, settings=engine.settings.to_dict(), state_dir=engine.state_dir,
                                  source="engine", network=network)


async def live_engine_report(engine: "Engine") -> dict[str, Any]:
    """The engine-wide report of a running engine."""
    breakers = [b.to_dict() for b in await engine.breakers()]
    return engine_report([op.to_dict() for op in engine.list()], settings=engine.settings.to_dict(),
                         state_dir=engine.state_dir, statistics=engine.statistics().to_dict(),
                         breakers=breakers, history=summarize(engine.history(24)), source="engine")


# --- the state directory, read only -----------------------------------------------------


@attrs.frozen
class StateDirView:
    """What a state directory holds, read without its lock: operations, settings, statistics, history."""

    root: Path
    operations: list[dict[str, Any]]
    settings: dict[str, Any]
    statistics: dict[str, Any]
    history: History
    unreadable: list[str]

    def find(self, op_id: str) -> dict[str, Any] | None:
        return next((op for op in self.operations if op.get("id") == op_id), None)


def read_state_dir(root: Path, describe: Callable[[str, Any], dict[str, Any] | None] | None = None
                   ) -> StateDirView:
    """Read ``root``'s snapshots and statistics without changing anything there.

    ``describe(kind, spec_record)`` shows a spec as events do; by default the
    built-in kinds' ``describe``, and for other kinds the record with its
    headers redacted.
    """
    describe = describe or _describe_builtin
    settings = load_settings(root / "settings.json")
    ops: list[tuple[int, dict[str, Any]]] = []
    unreadable: list[str] = []
    ops_dir = root / "operations"
    names = sorted(os.listdir(ops_dir)) if ops_dir.is_dir() else []
    for name in names:
        if not name.endswith(".msgpack") or name.startswith("."):
            continue
        try:
            payload = msgpack.unpackb((ops_dir / name).read_bytes(), raw=False)
            snap = converter.structure(payload["operation"], OpSnapshot)
        except Exception:  # noqa: BLE001 - a report lists what it could not read
            unreadable.append(name)
            continue
        ops.append((snap.seq, _snapshot_view(snap, settings.max_retries, describe)))
    stats_record: dict[str, Any] = {}
    try:
        data = msgpack.unpackb((root / "stats.msgpack").read_bytes(), raw=False)
        stats_record = data.get("stats") or {}
    except Exception:  # noqa: BLE001 - no statistics yet, or unreadable: report without them
        pass
    history = History.from_record(stats_record.pop("history", None))
    return StateDirView(root, [op for _, op in sorted(ops, key=lambda p: p[0])], settings.to_dict(),
                        stats_record, history, unreadable)


def _describe_builtin(kind_name: str, record: Any) -> dict[str, Any] | None:
    from ._engine import builtin_kinds

    try:
        kind = builtin_kinds().get(kind_name)
        return kind.describe(converter.structure(record, kind.spec_type))
    except Exception:  # noqa: BLE001 - an unknown kind or an old spec: fall back to the record
        return None


def _snapshot_view(snap: OpSnapshot, max_retries: int, describe: Callable[[str, Any], Any]) -> dict[str, Any]:
    spec = describe(snap.kind, snap.spec)
    if spec is None:
        spec = dict(snap.spec)
        if isinstance(spec.get("headers"), dict):
            spec["headers"] = redact_headers(spec["headers"])
    ran_with = dict(snap.settings)
    return {
        "id": snap.id, "kind": snap.kind, "status": snap.status, "spec": spec, "error": snap.error,
        "attempt": snap.retries, "max_retries": ran_with.get("max_retries", max_retries),
        "retries_total": snap.retries_total, "settings_in_force": ran_with or None,
        "bytes_done": snap.bytes_done, "bytes_total": snap.bytes_total, "created_at": snap.created_at,
        "updated_at": snap.updated_at, "output_tail": list(snap.output_tail[-20:]),
        "timeline": list(snap.timeline),
    }


# --- as text ----------------------------------------------------------------------------


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _bytes(n: Any) -> str:
    return human_bytes(n) if isinstance(n, int) else "-"


def report_text(doc: dict[str, Any]) -> str:
    """The report as plain text, for pasting into an issue or a chat."""
    lines: list[str] = []
    add = lines.append
    if doc.get("report") == "operation":
        op, summary = doc["operation"], doc["summary"]
        add(f"Recovery report for operation {op.get('id')} ({summary['kind']}), {_when(doc['generated_at'])}")
        add(f"status: {summary['status']}   retries: {summary['retries']} "
            f"(attempt {summary['attempt']}/{summary['max_retries']}, {summary['attempts']} "
            f"attempt{'' if summary['attempts'] == 1 else 's'} recorded)")
        if summary.get("code"):
            add(f"error: {summary['code']}: {summary['message']}")
            add(f"suggestion: {summary['suggestion']}")
        add(f"spec: {op.get('spec')}")
        add(f"progress: {_bytes(op.get('bytes_done'))} of {_bytes(op.get('bytes_total'))}")
        add("")
        add("attempts:")
        for t in doc.get("timeline") or []:
            add(f"  #{t.get('number')} {t.get('trigger')}, after {t.get('delay_s')} s: {_when(t.get('started_at'))}"
                f" -> {t.get('outcome') or 'running'} {t.get('code') or ''} "
                f"{_bytes(t.get('bytes_received'))} over {t.get('connections') or '-'} connection(s)")
        add("")
        net = doc.get("network") or {}
        if net.get("checked"):
            dns, tcp = net.get("dns", {}), net.get("tcp", {})
            add(f"network check of {net['host']}:{net['port']} (each step limited to {net['limit_s']:g} s):")
            add(f"  DNS: {'ok ' + ', '.join(dns.get('addresses', [])) if dns.get('ok') else 'FAILED: ' + str(dns.get('error'))}"
                f" ({dns.get('elapsed_ms')} ms)")
            add(f"  TCP connect: {'ok to ' + str(tcp.get('address')) if tcp.get('ok') else 'FAILED: ' + str(tcp.get('error'))}"
                + (f" ({tcp['elapsed_ms']} ms)" if "elapsed_ms" in tcp else ""))
        else:
            add(f"network check: not run ({net.get('reason')})")
    else:
        add(f"Recovery report for the engine, {_when(doc.get('generated_at'))}")
        for op in doc.get("operations") or []:
            add(f"  {op['id']} {op['kind']} {op['status']} {op.get('code') or ''} retries={op['retries']} "
                f"{op.get('target') or ''}")
        if doc.get("breakers"):
            add("breakers: " + ", ".join(f"{b.get('scope')}={b.get('state')}" for b in doc["breakers"]))
        if doc.get("statistics"):
            add(f"statistics: {doc['statistics']}")
        if doc.get("history_24h"):
            add(f"last 24 h: {doc['history_24h']}")
    res = doc.get("resources") or {}
    add("")
    add("resources now:")
    for name in ("destination", "download_root", "state_dir"):
        space = res.get(name)
        if space:
            add(f"  free space at {space.get('path')} ({name}): {_bytes(space.get('free_bytes'))}"
                f" of {_bytes(space.get('total_bytes'))}" + (f" ({space['error']})" if "error" in space else ""))
    mem = res.get("memory") or {}
    add(f"  memory available: {_bytes(mem.get('available_bytes'))} of {_bytes(mem.get('total_bytes'))}")
    v = doc.get("versions") or {}
    add(f"versions: engine {v.get('engine')}, Python {v.get('python')}, {v.get('os')}")
    where = f" (from {doc['settings_source']})" if doc.get("settings_source") else ""
    add(f"settings{where}: " + ", ".join(f"{k}={val}" for k, val in sorted((doc.get("settings") or {}).items())))
    logs = doc.get("log_lines") or []
    add("")
    add(f"recent log lines ({len(logs)}):")
    lines.extend("  " + line for line in logs)
    return "\n".join(lines) + "\n"
