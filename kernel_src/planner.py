"""The runtime planner: will inference over every member with its TTA fit in the session limit?

Before the long run, infer times a few batches of each member on the kernel's own hardware (`time_member`:
the first `warmup` batches excluded; the data loading timed as the real loader does it, each TTA view's
forward timed apart, so a view can be priced on its own; what the warm-up took beyond steady batches is
`start_s`, paid once per model) and predicts the whole run (`Plan.seconds`):

    per model  = load_s + start_s + batches * (batch_load_s + sum(view_s of the views kept))
    whole run  = sum over members of models * per model  +  write_s * hidden_test_factor
    batches    = test rows * hidden_test_factor / batch_size   (fractional: a partial last batch costs its share)

`hidden_test_factor` (kit.infer.hidden_test_factor) scales the public test set to the hidden one a code or
two-stage competition predicts on when it reruns the kernel. The plan fits when the time already spent in
the session plus the whole run plus the margin is within the session limit; when it does not, `cheapest_fit`
looks for the fewest TTA views and members to drop (views before members, the smallest blend weight first,
then the most time kept) that make it fit, at least one of each kept.

    timing = time_member(net, loader, {"none": tta.VIEWS["none"], ...}, device, batches=5)
    plan = Plan.make([...MemberPlan...], rows=..., batch_size=..., ...)
    plan.fits, plan.drop_line()
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import torch

MAX_SEARCH = 1 << 16  # drop subsets tried exhaustively up to this many, greedily beyond


@dataclass
class MemberPlan:
    """What one member costs: measured on one of its models, multiplied by its model (fold) count."""
    name: str
    models: int
    load_s: float                 # build the network, load its weights, move it to the device
    start_s: float                # the first batch beyond a steady one: the loader's start (worker processes,
                                  # the first fetch) and the network's first forward (allocations), once a model
    batch_load_s: float           # one batch's data loading (read, decode, augment, collate, to device)
    view_s: dict[str, float]      # one batch's forward per TTA view
    weight: float = 1.0           # its blend weight: dropping a heavier member costs more

    def seconds(self, batches: float, views: Iterable[str]) -> float:
        per_batch = self.batch_load_s + sum(self.view_s[v] for v in views)
        return self.models * (self.load_s + self.start_s + batches * per_batch)


@dataclass
class Plan:
    members: list[MemberPlan]
    views: list[str]
    rows: int
    batch_size: int
    hidden_test_factor: float
    write_s: float                # blending, the rule and writing submission.csv (per public row count)
    session_s: float
    elapsed_s: float              # spent in the session before the run (imports, model files, this timing)
    margin_s: float
    timed_batches: int
    drop: dict = field(default_factory=dict)  # {"views": [...], "members": [...]} to fit; {} when it fits

    def batches(self, factor: float = 1.0) -> float:
        return self.rows * factor / self.batch_size

    def seconds(self, factor: float = 1.0, views: Optional[Iterable[str]] = None,
                members: Optional[Iterable[str]] = None) -> float:
        """The run's predicted time on a test set `factor` times the public one, with the views and members kept."""
        views = list(self.views if views is None else views)
        keep = None if members is None else set(members)
        total = sum(m.seconds(self.batches(factor), views) for m in self.members if keep is None or m.name in keep)
        return total + self.write_s * factor

    @property
    def predicted_s(self) -> float:
        """The run on the test set mounted now (what `actual_s` is measured against)."""
        return self.seconds(1.0)

    @property
    def predicted_hidden_s(self) -> float:
        return self.seconds(self.hidden_test_factor)

    def available_s(self) -> float:
        return self.session_s - self.elapsed_s - self.margin_s

    @property
    def fits(self) -> bool:
        return self.predicted_hidden_s <= self.available_s()

    def as_dict(self, actual_s: Optional[float] = None) -> dict:
        return {
            "predicted_s": round(self.predicted_s, 3), "actual_s": None if actual_s is None else round(actual_s, 3),
            "predicted_hidden_s": round(self.predicted_hidden_s, 3), "hidden_test_factor": self.hidden_test_factor,
            "session_s": self.session_s, "elapsed_s": round(self.elapsed_s, 3), "margin_s": self.margin_s,
            "available_s": round(self.available_s(), 3), "fits": self.fits, "drop": self.drop,
            "rows": self.rows, "batch_size": self.batch_size, "views": self.views, "timed_batches": self.timed_batches,
            "write_s": round(self.write_s, 4),
            "members": [{**asdict(m), "predicted_s": round(m.seconds(self.batches(), self.views), 3)}
                        for m in self.members],
        }

    def summary(self) -> str:
        hidden = (f", {self.predicted_hidden_s:.0f} s on a hidden test set x{self.hidden_test_factor:g}"
                  if self.hidden_test_factor != 1 else "")
        return (f"plan: {sum(m.models for m in self.members)} models ({len(self.members)} members) x "
                f"{len(self.views)} TTA views x {self.rows} rows: {self.predicted_s:.1f} s predicted{hidden}; "
                f"{self.available_s():.0f} s left of the {self.session_s:.0f} s session: "
                + ("fits" if self.fits else "does NOT fit"))

    def drop_line(self) -> str:
        """One line: what to drop to fit (or that nothing dropped fits)."""
        if self.fits:
            return "nothing to drop: the plan fits"
        if not self.drop:
            return ("no subset of TTA views and members fits: a smaller kit.infer.hidden_test_factor, a larger "
                    "kit.infer.batch_size or a faster accelerator")
        parts = []
        if self.drop.get("views"):
            keep = [v for v in self.views if v not in self.drop["views"]]
            parts.append(f"TTA view(s) {', '.join(self.drop['views'])} (kit.augment.tta: {keep})")
        if self.drop.get("members"):
            parts.append(f"member(s) {', '.join(self.drop['members'])}")
        return f"drop {' and '.join(parts)}: {self.drop['seconds']:.0f} s predicted"

    @classmethod
    def make(cls, members: list[MemberPlan], **kw) -> "Plan":
        plan = cls(members, **kw)
        if not plan.fits:
            plan.drop = cheapest_fit(plan)
        return plan


def cheapest_fit(plan: Plan) -> dict:
    """The fewest views and members to drop so that the hidden-test run fits (at least one of each kept).
    Among as many drops: the least blend weight dropped, views before members (a view costs every member a
    little accuracy, a member more), then the most time kept. {} when nothing fits."""
    views, names = plan.views, [m.name for m in plan.members]
    weight = {m.name: m.weight for m in plan.members}
    budget = plan.available_s()
    items = [("views", v) for v in views] + [("members", n) for n in names]

    def candidate(dropped: tuple) -> Optional[tuple]:
        dv = [v for k, v in dropped if k == "views"]
        dm = [v for k, v in dropped if k == "members"]
        if len(dv) == len(views) or len(dm) == len(names):
            return None
        seconds = plan.seconds(plan.hidden_test_factor, [v for v in views if v not in dv],
                               [n for n in names if n not in dm])
        if seconds > budget:
            return None
        key = (len(dropped), sum(weight[m] for m in dm), len(dm), -seconds)
        return key, {"views": dv, "members": dm, "seconds": round(seconds, 3)}

    if 2 ** len(items) <= MAX_SEARCH:
        for k in range(1, len(items)):
            found = [c for c in map(candidate, itertools.combinations(items, k)) if c]
            if found:
                return min(found, key=lambda c: c[0])[1]
        return {}
    dropped: tuple = ()  # too many to try all: drop greedily what saves the most time per weight lost
    while True:
        left = [i for i in items if i not in dropped]
        options = [(c, i) for i in left if (c := candidate(dropped + (i,)))]
        if options:
            return min(options, key=lambda o: o[0][0])[0][1]
        movable = [i for i in left if sum(k == i[0] for k, _ in left) > 1]
        if not movable:
            return {}

        def saved(i):
            d = dropped + (i,)
            dv = [v for k, v in d if k == "views"]
            dm = [v for k, v in d if k == "members"]
            s = plan.seconds(plan.hidden_test_factor, [v for v in views if v not in dv],
                             [n for n in names if n not in dm])
            return s + (weight.get(i[1], 0.0) if i[0] == "members" else 0.0)
        dropped += (min(movable, key=saved),)


# ------------------------------------------------------------------------------------------ timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    start_s: float
    batch_load_s: float
    view_s: dict[str, float]
    batches: int


@torch.no_grad()
def time_member(net: torch.nn.Module, loader: Iterable, views: dict[str, Callable], device: torch.device,
                batches: int = 5, warmup: int = 1, autocast: Callable = None,
                clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Mean seconds per batch of loading and of each view's forward, over `batches` batches after `warmup`
    (first-forward allocations, cudnn's choice of kernels). What the warm-up took beyond as many steady
    batches (the loader's start: worker processes, the first fetch; the first forwards) is `start_s`: the
    real run pays it once per model."""
    from contextlib import nullcontext

    chosen = dict(views)  # name -> view (kernel_src.tta.VIEWS)
    net.eval()
    loads: list[float] = []
    forwards = {v: 0.0 for v in views}
    warm = {v: 0.0 for v in views}  # the warm-up's, for a test set too small for a timed batch
    timed = 0
    t0 = clock()
    it = iter(loader)
    first_load = None
    for i in itertools.count():
        start = clock()
        try:
            images, _, _ = next(it)
        except StopIteration:
            break
        images = images.to(device, non_blocking=True)
        _sync(device)
        load = clock() - start
        if first_load is None:
            first_load = clock() - t0
        if i == warmup:
            warm_total = clock() - t0 - load  # the warm-up batches, the loader's start included
        with autocast() if autocast else nullcontext():
            for name, view in chosen.items():
                start = clock()
                torch.sigmoid(net(view(images)).float()).cpu()
                _sync(device)
                (forwards if i >= warmup else warm)[name] += clock() - start
        if i >= warmup:
            loads.append(load)
            timed += 1
            if timed >= batches:
                break
    if not timed:  # every batch was a warm-up one: the (pessimistic) warm-up figures stand in
        if first_load is None:
            raise ValueError("the test set is empty: nothing to time")
        n = min(i, warmup) or 1
        return Timing(0.0, first_load, {v: s / n for v, s in warm.items()}, 0)
    batch_load = sum(loads) / timed
    view_s = {v: s / timed for v, s in forwards.items()}
    steady = warmup * (batch_load + sum(view_s.values()))
    return Timing(max(0.0, warm_total - steady), batch_load, view_s, timed)
