"""The run ledger: one JSON object per kernel version that ran, in `runs/ledger.jsonl`.

JSON lines, not CSV: a row carries a nested metrics dict and stays readable with `jq`, pandas
(`pd.read_json(path, lines=True)`) or a plain `tail`. It lives beside the outputs it describes (`runs/`,
git-ignored: it is this machine's history, like the outputs).

Row fields: ts, kernel (owner/slug), kind, base_slug (the configured slug a session chain grew from),
version, session, backend, git_commit, git_dirty, config_hash, script_sha256, status, seconds, cv_score,
lb_score, metrics, output, failure. `lb_score` (public) and `private_score` are filled later, by `kpack submit`
and `kpack scores`. A campaign's train rows add campaign, member, variant and fold; a validate or infer row adds
`sources` (owner/slug/N of each kernel it read); `kpack note` sets a row's `note`. Rows written before a field
existed simply lack it: every reader uses .get().
`kpack ledger` prints the newest rows as a table (`table()`), `--campaign` one line per member
(`campaign_table()`), `--csv` every field (`csv_text()`).

Why JSON lines and not SQLite: the file is plain text that diffs and merges in git (a CI tick commits it back),
an append is one write under a lock, a new field needs no schema migration, and each row is one kernel version.

Never a secret: rows are built from named fields only (no environment dump), and every value that
`collect_secrets(cfg)` knows is redacted from the serialized line before it is written.
Appends and updates hold an exclusive lock; an update rewrites the file with an atomic rename.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from packager.fsutil import atomic_write_text
from packager.secrets_scan import REDACTED, collect_secrets, redact  # noqa: F401 (REDACTED: what a row shows)

LEDGER = Path("runs") / "ledger.jsonl"
SCORE_KEYS = ("cv_score", "cv", "oof_score", "score", "best_metric", "val_score", "metric")
METRIC_KEYS = ("f2", "fbeta", "f1", "auc", "accuracy", "map", "iou", "dice")


def ledger_path() -> Path:
    return Path(os.environ.get("KPACK_LEDGER") or LEDGER)


def git_state(repo: str | os.PathLike = ".") -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the tree has uncommitted changes); (None, None) outside a git repository."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, None


def config_hash(cfg) -> str:
    """sha256 (16 hex digits) of the validated config, as JSON with sorted keys."""
    data = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _first_number(data: Any) -> float | None:
    """The CV score in a metrics file: a named score at the top (cv_score, score, best_metric, ...), else the
    same or a metric name (f2, f1, auc, ...) inside `best`; a list of per-fold scores gives their mean."""
    if isinstance(data, bool):
        return None
    if isinstance(data, (int, float)):
        return float(data)
    if isinstance(data, list):
        values = [v for v in (_first_number(x) for x in data) if v is not None]
        return sum(values) / len(values) if values else None
    if not isinstance(data, dict):
        return None
    for key in SCORE_KEYS + ("mean",):
        if key in data and _first_number(data[key]) is not None:
            return _first_number(data[key])
    best = data.get("best")
    if isinstance(best, dict):
        for key in SCORE_KEYS + METRIC_KEYS:
            value = best.get(key)
            if _is_number(value):
                return float(value)
    return None


def read_metrics(output_dir: str | os.PathLike | None) -> tuple[float | None, dict]:
    """(CV score, metrics without per-epoch history) from a run's output: metrics.json, then oof_scores.json."""
    if not output_dir or not Path(output_dir).is_dir():
        return None, {}
    for name in ("metrics.json", "oof_scores.json"):
        for path in sorted(Path(output_dir).rglob(name), key=lambda p: len(p.parts)):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            score = _first_number(data)
            metrics = {k: v for k, v in data.items() if k != "history"} if isinstance(data, dict) else {"values": data}
            return score, metrics
    return None, {}


def read_plan(output_dir: str | os.PathLike | None) -> dict | None:
    """An infer run's plan (plan.json, kernel_src.planner): predicted_s against actual_s, the hidden-test
    prediction, whether it fit; None when the output holds none."""
    path = Path(output_dir) / "plan.json" if output_dir else None
    try:
        data = json.loads(path.read_text()) if path and path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("predicted_s", "actual_s", "predicted_hidden_s", "hidden_test_factor", "fits")}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def make_row(cfg, *, kernel: str, kind: str | None, version: int | None, session: int, status: str,
             seconds: float | None, output: str | os.PathLike | None, failure: str = "",
             base_slug: str | None = None) -> dict:
    commit, dirty = git_state()
    cv, metrics = read_metrics(output)
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": kernel, "kind": kind, "base_slug": base_slug, "version": version, "session": session,
        "backend": cfg.backend, "git_commit": commit, "git_dirty": dirty, "config_hash": config_hash(cfg),
        "status": status, "seconds": None if seconds is None else round(float(seconds), 1),
        "cv_score": cv, "cv_kind": metrics.get("cv_kind"), "lb_score": None, "metrics": metrics,
        "output": None if output is None else str(output), "failure": (failure or "")[:2000],
    }


def append(row: dict, cfg=None, path: str | os.PathLike | None = None) -> dict:
    """Append one row (secrets redacted); returns the row as written."""
    path = Path(path or ledger_path())
    line = redact(json.dumps(row, sort_keys=True, default=str), collect_secrets(cfg))
    with _locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return json.loads(line)


def read(path: str | os.PathLike | None = None) -> list[dict]:
    path = Path(path or ledger_path())
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash before this format was atomic: skip it
    return rows


def update(match: dict, fields: dict, cfg=None, path: str | os.PathLike | None = None) -> int:
    """Set `fields` on every row whose items include `match`; returns how many rows changed."""
    path = Path(path or ledger_path())
    secrets = collect_secrets(cfg)
    with _locked(path):
        rows = read(path)
        changed = 0
        for row in rows:
            if all(row.get(k) == v for k, v in match.items()):
                row.update(fields)
                changed += 1
        if changed:
            text = "".join(redact(json.dumps(r, sort_keys=True, default=str), secrets) + "\n" for r in rows)
            atomic_write_text(path, text)
    return changed


def latest(path: str | os.PathLike | None = None, **match) -> dict | None:
    """The last row whose items include `match`."""
    rows = [r for r in read(path) if all(r.get(k) == v for k, v in match.items())]
    return rows[-1] if rows else None


def _score(value) -> str:
    return f"{value:.5f}" if _is_number(value) else "-"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_of(row: dict) -> str | None:
    """The run's report.html (packager.report) when it has been written."""
    path = Path(row["output"]) / "report.html" if row.get("output") else None
    return str(path) if path is not None and path.is_file() else None


def cv_cell(row: dict) -> str:
    """The CV with a suffix saying which kind it is (train's one fold vs validate's blend), so the two are never
    compared by mistake: `(t)` train, `(v)` validate (a project's own code, which writes no cv_kind, by the
    row's kernel kind); a validate row with a holdout (kit.data.holdout) adds the submission's score on it."""
    text = _score(row.get("cv_score"))
    kind = row.get("cv_kind") or row.get("kind") or "?"
    if text == "-":
        return text
    holdout = _holdout_score(row)
    return f"{text} ({kind.split(':')[0][:1]})" + (f", holdout {_score(holdout)}" if holdout is not None else "")


def _holdout_score(row: dict) -> float | None:
    value = (row.get("metrics") or {}).get("holdout_score")
    return value if _is_number(value) else None


def plan_cell(row: dict) -> str:
    """An infer row's runtime plan (plan.json) in one cell: predicted against actual seconds, the hidden-test
    prediction, whether it fits; '-' for a row without one."""
    plan = row.get("plan") or (read_plan(row.get("output")) if row.get("output") else None)
    if not isinstance(plan, dict):
        return "-"

    def num(key: str) -> str:  # a short run keeps a decimal: "0s" for a 0.25 s run says nothing
        value = plan.get(key)
        return "?" if not isinstance(value, (int, float)) else f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"

    fits = {True: "fits", False: "TOO SLOW"}.get(plan.get("fits"), "fit ?")
    return f"pred {num('predicted_s')} act {num('actual_s')} hidden {num('predicted_hidden_s')} {fits}"


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table: when, kernel vN/session, status, minutes, CV (with its kind), LB,
    commit, an infer run's plan when one of the rows has one, and the run's report.html when one has one."""
    lines = [("when (UTC)", "kernel", "status", "min", "cv", "lb", "commit")]
    reports = [report_of(r) for r in rows]
    for r in rows:
        commit = (r.get("git_commit") or "-")[:10] + ("+dirty" if r.get("git_dirty") else "")
        minutes = f"{r['seconds'] / 60:.1f}" if isinstance(r.get("seconds"), (int, float)) else "-"
        lines.append(((r.get("finished") or r.get("ts") or "-").replace("T", " ").rstrip("Z"),
                      f"{(r.get('kernel') or '-').split('/')[-1]} v{r.get('version')}",
                      r.get("status") or "-", minutes, cv_cell(r), _score(r.get("lb_score")), commit))
    plans = [plan_cell(r) for r in rows]
    if any(p != "-" for p in plans):
        lines = [lines[0] + ("plan",)] + [line + (p,) for line, p in zip(lines[1:], plans)]
    if any(reports):
        lines = [lines[0] + ("report",)] + [line + (path or "-",) for line, path in zip(lines[1:], reports)]
    if any(r.get("note") for r in rows):
        lines = [lines[0] + ("note",)] + [line + (r.get("note") or "",) for line, r in zip(lines[1:], rows)]
    return _aligned(lines)


# --------------------------------------------------------------------------------------------- campaigns

# The CSV's columns, in this order; any other field a row carries follows, sorted by name.
CSV_FIELDS = ("ts", "finished", "campaign", "member", "variant", "fold", "kind", "kernel", "base_slug", "version",
              "session", "backend", "status", "seconds", "cv_score", "lb_score", "private_score", "note", "sources",
              "git_commit", "git_dirty", "config_hash", "script_sha256", "output", "failure", "metrics")


def csv_text(rows: list[dict]) -> str:
    """Every field of every row as CSV: CSV_FIELDS first, then the others sorted; nested values (metrics,
    sources) as JSON, None as an empty cell."""
    import csv
    import io

    extra = sorted({k for r in rows for k in r} - set(CSV_FIELDS))
    columns = list(CSV_FIELDS) + extra
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else json.dumps(r[c], sort_keys=True)
                         if isinstance(r[c], (dict, list, bool)) else r[c] for c in columns])
    return buffer.getvalue()


def member_of(row: dict) -> str:
    """A train row's member: its `member` field, or (a row written before campaigns) its chain's base slug."""
    return row.get("member") or row.get("base_slug") or (row.get("kernel") or "-").split("/")[-1]


def _aligned(lines: list[tuple]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _kernel_version(row: dict) -> str:
    """slug vN; a member still queued (no version yet) shows its slug alone."""
    slug = (row.get("kernel") or "-").split("/")[-1]
    return slug if row.get("version") is None else f"{slug} v{row['version']}"


def newest_campaign(rows: list[dict]) -> str | None:
    """The campaign of the newest train row that belongs to one; None when no row does (a ledger from before
    campaigns, whose train chains are then shown as its members)."""
    return next((r["campaign"] for r in reversed(rows) if r.get("kind") == "train" and r.get("campaign")), None)


def campaign_table(rows: list[dict], campaign: str | None = None) -> str:
    """One line per train member (its newest session: status, CV), then the newest validate row (the blend's CV)
    and the newest infer row (LB public and private, and the train sessions it read)."""
    if campaign:  # its members' rows, and the validate and infer rows that read them (or say they belong to it)
        rows = [r for r in rows if r.get("campaign") == campaign or (r.get("kind") != "train" and any(
            s.split("/")[1].startswith(campaign) for s in r.get("sources") or [] if s.count("/") >= 1))]
    newest: dict[str, dict] = {}
    for r in rows:
        if r.get("kind") == "train":
            newest.pop(member_of(r), None)  # re-inserted: members in the order of their newest session
            newest[member_of(r)] = r
    lines = [("member", "variant", "fold", "kernel", "session", "status", "cv", "lb", "private", "note")]
    for member, r in newest.items():
        lines.append((member, str(r.get("variant") or "-"), "-" if r.get("fold") is None else str(r["fold"]),
                      _kernel_version(r), str(r.get("session") or "-"),
                      r.get("status") or "-", _score(r.get("cv_score")), "-", "-", r.get("note") or ""))
    for kind, what in (("validate", "blend"), ("infer", "submission")):
        r = next((r for r in reversed(rows) if r.get("kind") == kind), None)
        if r is not None:
            lines.append((what, "-", "-", _kernel_version(r), "-",
                          r.get("status") or "-", _score(r.get("cv_score")), _score(r.get("lb_score")),
                          _score(r.get("private_score")), r.get("note") or ""))
            if kind == "validate" and _holdout_score(r) is not None:  # the one CV that predicts the submission
                lines.append(("blend, held out", "-", "-", _kernel_version(r), "-", r.get("status") or "-",
                              _score(_holdout_score(r)), "-", "-",
                              f"{r['metrics'].get('holdout_rows')} rows no fold trained on"))
    text = _aligned(lines)
    reads = next((r.get("sources") for r in reversed(rows) if r.get("kind") == "infer" and r.get("sources")), None)
    return text + (f"\ninfer read: {', '.join(reads)}" if reads else "")


def source_versions(refs: list[str], backend: str, path: str | os.PathLike | None = None) -> list[str]:
    """owner/slug/N for each source kernel ref: the version the ledger's newest row of that kernel (on this
    backend) names, which is the version Kaggle mounts; a ref the ledger does not know stays as it is."""
    rows = read(path)
    found = []
    for ref in refs:
        last = next((r for r in reversed(rows) if r.get("kernel") == ref and r.get("backend") == backend
                     and r.get("version") is not None), None)
        found.append(f"{ref}/{last['version']}" if last else ref)
    return found


def find_run(ref: str, version: int | None = None, path: str | os.PathLike | None = None) -> dict:
    """The newest row that REF names: a kind (train, validate, infer), a member, owner/slug or slug; with
    version, that kernel version's row."""
    from packager.errors import UserError

    def names(r: dict) -> bool:
        kernel = r.get("kernel") or ""
        return ref in (r.get("kind"), r.get("member"), kernel, kernel.split("/")[-1])

    rows = [r for r in read(path) if names(r) and version in (None, r.get("version"))]
    if not rows:
        raise UserError(f"no run in {Path(path or ledger_path())} matches {ref}" + (f" v{version}" if version else "")
                        + "; see the runs with: kpack ledger")
    return rows[-1]


def note(ref: str, text: str, version: int | None = None, cfg=None, path: str | os.PathLike | None = None) -> dict:
    """Set the free-text note of the run REF names (a new note replaces the old); returns the row."""
    row = find_run(ref, version, path)
    match = {k: row.get(k) for k in ("kernel", "version", "backend", "ts")}
    update(match, {"note": text}, cfg, path)
    return latest(path, **match)
