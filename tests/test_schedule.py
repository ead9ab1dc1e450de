"""`kpack schedule github`: the scheduled workflow that runs `kpack tick` in CI, with the credentials as secrets."""
import re
import subprocess
import sys

import pytest
import yaml

from packager import schedule
from packager.config import parse_config

SPEC = "kpack @ git+https://github.com/alice/kpack@0123456789abcdef0123456789abcdef01234567"


def kaggle_config(tmp_path, **extra):
    lines = ["competition: imet-2019-fgvc6", "kaggle_user: alice", "backend: kaggle",
             "kernels:", "  train: {entry: kernel_src/train.py}",
             "notifications:", "  telegram: {token_env: TG_TOKEN, chat_id_env: TG_CHAT}",
             *extra.get("lines", [])]
    (tmp_path / "kpack.yaml").write_text("\n".join(lines) + "\n")


def kpack(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-c", "from packager.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


def workflow(tmp_path) -> dict:
    return yaml.safe_load((tmp_path / ".github" / "workflows" / "kpack-tick.yml").read_text())


def test_the_workflow_runs_kpack_tick_on_a_cron_with_secrets_only(tmp_path, monkeypatch):
    import os

    kaggle_config(tmp_path, lines=["datasets:", "  weights: {slug: imet-weights, encrypt: true, key_env: WKEY}"])
    env = {**os.environ, "KAGGLE_KEY": "kaggle-key-0123456789abcdef", "TG_TOKEN": "tg-token-value-123456",
           "WKEY": "weights-key-value-123456"}
    done = kpack(tmp_path, "schedule", "github", "--every", "15m", "--kpack", SPEC, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "wrote .github/workflows/kpack-tick.yml (kpack tick, cron */15 * * * *)"
    assert "KAGGLE_USERNAME, KAGGLE_KEY, TG_TOKEN, TG_CHAT, WKEY" in done.stdout
    doc = workflow(tmp_path)
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"] == [{"cron": "*/15 * * * *"}] and "workflow_dispatch" in on
    assert doc["concurrency"] == {"group": "kpack-tick", "cancel-in-progress": False}
    assert doc["env"] == {"KPACK_SPEC": SPEC}
    steps = doc["jobs"]["tick"]["steps"]
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.12"
    assert next(s for s in steps if s.get("name") == "Install kpack")["run"] == 'python -m pip install "$KPACK_SPEC"'
    tick = next(s for s in steps if s.get("name") == "kpack tick")
    assert tick["run"] == "kpack tick" == schedule.TICK  # the command the tick tests run
    assert tick["env"] == {name: f"${{{{ secrets.{name} }}}}" for name in
                           ("KAGGLE_USERNAME", "KAGGLE_KEY", "TG_TOKEN", "TG_CHAT", "WKEY")}
    assert all("env" not in s for s in steps if s is not tick)  # no other step gets a secret
    commit = steps[-1]
    assert commit["if"] == "always()" and steps.index(commit) > steps.index(tick)
    assert "git add -f runs/ledger.jsonl" in commit["run"] and "[skip ci]" in commit["run"]
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"].split() == ["runs/", "build/kernels/"] and steps.index(cache) < steps.index(tick)
    text = (tmp_path / ".github" / "workflows" / "kpack-tick.yml").read_text()
    assert not re.search(r"kaggle-key-0123|tg-token-value|weights-key-value", text)
    assert set(re.findall(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", text)) == {"KAGGLE_USERNAME", "KAGGLE_KEY", "TG_TOKEN",
                                                                       "TG_CHAT", "WKEY"}


def test_token_auth_and_an_hourly_schedule(tmp_path):
    kaggle_config(tmp_path)
    cfg = parse_config(yaml.safe_load((tmp_path / "kpack.yaml").read_text()))
    doc = yaml.safe_load(schedule.render(cfg, every="2h", kpack_spec="./tools/kpack", auth="token"))
    tick = next(s for s in doc["jobs"]["tick"]["steps"] if s.get("name") == "kpack tick")
    assert list(tick["env"]) == ["KAGGLE_API_TOKEN", "TG_TOKEN", "TG_CHAT"]
    assert doc.get("on", doc.get(True))["schedule"] == [{"cron": "0 */2 * * *"}]


@pytest.mark.parametrize("every", ["1m", "4m", "0h", "24h", "ten", ""])
def test_a_schedule_github_cannot_run_is_refused(every):
    with pytest.raises(Exception, match="--every .*: give minutes 5..60"):
        schedule.cron_of(every)


def test_it_refuses_a_local_backend_and_an_existing_workflow(tmp_path):
    kaggle_config(tmp_path)
    local = tmp_path / "local"
    local.mkdir()
    (local / "kpack.yaml").write_text((tmp_path / "kpack.yaml").read_text().replace("backend: kaggle",
                                                                                  "backend: local"))
    done = kpack(local, "schedule", "github", "--kpack", SPEC)
    assert done.returncode == 2 and done.stderr == (
        "error: kpack.yaml: line 3: backend is local: a CI runner cannot reach the local Kaggle on this machine; "
        "set backend: kaggle before scheduling ticks in CI\n")
    assert not (local / ".github").exists()
    assert kpack(tmp_path, "schedule", "github", "--kpack", SPEC).returncode == 0
    before = (tmp_path / ".github" / "workflows" / "kpack-tick.yml").read_text()
    again = kpack(tmp_path, "schedule", "github", "--kpack", SPEC, "--every", "30m")
    assert again.returncode == 2 and again.stderr == (
        "error: .github/workflows/kpack-tick.yml exists; kpack schedule does not overwrite it: remove it first to "
        "write a new one\n")
    assert (tmp_path / ".github" / "workflows" / "kpack-tick.yml").read_text() == before


def test_the_default_kpack_is_the_checkouts_origin_and_commit(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    with pytest.raises(Exception, match="cannot tell where CI should install kpack from .*--kpack"):
        schedule.default_kpack_spec(tmp_path)  # no commit, no origin
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    git("remote", "add", "origin", "/home/alice/kpack")  # a path on this machine: CI cannot install from it
    with pytest.raises(Exception, match="cannot tell where CI should install kpack from .*--kpack"):
        schedule.default_kpack_spec(tmp_path)
    git("remote", "set-url", "origin", "git@github.com:alice/kpack.git")
    head = git("rev-parse", "HEAD")
    assert schedule.default_kpack_spec(tmp_path) == f"kpack @ git+ssh://git@github.com/alice/kpack.git@{head}"
    git("remote", "set-url", "origin", "https://github.com/alice/kpack")
    assert schedule.default_kpack_spec(tmp_path) == f"kpack @ git+https://github.com/alice/kpack@{head}"
