"""`kpack submit` (`make submit`): the code-competition submission of the latest COMPLETE infer kernel version.

The same call as `kaggle competitions submit C -k OWNER/SLUG -v N -f submission.csv -m MESSAGE`
(CreateCodeSubmission), then ListSubmissions is polled until the submission is scored, and its public (and,
once revealed, private) score goes into that version's ledger row. `kpack scores` (refresh_scores) fills the
scores of earlier submissions that were still pending when `kpack submit` stopped waiting, and private
scores once the competition reveals them.
"""
from __future__ import annotations

import os
import time

from packager import kaggle_api, ledger, notify
from packager.config import higher_is_better
from packager.errors import UserError
from packager.watch import KernelRef

SUBMISSION_FILE = "submission.csv"
WAIT_S = float(os.environ.get("KPACK_SUBMIT_WAIT_S", 6 * 3600))  # code competitions rerun the notebook: hours


def _score(value) -> float | str | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _status(submission) -> str:
    status = submission.status
    return status.name if hasattr(status, "name") else str(status)


def latest_complete_infer(api, cfg) -> KernelRef:
    """The newest infer kernel version that ended COMPLETE: the ledger's first, checked against the server."""
    kcfg = cfg.kernel("infer")
    owner, slug = cfg.kaggle_user, kcfg.slug
    known = sorted({r["version"] for r in ledger.read() if r.get("kernel") == f"{owner}/{slug}"
                    and r.get("backend") == cfg.backend and r.get("status") == "COMPLETE" and r.get("version")},
                   reverse=True)
    current = kaggle_api.current_kernel_version(api, owner, slug)
    if current is None:
        raise UserError(f"no infer kernel {owner}/{slug} on the {cfg.backend} backend; push it first: kpack push infer",
                        exit_code=1)
    candidates = [v for v in known if v <= current] + [v for v in range(current, 0, -1) if v not in known]
    for version in candidates[:30]:
        status, _ = kaggle_api.kernel_status(api, owner, slug, version)
        if status == "COMPLETE":
            return KernelRef(owner, slug, version, "infer")
    raise UserError(f"no COMPLETE version of {owner}/{slug} (latest v{current}); check it with "
                    "`kpack status infer`, fix it and `kpack push infer`", exit_code=1)


def team_rank(api, cfg) -> int | None:
    """The team's leaderboard rank in the competition (ListCompetitions' userRank), None where the answer has
    none (0) or the call fails: a rank is a nicety in a notification, never a reason to stop."""
    try:
        answer = api.competitions_list(search=cfg.competition)
        for competition in getattr(answer, "competitions", None) or []:  # the client 2.x answers the response
            if str(getattr(competition, "ref", "")).rstrip("/").split("/")[-1] == cfg.competition:
                return getattr(competition, "user_rank", None) or None
    except Exception:  # noqa: BLE001
        pass
    return None


def submissions(api, cfg) -> list:
    return kaggle_api.call(f"list submissions of {cfg.competition}", api.competition_submissions,
                           cfg.competition, page_size=50) or []


def _fields(sub) -> dict:
    return {"lb_score": _score(sub.public_score), "private_score": _score(sub.private_score),
            "submission_ref": sub.ref, "submission_status": _status(sub),
            "submission_error": sub.error_description or ""}


def _record(cfg, ref: KernelRef, sub) -> None:
    fields = _fields(sub)
    if not ledger.update({"kernel": ref.ref, "version": ref.version, "backend": cfg.backend}, fields, cfg):
        row = ledger.make_row(cfg, kernel=ref.ref, kind="infer", version=ref.version, session=1,
                              status="COMPLETE", seconds=None, output=None, base_slug=ref.slug)
        ledger.append(row | fields, cfg)


def wait_scored(api, cfg, ref: KernelRef, submission_ref: int, timeout_s: float = WAIT_S):
    """Poll ListSubmissions until the submission is COMPLETE or ERROR; returns it."""
    deadline, delay, last = time.monotonic() + timeout_s, 2.0, None
    while True:
        found = next((s for s in submissions(api, cfg) if s.ref == submission_ref), None)
        status = _status(found) if found else "PENDING"
        if status != last:
            print(f"submission {submission_ref}: {status}", flush=True)
            last = status
        if found is not None and status in ("COMPLETE", "ERROR"):
            return found
        if time.monotonic() > deadline:
            raise UserError(f"submission {submission_ref} still {status} after {timeout_s:.0f}s; its score goes "
                            "into the ledger with `kpack scores` (`make scores`) once it is scored", exit_code=1)
        kaggle_api.sleep(delay)
        delay = min(60.0, delay * 1.5)


def submit(cfg, message: str | None = None, wait_s: float = WAIT_S) -> dict:
    """Submit the latest COMPLETE infer version; wait for its score and record it in the ledger."""
    api = kaggle_api.connect(cfg)
    ref = latest_complete_infer(api, cfg)
    commit, dirty = ledger.git_state()
    description = message or f"kpack {ref.ref} v{ref.version}" + (
        f" git {commit[:12]}{'+dirty' if dirty else ''}" if commit else "")
    earlier = {s.ref for s in submissions(api, cfg)}

    def landed():
        made = [s for s in submissions(api, cfg) if s.ref not in earlier and s.description == description]
        return made[0] if made else None

    print(f"submitting {ref} to {cfg.competition}: {description}", flush=True)
    response = kaggle_api.call(f"submit {ref} to {cfg.competition}", api.competition_submit_code,
                               SUBMISSION_FILE, description, cfg.competition, ref.ref, ref.version, quiet=True,
                               done=landed)
    submission_ref = getattr(response, "ref", None)
    if not submission_ref:  # an answer without a ref is not a refusal by itself: look for the submission it made
        made = landed()
        submission_ref = getattr(made, "ref", None)
        if not submission_ref:
            message = getattr(response, "message", "") or "no submission reference in the answer"
            raise UserError(f"kaggle: submit {ref} to {cfg.competition} refused: {message} (and no new submission "
                            "with its description is listed)", exit_code=1)
        print(f"submission {submission_ref}: the answer named no ref; found it in the competition's submissions",
              flush=True)
    higher = higher_is_better(cfg, evaluation_metric(api, cfg))
    best_before = (max if higher else min)((r["lb_score"] for r in ledger.read() if r.get("backend") == cfg.backend
                                            and isinstance(r.get("lb_score"), (int, float))), default=None)
    rank_before = team_rank(api, cfg)
    sub = wait_scored(api, cfg, ref, submission_ref, wait_s)
    _record(cfg, ref, sub)
    if _status(sub) == "ERROR":
        message = f"submission {submission_ref} of {ref} failed: {sub.error_description or 'no reason given'}"
        notify.notify(cfg, f"{message}; {notify.run_link(cfg, ref.ref, ref.version)}", ok=False)
        raise UserError(message, exit_code=1)
    notify.submission_scored(cfg, ref, submission_ref, _score(sub.public_score), _score(sub.private_score),
                             rank_before, team_rank(api, cfg), best_before, higher)
    print(f"submission {submission_ref} of {ref}: public score {sub.public_score}"
          + (f", private {sub.private_score}" if sub.private_score else ""))
    return {"ref": submission_ref, "kernel": ref.ref, "version": ref.version,
            "public_score": _score(sub.public_score), "private_score": _score(sub.private_score)}


def evaluation_metric(api, cfg) -> str:
    """The competition's evaluation metric as ListCompetitions names it ('' when it is not listed or cannot be
    asked: the direction then falls back to higher, or score_direction)."""
    from packager.preflight import Backend

    try:
        found = Backend(cfg, api).competition(cfg.competition)
    except UserError:
        return ""
    return getattr(found, "evaluation_metric", "") or ""


def refresh_scores(cfg) -> int:
    """Bring ledger rows up to date with what ListSubmissions now shows for their submission (a score that was
    pending, a private score revealed); returns how many rows changed."""
    api = kaggle_api.connect(cfg)
    by_ref = {s.ref: s for s in submissions(api, cfg)}
    changed = 0
    for row in ledger.read():
        sub = by_ref.get(row.get("submission_ref"))
        if sub is not None and row.get("backend") == cfg.backend and not _fields(sub).items() <= row.items():
            ref = KernelRef(*row["kernel"].split("/", 1), row["version"], row.get("kind"))
            _record(cfg, ref, sub)
            changed += 1
    return changed
