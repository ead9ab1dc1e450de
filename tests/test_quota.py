"""The weekly accelerator quota: the local Kaggle answers GetAcceleratorQuotaStatistics (`kaggle quota`) from the
sessions it ran and refuses a GPU push once the week's hours are spent; kpack's campaign forecast uses those
figures, and a campaign whose next member is refused for the quota stops with one line, leaving it queued."""
from __future__ import annotations

import subprocess
from datetime import datetime

import pytest

from conftest import KAGGLE, LocalKaggleServer
from packager import campaign, kaggle_api, ledger
from packager.config import parse_config
from packager.errors import UserError
from packager.localkaggle import quota
from packager.push import push_kernel
from packager.localkaggle.store import Store
from test_campaign import base_config, campaign_project, kpack, member_rows
from test_session_cap import SLEEPY_ENTRY, gpu_project, kaggle_cli_env

QUOTA_H = 0.0005  # 1.8 s of GPU time a week: one sleepy session spends it


@pytest.fixture
def small_quota(tmp_path):
    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--gpu-quota-hours", str(QUOTA_H)).start()
    yield server
    server.stop()


def test_the_quota_week_starts_on_saturday_midnight_utc():
    assert quota.week_start(datetime(2026, 12, 7, 9, 30)) == datetime(2026, 12, 5)   # a Monday
    assert quota.week_start(datetime(2026, 12, 5, 0, 0)) == datetime(2026, 12, 5)    # that Saturday itself
    assert quota.week_start(datetime(2026, 12, 4, 23, 59)) == datetime(2026, 11, 28)  # the Friday before


def test_gpu_sessions_spend_the_quota_and_a_push_past_it_is_refused(small_quota, tmp_path, monkeypatch, capsys):
    project = gpu_project(tmp_path, small_quota, monkeypatch, infer=True)
    project.write_entry(SLEEPY_ENTRY.format(seconds=3))
    try:
        api = kaggle_api.connect(project.cfg())
        before = kaggle_api.accelerator_quota(api)
        assert (before.used_h, before.total_h) == (0.0, QUOTA_H) and before.refresh.endswith(" 00:00 UTC")
        assert push_kernel(project.cfg(), "train", wait=True).status == "COMPLETE"
        after = kaggle_api.accelerator_quota(api)
        assert after.used_h * 3600 >= 3 and kaggle_api.accelerator_quota(api, "TPU").used_h == 0.0
        with pytest.raises(UserError, match=r"refused: Your weekly GPU quota is used up \(0\.0 of 0\.0005 hours\); "
                                            r"it refreshes at \d{4}-\d\d-\d\d 00:00 UTC"):
            push_kernel(project.cfg(), "infer", wait=False)
    finally:
        kaggle_api._restore_env()
    warned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert any(line.startswith("warning: 0.0 h of the weekly GPU quota left (of 0.0005 h, refreshes ") and
               line.endswith("this infer session may run 0.02 h, and Kaggle refuses a push past the quota")
               for line in warned), warned  # said before anything is uploaded
    assert Store(small_quota.root).kernel("alice", f"{project.prefix}-infer") is None  # no version made
    shown = subprocess.run([KAGGLE, "quota"], env=kaggle_cli_env(small_quota, tmp_path), capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    gpu = next(line.split() for line in shown.stdout.splitlines() if line.startswith("GPU"))
    assert gpu[1:4] == ["0.00h", "0.00h", "0.00h"] and gpu[4].startswith("20"), shown.stdout  # used, left, total


def test_the_forecast_takes_kaggles_count_capped_at_the_configured_budget():
    data = base_config(accelerator="NvidiaTeslaT4", members={"folds": [0, 1]})
    cfg = parse_config({**data, "kit": {**data["kit"], "stages": [{"epochs": 1}]},
                        "campaign": {"epoch_minutes": 60.0, "weekly_gpu_hours": 30}})
    chosen = campaign.members(cfg)
    counted = kaggle_api.Quota(used_h=20.0, reserved_h=1.5, total_h=40.0, refresh="2026-12-12 00:00 UTC")
    lines, fits = campaign.forecast(cfg, chosen, [], quota=counted)  # the ledger knows nothing: Kaggle does
    assert lines == ["forecast: 2 member(s) need about 2.0 GPU h, from 1 epoch x 60 min (campaign.epoch_minutes); "
                     "weekly quota 30 h (campaign.weekly_gpu_hours), 21.5 h used this week (Kaggle's count, "
                     "refreshes 2026-12-12 00:00 UTC), 8.5 h left"] and fits
    spent = kaggle_api.Quota(used_h=29.5, reserved_h=0.0, total_h=30.0, refresh="")
    lines, fits = campaign.forecast(cfg, chosen, [], quota=spent)
    assert not fits and "weekly quota 30 h, 29.5 h used this week (Kaggle's count), 0.5 h left" in lines[0]
    tpu = parse_config({**data, "kernels": {"train": {**data["kernels"]["train"], "accelerator": "TpuV38"}},
                        "kit": {**data["kit"], "stages": [{"epochs": 1}]}, "campaign": {"epoch_minutes": 60.0}})
    lines, fits = campaign.forecast(tpu, campaign.members(tpu), [], quota=kaggle_api.Quota(
        used_h=19.0, reserved_h=0.0, total_h=20.0, refresh=""))  # TPU hours against the TPU quota, not 30 GPU h
    assert not fits and lines[0].endswith("need about 2.0 TPU h, from 1 epoch x 60 min (campaign.epoch_minutes); "
                                          "weekly quota 20 h, 19.0 h used this week (Kaggle's count), 1.0 h left")
    assert campaign.forecast(tpu, campaign.members(tpu), [])[1]  # no TPU figures: said, not refused


def test_a_campaign_refused_for_the_quota_stops_in_one_line_and_keeps_the_member_queued(small_quota, tmp_path,
                                                                                       monkeypatch):
    project = campaign_project(tmp_path, small_quota, monkeypatch, "members: {folds: [0, 1]}")
    project.write_entry(SLEEPY_ENTRY.format(seconds=3))
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text() + "campaign: {gpu_sessions: 1}\n")
    refused = kpack(project, "push", "train")  # the forecast already sees the quota is too small
    assert refused.returncode == 2 and "is over the" in refused.stderr and "Kaggle's count" in refused.stdout
    done = kpack(project, "push", "train", "--force")
    assert done.returncode == 1, done.stdout + done.stderr
    needs = [line for line in done.stdout.splitlines() if "needs you: train campaign: " in line]
    assert len(needs) == 1 and "quota is used up" in needs[0] and "after it refreshes" in needs[0], done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: push alice/")
    newest = {r["member"]: r["status"] for r in member_rows(project)}
    assert newest == {":0": "COMPLETE", ":1": "WAITING"}, newest  # still queued: a tick after the refresh pushes it
    assert Store(small_quota.root).kernel("alice", f"{project.train_slug}-f1") is None  # refused: no version made


def test_a_chain_refused_for_the_quota_says_so_once_and_watch_pushes_the_session_after_the_refresh(
        tmp_path, monkeypatch, capsys):
    from packager.push import watch_kernel

    root = tmp_path / "root"
    server = LocalKaggleServer(root, None, 0, 120, "--gpu-quota-hours", "0.00001").start()  # 36 ms: one session
    try:
        project = gpu_project(tmp_path, server, monkeypatch, sessions=2)
        with pytest.raises(UserError, match="Your weekly GPU quota is used up"):
            push_kernel(project.cfg(), "train", wait=True)
        out = capsys.readouterr().out
        needs = [line for line in out.splitlines() if "needs you: " in line]
        assert len(needs) == 1 and needs[0].endswith("then go on with kpack watch train (it pushes session 2)"), out
        assert Store(root).kernel("alice", f"{project.train_slug}-b") is None  # refused: nothing made
        server.stop()
        server = LocalKaggleServer(root, server.port, 0, 120, "--gpu-quota-hours", "30").start()  # a new week
        done = watch_kernel(project.cfg(), "train")
        assert done.status == "COMPLETE" and done.ref.session == 2, done
    finally:
        kaggle_api._restore_env()
        server.stop()
    sessions = [(r["kernel"].split("/")[1], r["session"], r["status"]) for r in ledger.read() if r.get("finished")]
    assert sessions == [(project.train_slug, 1, "COMPLETE"), (f"{project.train_slug}-b", 2, "COMPLETE")], sessions
