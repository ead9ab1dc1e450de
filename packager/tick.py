"""`kpack tick`: one step that advances every open member of the train run, then exits.

A step reads the ledger and the server and acts on what it finds, never on memory of an earlier step, so it
can be run again at any time (from a shell loop, a scheduled CI job, `kpack watch train`):
1. each member's newest session still open in the ledger is polled once; one that has ended is downloaded,
   recorded and announced (push.watch_session, as a watch does);
2. a member whose last session ended COMPLETE with state.json not done needs its next session; a member the
   push queued (ledger status WAITING) needs its first;
3. those go, chains in flight first, while fewer of the members' sessions are open than the campaign's cap
   (campaign.gpu_sessions or cpu_sessions); a refusal at Kaggle's own cap leaves the rest queued for the next
   tick. Before each push the server is asked whether that session was pushed already without a ledger row (a
   crash between the push and its record): such a version is recorded, not pushed again.
Two ticks at once: the second finds runs/.tick.lock held and exits 0 at once, saying so.
Kaggle out of reach (a call's retries ran out on a 5xx, a 429 or no connection): the tick says so and exits 0,
remembering in runs/.tick-outage when the outage began; only once it has lasted KPACK_OFFLINE_WAIT_S (12 h)
does a tick fail. A tick scheduled every 10 minutes would otherwise fail, and mail, through every 503 spell.
"""
from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from packager import campaign, chain, kaggle_api, ledger, notify, shapes, watch
from packager.errors import UserError, env_number

KIND = campaign.KIND
WAITING = "WAITING"  # ledger status: a member queued by `kpack push train`, not pushed yet
STOPPED = "STOPPED"  # ledger status: a chain kpack stopped (no progress, the session limit, ...)
FAILED = ("ERROR", "CANCEL_ACKNOWLEDGED", "CANCEL_REQUESTED", "SOURCES_INVALID", STOPPED)
LOCK = Path("runs") / ".tick.lock"
OUTAGE = Path("runs") / ".tick-outage"  # when the first tick of a Kaggle outage failed, in epoch seconds


@dataclass
class MemberState:
    member: campaign.Member
    cfg: object
    state: str                     # absent | waiting | open | next | done | failed
    row: dict | None = None
    note: str = ""


@contextmanager
def tick_lock() -> Iterator[bool]:
    """True while this process holds runs/.tick.lock; False when another tick holds it."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ref(row: dict) -> watch.KernelRef:
    owner, slug = row["kernel"].split("/", 1)
    return watch.KernelRef(owner, slug, row["version"], KIND, row.get("session") or 1)


def _rows(mcfg) -> list[dict]:
    return [r for r in ledger.read() if r.get("kind") == KIND and r.get("base_slug") == mcfg.kernel(KIND).slug
            and r.get("backend") == mcfg.backend]


def _stop(mcfg, row: dict, message: str) -> None:
    ledger.update({"kernel": row["kernel"], "version": row["version"], "backend": mcfg.backend},
                  {"status": STOPPED, "failure": message[:2000]}, mcfg)
    notify.notify(mcfg, message, ok=False)


def _judge(api, mcfg, member: campaign.Member) -> MemberState:
    """Poll the member's newest session once (recording its end) and say what the member needs."""
    from packager.push import watch_session

    rows = _rows(mcfg)
    if not rows:
        return MemberState(member, mcfg, "absent")
    row = rows[-1]
    if row["status"] == WAITING:
        return MemberState(member, mcfg, "waiting", row)
    ref = _ref(row)
    if row["status"] not in watch.TERMINAL and row["status"] not in FAILED:
        status, _ = watch.status_of(api, ref)
        if status not in watch.TERMINAL:
            return MemberState(member, mcfg, "open", row, status)
    if row["status"] in FAILED and row["status"] not in watch.TERMINAL:
        return MemberState(member, mcfg, "failed", row, row.get("failure") or row["status"])
    if not row.get("finished"):  # ended since the last look (or `kpack status` saw it): download, record, announce
        try:
            watch_session(api, mcfg, ref, mcfg.kernel(KIND).slug)
        except UserError as err:
            print(f"{ref}: {err}", flush=True)
        row = _rows(mcfg)[-1]
    if row["status"] != "COMPLETE":
        return MemberState(member, mcfg, "failed", row, f"{row['status']} {row.get('failure') or ''}".strip())
    if "needs_next" not in row:  # read from the output once, then from the ledger (a CI tick has no runs/ folder)
        out = Path(row["output"]) if row.get("output") else None
        if out is None or not out.is_dir():
            out = watch.download(api, ref)
        after = chain.progress(out)
        row.update(needs_next=chain.needs_another_session(out), progress=list(after) if after else None)
        ledger.update({"kernel": row["kernel"], "version": row["version"], "backend": mcfg.backend},
                      {"needs_next": row["needs_next"], "progress": row["progress"]}, mcfg)
    if not row["needs_next"]:
        return MemberState(member, mcfg, "done", row)
    earlier = [r for r in rows if r.get("session") == ref.session - 1 and r.get("status") == "COMPLETE"]
    if earlier and row["progress"] is not None and row["progress"] == earlier[-1].get("progress"):
        _stop(mcfg, row, f"{ref}: session {ref.session} ended without a training step: start-up left no time to "
                         "train; raise kernels.train.session_hours")
        return MemberState(member, mcfg, "failed", row, "no progress")
    limit = chain.max_sessions(mcfg, KIND)
    if ref.session >= limit:
        _stop(mcfg, row, f"{ref}: training not done after {limit} sessions; stopping the chain "
                         "(raise KPACK_MAX_SESSIONS to go on)")
        return MemberState(member, mcfg, "failed", row, "session limit")
    return MemberState(member, mcfg, "next", row)


def _folder(mcfg, row: dict) -> tuple[Path, str]:
    """The member's built kernel folder and its script's sha256, checked against the one its chain runs."""
    from packager.fsutil import file_sha256
    from packager.push import _script

    folder = Path("build") / "kernels" / mcfg.kernel(KIND).slug
    script = _script(folder)
    if script is None:  # a fresh checkout (a scheduled CI tick): builds are reproducible, so build it again here
        from packager.build import build_kernel

        script = Path(build_kernel(mcfg, KIND).script)
    sha = file_sha256(script)
    if row.get("script_sha256") and sha != row["script_sha256"]:
        raise UserError(f"{folder}: not the script {mcfg.kernel(KIND).slug} was queued or chained with (rebuilt "
                        f"since, or missing); check out {row.get('git_commit') or 'the commit it was pushed from'} "
                        "and run `kpack push train --only ...` for it again")
    return folder, sha


def _unrecorded(api, owner: str, slug: str, backend: str) -> int | None:
    """A version of owner/slug the server has and the ledger does not (a push whose record was lost)."""
    current = kaggle_api.current_kernel_version(api, owner, slug)
    known = [r.get("version") or 0 for r in ledger.read() if r.get("kernel") == f"{owner}/{slug}"
             and r.get("backend") == backend]
    return current if current and current > max(known, default=0) else None


def _start(api, st: MemberState) -> None:
    """Push the member's first or next session (or record the one a crash left unrecorded)."""
    from packager import push

    mcfg, row = st.cfg, st.row
    base = mcfg.kernel(KIND).slug
    folder, sha = _folder(mcfg, row)
    owner = mcfg.kaggle_user
    if st.state == "waiting":
        found = _unrecorded(api, owner, base, mcfg.backend)
        if found is not None:
            print(f"{owner}/{base} v{found}: pushed before without a ledger row; recording it, not pushing again")
            ref = watch.KernelRef(owner, base, found, KIND, 1)
        else:
            ref = push.push_folder(api, mcfg, KIND, folder, wait_for_slot=False)
        start = ledger.make_row(mcfg, kernel=ref.ref, kind=KIND, version=ref.version, session=1, status="QUEUED",
                                seconds=None, output=None, base_slug=base)
        fields = {**start, **(mcfg._member or {}), "script_sha256": sha}
        if not ledger.update({"base_slug": base, "status": WAITING, "backend": mcfg.backend}, fields, mcfg):
            ledger.append(fields, mcfg)
        return
    previous = _ref(row)
    slug = chain.session_slug(base, previous.session + 1, chain.chain_mode(mcfg, KIND))
    found = _unrecorded(api, owner, slug, mcfg.backend)
    if found is not None and not (slug == previous.slug and found == previous.version):
        print(f"{owner}/{slug} v{found}: session {previous.session + 1} was pushed without a ledger row; recording "
              "it, not pushing again")
        push._record_start(mcfg, watch.KernelRef(owner, slug, found, KIND, previous.session + 1), base, sha)
        return
    push.push_next_session(api, mcfg, KIND, folder, sha, previous, wait_for_slot=False)


def _retry(st: MemberState) -> None:
    """Set a failed member whose newest session ended ERROR or cancelled to push that session again: session 1
    as if queued, session N from session N-1's COMPLETE row; left failed when it cannot be retried."""
    from packager.push import RETRYABLE, session_before

    if st.state != "failed" or not st.row or st.row.get("status") not in RETRYABLE:
        return
    session, status = st.row.get("session") or 1, st.row["status"]
    if session > 1:
        previous = session_before(st.cfg, _ref(st.row), st.cfg.kernel(KIND).slug)
        if previous is None:
            return
        st.row = previous
    st.state, st.note = ("next" if session > 1 else "waiting"), ""
    print(f"{st.member.slug}: session {session} ended {status}; pushing session {session} again", flush=True)


def _open_in_ledger(cfg, member: campaign.Member) -> bool:
    """Whether the ledger's newest row of the member is a session not known to have ended (no server call)."""
    rows = _rows(campaign.member_cfg(cfg, member))
    return bool(rows) and rows[-1]["status"] not in (WAITING, *watch.TERMINAL, *FAILED)


def cap(cfg) -> int:
    kind = shapes.guess(cfg.kernel(KIND).accelerator).kind
    return cfg.campaign.gpu_sessions if kind in ("gpu", "tpu") else cfg.campaign.cpu_sessions


def step(cfg, only=None, report=None, retry: bool = False) -> list[MemberState] | None:
    """One tick over the chosen members; None when another tick holds the lock. `report` takes the summary
    (how many members are open, waiting, done ...); without it the summary is printed as `tick: ...`. retry:
    members whose newest session ended ERROR or cancelled push that session again (`--retry`)."""
    from packager.push import QuotaSpent, SlotBusy

    with tick_lock() as held:
        if not held:
            print(f"another kpack tick is running (it holds {LOCK}); nothing to do here", flush=True)
            return None
        chosen = campaign.parse_only(only, campaign.members(cfg))
        api = kaggle_api.connect(cfg)
        states = [_judge(api, campaign.member_cfg(cfg, m), m) for m in chosen]
        for st in states if retry else []:
            _retry(st)
        others = [m for m in campaign.members(cfg) if m not in chosen]  # left out by --only: their open sessions
        open_now = sum(st.state == "open" for st in states) + sum(_open_in_ledger(cfg, m) for m in others)
        queue = [st for st in states if st.state == "next"] + [st for st in states if st.state == "waiting"]
        for st in queue:
            if open_now >= cap(cfg):
                break
            try:
                _start(api, st)
            except SlotBusy as err:
                said = str(err).removeprefix("kaggle: ").rstrip(".")
                print(f"{st.member.slug}: {said}; trying again next tick", flush=True)
                if isinstance(err, QuotaSpent):
                    st.note = said
                break
            except UserError as err:
                if getattr(err, "exhausted", False):  # Kaggle out of reach: no fault of the member's; a later
                    raise                              # tick pushes it (and first finds it if it went through)
                print(f"{st.member.slug}: {err}", flush=True)
                st.state, st.note = "failed", str(err)
                continue
            st.state = "open"
            open_now += 1
        counts = {name: sum(st.state == name for st in states) for name in
                  ("open", "next", "waiting", "done", "failed")}
        said = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        summary = f"{said or 'no run of these members in the ledger (kpack push train starts one)'} (cap {cap(cfg)})"
        if report is None:
            print(f"tick: {summary}", flush=True)
        else:
            report(summary)
        return states


def scheduled_step(cfg, only=None, retry: bool = False) -> list[MemberState] | None:
    """`kpack tick`: one step, with Kaggle out of reach said (and exit 0) for up to KPACK_OFFLINE_WAIT_S."""
    from packager import progress

    try:
        states = step(cfg, only, retry=retry)
    except kaggle_api.KaggleCallError as err:
        if not watch.Outage.waitable(err):
            raise  # a refusal, or the local Kaggle gone: nothing a later tick waits out
        began = _outage_began()
        said = "" if began is None else f" for {progress.duration(time.time() - began)}, over several ticks"
        if began is None:  # this tick's is the first failure of the outage
            began = time.time()
            OUTAGE.parent.mkdir(parents=True, exist_ok=True)
            OUTAGE.write_text(f"{began:.0f}\n")
        lasted = time.time() - began
        if lasted > watch.OFFLINE_WAIT_S:
            raise kaggle_api.KaggleCallError(f"{err} (Kaggle out of reach{said})", err.status, err.unreachable,
                                             err.exhausted) from err
        cause = err.unreachable or str(err).removeprefix("kaggle: ")
        print(f"tick: Kaggle out of reach{said} ({cause}); the next tick goes on from here (a tick fails only "
              f"once this has lasted KPACK_OFFLINE_WAIT_S, {progress.duration(watch.OFFLINE_WAIT_S)})", flush=True)
        return None
    began = _outage_began()
    if began is not None:
        print(f"tick: Kaggle answers again, after {progress.duration(time.time() - began)}", flush=True)
    OUTAGE.unlink(missing_ok=True)
    return states


def _outage_began() -> float | None:
    """When the outage began (runs/.tick-outage, written by its first failed tick); None: none, or unreadable."""
    try:
        return float(OUTAGE.read_text())
    except (OSError, ValueError):
        return None


def finished(states: list[MemberState]) -> bool:
    return all(st.state in ("done", "failed", "absent") for st in states)


def watch_loop(cfg, only=None, retry: bool = False) -> list[MemberState]:
    """`kpack watch train` for a campaign: tick every KPACK_TICK_S seconds until every member is done or
    failed; a UserError (exit 1) when one failed. Between ends it says what it waits for only when that changes
    or KPACK_WAIT_EVERY_S passed, and each running member's newest log line (as `kpack watch` of one kernel)."""
    from packager import logs, progress

    every = env_number("KPACK_TICK_S", 5.0 if cfg.backend == "local" else 60.0)
    wait, tails, summary, api = progress.Wait(KIND, "the members to end"), {}, [], None
    outage = watch.Outage(wait)
    while True:
        try:
            states = step(cfg, only, report=summary.append, retry=retry)
        except kaggle_api.KaggleCallError as err:  # a tick is safe to run again: it picks up where this stopped
            outage.failed(err)
            time.sleep(every)
            continue
        outage.reached()
        retry = retry and states is None  # once: the first tick that ran
        if states is not None and finished(states):
            print(f"tick: {summary[-1]}", flush=True)
            break
        spent = next((st.note for st in states or [] if st.state in ("waiting", "next") and st.note), None)
        if spent and not any(st.state == "open" for st in states):  # nothing runs until the quota refreshes
            notify.refused(cfg, "train campaign", spent, "the members still waiting go on with `kpack watch "
                           "train` (or a scheduled `kpack tick`) after it refreshes")
            raise UserError(spent, exit_code=1)
        if states is not None:
            wait.tick(summary[-1])
            for st in states:
                if st.state == "open" and st.note == "RUNNING":
                    ref, api = _ref(st.row), api or kaggle_api.connect(cfg)
                    tail = tails.setdefault(str(ref), logs.Tail(api, ref, st.cfg.kernel(KIND).session_hours * 3600))
                    line = tail.poll()
                    if line:
                        print(f"{ref}: log: {line}", flush=True)
        time.sleep(every)
    if all(st.state == "absent" for st in states):
        raise UserError(f"train: the ledger ({ledger.ledger_path()}) has no run of these members on the "
                        f"{cfg.backend} backend; start one with: kpack push train")
    failed = [st for st in states if st.state == "failed"]
    if failed:
        causes = "; ".join(f"{st.member.slug}: {st.note}" for st in failed)
        raise UserError(f"{len(failed)} member(s) failed: {causes}; once a cause is fixed (a secret attached, "
                        "the quota refreshed), `kpack watch train --retry` pushes their failed sessions again",
                        exit_code=1)
    return states


def queue_members(cfg, chosen: list[campaign.Member], built: dict[str, str]) -> None:
    """Record each chosen member as WAITING (its first session not pushed yet), script sha256 from `built`."""
    for member in chosen:
        mcfg = campaign.member_cfg(cfg, member)
        row = ledger.make_row(mcfg, kernel=f"{cfg.kaggle_user}/{member.slug}", kind=KIND, version=None, session=1,
                              status=WAITING, seconds=None, output=None, base_slug=member.slug)
        ledger.append({**row, **(mcfg._member or {}), "script_sha256": built[member.slug]}, mcfg)


def push_campaign(cfg, only=None, wait: bool = True, force: bool = False) -> list[MemberState] | None:
    """`kpack push train` with kernels.train.members: build every chosen member, forecast its GPU hours
    against the weekly quota, update the datasets once, queue the members and tick (then, with wait, go on
    ticking until all are done)."""
    from packager import datasets, models_push, preflight
    from packager.build import build_kernel
    from packager.imageprobe import ensure_probed
    from packager.push import scan_for_secrets, warn_if_still_running

    chosen = campaign.parse_only(only, campaign.members(cfg))
    kaggle_api.check_credentials(cfg)
    api = kaggle_api.connect(cfg)
    spent = campaign.accelerator(cfg)
    quota = kaggle_api.accelerator_quota(api, spent) if spent else None
    lines, fits = campaign.forecast(cfg, chosen, ledger.read(), quota=quota)
    if not fits and not force:  # the refusal is the error line itself, not printed twice
        print("\n".join(lines[:-1]), flush=True)
        raise UserError(lines[-1].removeprefix("forecast: "))
    for line in lines:
        print(line, flush=True)
    ensure_probed(cfg)
    built = {}
    for member in chosen:
        kernel = build_kernel(campaign.member_cfg(cfg, member), KIND)
        scan_for_secrets(cfg, [Path(kernel.script)])
        built[member.slug] = kernel.sha256
    builds = datasets.build_all(cfg)
    model_build = models_push.build(cfg)
    for member in chosen:
        warn_if_still_running(api, campaign.member_cfg(cfg, member), KIND)
    for warning in preflight.before_upload(cfg, KIND, api):  # a source that does not exist: refused here too
        print(f"warning: {warning}", flush=True)
    models_push.check_sources(api, cfg, KIND)
    datasets.push_all(api, cfg, builds, check_uploads=lambda folders: scan_for_secrets(cfg, folders))
    if model_build is not None:
        models_push.publish(api, cfg, model_build, check_uploads=lambda folders: scan_for_secrets(cfg, folders))
    queue_members(cfg, chosen, built)
    print(f"train: {len(chosen)} member(s) queued: {', '.join(m.slug for m in chosen)}", flush=True)
    if not wait:
        step(cfg, specs_of(chosen))
        print("not waiting; keep it going with: kpack tick   (or kpack watch train)", flush=True)
        return None
    return watch_loop(cfg, specs_of(chosen))


def specs_of(chosen: list[campaign.Member]) -> list[str]:
    """--only specs naming exactly these members."""
    by_variant: dict = {}
    for m in chosen:
        by_variant.setdefault(m.variant or "", []).append(str(m.fold))
    return [f"{v}:{','.join(folds)}" for v, folds in by_variant.items()]
