"""
The admin status page: L{renderPage} turns the data of
L{twisted_rproxy.admin.Admin.status} into one self-contained HTML page (no
external assets, everything escaped).
"""

from __future__ import annotations

import html
import time
from typing import Any

_CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;
--ok:#1a7f37;--okbg:#dafbe1;--bad:#b42318;--badbg:#fee4e2;--warn:#9a6700;
--warnbg:#fff8c5;--accent:#3b5bdb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{background:#1d2330;color:#fff;padding:14px 28px;display:flex;
align-items:center;gap:18px;flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:600}
header .meta{color:#b8c0d0;font-size:13px}
header nav{margin-left:auto;font-size:13px}
header nav a{color:#cfd8ff;margin-left:12px;text-decoration:none}
main{padding:20px 28px;max-width:1280px;margin:auto}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));
gap:12px;margin-bottom:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:12px 16px}
.tile .n{font-size:24px;font-weight:650}
.tile .l{color:var(--mute);font-size:12px;text-transform:uppercase;
letter-spacing:.04em}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
margin-bottom:18px;overflow:hidden}
section h2{font-size:15px;margin:0;padding:12px 16px;border-bottom:1px solid
var(--line);display:flex;gap:10px;align-items:center}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:8px 16px;border-bottom:1px solid var(--line);
vertical-align:middle}
th{font-size:12px;color:var(--mute);font-weight:600;text-transform:uppercase;
letter-spacing:.03em;background:#fafbfc}
tr:last-child td{border-bottom:0}
td.num{font-variant-numeric:tabular-nums;text-align:right}
th.num{text-align:right}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;
font-weight:600}
.healthy{background:var(--okbg);color:var(--ok)}
.down{background:var(--badbg);color:var(--bad)}
.ejected,.panic,.drain{background:var(--warnbg);color:var(--warn)}
.ready{background:var(--okbg);color:var(--ok)}
.maintenance{background:#e7e9ef;color:var(--mute)}
.bar{height:8px;background:#edf0f5;border-radius:4px;width:120px;
display:inline-block;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.empty{padding:14px 16px;color:var(--mute)}
.err td:first-child{color:var(--bad);font-weight:600}
footer{color:var(--mute);font-size:12px;text-align:center;padding:8px 0 24px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def renderPage(status: dict[str, Any], refresh: float) -> str:
    """
    The HTML status page for L{Admin.status}'s data (no external assets).

    @param refresh: Seconds between automatic reloads, 0 for none.
    """
    pools: list[dict[str, Any]] = status["pools"]
    servers = [server for pool in pools for server in pool["servers"]]
    healthyCount = sum(1 for s in servers if s["state"] == "healthy")
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">']
    if refresh > 0:
        parts.append(f'<meta http-equiv="refresh" content="{refresh:g}">')
    parts.append(
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>twisted_rproxy status</title><style>{_CSS}</style></head><body>"
    )
    worker = f" · worker {_e(status['worker'])}" if status["worker"] else ""
    refreshText = (
        f'auto-refresh {refresh:g}s · <a href="?refresh=0">stop</a>'
        if refresh > 0
        else '<a href="?refresh=5">auto-refresh</a>'
    )
    parts.append(
        "<header><h1>twisted_rproxy</h1>"
        f'<span class="meta">version {_e(status["version"])} · pid '
        f"{_e(status['pid'])}{worker} · up {_duration(status['uptime'])} · "
        f"<code>{_e(status['config'])}</code></span>"
        f'<nav>{refreshText}<a href="status.json">JSON</a>'
        + ('<a href="metrics">metrics</a>' if status["metrics"] else "")
        + "</nav></header><main>"
    )
    totals: dict[str, Any] = status["totals"]
    workers: list[dict[str, Any]] = status["workers"]
    several = status["worker"] is not None or len(workers) > 1
    scope = " (all workers)" if several else ""
    tiles = [
        (totals["requests"], "requests" + scope),
        (totals["connections"], "client connections" + scope),
        (len(status["routes"]), "routes"),
        (len(pools), "pools"),
        (f"{healthyCount}/{len(servers)}", "servers healthy"),
        (totals["in_flight"], "requests in flight" + scope),
        (len(status["recent_errors"]), "recent errors"),
    ]
    parts.append('<div class="tiles">')
    for number, label in tiles:
        parts.append(
            f'<div class="tile"><div class="n">{_e(number)}</div>'
            f'<div class="l">{_e(label)}</div></div>'
        )
    parts.append("</div>")

    for pool in pools:
        badge = '<span class="badge panic">panic</span>' if pool["panic"] else ""
        parts.append(
            f"<section><h2>Pool <code>{_e(pool['name'])}</code>"
            f'<span class="meta" style="color:var(--mute);font-weight:400">'
            f"{_e(pool['balance'])} · {pool['requests']} requests · "
            f"{pool['retries']} retries · {pool['pending']} pending</span>"
            f"{badge}</h2><table><tr><th>Server</th><th>Health</th><th>State</th>"
            '<th>Load</th><th class="num">In flight</th><th class="num">Idle '
            'conns</th><th class="num">Requests</th><th class="num">Failures'
            '</th><th class="num">Weight</th></tr>'
        )
        peak = max([s["inFlight"] for s in pool["servers"]] + [1])
        for server in pool["servers"]:
            width = int(100 * server["inFlight"] / peak)
            parts.append(
                f"<tr><td><code>{_e(server['url'])}</code></td>"
                + _health(server)
                + _adminState(server)
                + f'<td><span class="bar"><i style="width:{width}%"></i></span></td>'
                f'<td class="num">{server["inFlight"]}</td>'
                f'<td class="num">{server["idleConnections"]}</td>'
                f'<td class="num">{server["requests"]}</td>'
                f'<td class="num">{server["failures"]}</td>'
                + _weight(server)
                + "</td></tr>"
            )
        parts.append("</table>")
        if pool.get("discovery"):
            parts.append(_discoveryTable(pool["discovery"]))
        parts.append("</section>")

    changes: list[dict[str, Any]] = status.get("runtime_changes", [])
    if changes:
        parts.append(_changesSection(changes))

    parts.append(
        "<section><h2>Routes</h2><table><tr><th>Host</th><th>Path</th>"
        "<th>Target</th><th>Filters</th><th>WebSocket</th></tr>"
    )
    for route in status["routes"]:
        target = (
            f"pool <code>{_e(route['pool'])}</code>"
            if route["pool"]
            else f"static <code>{_e(route['static'])}</code>"
        )
        parts.append(
            f"<tr><td>{_e(route['host'] or '*')}</td>"
            f"<td><code>{_e(route['path'])}</code></td><td>{target}</td>"
            f"<td>{_e(', '.join(route['filters']) or '—')}</td>"
            f"<td>{'yes' if route['websocket'] else '—'}</td></tr>"
        )
    parts.append("</table></section>")

    parts.append(
        "<section><h2>Listeners</h2><table><tr><th>Endpoint</th><th>TLS</th></tr>"
    )
    for listener in status["listeners"]:
        parts.append(
            f"<tr><td><code>{_e(listener['endpoint'])}</code></td>"
            f"<td>{'yes' if listener['tls'] else 'no'}</td></tr>"
        )
    parts.append(
        f'<tr><td colspan="2" style="color:var(--mute)">bound: '
        f"<code>{_e(', '.join(status['bound']) or '—')}</code></td></tr>"
        "</table></section>"
    )
    if status.get("certificates"):
        parts.append(_certificatesSection(status["certificates"]))
    if status.get("acme"):
        parts.append(_acmeSection(status["acme"]))

    parts.append("<section><h2>Caches</h2>")
    if status["caches"]:
        keys = [k for k in status["caches"][0] if k != "name"]
        parts.append(
            "<table><tr><th>Name</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in keys)
            + "</tr>"
        )
        for cache in status["caches"]:
            parts.append(
                f"<tr><td><code>{_e(cache['name'])}</code></td>"
                + "".join(f"<td>{_e(cache.get(k))}</td>" for k in keys)
                + "</tr>"
            )
        parts.append("</table>")
    else:
        parts.append('<div class="empty">No cache is configured.</div>')
    parts.append("</section>")

    if several:
        parts.append(_workersSection(totals, workers))

    parts.append("<section><h2>Recent errors</h2>")
    if status["recent_errors"]:
        parts.append(
            "<table><tr><th>Status</th><th>Time</th><th>Request</th>"
            "<th>Route</th><th>Backend</th></tr>"
        )
        for error in status["recent_errors"]:
            when = time.strftime("%H:%M:%S", time.localtime(error["time"]))
            parts.append(
                f'<tr class="err"><td>{_e(error["status"])}</td><td>{when}</td>'
                f"<td><code>{_e(error['method'])} {_e(error['uri'])}</code></td>"
                f"<td><code>{_e(error['route'])}</code></td>"
                f"<td><code>{_e(error['upstream'] or '—')}</code></td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append('<div class="empty">No errors since the start.</div>')
    parts.append("</section></main>")
    parts.append(
        f"<footer>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        "twisted_rproxy admin</footer></body></html>"
    )
    return "".join(parts)


def _certificatesSection(certificates: list[dict[str, Any]]) -> str:
    """
    The certificates served: names, expiry and OCSP stapling state.
    """

    def day(text: str | None) -> str:
        return _e(text[:16].replace("T", " ") + " UTC") if text else "—"

    rows = [
        "<section><h2>Certificates</h2><table><tr><th>Certificate</th>"
        "<th>Names</th><th>Expires</th><th>OCSP</th></tr>"
    ]
    for certificate in certificates:
        ocsp = certificate["ocsp"]
        state = ocsp["state"]
        if state == "stapled":
            text = f"stapled until {day(ocsp['stapled_until'])}"
        elif state == "pending":
            text = "fetching"
        else:
            text = _e(state)
        if ocsp.get("last_error"):
            text += (
                f"<br><small>last error {day(ocsp['last_error_time'])}: "
                f"{_e(ocsp['last_error'])}</small>"
            )
        bad = state == "failing" or certificate["not_after_timestamp"] < time.time()
        rows.append(
            ('<tr class="err">' if bad else "<tr>")
            + f"<td><code>{_e(certificate['certificate'])}</code></td>"
            f"<td>{_e(', '.join(certificate['names']))}</td>"
            f"<td>{day(certificate['not_after'])}</td><td>{text}</td></tr>"
        )
    rows.append("</table></section>")
    return "".join(rows)


def _acmeSection(certificates: list[dict[str, Any]]) -> str:
    """
    The certificates obtained from the ACME CA: expiry, next renewal, and
    the last renewal attempt with its error.
    """

    def when(seconds: float | None) -> str:
        if seconds is None:
            return "—"
        return _e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)))

    rows = [
        "<section><h2>Automatic certificates (ACME)</h2><table><tr>"
        "<th>Domains</th><th>Expires</th><th>Next renewal</th>"
        "<th>Last attempt</th><th>Result</th></tr>"
    ]
    for certificate in certificates:
        error = certificate["last_error"]
        if error:
            result = f"failed ({certificate['failures']} in a row): {_e(error)}"
        elif certificate["last_attempt"] is not None:
            result = "ok"
        else:
            result = "—"
        bad = error or certificate["not_after"] is None
        rows.append(
            ('<tr class="err">' if bad else "<tr>")
            + f"<td>{_e(', '.join(certificate['domains']))}</td>"
            f"<td>{when(certificate['not_after'])}</td>"
            f"<td>{when(certificate['renew_at'])}</td>"
            f"<td>{when(certificate['last_attempt'])}</td><td>{result}</td></tr>"
        )
    rows.append("</table></section>")
    return "".join(rows)


def _adminState(server: dict[str, Any]) -> str:
    state = server.get("adminState", "ready")
    left = " (left the pool)" if server.get("removed") else ""
    return (
        f'<td><span class="badge {_e(state)}">{_e(state)}</span>'
        f'<span style="color:var(--mute)">{left}</span></td>'
    )


def _health(server: dict[str, Any]) -> str:
    if server.get("adminState") == "maintenance":
        return '<td><span class="badge maintenance">not checked</span></td>'
    return (
        f'<td><span class="badge {_e(server["state"])}">'
        f"{_e(server['state'])}</span></td>"
    )


def _weight(server: dict[str, Any]) -> str:
    override = server.get("weightOverride")
    text = (
        f'<td class="num">{server["weight"]}'
        if override is None
        else f'<td class="num"><b>{_e(override)}</b> (set at run time; '
        f"configured {server['weight']})"
    )
    if server["effectiveWeight"] < 1:
        text += f" ({server['effectiveWeight']:.0%})"
    return text


def _discoveryTable(entries: list[dict[str, Any]]) -> str:
    """
    A pool's DNS discovery entries: what each resolves, its servers, when
    it last resolved and why it last failed.
    """

    def when(seconds: float | None) -> str:
        if seconds is None:
            return "never"
        return time.strftime("%H:%M:%S", time.localtime(seconds))

    parts = [
        "<table><tr><th>DNS discovery</th><th>Servers found</th>"
        "<th>Last resolution</th><th>Last success</th><th>Last error</th></tr>"
    ]
    for entry in entries:
        failing = entry["failures"] > 0
        error = _e(entry["lastError"] or "—")
        if failing:
            kept = (
                f"keeping the {len(entry['servers'])} servers of its last answer"
                if entry["servers"]
                else "no server found yet"
            )
            error = f"<b>{error}</b> ({entry['failures']} failures in a row; {kept})"
        parts.append(
            ('<tr class="err">' if failing else "<tr>")
            + f"<td><code>{_e(entry['entry'])}</code></td>"
            f"<td>{_e(len(entry['servers']))}</td>"
            f"<td>{when(entry['lastResolution'])}</td>"
            f"<td>{when(entry['lastSuccess'])}</td><td>{error}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _changesSection(changes: list[dict[str, Any]]) -> str:
    """
    The run-time changes made on the admin listener, newest first.
    """
    parts = [
        "<section><h2>Run-time changes of servers"
        '<span class="meta" style="color:var(--mute);font-weight:400">'
        "kept until the next reload</span></h2><table><tr><th>Time</th>"
        "<th>Pool</th><th>Server</th><th>Change</th><th>By</th><th>From</th></tr>"
    ]
    for change in changes:
        when = time.strftime("%H:%M:%S", time.localtime(change["time"]))
        what = ", ".join(
            f"{key} {_e(old)} → {_e(new)}"
            for key, (old, new) in change["changed"].items()
        )
        workers = change.get("workers")
        if workers and workers.get("failed"):
            what += f" (not made by workers {_e(', '.join(workers['failed']))})"
        parts.append(
            f"<tr><td>{when}</td><td><code>{_e(change['pool'])}</code></td>"
            f"<td><code>{_e(change['server'])}</code></td>"
            f"<td>{what or 'no change'}</td><td>{_e(change['user'] or '—')}</td>"
            f"<td>{_e(change['address'])}</td></tr>"
        )
    parts.append("</table></section>")
    return "".join(parts)


def _workersSection(totals: dict[str, Any], workers: list[dict[str, Any]]) -> str:
    """
    The table of workers: each one's figures, then their totals.
    """
    classes = sorted(
        {c for w in workers for c in w["statuses"]} | set(totals["statuses"])
    )
    parts = [
        "<section><h2>Workers</h2><table><tr><th>Worker</th><th>PID</th>"
        '<th>State</th><th class="num">Starts</th><th class="num">Requests</th>'
        + "".join(f'<th class="num">{_e(c)}</th>' for c in classes)
        + '<th class="num">Bytes sent</th><th class="num">Connections</th></tr>'
    ]

    def row(name: str, pid: str, state: str, starts: str, w: dict[str, Any]) -> str:
        return (
            f"<tr><td>{name}</td><td>{pid}</td><td>{state}</td>"
            f'<td class="num">{starts}</td><td class="num">{_e(w["requests"])}</td>'
            + "".join(
                f'<td class="num">{_e(w["statuses"].get(c, 0))}</td>' for c in classes
            )
            + f'<td class="num">{_e(w["bytes_sent"])}</td>'
            f'<td class="num">{_e(w["connections"])}</td></tr>'
        )

    for worker in workers:
        state = (
            '<span class="badge healthy">running</span>'
            if worker["live"]
            else '<span class="badge down">not answering</span>'
        )
        parts.append(
            row(
                _e(worker["worker"]),
                _e(worker["pid"]),
                state,
                _e(worker["starts"]),
                worker,
            )
        )
    parts.append(row("<b>all</b>", "", "", "", totals))
    parts.append("</table></section>")
    return "".join(parts)
