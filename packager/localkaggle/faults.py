"""Fault injection and counters for tests: a switch of the server, set over HTTP.

POST /_kpack/faults with one rule or a list of rules:

    {"method": "StartBlobUpload", "kind": "429", "times": 2, "retry_after": 1}
    {"method": "PUT", "kind": "drop", "after_bytes": 1000}     # keep 1000 bytes, then cut the connection
    {"method": "PUT", "kind": "503", "after_bytes": 1000}      # keep 1000 bytes, then answer 503
    {"method": "PUT", "kind": "slow", "bytes_per_s": 200000, "times": 0}
    {"method": "CreateDatasetVersion", "kind": "drop", "when": "after"}   # do the work, lose the answer

method: an RPC method name (SaveKernel, CreateDataset, ...), "PUT" (blob uploads that carry bytes), "PROBE"
(the `Content-Range: bytes */N` status probes of a resuming client), "GET" (file downloads) or "*". kind: 429 | 500 | 503 (any status code) | drop | slow. times: how many matching requests the rule hits
(default 1; 0 = every one until cleared). when: "before" (default) or "after" the server does the work (RPCs
only). DELETE /_kpack/faults clears; GET lists the rules left. GET /_kpack/stats returns the counters;
POST /_kpack/stats/reset zeroes them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("drop", "slow")


@dataclass
class Rule:
    method: str
    kind: str
    times: int = 1
    retry_after: float | None = None
    bytes_per_s: float | None = None
    after_bytes: int | None = None
    when: str = "before"
    delay_s: float | None = None
    hits: int = 0

    @classmethod
    def parse(cls, data: dict) -> "Rule":
        if not isinstance(data, dict) or not data.get("method") or not data.get("kind"):
            raise ValueError("a fault rule needs 'method' and 'kind'")
        kind = str(data["kind"])
        if kind not in KINDS and not (kind.isdigit() and 400 <= int(kind) <= 599):
            raise ValueError(f"fault kind {kind!r}: use an HTTP status (429, 500, 503 ...), 'drop' or 'slow'")
        when = data.get("when", "before")
        if when not in ("before", "after"):
            raise ValueError("fault 'when' is 'before' or 'after'")
        known = {f for f in cls.__dataclass_fields__ if f != "hits"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        rule = cls(**{k: v for k, v in data.items() if k in known})
        rule.kind, rule.times = kind, int(rule.times)
        return rule

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None


class Faults:
    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def add(self, data: Any) -> list[Rule]:
        rules = [Rule.parse(d) for d in (data if isinstance(data, list) else [data])]
        with self._lock:
            self._rules.extend(rules)
        return rules

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, when: str | None = None) -> Rule | None:
        """The first rule matching this request (counting one hit on it), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.method not in (method, "*") or (when and rule.when != when):
                    continue
                rule.hits += 1
                if rule.times and rule.hits >= rule.times:
                    self._rules.remove(rule)
                return rule
        return None

    def listing(self) -> list[dict]:
        with self._lock:
            return [asdict(r) for r in self._rules]


@dataclass
class Stats:
    calls: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    faults_fired: dict[str, int] = field(default_factory=dict)
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    puts: list[dict] = field(default_factory=list)   # the last 200 blob PUTs: token, content_range, bytes, status
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def call(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def status(self, code: int) -> None:
        with self._lock:
            self.statuses[str(code)] = self.statuses.get(str(code), 0) + 1

    def fault(self, rule: Rule) -> None:
        with self._lock:
            key = f"{rule.method}:{rule.kind}"
            self.faults_fired[key] = self.faults_fired.get(key, 0) + 1

    def uploaded(self, n: int) -> None:
        with self._lock:
            self.uploaded_bytes += n

    def downloaded(self, n: int) -> None:
        with self._lock:
            self.downloaded_bytes += n

    def put(self, record: dict) -> None:
        with self._lock:
            self.puts.append(record)
            del self.puts[:-200]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.statuses.clear()
            self.faults_fired.clear()
            self.puts.clear()
            self.uploaded_bytes = self.downloaded_bytes = 0

    def snapshot(self) -> dict:
        with self._lock:
            return {"calls": dict(self.calls), "statuses": dict(self.statuses),
                    "faults_fired": dict(self.faults_fired), "uploaded_bytes": self.uploaded_bytes,
                    "downloaded_bytes": self.downloaded_bytes, "puts": list(self.puts),
                    "uptime_s": round(time.time() - self.started, 3)}
