"""The local Kaggle's kernel page, GET /code/<owner>/<slug>: where kpack's links to a local run point.

kaggle.com's page of a kernel shows each version's status, log and output; this one shows the same from the
store, newest version first (anchor #vN), as plain HTML with no script and nothing fetched from elsewhere. The
output links are the server's own file URLs (/_kpack/files/...), which download; a report, plot, log or table
also has a "view" link that shows it in the browser, sandboxed (no script runs, nothing else is reachable). A
version queued or running has a "Stop session" button (POST .../vN/stop with the server's token, so another
site's form cannot post it), and the page reloads itself every REFRESH_S while one is. Like those files, the
page needs no sign-in: the server listens on the loopback only, unless `--host` says otherwise.
"""
from __future__ import annotations

from html import escape
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from packager import logs
from packager.localkaggle.rpc import BASE_URL, file_url
from packager.localkaggle.runner import read_log
from packager.localkaggle.store import TERMINAL, Store, list_files

LOG_LINES = 200  # the tail each version shows; `kpack logs` has the whole log
REFRESH_S = 10  # how often the page reloads itself while a version is queued or running
# What the page's "view" links show in the browser (the file URL with ?view=1, sandboxed); the rest downloads.
VIEWABLE = {".html": "text/html; charset=utf-8", ".png": "image/png", ".txt": "text/plain; charset=utf-8",
            ".json": "application/json", ".csv": "text/plain; charset=utf-8"}


def page_path(owner: str, slug: str) -> str:
    """The kernel page's path on the server: /code/<owner>/<slug>."""
    return f"/code/{quote(owner)}/{quote(slug)}"


def _html(title: str, body: str, versions: list[dict]) -> str:
    """A whole page about `versions`: while one is queued or running it reloads itself (no script), to show it
    going on, as kaggle.com's does."""
    live = any(str(v.get("status")) not in TERMINAL for v in versions)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if live else ""
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\">{refresh}<title>{title}</title>"
            "<style>body{font:14px sans-serif;margin:2em}pre{background:#f4f4f4;padding:8px;overflow-x:auto}"
            "td,th{padding:2px 12px 2px 0;text-align:left}.ERROR{color:#b00}.COMPLETE{color:#070}</style></head>\n"
            f"<body>{body}\n</body></html>\n")


def owner_page(store: Store, owner: str) -> str | None:
    """GET /code/<owner>: the owner's kernels, the newest pushed first, each with its newest version (as
    kaggle.com's "Your Work" lists them): where a campaign's members are seen at once. None: no such kernels."""
    newest = []
    for info in store.kernels():
        if info.get("owner") == owner and info["versions"]:
            version = store.kernel_version(owner, info["slug"], info["versions"][-1])
            if version:
                newest.append((str(version.get("created", "")), info["slug"], version))  # ISO: sorts by time
    if not newest:
        return None
    rows = []
    for created, slug, v in sorted(newest, key=lambda item: item[0], reverse=True):
        status = escape(str(v.get("status", "")))
        ran = f"{float(v['seconds']):.0f}s" if v.get("seconds") is not None else ""
        link = escape(f"{page_path(owner, slug)}#v{v['number']}")
        rows.append(f'<tr><td><a href="{link}">{escape(slug)}</a></td><td>v{v["number"]}</td>'
                    f'<td class="{status}">{status}</td><td>{escape(v.get("machine_shape_effective") or "None")}</td>'
                    f"<td>{escape(_pushed(v))}</td><td>{ran}</td></tr>")
    return _html(escape(owner), f"<h1>{escape(owner)}: {len(newest)} kernel(s)</h1><p>the newest pushed first, "
                 "each with its newest version (the local Kaggle)</p><table><tr><th>kernel</th><th>version</th>"
                 "<th>status</th><th>machine</th><th>pushed (UTC)</th><th>ran</th></tr>" + "".join(rows) +
                 "</table>", [v for _, _, v in newest])


def kernel_page(store: Store, owner: str, slug: str, token: str = "") -> str | None:
    """The page's HTML, or None where there is no such kernel. token: the server's, which the stop button of a
    version still queued or running sends back (none without it)."""
    info = store.kernel(owner, slug)
    if info is None:
        return None
    title = escape(f"{owner}/{slug}")
    versions = [v for v in (store.kernel_version(owner, slug, n) for n in reversed(info["versions"])) if v]
    body = "\n".join(_version(owner, slug, v, token) for v in versions)
    return _html(title, f"<h1>{escape(info.get('title') or slug)}</h1><p>{title}: {len(versions)} version(s), "
                 f'newest first (the local Kaggle; <a href="/code/{escape(quote(owner))}">all of {escape(owner)}\'s '
                 f"kernels</a>)</p>\n{body}", versions)


def _pushed(v: dict) -> str:
    return str(v.get("created", "?"))[:19].replace("T", " ")


def _file_item(url: str, name: str, size: int) -> str:
    view = f' (<a href="{escape(url)}?view=1">view</a>)' if PurePosixPath(name).suffix.lower() in VIEWABLE else ""
    return f'<li><a href="{escape(url)}">{escape(name)}</a> ({size:,} bytes){view}</li>'


def _stop_button(owner: str, slug: str, number: int, token: str) -> str:
    action = escape(f"{page_path(owner, slug)}/v{number}/stop")
    return (f'<form method="post" action="{action}"><input type="hidden" name="token" value="{escape(token)}">'
            '<button type="submit">Stop session</button></form>')


def _version(owner: str, slug: str, v: dict, token: str = "") -> str:
    number, status = v["number"], str(v.get("status", ""))
    facts = [f"machine {v.get('machine_shape_effective') or 'None'}", f"pushed {_pushed(v)} UTC"]
    if v.get("seconds") is not None:
        facts.append(f"ran {float(v['seconds']):.0f}s")
    failure = f"<p class=\"ERROR\">{escape(v['failure_message'])}</p>" if v.get("failure_message") else ""
    stop = _stop_button(owner, slug, number, token) if token and status in ("QUEUED", "RUNNING") else ""
    files = list_files(Path(v["output_dir"])) if v.get("output_dir") and status in TERMINAL else []
    links = "".join(_file_item(file_url("kernels", owner, slug, number, name).removeprefix(BASE_URL), name, size)
                    for name, size in files)
    lines = logs.plain(logs.decode(read_log(Path(v["log_path"])))).splitlines() if v.get("log_path") else []
    cut = f" (the last {LOG_LINES} of {len(lines)} lines)" if len(lines) > LOG_LINES else ""
    return (f"<section id=\"v{number}\"><h2>Version {number}: <span class=\"{escape(status)}\">{escape(status)}"
            f"</span></h2><p>{escape(', '.join(facts))}</p>{failure}{stop}"
            f"<h3>Output</h3><ul>{links or '<li>none</li>'}</ul>"
            f"<h3>Log{cut}</h3><pre>{escape(chr(10).join(lines[-LOG_LINES:]))}</pre></section>")
