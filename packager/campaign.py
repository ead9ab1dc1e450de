"""A campaign: the members of a train run, folds x variants from kernels.train.members, as data.

A member is (variant, fold). Its config is the project config with the variant's kit overrides deep-merged,
kit.data.fold set to the fold, and its own train slug `<slug>-<variant>-f<fold>` (`<slug>-f<fold>` without
variants): from then on it is an ordinary train kernel, with its own chain (<slug>, <slug>-b), its own kernel
folder and its own ledger rows (base_slug = its slug; variant, fold, member in each row). No members section:
one member, the configured slug, today's behaviour.

Everything here is a pure function of the config (and, for the forecast, of ledger rows), so it is unit tested
without a server.
"""
from __future__ import annotations

import calendar
import copy
import time
from collections import Counter
from dataclasses import dataclass

from packager import chain, shapes
from packager.errors import UserError

KIND = "train"


@dataclass(frozen=True)
class Member:
    variant: str | None   # None: no variants configured
    fold: int | None      # None: no members section (one member, the configured kernel as it is)
    slug: str

    @property
    def name(self) -> str:
        """How --only and the messages name it: variant:fold, :fold without variants, '' for the lone member."""
        if self.fold is None:
            return ""
        return f"{self.variant or ''}:{self.fold}"


def deep_merge(base: dict, overrides: dict) -> dict:
    """base with overrides laid over it; nested mappings are merged, everything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def member_slug(base: str, variant: str | None, fold: int) -> str:
    slug = f"{base}-{variant}-f{fold}" if variant else f"{base}-f{fold}"
    longest = slug + chain.ALTERNATE_SUFFIX
    if len(longest) > chain.SLUG_MAX:
        raise UserError(f"kernels.train.members: the slug {longest!r} of member {variant or ''}:{fold} has "
                        f"{len(longest)} characters, over Kaggle's {chain.SLUG_MAX}; shorten kernels.train.slug or "
                        "the variant's name")
    return slug


def folds_of(cfg) -> list[int]:
    members = cfg.kernel(KIND).members
    if members.folds == "all":
        count = (cfg.kit.get("data") or {}).get("folds", 5)  # the kit's own default
        if not isinstance(count, int) or count < 1:
            raise UserError(f"kernels.train.members.folds: all: kit.data.folds is {count!r}, not a number of folds")
        return list(range(count))
    if len(set(members.folds)) != len(members.folds) or any(f < 0 for f in members.folds):
        raise UserError(f"kernels.train.members.folds: {members.folds}: expected distinct fold numbers 0, 1, ...")
    return list(members.folds)


def members(cfg) -> list[Member]:
    """Every member of the train run, variants in config order, then folds."""
    kernel = cfg.kernel(KIND)
    if kernel.members is None:
        return [Member(None, None, kernel.slug)]
    variants = list(kernel.members.variants) or [None]
    return [Member(v, f, member_slug(kernel.slug, v, f)) for v in variants for f in folds_of(cfg)]


def parse_only(specs: tuple[str, ...] | list[str] | None, all_members: list[Member]) -> list[Member]:
    """--only VARIANT[:FOLD,...] (:FOLD,... without variants), given once per variant."""
    if not specs:
        return all_members
    chosen: list[Member] = []
    for spec in specs:
        part = spec
        variant, _, folds = part.partition(":")
        variant = variant or None
        try:
            wanted = {int(f) for f in folds.split(",")} if folds else None
        except ValueError:
            raise UserError(f"--only {spec}: folds are numbers, e.g. --only b0:0,1") from None
        found = [m for m in all_members if m.variant == variant and (wanted is None or m.fold in wanted)]
        names = sorted({m.variant or "" for m in all_members if m.fold is not None})
        if not found:
            raise UserError(f"--only {spec}: no member {part!r}; the members are "
                            f"{', '.join(m.name for m in all_members) or '(none: no kernels.train.members)'}"
                            + (f" (variants: {', '.join(names)})" if any(names) else ""))
        missing = sorted(wanted - {m.fold for m in found}) if wanted else []
        if missing:
            raise UserError(f"--only {spec}: {variant or ''} has no fold {missing[0]}; its folds are "
                            f"{', '.join(str(m.fold) for m in all_members if m.variant == variant)}")
        chosen += [m for m in found if m not in chosen]
    return chosen


def member_cfg(cfg, member: Member):
    """The project config as this member's kernel sees it."""
    if member.fold is None:
        return cfg
    mcfg = cfg.model_copy(deep=True)
    overrides = cfg.kernel(KIND).members.variants.get(member.variant, {}) if member.variant else {}
    kit = deep_merge(cfg.kit, overrides)
    kit["data"] = {**(kit.get("data") or {}), "fold": member.fold}
    mcfg.kit = kit
    kernel = mcfg.kernels[KIND]
    kernel.slug, kernel.title = member.slug, member.slug
    mcfg._member = {"member": member.name, "variant": member.variant, "fold": member.fold,
                    "campaign": cfg.kernel(KIND).slug}
    return mcfg


# --------------------------------------------------------------------------------------------- forecast

def epochs_of(kit: dict) -> int | None:
    stages = (kit.get("train") or {}).get("stages") if isinstance(kit.get("train"), dict) else None
    stages = stages or kit.get("stages")
    if isinstance(stages, list) and stages:
        return sum(int(s.get("epochs", 1)) for s in stages if isinstance(s, dict))
    epochs = (kit.get("train") or {}).get("epochs") if isinstance(kit.get("train"), dict) else kit.get("epochs")
    return int(epochs) if isinstance(epochs, int) else None


def _run_seconds(rows: list[dict], keep) -> list[float]:
    """The measured seconds of each run among the rows `keep` takes, in ledger order: a run is a base slug's
    session 1 and the sessions after it, so a member pushed again is a second run, not a longer one."""
    runs: list[float] = []
    current: dict[str, int] = {}
    for r in rows:
        if not keep(r) or not isinstance(r.get("seconds"), (int, float)):
            continue
        slug = r.get("base_slug")
        if r.get("session") == 1 or slug not in current:
            current[slug] = len(runs)
            runs.append(0.0)
        runs[current[slug]] += r["seconds"]
    return runs


def _without_fold(kit: dict) -> dict:
    return {**kit, "data": {k: v for k, v in (kit.get("data") or {}).items() if k != "fold"}}


def member_hours(cfg, member: Member, rows: list[dict]) -> tuple[float, str]:
    """(GPU hours one member needs, how that was found): the mean measured run of earlier members of the same
    variant, else of the project's own train kernel when the member's kit is its kit on another fold, else
    epochs x campaign.epoch_minutes, else one full session (session_hours: an upper bound of a one-session
    member)."""
    slug, backend = cfg.kernel(KIND).slug, cfg.backend
    runs = _run_seconds(rows, lambda r: r.get("kind") == KIND and r.get("variant") == member.variant
                        and r.get("campaign") == slug and r.get("backend") == backend)
    why = f"the measured mean of {len(runs)} earlier {member.variant or 'train'} member run(s)"
    if not runs and _without_fold(member_cfg(cfg, member).kit) == _without_fold(cfg.kit):
        runs = _run_seconds(rows, lambda r: r.get("kind") == KIND and r.get("base_slug") == slug
                            and not r.get("campaign") and r.get("backend") == backend)
        why = f"the measured mean of {len(runs)} run(s) of {slug}, the same kit"
    if runs:
        return sum(runs) / len(runs) / 3600, why
    epochs, minutes = epochs_of(member_cfg(cfg, member).kit), cfg.campaign.epoch_minutes
    if epochs and minutes:
        return epochs * minutes / 60, f"{epochs} epoch{'s' * (epochs != 1)} x {minutes:g} min (campaign.epoch_minutes)"
    hours = cfg.kernel(KIND).session_hours
    return hours, f"one full session of {hours:g} h each (no measured run; set campaign.epoch_minutes)"


def accelerator(cfg) -> str | None:
    """'GPU' or 'TPU': the weekly quota the train members spend; None on CPU."""
    return shapes.quota_of(cfg.kernel(KIND).accelerator)


def used_gpu_hours(cfg, rows: list[dict], now: float | None = None) -> float:
    """GPU hours the ledger recorded in the last 7 days (sessions of GPU kernels with a measured `seconds`)."""
    now = time.time() if now is None else now
    total = 0.0
    for r in rows:
        kind, seconds, ts = r.get("kind"), r.get("seconds"), r.get("finished") or r.get("ts")
        if kind not in cfg.kernels or not isinstance(seconds, (int, float)) or not ts:
            continue
        if r.get("backend") != cfg.backend:
            continue
        if shapes.guess(cfg.kernels[kind].accelerator).kind != "gpu":
            continue
        try:
            when = calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            continue
        if now - when <= 7 * 86400:
            total += seconds / 3600
    return total


def forecast(cfg, chosen: list[Member], rows: list[dict], now: float | None = None,
             quota=None) -> tuple[list[str], bool]:
    """(lines to print, whether the campaign fits the weekly GPU quota left). quota: the backend's own figures
    (kaggle_api.Quota: they count sessions run outside kpack too), capped at campaign.weekly_gpu_hours; without
    them, the ledger's GPU hours of the last 7 days against weekly_gpu_hours. TPU members are checked against
    the backend's TPU figures only (weekly_gpu_hours is not theirs)."""
    spent = accelerator(cfg)
    if spent is None:
        return [f"forecast: {len(chosen)} member(s) on {cfg.kernel(KIND).accelerator}: no GPU quota spent"], True
    needs = [member_hours(cfg, m, rows) for m in chosen]
    need = sum(h for h, _ in needs)
    how = sorted({why for _, why in needs})
    # One way of counting is said on the line; several (variants measured apart) each get a line of their own.
    head = f"forecast: {len(chosen)} member(s) need about {need:.1f} {spent} h" + (f", from {how[0]}"
                                                                                   if len(how) == 1 else "")
    count, hours_of = Counter(why for _, why in needs), {why: h for h, why in needs}
    ways = [f"forecast:   {count[why]} member(s) x {hours_of[why]:.1f} h, from {why}" for why in how
            ] if len(how) > 1 else []
    budget = cfg.campaign.weekly_gpu_hours if spent == "GPU" else float("inf")
    if spent == "TPU" and quota is None:
        return [f"{head}; the backend gave no TPU quota figures: not checked", *ways], True
    if quota is not None:
        total = min(budget, quota.total_h)
        used = quota.spent_h
        capped = " (campaign.weekly_gpu_hours)" if budget < quota.total_h else ""
        refresh = f", refreshes {quota.refresh}" if quota.refresh else ""
        said = f"weekly quota {total:g} h{capped}, {used:.1f} h used this week (Kaggle's count{refresh})"
    else:
        total, used = budget, used_gpu_hours(cfg, rows, now)
        said = f"weekly quota {total:g} h, {used:.1f} h used in the last 7 days"
    left = total - used
    lines = [f"{head}; {said}, {left:.1f} h left", *ways]
    fits = need <= left
    if not fits:
        lines.append(f"forecast: {need:.1f} {spent} h is over the {left:.1f} h left this week; narrow it with "
                     "--only, raise campaign.weekly_gpu_hours if your quota is larger, or push anyway with --force")
    return lines, fits
