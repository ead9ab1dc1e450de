"""Campaigns: the members of a train run (folds x variants) from one config, pushed as their own chains within
the session cap, and kept going by `kpack tick` (packager/campaign.py, packager/tick.py)."""
from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LocalKaggleServer
from packager import campaign, ledger
from packager.config import parse_config
from packager.errors import UserError
from pushkit import isolate, make_project

# session k of a member reads the states of sessions 1..k-1 under its inputs; done after 2 sessions. It sleeps a
# little so that members overlap and the cap matters; its CV says which fold it trained.
MEMBER_ENTRY = '''import json
import os
import time
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    inputs = root / "input"
    earlier = sorted(inputs.rglob("state.json")) if inputs.is_dir() else []
    session = 1 + max([json.loads(p.read_text())["session"] for p in earlier] or [0])
    fold, seed = config["kit"]["data"]["fold"], config["kit"].get("seed")
    time.sleep(1.0)
    work = root / "working"
    (work / "state.json").write_text(json.dumps({"done": session >= 2, "session": session, "step": session}))
    (work / "metrics.json").write_text(json.dumps({"cv_score": 0.5 + fold / 10 + seed / 100 + session / 1000}))
'''

MEMBERS = "members: {folds: [0, 1], variants: {a: {seed: 1}, b: {seed: 2}}}"


def base_config(**train) -> dict:
    kernel = {"entry": "kernel_src/entry.py", "slug": "imet-train", **train}
    return {"competition": "imet", "kaggle_user": "alice", "kernels": {"train": kernel},
            "kit": {"data": {"folds": 3, "image_size": 64}, "seed": 0}}


# --------------------------------------------------------------------------------------------- members

def test_members_are_variants_by_folds_with_their_own_slugs_and_kits():
    cfg = parse_config(base_config(members={"folds": [0, 1], "variants": {
        "b0": {"model": {"backbone": "efficientnet_b0"}, "data": {"image_size": 128}}, "r50": {"seed": 7}}}))
    found = campaign.members(cfg)
    assert [(m.variant, m.fold, m.slug) for m in found] == [
        ("b0", 0, "imet-train-b0-f0"), ("b0", 1, "imet-train-b0-f1"),
        ("r50", 0, "imet-train-r50-f0"), ("r50", 1, "imet-train-r50-f1")]
    mcfg = campaign.member_cfg(cfg, found[1])
    assert mcfg.kit == {"data": {"folds": 3, "image_size": 128, "fold": 1}, "seed": 0,
                        "model": {"backbone": "efficientnet_b0"}}
    assert mcfg.kernel("train").slug == "imet-train-b0-f1" and cfg.kernel("train").slug == "imet-train"
    assert cfg.kit["data"] == {"folds": 3, "image_size": 64}  # the project's own config is untouched
    assert mcfg._member == {"member": "b0:1", "variant": "b0", "fold": 1, "campaign": "imet-train"}
    assert campaign.member_cfg(cfg, found[2]).kit["seed"] == 7


def test_all_folds_and_no_variants_and_no_members_section():
    cfg = parse_config(base_config(members={"folds": "all"}))
    assert [m.slug for m in campaign.members(cfg)] == ["imet-train-f0", "imet-train-f1", "imet-train-f2"]
    plain = parse_config(base_config())
    (only,) = campaign.members(plain)
    assert only.slug == "imet-train" and campaign.member_cfg(plain, only) is plain  # today's behaviour


def test_a_member_slug_over_kaggles_limit_is_one_clear_line():
    cfg = parse_config(base_config(slug="a" * 40, members={"folds": [0], "variants": {"resnet": {}}}))
    with pytest.raises(UserError, match=r"the slug '.*-resnet-f0-b' of member resnet:0 has 52 characters, over "
                                        r"Kaggle's 50; shorten kernels.train.slug"):
        campaign.members(cfg)


def test_a_bad_variant_name_is_refused_by_the_config():
    with pytest.raises(UserError, match="variant 'B_0'"):
        parse_config(base_config(members={"variants": {"B_0": {}}}))


def test_only_narrows_to_variants_and_folds():
    cfg = parse_config(base_config(members={"folds": [0, 1, 2], "variants": {"a": {}, "b": {}}}))
    found = campaign.members(cfg)
    assert [m.name for m in campaign.parse_only(["a:0,2"], found)] == ["a:0", "a:2"]
    assert [m.name for m in campaign.parse_only(["b", "a:1"], found)] == ["b:0", "b:1", "b:2", "a:1"]
    assert campaign.parse_only([], found) == found
    with pytest.raises(UserError, match="--only c: no member 'c'; the members are a:0, .* .variants: a, b."):
        campaign.parse_only(["c"], found)
    with pytest.raises(UserError, match="--only a:5: no member"):
        campaign.parse_only(["a:5"], found)
    with pytest.raises(UserError, match="--only a:1,7: a has no fold 7"):
        campaign.parse_only(["a:1,7"], found)
    with pytest.raises(UserError, match="folds are numbers"):
        campaign.parse_only(["a:x"], found)


# --------------------------------------------------------------------------------------------- forecast

def _row(slug, variant, seconds, ts="2026-12-01T10:00:00Z", kind="train", session=1, campaign="imet-train"):
    return {"kind": kind, "base_slug": slug, "variant": variant, "campaign": campaign, "seconds": seconds,
            "backend": "local", "ts": ts, "session": session}


NOW = calendar.timegm((2026, 12, 2, 12, 0, 0))


def test_forecast_from_measured_sessions_of_the_same_variant():
    cfg = parse_config(base_config(accelerator="NvidiaTeslaT4", members={"folds": [0, 1], "variants": {"a": {}}}))
    rows = [_row("imet-train-a-f0", "a", 3600), _row("imet-train-a-f0", "a", 1800, session=2),  # one: 1.5 h
            _row("imet-train-a-f1", "a", 1800),                                       # another: 0.5 h
            _row("imet-train-b-f0", "b", 99999, ts="2026-11-01T10:00:00Z")]          # older than a week
    lines, fits = campaign.forecast(cfg, campaign.members(cfg), rows, now=NOW)
    assert fits and lines == [
        "forecast: 2 member(s) need about 2.0 GPU h, from the measured mean of 2 earlier a member run(s); weekly "
        "quota 30 h, 2.0 h used in the last 7 days, 28.0 h left"]


def test_forecast_counts_a_member_pushed_again_as_a_second_run_and_uses_the_projects_own_run():
    members = {"folds": [0, 1], "variants": {"same": {}, "other": {"seed": 3}}}
    cfg = parse_config(base_config(accelerator="NvidiaTeslaT4", members=members))
    same, other = campaign.members(cfg)[0], campaign.members(cfg)[2]
    again = [_row("imet-train-same-f0", "same", 3600), _row("imet-train-same-f0", "same", 3600, session=2),
             _row("imet-train-same-f0", "same", 1800)]  # pushed again: a second run of 0.5 h, not 2.5 h in all
    assert campaign.member_hours(cfg, same, again) == (1.25, "the measured mean of 2 earlier same member run(s)")
    plain = [_row("imet-train", None, 600, campaign=None), _row("imet-train", None, 1200, session=2, campaign=None)]
    assert campaign.member_hours(cfg, same, plain) == (0.5, "the measured mean of 1 run(s) of imet-train, the "
                                                           "same kit")  # its kit is the project's on another fold
    assert campaign.member_hours(cfg, other, plain)[1].startswith("one full session")  # another seed: not the same


def test_forecast_counted_several_ways_gives_each_way_its_line():
    members = {"folds": [0, 1], "variants": {"a": {}, "b": {"seed": 3}}}
    cfg = parse_config(base_config(accelerator="NvidiaTeslaT4", session_hours=0.5, members=members))
    rows = [_row("imet-train-a-f0", "a", 3600)]  # a is measured, b is not
    lines, fits = campaign.forecast(cfg, campaign.members(cfg), rows, now=NOW)
    assert fits and lines == [
        "forecast: 4 member(s) need about 3.0 GPU h; weekly quota 30 h, 1.0 h used in the last 7 days, 29.0 h left",
        "forecast:   2 member(s) x 0.5 h, from one full session of 0.5 h each (no measured run; set "
        "campaign.epoch_minutes)",
        "forecast:   2 member(s) x 1.0 h, from the measured mean of 1 earlier a member run(s)"]


def test_forecast_from_epochs_or_a_full_session_and_the_refusal_over_quota():
    kit_epochs = {"train": {"stages": [{"epochs": 6}, {"epochs": 2}]}}
    data = base_config(accelerator="NvidiaTeslaT4", session_hours=12.0, members={"folds": "all"})
    cfg = parse_config({**data, "kit": {**data["kit"], **kit_epochs}, "campaign": {"epoch_minutes": 30.0}})
    lines, fits = campaign.forecast(cfg, campaign.members(cfg), [], now=NOW)
    assert fits and "3 member(s) need about 12.0 GPU h, from 8 epochs x 30 min (campaign.epoch_minutes);" in lines[0]
    cfg = parse_config(data)
    lines, fits = campaign.forecast(cfg, campaign.members(cfg), [], now=NOW)
    assert not fits and "need about 36.0 GPU h, from one full session of 12 h each" in lines[0]
    assert lines[1] == ("forecast: 36.0 GPU h is over the 30.0 h left this week; narrow it with --only, raise "
                        "campaign.weekly_gpu_hours if your quota is larger, or push anyway with --force")
    cpu = parse_config(base_config(accelerator="None", members={"folds": [0]}))
    assert campaign.forecast(cpu, campaign.members(cpu), [])[1]


# --------------------------------------------------------------------------------------------- on the local Kaggle

@pytest.fixture
def two_gpus(tmp_path):
    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--gpu-sessions", "2").start()
    yield server
    server.stop()


def campaign_project(tmp_path, server, monkeypatch, members: str = MEMBERS):
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, server, datasets=False)
    project.write_entry(MEMBER_ENTRY)
    config = project.root / "kpack.yaml"
    text = config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaT4")
    text = text.replace("session_hours: 0.02}", f"session_hours: 0.02, {members}}}")
    config.write_text(text + "kit: {data: {folds: 2}, seed: 0}\n")
    monkeypatch.chdir(project.root)
    return project


def kpack(project, *args, timeout=120, wait=True):
    env = {**os.environ, "KPACK_POLL_MIN_S": "0.2", "KPACK_POLL_MAX_S": "1", "KPACK_TICK_S": "0.5"}
    command = [sys.executable, "-m", "packager.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=project.root, env=env, capture_output=True, text=True, timeout=timeout)


def versions(server, prefix: str) -> list[dict]:
    from packager.localkaggle.store import Store

    store, found = Store(server.root), []
    for folder in sorted((Path(server.root) / "kernels" / "alice").glob(f"{prefix}-*")):
        kernel = store.kernel("alice", folder.name)
        found += [store.kernel_version("alice", folder.name, n) | {"slug": folder.name} for n in kernel["versions"]]
    return found


def most_at_once(records: list[dict]) -> int:
    edges = sorted([(r["started"], 1) for r in records] + [(r["ended"], -1) for r in records])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def tick_until_done(project, limit_s=120) -> str:
    """`kpack tick` until its summary line has nothing open, next or waiting; all their output."""
    deadline, outs = time.monotonic() + limit_s, []
    while time.monotonic() < deadline:
        done = kpack(project, "tick")
        assert done.returncode == 0, done.stdout + done.stderr
        outs.append(done.stdout)
        summary = done.stdout.split("tick:")[-1]
        if not any(word in summary for word in ("open", "next", "waiting")):
            return "".join(outs)
        time.sleep(0.5)
    raise AssertionError("the campaign did not finish:\n" + "".join(outs[-3:]))


def member_rows(project) -> list[dict]:
    return [r for r in ledger.read() if r.get("campaign") == project.train_slug]


def assert_campaign_finished(project, server):
    rows = member_rows(project)
    by_member: dict = {}
    for r in rows:
        by_member.setdefault(r["member"], []).append(r)
    assert sorted(by_member) == ["a:0", "a:1", "b:0", "b:1"]
    for name, sessions in by_member.items():
        variant, fold = name.split(":")
        assert [(r["session"], r["status"]) for r in sessions] == [(1, "COMPLETE"), (2, "COMPLETE")], sessions
        assert sessions[-1]["cv_score"] == pytest.approx(0.5 + int(fold) / 10 + {"a": 1, "b": 2}[variant] / 100
                                                         + 2 / 1000)
        assert sessions[0]["base_slug"] == f"{project.train_slug}-{variant}-f{fold}"
    records = versions(server, project.train_slug)
    assert len(records) == 8 and all(r["status"] == "COMPLETE" for r in records)  # no duplicate, none lost
    assert sorted((r["slug"], r["number"]) for r in records) == sorted(
        (r["kernel"].split("/")[1], r["version"]) for r in rows)
    assert most_at_once(records) <= 2


@pytest.mark.slow
def test_a_campaign_survives_its_killed_watcher_and_ticks_finish_it(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch)
    watcher = kpack(project, "push", "train", wait=False)
    deadline = time.monotonic() + 90
    while not any(r["status"] == "COMPLETE" for r in member_rows(project)):  # halfway: one session ended
        assert watcher.poll() is None and time.monotonic() < deadline, watcher.stdout.read()
        time.sleep(0.2)
    os.killpg(watcher.pid, signal.SIGKILL)
    out = watcher.communicate()[0]
    assert "forecast: 4 member(s) need about" in out and "4 member(s) queued" in out, out
    assert any(r["status"] == "WAITING" for r in member_rows(project))  # two were still queued
    tick_until_done(project)
    assert_campaign_finished(project, two_gpus)
    watch = kpack(project, "watch", "train", "--only", "a:1")  # each member watchable on its own: already done
    assert watch.returncode == 0 and "tick: 1 done (cap 2)" in watch.stdout, watch.stdout + watch.stderr


def test_two_ticks_at_once_push_the_next_session_once(two_gpus, tmp_path, monkeypatch):
    from packager import tick

    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0, 1]}")
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text() + "campaign: {gpu_sessions: 1}\n")
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    first = f"{project.train_slug}-f0"
    two_gpus.wait_kernel("alice", first, 1)
    with tick.tick_lock() as held:  # another tick is running: this one leaves everything as it is
        assert held
        blocked = kpack(project, "tick")
    assert blocked.returncode == 0 and "another kpack tick is running" in blocked.stdout, blocked.stdout
    assert [r["status"] for r in member_rows(project)] == ["QUEUED", "WAITING"]
    runs = [kpack(project, "tick", wait=False) for _ in range(2)]
    outs = [r.communicate(timeout=60)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    # Whichever went first pushed session 2 of f0 (the cap is 1: f1 still waits); the other found the lock
    # held, or found session 2 open: one push in all.
    assert sum(f"pushed alice/{first}-b v1" in o for o in outs) == 1, outs
    assert [(r["member"], r["session"]) for r in member_rows(project)] == [(":0", 1), (":1", 1), (":0", 2)]
    assert len(versions(two_gpus, project.train_slug)) == 2


def test_a_campaign_push_beside_a_running_member_warns(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0, 1]}")
    project.write_entry("import time\n\n\ndef main(config):\n    time.sleep(6 if config['kit']['data']['fold'] else 0)\n")
    assert kpack(project, "push", "train", "--no-wait").returncode == 0
    two_gpus.wait_kernel("alice", f"{project.train_slug}-f0", 1)  # f0 is done, f1 still runs
    again = kpack(project, "push", "train", "--no-wait")
    assert again.returncode == 0, again.stdout + again.stderr
    warned = [line for line in again.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and warned[0].startswith(f"warning: alice/{project.train_slug}-f1 v1 (session 1 of the "
                                                     "last train push) is still "), again.stdout
    assert "this push starts another run beside it" in warned[0]


def test_watching_a_campaign_says_what_changed_and_each_running_members_log(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0, 1]}")
    project.write_entry("import time\n\n\ndef main(config):\n    for step in range(12):\n"
                        "        print(f'[kpack] step {step} of fold {config[\"kit\"][\"data\"][\"fold\"]}', flush=True)\n"
                        "        time.sleep(0.5)\n")
    monkeypatch.setenv("KPACK_LOG_EVERY_S", "0.5")
    monkeypatch.setenv("KPACK_WAIT_EVERY_S", "600")
    done = kpack(project, "push", "train")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    waits = [line for line in lines if line.startswith("train: waiting for the members to end (")]
    assert 1 <= len(waits) <= 3 and not any(line.startswith("tick: ") for line in lines[:-1]), done.stdout
    assert waits[0].startswith("train: waiting for the members to end (2 open (cap 2), "), waits
    assert lines[-1] == "tick: 2 done (cap 2)", done.stdout  # the end, once: not a line every 0.5 s tick
    for fold in (0, 1):
        logged = [line for line in lines if line.startswith(f"alice/{project.train_slug}-f{fold} v1: log: ")]
        assert logged and all(f"of fold {fold}" in line for line in logged), done.stdout


def test_a_campaign_watch_waits_out_kaggle_out_of_reach(two_gpus, tmp_path, monkeypatch):
    """503 spells longer than a call's retries, on the polls and on the push of the member queued behind the
    first: the members are not at fault, so the watch says Kaggle is out of reach and goes on ticking until
    both are done, instead of stopping or failing the member."""
    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0, 1]}")
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text() + "campaign: {gpu_sessions: 1}\n")
    project.write_entry("import time\n\n\ndef main(config):\n    time.sleep(2)\n")
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0 and "tick: 1 open, 1 waiting (cap 1)" in pushed.stdout, pushed.stdout + pushed.stderr
    two_gpus.faults({"method": "GetKernelSessionStatus", "kind": "503", "times": 4},
                    {"method": "SaveKernel", "kind": "503", "times": 2})
    monkeypatch.setenv("KPACK_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("KPACK_RETRY_BASE_S", "0.05")
    done = kpack(project, "watch", "train")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "train: waiting for the members to end (Kaggle out of reach: status of alice/" in done.stdout, done.stdout
    assert "train: waiting for the members to end (Kaggle out of reach: push kernel alice/" in done.stdout, done.stdout
    assert "train: Kaggle answers again, after " in done.stdout and done.stdout.endswith("tick: 2 done (cap 1)\n")
    assert two_gpus.stats()["faults_fired"] == {"GetKernelSessionStatus:503": 4, "SaveKernel:503": 2}
    assert len(versions(two_gpus, project.train_slug)) == 2  # the member refused twice was pushed once


def test_a_campaign_naming_a_missing_source_is_refused_before_anything_is_uploaded(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0, 1]}")
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("session_hours: 0.02,",
                                                 "session_hours: 0.02, sources: {datasets: [alice/no-such-data]},"))
    two_gpus.reset_stats()
    refused = kpack(project, "push", "train")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "kernels.train.sources: not on the local Kaggle (or not visible to alice): dataset alice/no-such-data; " \
           "fix the name or create it first" in refused.stderr
    calls = set(two_gpus.stats()["calls"])
    assert not {"SaveKernel", "StartBlobUpload", "CreateDataset", "CreateDatasetVersion"} & calls, calls
    assert member_rows(project) == []  # nothing queued: a later tick has nothing to push


def test_a_scheduled_tick_says_kaggle_is_out_of_reach_and_fails_only_once_it_has_lasted(two_gpus, tmp_path,
                                                                                           monkeypatch):
    """A tick every few minutes through a 503 spell: each says so and exits 0 (no failure mail per tick),
    remembering when the outage began; one after KPACK_OFFLINE_WAIT_S of it fails; the next that gets through
    says how long it lasted, forgets it, and goes on with the campaign."""
    project = campaign_project(tmp_path, two_gpus, monkeypatch, "members: {folds: [0]}")
    project.write_entry("def main(config):\n    pass\n")
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    two_gpus.faults({"method": "GetKernelSessionStatus", "kind": "503", "times": 0})
    monkeypatch.setenv("KPACK_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("KPACK_RETRY_BASE_S", "0.05")
    outage = project.root / "runs" / ".tick-outage"
    first = kpack(project, "tick")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith(f"tick: Kaggle out of reach (status of alice/{project.train_slug}-f0 v1 failed "
                                   "after 2 attempts"), first.stdout
    assert "the next tick goes on from here" in first.stdout and outage.exists()
    began = float(outage.read_text())
    outage.write_text(f"{began - 7200:.0f}\n")  # as if it began two hours ago
    second = kpack(project, "tick")
    assert second.returncode == 0 and "tick: Kaggle out of reach for 2h00m, over several ticks (" in second.stdout
    monkeypatch.setenv("KPACK_OFFLINE_WAIT_S", "3600")
    third = kpack(project, "tick")
    assert third.returncode == 1 and "Kaggle out of reach for 2h00m, over several ticks)" in third.stderr, third.stderr
    assert outage.exists()
    two_gpus.clear_faults()
    back = kpack(project, "tick")
    assert back.returncode == 0 and "tick: Kaggle answers again, after 2h00m" in back.stdout, back.stdout + back.stderr
    assert not outage.exists()
    tick_until_done(project)
    assert member_rows(project)[-1]["status"] == "COMPLETE"


@pytest.mark.slow
def test_push_no_wait_then_a_crash_that_lost_a_ledger_row_is_reconciled(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch)
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0 and "not waiting; keep it going with: kpack tick" in pushed.stdout, pushed.stdout
    assert sum(r["status"] == "QUEUED" for r in member_rows(project)) == 2  # two go, two wait for a slot
    # The ticks run in a fresh checkout, as a scheduled CI tick does: no build/, only the ledger under runs/.
    shutil.rmtree(project.root / "build" / "kernels")
    # A crash right after session 2 of a:0 was pushed: the server made it, the ledger never heard of it.
    deadline = time.monotonic() + 90
    while not any(r["member"] == "a:0" and r["session"] == 2 for r in member_rows(project)):
        assert time.monotonic() < deadline
        assert kpack(project, "tick").returncode == 0
    path = ledger.ledger_path()
    lines = path.read_text().splitlines()
    lost = [i for i, line in enumerate(lines) if json.loads(line).get("member") == "a:0"
            and json.loads(line).get("session") == 2]
    path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in lost))
    out = tick_until_done(project)
    assert_campaign_finished(project, two_gpus)
    assert out.count("session 2 was pushed without a ledger row; recording it, not pushing again") == 1, out


def test_tick_goes_on_with_a_plain_train_chain(two_gpus, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, two_gpus, sessions=2, datasets=False)  # no members section: one chain
    monkeypatch.chdir(project.root)
    pushed = kpack(project, "push", "train", "--no-wait")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    out = tick_until_done(project)
    assert f"pushed alice/{project.train_slug}-b v1" in out and "tick: 1 done (cap 5)" in out, out
    rows = [(r["kernel"], r["session"], r["status"]) for r in ledger.read()]
    assert rows == [(f"alice/{project.train_slug}", 1, "COMPLETE"), (f"alice/{project.train_slug}-b", 2, "COMPLETE")]
    only = kpack(project, "tick", "--only", "a:0")
    assert only.returncode == 2 and "error: --only: kernels.train has no members section" in only.stderr, only.stderr


def test_a_campaign_over_the_weekly_quota_is_refused_unless_forced(two_gpus, tmp_path, monkeypatch):
    project = campaign_project(tmp_path, two_gpus, monkeypatch)
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text() + "campaign: {weekly_gpu_hours: 0.01}\n")
    refused = kpack(project, "push", "train")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: 0.1 GPU h is over the 0.0 h left this week; narrow it with --only, raise campaign.weekly_gpu_hours "
        "if your quota is larger, or push anyway with --force"]
    assert "4 member(s) need about 0.1 GPU h, from one full session of 0.02 h each" in refused.stdout
    assert "is over the" not in refused.stdout  # the refusal is said once, as the error
    assert versions(two_gpus, project.train_slug) == [] and not member_rows(project)  # nothing pushed or queued
    forced = kpack(project, "push", "train", "--force", "--no-wait", "--only", "b:1")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert [(r["member"], r["status"]) for r in member_rows(project)] == [("b:1", "QUEUED")]


def test_watch_retry_pushes_a_members_failed_session_again_from_the_session_before(two_gpus, tmp_path,
                                                                                   monkeypatch):
    import base64

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, two_gpus)  # with the weights dataset, encrypted below
    project.write_entry(MEMBER_ENTRY)
    label = "KEY_" + project.prefix.replace("-", "_")
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(label, key)
    config = project.root / "kpack.yaml"
    text = config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaT4")
    text = text.replace("session_hours: 0.02}", "session_hours: 0.02, members: {folds: [0, 1]}}")
    text = text.replace("dir: models}", f"dir: models, encrypt: true, key_env: {label}}}")
    config.write_text(text + "kit: {data: {folds: 2}, seed: 0}\n")
    monkeypatch.chdir(project.root)

    def attach(*slugs):
        done = subprocess.run([sys.executable, "-m", "packager.cli", "local", "secret", "set", label, "--root",
                               str(two_gpus.root), *[a for s in slugs for a in ("--kernel", f"alice/{s}")]],
                              input=key, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    f0, f1 = f"{project.train_slug}-f0", f"{project.train_slug}-f1"
    attach(f0, f"{f0}-b", f1)  # not f1-b: Kaggle attaches a secret only to a kernel that exists
    failed = kpack(project, "push", "train")
    assert failed.returncode == 1 and "1 member(s) failed" in failed.stderr, failed.stdout + failed.stderr
    assert "`kpack watch train --retry` pushes their failed sessions again" in failed.stderr
    attach(f"{f1}-b")
    again = kpack(project, "watch", "train", "--retry")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{f1}: session 2 ended ERROR; pushing session 2 again" in again.stdout
    sessions = [(r["session"], r["status"]) for r in member_rows(project) if r["member"] == ":1"]
    assert sessions == [(1, "COMPLETE"), (2, "ERROR"), (2, "COMPLETE")], sessions
    from packager.localkaggle.store import Store

    store = Store(two_gpus.root)
    assert store.kernel("alice", f1)["versions"] == [1] and store.kernel("alice", f"{f1}-b")["versions"] == [1, 2]
    last = [r for r in member_rows(project) if r["member"] == ":1"][-1]
    assert last["cv_score"] == pytest.approx(0.5 + 1 / 10 + 0 / 100 + 2 / 1000)  # session 2 saw session 1
