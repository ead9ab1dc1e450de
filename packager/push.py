"""`kpack push KIND`: build, update the datasets that changed, push the kernel, and (by default) watch it to the end.

The flow: build the kernel (packager.build) and the datasets (packager.datasets), scan everything that would
leave the machine for secrets, create or version only the datasets whose content changed and wait until they
are ready, push the kernel with its session limit and machine shape, then wait: poll the pushed version,
download its output to runs/<slug>/v<N>/, fill its ledger row, announce the result, and push the next
session while the output's state.json says training is not done (see packager.chain).

Exit status: 0 when the last session ended COMPLETE; 1 (a UserError) when a session ended ERROR or was
cancelled, after the failure was announced; a push the server refused is one error line, never a retry loop,
except Kaggle's concurrent-session cap ("Maximum batch GPU session count of 2 reached."): Kaggle makes no
version then, so kpack waits for a slot and pushes again (up to KPACK_SLOT_WAIT_S seconds, 12 h by default).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from packager import chain, datasets, kaggle_api, ledger, metadata, models_push, notify, preflight, progress, watch
from packager.errors import UserError, env_number
from packager.fsutil import file_sha256

SESSION_CAP = re.compile(r"Maximum batch (\w+) session count of (\d+) reached", re.IGNORECASE)
QUOTA_SPENT = re.compile(r"\bquota\b", re.IGNORECASE)  # the weekly accelerator quota (localkaggle/quota.py)
SOURCES_INVALID = "SOURCES_INVALID"  # ledger status: a chain session made without the previous session's output


@dataclass
class PushResult:
    ref: watch.KernelRef
    status: str | None = None           # None with wait=False
    output: Path | None = None
    sessions: list[watch.KernelRef] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- checks

def scan_for_secrets(cfg, paths: list[Path]) -> None:
    """Refuse to upload anything that holds a secret value, and public plain weights."""
    from packager.secrets_scan import collect_secrets, refuse_public_plain_weights, scan

    refuse_public_plain_weights(cfg)
    scan([Path(p) for p in paths], collect_secrets(cfg))  # raises UserError naming the file


# --------------------------------------------------------------------------------------------- push

class InvalidSources(UserError):
    """SaveKernel made the version without some of its sources (invalid*Sources)."""

    def __init__(self, message: str, version: int | None, kernels: list[str]):
        super().__init__(message, exit_code=1)
        self.version, self.kernels = version, kernels


def kernel_source_problem(api, source: str) -> str:
    """Why Kaggle would not mount kernel SOURCE (owner/slug): it mounts a source kernel only when its newest
    version is COMPLETE."""
    owner, _, slug = source.partition("/")
    newest = kaggle_api.current_kernel_version(api, owner, slug)
    if newest is None:
        return f"{source} not found"
    status, _ = kaggle_api.kernel_status(api, owner, slug, newest)
    if status == "COMPLETE":
        return f"{source} (v{newest}) was not mountable when pushed"
    return f"{source}: its newest version v{newest} is {status}, not COMPLETE (Kaggle mounts only that one)"


def _check_save_response(api, ref: str, response) -> int | None:
    """SaveKernel's `error` and invalid*Sources as one error line (the kaggle CLI prints them and exits 0)."""
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"kaggle: push {ref} refused: {error}", exit_code=1)
    problems, kernels = [], list(getattr(response, "invalid_kernel_sources", None) or [])
    for kind in ("dataset", "competition", "model"):
        invalid = getattr(response, f"invalid_{kind}_sources", None)
        if invalid:
            problems.append(f"{kind} sources not found: {', '.join(invalid)}")
    problems += [kernel_source_problem(api, k) for k in kernels]
    version = getattr(response, "version_number", None)
    if problems:
        made = f" (v{version} was made without them)" if version else ""
        fix = ("wait for that kernel to end COMPLETE, then push again" if kernels and len(problems) == len(kernels)
               else "fix the sources in kpack.yaml and push again")
        raise InvalidSources(f"kaggle: push {ref}: {'; '.join(problems)}{made}; {fix}", version, kernels)
    return version


class SlotBusy(UserError):
    """Kaggle refused the push for its concurrent-session cap (no version made); `kpack tick` tries later."""


class QuotaSpent(SlotBusy):
    """Kaggle refused the push: the week's accelerator quota is used up (no version made); a tick after the
    quota refreshes pushes it."""


def _push_when_a_slot_is_free(ref: str, push, wait_for_slot: bool = True):
    """push() until Kaggle does not refuse it for the concurrent-session cap (it makes no version then, and does
    not queue): one line saying so, then backoff from KPACK_POLL_MIN_S to KPACK_POLL_MAX_S, at most
    KPACK_SLOT_WAIT_S seconds in all."""
    wait_s = env_number("KPACK_SLOT_WAIT_S", 12 * 3600)
    deadline, delay, told = time.monotonic() + wait_s, watch.POLL_MIN_S, False
    wait = progress.Wait(ref, "a free session slot")
    while True:
        response = push()
        error = getattr(response, "error", None) or ""
        if QUOTA_SPENT.search(error) and not wait_for_slot:
            raise QuotaSpent(f"kaggle: push {ref} refused: {error}", exit_code=1)
        if not SESSION_CAP.search(error):
            return response
        if not wait_for_slot:
            raise SlotBusy(f"kaggle: push {ref} refused: {error}", exit_code=1)
        if time.monotonic() + delay > deadline:
            raise UserError(f"kaggle: push {ref} refused: {error} Still no free session after {wait_s:.0f}s "
                            "(KPACK_SLOT_WAIT_S); stop a running session or raise KPACK_SLOT_WAIT_S", exit_code=1)
        if not told:
            told = True
            print(f"{ref}: Kaggle refused the push: {error} Waiting for a running session to end, then pushing "
                  f"again (up to {wait_s:.0f}s, KPACK_SLOT_WAIT_S)", flush=True)
            wait.said("refused at the session cap")  # the line above said it
        else:
            wait.tick("refused at the session cap", f"at most {progress.duration(wait_s)}")
        kaggle_api.sleep(delay)
        delay = min(watch.POLL_MAX_S, delay * 1.5)


def push_folder(api, cfg, kind: str, folder: Path, wait_for_slot: bool = True,
                go_on: str | None = None) -> watch.KernelRef:
    """Push one kernel folder (kernel-metadata.json + script); returns owner/slug with the new version.
    wait_for_slot=False: a refusal at the session cap (or for the quota) raises SlotBusy at once. go_on: what
    the user runs after clearing a refusal (default: push the kind again)."""
    metadata.read_kernel_metadata(folder)  # hand-edited and broken: one line, before any model source is asked
    models_push.pin_sources(api, cfg, kind, folder)  # model sources as the client takes them: with a version
    meta = metadata.read_kernel_metadata(folder)  # hand-edited and broken: one line, not a traceback
    owner, slug = meta["id"].split("/", 1)
    kcfg = cfg.kernel(kind)
    before = kaggle_api.current_kernel_version(api, owner, slug)
    timeout = str(int(kcfg.session_hours * 3600))
    accelerator = None if kcfg.accelerator == "None" else kcfg.accelerator

    def landed():
        # A push whose answer was lost may still have made the version: never push it twice.
        now = kaggle_api.current_kernel_version(api, owner, slug)
        if now is not None and (before is None or now > before):
            return SimpleNamespace(version_number=now, error=None, url=None)
        return None

    try:
        response = _push_when_a_slot_is_free(f"{owner}/{slug}", lambda: kaggle_api.call(
            f"push kernel {owner}/{slug}", api.kernels_push, str(folder), timeout, accelerator, done=landed),
            wait_for_slot)
        version = _check_save_response(api, f"{owner}/{slug}", response) or landed()
    except (InvalidSources, SlotBusy):
        raise  # a chain stops on it with its own message; a tick tries the slot again later
    except UserError as err:  # a refusal (quota, the session cap for too long): nothing runs until the user acts
        notify.refused(cfg, f"push {owner}/{slug} ({kind})", str(err).removeprefix("kaggle: ").rstrip("."),
                       go_on or f"then go on with kpack push {kind}")
        raise
    if not isinstance(version, int):
        version = getattr(version, "version_number", None)
    if version is None:
        raise UserError(f"kaggle: push {owner}/{slug}: the server gave no version number", exit_code=1)
    url = getattr(response, "url", None)
    print(f"pushed {owner}/{slug} v{version}" + (f" ({url})" if url else ""), flush=True)
    return watch.KernelRef(owner, slug, version, kind)


# --------------------------------------------------------------------------------------------- one session

def _record_start(cfg, ref: watch.KernelRef, base_slug: str, script_sha256: str, status: str = "QUEUED",
                  failure: str = "", sources: list[str] | None = None) -> None:
    row = ledger.make_row(cfg, kernel=ref.ref, kind=ref.kind, version=ref.version, session=ref.session,
                          status=status, seconds=None, output=None, base_slug=base_slug, failure=failure)
    if sources is not None:  # the kernels it reads, owner/slug/N: which train sessions an infer blended
        row["sources"] = ledger.source_versions(sources, cfg.backend)
    ledger.append({**row, **(cfg._member or {}), "script_sha256": script_sha256}, cfg)


def _record_end(cfg, ref: watch.KernelRef, base_slug: str, outcome: watch.Outcome, out: Path | None) -> dict:
    # The session's own run time, from its log's timestamps: the watcher may have started late (push --no-wait,
    # kpack watch later) or waited through the queue.
    row = ledger.make_row(cfg, kernel=ref.ref, kind=ref.kind, version=ref.version, session=ref.session,
                          status=outcome.status, seconds=watch.run_seconds(out, ref.slug), output=out,
                          failure=outcome.failure, base_slug=base_slug)
    row.update(cfg._member or {})  # a campaign member's variant and fold (packager.campaign)
    if ref.kind == "infer":  # the runtime planner's prediction against the run's measured time
        row["plan"] = ledger.read_plan(out)
    fields = {k: v for k, v in row.items() if k not in ("ts", "git_commit", "git_dirty", "config_hash")}
    fields["finished"] = row["ts"]
    if not ledger.update({"kernel": ref.ref, "version": ref.version, "backend": cfg.backend}, fields, cfg):
        ledger.append(row, cfg)
    return row


def watch_session(api, cfg, ref: watch.KernelRef, base_slug: str) -> tuple[watch.Outcome, Path | None]:
    """Wait for one pushed session, download its output, record and announce it."""
    # No deadline here: the server enforces the session limit. Interrupting the watch leaves the kernel running;
    # `kpack status` and `kpack output` pick it up later.
    try:
        outcome = watch.wait_for(api, ref, max_delay_s=watch.LOCAL_POLL_MAX_S if cfg.backend == "local" else None,
                                 session_s=cfg.kernel(ref.kind).session_hours * 3600 if ref.kind else None)
    except kaggle_api.KaggleCallError as err:  # Kaggle out of reach for longer than the retries last
        message = (f"{err}; {ref} may still be running: go on following it (and its chain) with: "
                   f"kpack watch {ref.kind}")
        notify.notify(cfg, message, ok=False)
        raise UserError(message, exit_code=1) from None
    out = None
    try:
        out = watch.download(api, ref)
    except UserError as err:
        if outcome.status == "COMPLETE":  # the run went well but its output cannot be had: say so, then stop
            _record_end(cfg, ref, base_slug, outcome, None)
            notify.notify(cfg, f"{ref} ({ref.kind}) COMPLETE but its output could not be downloaded: {err}",
                          ok=False)
            raise
        print(f"{ref}: no output ({err})")
    row = _record_end(cfg, ref, base_slug, outcome, out)
    if outcome.status != "COMPLETE":
        log = out / f"{ref.slug}.log" if out else None
        notify.kernel_failed(cfg, ref, outcome.status, outcome.failure, out,
                             log.read_text(errors="replace") if log and log.is_file() else None)
    elif out is not None and chain.needs_another_session(out):
        more = ref.session < chain.max_sessions(cfg, ref.kind)
        notify.session_finished(cfg, ref, row, out, f"session {ref.session + 1}" if more else "none: the session cap")
    elif ref.session > 1:  # the chain's last session: one message for the whole chain
        notify.chain_finished(cfg, ref.kind, _chain_rows(cfg, ref, base_slug), out)
    else:
        notify.session_finished(cfg, ref, row, out, notify.next_step(cfg, ref.kind))
    return outcome, out


def _chain_rows(cfg, ref: watch.KernelRef, base_slug: str) -> list[dict]:
    """The ledger rows of ref's chain: sessions 1..ref.session of the newest push of base_slug."""
    rows = [r for r in ledger.read() if r.get("kind") == ref.kind and r.get("base_slug") == base_slug
            and r.get("backend") == cfg.backend]
    found, want = [], ref.session
    for r in reversed(rows):
        if r.get("session") == want and (want != ref.session or (r.get("kernel"), r.get("version")) ==
                                          (ref.ref, ref.version)):
            found.append(r)
            want -= 1
            if want < 1:
                break
    return found[::-1]


# --------------------------------------------------------------------------------------------- the verb

def upstream_sources(cfg, kind: str) -> list[str]:
    """validate reads the trained models from the train chain's last COMPLETE session (its slug changes as the
    chain grows: <slug>, <slug>-b, <slug>, ... or <slug>-s2, ...); infer reads those and validate's thresholds.
    A campaign (kernels.train.members): every member's newest COMPLETE session, each its own chain; a member
    without one is refused in one line, unless KPACK_PARTIAL=1 (then left out, with a warning).
    Kaggle mounts a source kernel's newest version, so that session must still be its kernel's newest (a
    push over it is refused in one line by push_folder). A kernel kpack.yaml
    already names as a source is left as configured."""
    from packager import campaign

    upstream = {"validate": ("train",), "infer": ("train", "validate")}.get(kind, ())
    configured = cfg.kernel(kind).sources.kernels
    found = []
    for source in (k for k in upstream if k in cfg.kernels):
        members = campaign.members(cfg) if source == campaign.KIND else [None]
        missing = []
        for member in members:
            scfg = campaign.member_cfg(cfg, member) if member else cfg
            base, slugs = scfg.kernel(source).slug, chain.chain_slugs(scfg, source)
            if any(ref.split("/")[-1] in slugs or ref.split("/")[-1].startswith(base + "-s") for ref in configured):
                continue
            rows = [r for r in ledger.read() if r.get("kind") == source and r.get("base_slug") == base
                    and r.get("backend") == cfg.backend and r.get("status") == "COMPLETE"]
            if not rows:
                missing.append(member.name if member and member.fold is not None else base)
                continue
            last = rows[-1]
            who = f"{source} member {member.name}" if member and member.fold is not None else source
            print(f"{kind}: reads {who}'s output from {last['kernel']} (its last COMPLETE session in the ledger)")
            found.append(last["kernel"])
            if last.get("output") and chain.needs_another_session(last["output"]):
                print(f"warning: {last['kernel']} stopped mid-training (its state.json says not done): {kind} "
                      f"reads that checkpoint; for the final model, let the chain finish first (kpack watch "
                      f"{source})", flush=True)
        if missing and len(members) > 1:
            said = (f"{kind}: campaign {cfg.kernel(source).slug}: member(s) {', '.join(missing)} have no COMPLETE "
                    f"session in the ledger")
            if os.environ.get("KPACK_PARTIAL") != "1":
                raise UserError(f"{said}; let them finish (kpack tick, kpack ledger --campaign), or blend the "
                                f"others with KPACK_PARTIAL=1 kpack push {kind}")
            print(f"warning: {said}; {kind} reads the other {len(members) - len(missing)} (KPACK_PARTIAL=1)",
                  flush=True)
    return found


def push_kernel(cfg, kind: str, wait: bool = True, slug: str | None = None) -> PushResult:
    """Build, update changed datasets, push the kernel; with wait, follow it (and its next sessions) to the end.
    `slug`: push it as that kernel instead (one session, not chained: `kpack push infer --plan`)."""
    from packager.build import build_kernel
    from packager.imageprobe import ensure_probed

    kaggle_api.check_credentials(cfg)  # before anything is built: one line instead of the client's banner
    ensure_probed(cfg)  # backend kaggle: a guessed or stale image snapshot is probed first (KPACK_NO_PROBE)
    built = build_kernel(cfg, kind, kernel_sources=upstream_sources(cfg, kind), slug=slug)
    builds = datasets.build_all(cfg)
    model_build = models_push.build(cfg)  # models.weights: models/ as a Kaggle Model instance
    scan_for_secrets(cfg, [Path(built.script)])

    api = kaggle_api.connect(cfg)
    warn_if_still_running(api, cfg, kind)
    warn_if_quota_short(api, cfg, kind)
    for warning in preflight.before_upload(cfg, kind, api):  # a source that does not exist: refused before any upload
        print(f"warning: {warning}", flush=True)
    models_push.check_sources(api, cfg, kind)  # and a pinned model version the instance does not have
    datasets.push_all(api, cfg, builds, check_uploads=lambda folders: scan_for_secrets(cfg, folders))
    if model_build is not None:
        models_push.publish(api, cfg, model_build, check_uploads=lambda folders: scan_for_secrets(cfg, folders))
    ref = push_folder(api, cfg, kind, Path(built.folder))
    _record_start(cfg, ref, slug or cfg.kernel(kind).slug, built.sha256,
                  sources=metadata.read_kernel_metadata(built.folder).get("kernel_sources") or [])
    if slug:
        outcome, out = watch_session(api, cfg, ref, slug)
        return PushResult(ref=ref, sessions=[ref], status=outcome.status, output=out)
    if not wait:
        print(f"not waiting; follow it with: kpack watch {kind}   (status: kpack status {kind})")
        return PushResult(ref=ref, sessions=[ref])
    return follow_chain(api, cfg, kind, Path(built.folder), built.sha256, ref, before=(0, 0))


PLAN_SUFFIX = "-plan"


def push_plan(cfg) -> dict:
    """`kpack push infer --plan`: the infer kernel with kit.infer.plan_only set (only the runtime planner's
    timing runs), pushed as its own kernel <infer slug>-plan so that a plan never becomes the infer kernel's
    newest version (which kpack submit uses); prints the plan from its plan.json and returns it."""
    import copy
    import json

    kit = copy.deepcopy(cfg.kit)
    kit["infer"] = {**(kit.get("infer") or {}), "plan_only": True}
    plan_cfg = cfg.model_copy(update={"kit": kit})
    result = push_kernel(plan_cfg, "infer", slug=cfg.kernel("infer").slug + PLAN_SUFFIX)
    found = sorted(Path(result.output).rglob("plan.json")) if result.output else []
    if result.status != "COMPLETE" or not found:
        raise UserError(f"{result.ref} ended {result.status} without a plan.json: see kpack logs "
                        f"{result.ref.ref}/{result.ref.version}", exit_code=1)
    plan = json.loads(found[0].read_text())
    print(plan_text(plan))
    return plan


def plan_text(plan: dict) -> str:
    """The plan as printed: the whole run, one line per member, and what to drop when it does not fit."""
    hidden = (f", {plan['predicted_hidden_s']:.0f} s on the hidden test set (x{plan['hidden_test_factor']:g})"
              if plan.get("hidden_test_factor", 1) != 1 else "")
    lines = [f"plan: {plan['predicted_s']:.1f} s predicted for {plan['rows']} rows x {len(plan['views'])} TTA "
             f"views ({', '.join(plan['views'])}){hidden}; {plan['available_s']:.0f} s left of the "
             f"{plan['session_s']:.0f} s session: {'fits' if plan['fits'] else 'does NOT fit'}"]
    for m in plan["members"]:
        views = ", ".join(f"{v} {s * 1000:.1f} ms" for v, s in m["view_s"].items())
        lines.append(f"  member {m['name']}: {m['models']} model(s), {m['predicted_s']:.1f} s "
                     f"(per batch: loading {m['batch_load_s'] * 1000:.1f} ms, {views})")
    drop = plan.get("drop") or {}
    if not plan["fits"]:
        what = [f"{kind} {', '.join(drop[key])}" for key, kind in (("views", "TTA view(s)"), ("members", "member(s)"))
                if drop.get(key)]
        lines.append(f"to fit, drop {' and '.join(what)}: {drop['seconds']:.0f} s predicted" if drop else
                     "no subset of TTA views and members fits: a smaller kit.infer.hidden_test_factor, a larger "
                     "kit.infer.batch_size or a faster accelerator")
    return "\n".join(lines)


def _newest_session(cfg, kind: str) -> tuple[dict, watch.KernelRef] | tuple[None, None]:
    """The ledger's newest row of KIND's chain on this backend, and the kernel version it names."""
    row = ledger.latest(kind=kind, base_slug=cfg.kernel(kind).slug, backend=cfg.backend)
    if row is None:
        return None, None
    owner, slug = row["kernel"].split("/")
    return row, watch.KernelRef(owner, slug, row["version"], kind, row["session"])


def warn_if_still_running(api, cfg, kind: str) -> None:
    """A new push starts a second run beside one still going (both spend GPU quota): say so."""
    row, ref = _newest_session(cfg, kind)
    if row is None or row["status"] in watch.TERMINAL or row.get("version") is None:  # None: queued, not pushed
        return
    status, _ = watch.status_of(api, ref)
    if status not in watch.TERMINAL:
        print(f"warning: {row['kernel']} v{row['version']} (session {row['session']} of the last {kind} push) is "
              f"still {status}; this push starts another run beside it: stop that one on the kernel's page, or "
              f"follow it instead with `kpack watch {kind}`", flush=True)


def warn_if_quota_short(api, cfg, kind: str) -> None:
    """A GPU or TPU session that may run longer than the week's quota left (the backend's count): say so."""
    from packager import shapes

    accelerator = shapes.quota_of(cfg.kernel(kind).accelerator)
    quota = kaggle_api.accelerator_quota(api, accelerator) if accelerator else None
    hours = cfg.kernel(kind).session_hours
    if quota is None or quota.total_h - quota.spent_h >= hours:
        return
    left = max(0.0, quota.total_h - quota.spent_h)
    print(f"warning: {left:.1f} h of the weekly {accelerator} quota left (of {quota.total_h:g} h"
          + (f", refreshes {quota.refresh}" if quota.refresh else "") + f"); this {kind} session may run "
          f"{hours:g} h, and Kaggle refuses a push past the quota", flush=True)


def watch_kernel(cfg, kind: str) -> PushResult:
    """Follow the newest session of KIND's chain that the ledger knows (after `push --no-wait`, or a watch
    that was stopped) to its end, and push the sessions still to come, as `kpack push` would have."""
    base_slug = cfg.kernel(kind).slug
    row, ref, folder, script_sha256 = _chain_to_go_on(cfg, kind)
    if row["status"] == SOURCES_INVALID:  # pushing again would only make another session without its checkpoint
        raise UserError(row.get("failure") or f"{ref} was made without the previous session's output; start the "
                        f"run again with `kpack push {kind}`", exit_code=1)
    api = kaggle_api.connect(cfg)
    finished = None
    if row["status"] in watch.TERMINAL:  # its end is known: go on from its output (downloaded again if gone)
        out = Path(row["output"]) if row.get("output") else None
        if row["status"] == "COMPLETE" and not (out and out.is_dir()):
            out = watch.download(api, ref)
        if not row.get("finished"):  # `kpack status` saw the end, nobody recorded it: CV, run time
            _record_end(cfg, ref, base_slug, watch.Outcome(row["status"], row.get("failure") or "", 0.0), out)
        finished = (row["status"], row.get("failure") or "", out)
    print(f"{kind}: following {ref} (session {ref.session}, {row['status']} in the ledger)", flush=True)
    return follow_chain(api, cfg, kind, folder, script_sha256, ref, before=None, finished=finished)


def _chain_to_go_on(cfg, kind: str) -> tuple[dict, watch.KernelRef, Path, str]:
    """The ledger's newest session of KIND's chain, its kernel, and the built folder (with its script's sha256)
    the chain's next session is pushed from: refused in one line when there is no run, or the script changed."""
    base_slug = cfg.kernel(kind).slug
    row, ref = _newest_session(cfg, kind)
    if row is None:
        raise UserError(f"{kind}: the ledger ({ledger.ledger_path()}) has no run of {base_slug} on the {cfg.backend} "
                        f"backend; start one with: kpack push {kind}")
    folder = Path("build") / "kernels" / base_slug
    script, recorded = _script(folder), row.get("script_sha256")
    script_sha256 = file_sha256(script) if script else None
    if script is None or (recorded and script_sha256 != recorded):
        raise UserError(f"{folder}: not the script {ref} runs (rebuilt since, or missing); the next session must "
                        f"run the same code: check out {row.get('git_commit') or 'the commit it was pushed from'}, "
                        f"run `kpack build {kind}`, then `kpack watch {kind}` again")
    return row, ref, folder, script_sha256


RETRYABLE = ("ERROR", "CANCEL_ACKNOWLEDGED", "CANCEL_REQUESTED")


def retry_session(cfg, kind: str) -> PushResult:
    """`kpack watch KIND --retry`: push the chain's newest session again when it ended without completing (a
    secret not yet attached to its kernel, the quota, a cancelled run), from the output of the session before it
    (still its kernel's newest version: checked), then follow the chain. Session 1 is pushed again as it was."""
    base_slug = cfg.kernel(kind).slug
    row, ref, folder, script_sha256 = _chain_to_go_on(cfg, kind)
    if row["status"] not in RETRYABLE:
        raise UserError(f"{kind}: nothing to retry: {ref} (session {ref.session}) is {row['status']} in the ledger"
                        + ("" if row["status"] == SOURCES_INVALID else f"; follow it with `kpack watch {kind}`"))
    api = kaggle_api.connect(cfg)
    print(f"{kind}: {ref} (session {ref.session}) ended {row['status']}; pushing session {ref.session} again",
          flush=True)
    if ref.session == 1:
        scan_for_secrets(cfg, [folder])
        again = push_folder(api, cfg, kind, folder)
        _record_start(cfg, again, base_slug, script_sha256)
        return follow_chain(api, cfg, kind, folder, script_sha256, again, before=(0, 0))
    previous = session_before(cfg, ref, base_slug)
    if previous is None:
        raise UserError(f"{kind}: cannot retry session {ref.session}: the ledger has no COMPLETE session "
                        f"{ref.session - 1} before it; start the run again with `kpack push {kind}`")
    owner, slug = previous["kernel"].split("/")
    before = watch.KernelRef(owner, slug, previous["version"], kind, previous["session"])
    out = Path(previous["output"]) if previous.get("output") else None
    again = push_next_session(api, cfg, kind, folder, script_sha256, before)
    return follow_chain(api, cfg, kind, folder, script_sha256, again,
                        before=chain.progress(out) if out and out.is_dir() else None)


def session_before(cfg, ref: watch.KernelRef, base_slug: str) -> dict | None:
    """The ledger row of the session before ref in its chain, when that session ended COMPLETE; else None."""
    previous = next((r for r in _chain_rows(cfg, ref, base_slug) if r.get("session") == ref.session - 1), None)
    return previous if previous is not None and previous.get("status") == "COMPLETE" else None


def _script(folder: Path) -> Path | None:
    """The kernel script of a built kernel folder, as its kernel-metadata.json names it; None when missing."""
    if not (folder / metadata.KERNEL_METADATA).is_file():
        return None
    script = folder / metadata.read_kernel_metadata(folder)["code_file"]  # a damaged file says so in one line
    return script if script.is_file() else None


def follow_chain(api, cfg, kind: str, folder: Path, script_sha256: str, ref: watch.KernelRef,
                 before: tuple | None, finished: tuple | None = None) -> PushResult:
    """Follow `ref` to its end, then push and follow the next session from `folder` (whose script has
    `script_sha256`) while its state.json says training is not done. before: the (step, epoch) that `ref`
    started from, when known; finished: (status, failure, output folder) when `ref` has ended and its end is
    recorded already."""
    base_slug, limit = cfg.kernel(kind).slug, chain.max_sessions(cfg, kind)
    result = PushResult(ref=ref, sessions=[ref])
    while True:
        if finished is not None:
            (status, failure, out), finished = finished, None
        else:
            try:
                outcome, out = watch_session(api, cfg, ref, base_slug)
            except KeyboardInterrupt:
                print(f"\nstopped watching; {ref} keeps running. Go on following it (and the chain) with: "
                      f"kpack watch {kind}", flush=True)
                raise
            status, failure = outcome.status, outcome.failure
        result.status, result.output = status, out
        if status != "COMPLETE":
            ended = f"{ref} ended {status}{f': {failure}' if failure else ''}"
            if ref.session == 1:  # nothing trained to keep: a fix in the code is a new push
                raise UserError(f"{ended}; once its cause is fixed, push it again: `kpack push {kind}` (the code "
                                f"fixed) or `kpack watch {kind} --retry` (a secret attached, the quota refreshed)",
                                exit_code=1)
            raise UserError(f"{ended}; once its cause is fixed (a secret attached, the quota refreshed), push "
                            f"session {ref.session} again with `kpack watch {kind} --retry`", exit_code=1)
        if out is None or not chain.needs_another_session(out):
            return result
        after = chain.progress(out)
        if after is not None and after == before:
            message = (f"{kind}: session {ref.session} ended without a training step (step {after[0]}): start-up "
                       f"left no time to train; raise kernels.{kind}.session_hours")
            notify.notify(cfg, message, ok=False)
            raise UserError(message, exit_code=1)
        before = after
        if ref.session >= limit:
            notify.notify(cfg, f"{kind}: training not done after {limit} sessions; stopping the chain "
                               "(raise KPACK_MAX_SESSIONS to go on)", ok=False)
            raise UserError(f"{kind}: training not done after {limit} sessions", exit_code=1)
        ref = push_next_session(api, cfg, kind, folder, script_sha256, ref)
        result.ref = ref
        result.sessions.append(ref)


def push_next_session(api, cfg, kind: str, folder: Path, script_sha256: str, ref: watch.KernelRef,
                      wait_for_slot: bool = True) -> watch.KernelRef:
    """Push and record session ref.session + 1 of the chain, from the built kernel `folder`."""
    session = ref.session + 1
    print(f"{ref}: training not done (state.json); pushing session {session}", flush=True)
    _check_chain_source(api, cfg, kind, ref, session)
    next_folder = chain.prepare_session(cfg, kind, folder, session, ref.ref)
    scan_for_secrets(cfg, [next_folder])
    try:
        pushed = push_folder(api, cfg, kind, next_folder, wait_for_slot,  # a fresh push would start over
                             go_on=f"then go on with kpack watch {kind} (it pushes session {session})")
    except InvalidSources as err:
        if ref.ref not in err.kernels or err.version is None:
            raise
        _chain_source_invalid(api, cfg, kind, ref, session, err, script_sha256)
    pushed.session = session
    _record_start(cfg, pushed, cfg.kernel(kind).slug, script_sha256)
    return pushed


def _stop_chain(cfg, message: str):
    notify.notify(cfg, message, ok=False)
    raise UserError(message, exit_code=1)


def _check_chain_source(api, cfg, kind: str, previous: watch.KernelRef, session: int) -> None:
    """Kaggle mounts a source kernel's newest version only: when the previous session's kernel has a newer
    version (pushed again since), the next session could not see its checkpoint. Stop before pushing."""
    newest = kaggle_api.current_kernel_version(api, previous.owner, previous.slug)
    if newest is not None and previous.version is not None and newest != previous.version:
        _stop_chain(cfg, f"{kind}: not pushing session {session}: {previous.ref} was pushed again since session "
                         f"{previous.session} (its newest version is v{newest}, the session was v{previous.version}), "
                         "and a kernel source mounts only its newest version: the next session would train from "
                         f"scratch. Start the run again with `kpack push {kind}`")


def _chain_source_invalid(api, cfg, kind: str, previous: watch.KernelRef, session: int, err: InvalidSources,
                          script_sha256: str):
    """SaveKernel made session `session` without the previous session's output: it would train from scratch.
    Record it as SOURCES_INVALID (so `kpack watch` does not follow or chain from it) and stop with the cause."""
    owner, slug = cfg.kaggle_user, chain.session_slug(cfg.kernel(kind).slug, session, chain.chain_mode(cfg, kind))
    made = watch.KernelRef(owner, slug, err.version, kind, session)
    page = notify.run_link(cfg, f"{owner}/{slug}")
    message = (f"{kind}: session {session} ({made}) was made without session {previous.session}'s output: "
               f"{kernel_source_problem(api, previous.ref)}: that kernel was pushed again or has not ended. {made} "
               f"would train from scratch: stop it on its page ({page}; no API call can: SaveKernel "
               f"names no session to cancel), then start the run again with `kpack push {kind}`")
    _record_start(cfg, made, cfg.kernel(kind).slug, script_sha256, status=SOURCES_INVALID, failure=message)
    _stop_chain(cfg, message)
