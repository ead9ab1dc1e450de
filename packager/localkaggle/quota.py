"""The weekly accelerator quota: GetAcceleratorQuotaStatistics (what `kaggle quota` shows) and SaveKernel's refusal
of a GPU or TPU push when the week's quota is spent.

Kaggle gives an account a weekly GPU quota (30 h is the figure users are shown; Kaggle sometimes grants more) and a
TPU quota (20 h). Guesses, each a server setting: the week starts on Saturday 00:00 UTC; a session's time counts
from its start to its end (a running one up to now); `timeReserved` is 0; a push with no quota left is refused in
`error` with no version made, as at the session cap, while a session running when the quota runs out goes on.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kagglesdk.kernels.types.kernels_api_service import (ApiAcceleratorQuota, ApiGetAcceleratorQuotaStatisticsRequest,
                                                         ApiGetAcceleratorQuotaStatisticsResponse)

from packager.localkaggle.rpc import Call, rpc
from packager.localkaggle.store import parse_iso

WEEK_STARTS = 5  # Saturday (datetime.weekday), 00:00 UTC: a guess


def accelerator_of(metadata: dict) -> str | None:
    """'GPU', 'TPU' or None (CPU): which quota a version's time counts against."""
    shape = (metadata.get("machine_shape") or "").strip()
    if metadata.get("enable_tpu") or shape.startswith("Tpu"):
        return "TPU"
    if metadata.get("enable_gpu") or shape.startswith("Nvidia"):
        return "GPU"
    return None


def week_start(now: datetime) -> datetime:
    """The start of the quota week holding `now` (naive UTC)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=(midnight.weekday() - WEEK_STARTS) % 7)


def used_seconds(call: Call, owner: str, accelerator: str, now: datetime) -> float:
    """Seconds the owner's sessions on `accelerator` ran in the quota week holding `now`."""
    since, total = week_start(now), 0.0
    for version_owner, _, version in call.store.all_kernel_versions():
        if version_owner != owner or accelerator_of(version.get("metadata") or {}) != accelerator:
            continue
        started = parse_iso(version.get("started"))
        if started is None:
            continue
        ended = parse_iso(version.get("ended")) or now
        total += max(0.0, (min(ended, now) - max(started, since)).total_seconds())
    return total


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def allowed_hours(call: Call, accelerator: str) -> float:
    """The weekly hours the server grants (`kpack local serve --gpu-quota-hours/--tpu-quota-hours`; 0: none)."""
    return float((getattr(call.server, "quota_hours", None) or {}).get(accelerator, 0) or 0)


def exhausted(call: Call, owner: str, metadata: dict) -> str | None:
    """SaveKernel's refusal of a push whose accelerator has no quota left this week (the wording a guess)."""
    accelerator = accelerator_of(metadata)
    hours = allowed_hours(call, accelerator) if accelerator else 0
    if not hours:
        return None
    now = _now()
    used = used_seconds(call, owner, accelerator, now) / 3600
    if used < hours:
        return None
    refresh = week_start(now) + timedelta(days=7)
    return (f"Your weekly {accelerator} quota is used up ({used:.1f} of {hours:g} hours); it refreshes at "
            f"{refresh:%Y-%m-%d %H:%M} UTC.")


def _duration(span: timedelta) -> str:
    """A protobuf Duration in JSON, as Kaggle sends it ("108000s", "1.800s")."""
    return f"{span.total_seconds():.3f}".rstrip("0").rstrip(".") + "s"


class _QuotaResponse(ApiGetAcceleratorQuotaStatisticsResponse):
    """kagglesdk writes a timedelta as its `.seconds` (the days dropped: 30 h goes out as 6 h) with fractions its
    own parser refuses ("1.800.0s"); this answer writes its durations as Kaggle's server does."""

    def to_dict(self, ignore_defaults=True):
        data = super().to_dict(ignore_defaults)
        for name, quota in (("gpuQuota", self.gpu_quota), ("tpuQuota", self.tpu_quota)):
            if quota is not None:
                data[name].update({"timeUsed": _duration(quota.time_used),
                                   "timeReserved": _duration(quota.time_reserved),
                                   "totalTimeAllowed": _duration(quota.total_time_allowed),
                                   "minimumTimeAllowed": _duration(quota.minimum_time_allowed)})
        return data


@rpc("kernels.KernelsApiService", "GetAcceleratorQuotaStatistics", ApiGetAcceleratorQuotaStatisticsRequest)
def quota_statistics(req: ApiGetAcceleratorQuotaStatisticsRequest,
                     call: Call) -> ApiGetAcceleratorQuotaStatisticsResponse:
    now = _now()
    response = _QuotaResponse()
    response.quota_refresh_time = week_start(now) + timedelta(days=7)
    for accelerator, field in (("GPU", "gpu_quota"), ("TPU", "tpu_quota")):
        quota = ApiAcceleratorQuota()
        used = used_seconds(call, call.username, accelerator, now)
        quota.time_used = timedelta(seconds=round(used))
        quota.time_reserved = timedelta(0)
        quota.total_time_allowed = timedelta(hours=allowed_hours(call, accelerator))
        quota.minimum_time_allowed = quota.total_time_allowed
        quota.has_ever_run = used > 0
        setattr(response, field, quota)
    return response
