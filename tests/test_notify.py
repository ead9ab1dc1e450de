"""Notifications: stdout always; Telegram through a local stub of the Bot API; a Telegram failure is one warning
without the token and never an exception."""
import pytest

from packager.config import parse_config
from pushkit import TelegramStub
from packager.notify import notify

TOKEN = "123456:SECRET-token-value"


def make_cfg(telegram=True):
    data = {"competition": "digits-multilabel", "kaggle_user": "alice",
            "kernels": {"train": {"entry": "kernel_src/train.py"}}}
    if telegram:
        data["notifications"] = {"telegram": {"token_env": "T_TOKEN", "chat_id_env": "T_CHAT"}}
    return parse_config(data)


@pytest.fixture
def telegram_stub():
    stub = TelegramStub()
    yield stub
    stub.close()


def test_stdout_and_telegram(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "alice/x v3 COMPLETE in 12s", ok=True)
    out = capsys.readouterr().out
    assert "alice/x v3 COMPLETE" in out and TOKEN not in out
    [request] = telegram_stub.received
    assert request["path"] == f"/bot{TOKEN}/sendMessage"
    assert request["body"]["chat_id"] == "42" and "alice/x v3 COMPLETE" in request["body"]["text"]


def test_failure_is_announced_as_failure(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "alice/x v3 ERROR: boom", ok=False)
    assert "FAILED" in capsys.readouterr().out
    assert "FAILED" in telegram_stub.received[0]["body"]["text"]


def test_telegram_error_is_a_warning_without_the_token(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    telegram_stub.fail = True
    notify(make_cfg(), "done", ok=True)  # must not raise
    captured = capsys.readouterr()
    assert "warning: Telegram notification not sent" in captured.err
    assert TOKEN not in captured.err + captured.out


def test_unreachable_telegram_is_a_warning_without_the_token(monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    notify(make_cfg(), "done", ok=True)
    captured = capsys.readouterr()
    assert "warning: Telegram notification not sent" in captured.err
    assert TOKEN not in captured.err + captured.out


def test_no_telegram_without_its_environment(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.delenv("T_TOKEN", raising=False)
    notify(make_cfg(), "run one")
    notify(make_cfg(telegram=False), "run two")
    assert telegram_stub.received == []
    out = capsys.readouterr().out
    assert "run one" in out and "run two" in out


def test_a_secret_quoted_in_a_failure_is_redacted(telegram_stub, monkeypatch, capsys):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    notify(make_cfg(), "alice/x v3 ERROR: KeyError: '0123456789abcdef0123456789abcdef'", ok=False)
    out = capsys.readouterr().out
    assert "KeyError: '[redacted]'" in out and "0123456789abcdef" not in out
    assert "KeyError: '[redacted]'" in telegram_stub.received[0]["body"]["text"]


# --------------------------------------------------------------------------------------------- what happened
# Each message through a real push, watch or submit on the local Kaggle, read back from the Telegram stand-in.

import re  # noqa: E402

from packager import kaggle_api  # noqa: E402
from packager.errors import UserError  # noqa: E402
from packager.push import push_kernel  # noqa: E402
from pushkit import FAIL_ENTRY, isolate, make_project  # noqa: E402


@pytest.fixture
def told(telegram_stub, monkeypatch):
    monkeypatch.setenv("KPACK_TELEGRAM_API", telegram_stub.url)
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_CHAT", "42")
    return telegram_stub


@pytest.fixture
def pushed_project(local_kaggle, tmp_path, monkeypatch):
    def make(**kw):
        isolate(monkeypatch, tmp_path)
        local_kaggle.clear_faults()
        project = make_project(tmp_path, local_kaggle, **{"datasets": False, **kw})
        monkeypatch.chdir(project.root)
        return project

    yield make
    kaggle_api._restore_env()


def test_a_session_then_its_chain_finished(told, pushed_project, local_kaggle):
    project = pushed_project(sessions=2)
    push_kernel(project.cfg(), "train", wait=True)
    first, last = told.texts()
    slug = project.train_slug
    page = f"http://127.0.0.1:{local_kaggle.port}/code/alice/{slug}"
    assert re.fullmatch(rf"\[kpack\] done: alice/{slug} v1 \(train, session 1\) COMPLETE: CV 0\.51000, "
                        rf"\d+s used; next: session 2; {re.escape(page)} \(v1\); report runs/{slug}/v1/report\.html",
                        first), first
    assert re.fullmatch(rf"\[kpack\] done: train chain alice/{slug}-b done after 2 session\(s\): best CV 0\.52000, "
                        rf"\d\.\d\d CPU hours in all; next: nothing; {re.escape(page)}-b \(v1\); "
                        rf"report runs/{slug}-b/v1/report\.html", last), last
    assert all(len(t) < 400 for t in told.texts())


def test_an_error_says_the_failing_line_not_the_log(told, pushed_project):
    project = pushed_project()
    project.write_entry("import sys\n\ndef main(config):\n    print('x' * 300)\n" + "\n".join(
        f"    print('epoch {i} of a long log', file=sys.stderr)" for i in range(50)) + "\n" +
        FAIL_ENTRY.split("\n", 1)[1])
    with pytest.raises(UserError):
        push_kernel(project.cfg(), "train", wait=True)
    [text] = told.texts()
    assert text.startswith(f"[kpack] FAILED: alice/{project.train_slug} v1 (train, session 1) ERROR: ")
    assert "RuntimeError: the model diverged (loss is nan)" in text
    assert "epoch 49" not in text and "Traceback" not in text and "xxxx" not in text and len(text) < 300


def test_a_missing_secret_is_a_failure_that_needs_the_user(told, pushed_project, monkeypatch):
    import base64
    import os

    project = pushed_project(datasets=True)
    label = "KEY_" + project.prefix.replace("-", "_")
    monkeypatch.setenv(label, base64.b64encode(os.urandom(32)).decode())
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("dir: models}", f"dir: models, encrypt: true, key_env: {label}}}"))
    with pytest.raises(UserError):
        push_kernel(project.cfg(), "train", wait=True)  # the key is never attached to the kernel as a secret
    [text] = told.texts()
    assert text.startswith(f"[kpack] FAILED: needs you: alice/{project.train_slug} v1 (train, session 1) ERROR: ")
    assert f"Kaggle secret {label} is not attached to this kernel" in text
    assert "on the local Kaggle attach it with `printf %s \"$KEY\" | kpack local secret set LABEL --kernel " \
           "OWNER/SLUG` for each kernel named, then go on with `kpack watch train --retry`; http://127.0.0.1:" in text
    assert os.environ[label] not in text


def test_a_push_refused_needs_the_user(told, pushed_project, local_kaggle, monkeypatch):
    project = pushed_project()
    config = project.root / "kpack.yaml"
    config.write_text(config.read_text().replace("accelerator: 'None'", "accelerator: NvidiaTeslaK80"))
    monkeypatch.setenv("KPACK_LOCAL_LENIENT_SHAPES", "0")
    with pytest.raises(UserError) as err:
        push_kernel(project.cfg(), "train", wait=True)
    [text] = told.texts()
    assert text.startswith(f"[kpack] FAILED: needs you: push alice/{project.train_slug} (train): push alice/") and \
        text.endswith("then go on with kpack push train"), text
    assert str(err.value).removeprefix("kaggle: ").rstrip(".") in text  # its full stop gives way to the ";"


def test_kpack_submit_says_the_public_score(told, pushed_project):
    from packager.submit import submit

    project = pushed_project(infer=True)
    push_kernel(project.cfg(), "infer", wait=True)
    told.received.clear()
    result = submit(project.cfg(), "first")
    [text] = told.texts()
    assert re.fullmatch(rf"\[kpack\] done: submission {result['ref']} of alice/{project.prefix}-infer v1 scored: "
                        rf"public 1\.0, private 0\.5; http://127\.0\.0\.1:\d+/code/alice/{project.prefix}-infer \(v1\)",
                        text), text
    result = submit(project.cfg(), "again")
    assert "(best before 1.00000, not better)" in told.texts()[-1]


RMSE_INFER = '''import os
from pathlib import Path


def main(config):
    root = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle")
    (root / "working" / "submission.csv").write_text("id,y\\na,{a}\\nb,2\\nc,3\\nd,4\\n")
'''


def test_on_a_metric_where_lower_is_better_a_lower_score_is_better(told, pushed_project, local_kaggle, tmp_path):
    """A competition scored by RMSE (its evaluation metric names an error): the lower score is the better one,
    from the metric's name alone."""
    from packager.localkaggle.store import Store
    from packager.submit import submit

    project = pushed_project(infer=True)
    data = tmp_path / "rmse-data"
    data.mkdir()
    (data / "sample_submission.csv").write_text("id,y\na,0\nb,0\nc,0\nd,0\n")
    (tmp_path / "rmse.csv").write_text("id,y,Usage\na,1,Public\nb,2,Public\nc,3,Private\nd,4,Private\n")
    Store(local_kaggle.root).create_competition(f"{project.prefix}-comp", data, tmp_path / "rmse.csv", code=True,
                                                replace=True, metric="rmse")
    scores = []
    for a in (3, 1.5):  # the second submission is closer to the truth
        project.write_entry(RMSE_INFER.format(a=a), "infer_entry.py")
        push_kernel(project.cfg(), "infer", wait=True)
        scores.append(submit(project.cfg(), f"a={a}")["public_score"])
    assert scores == [round(2 ** 0.5, 5), round(0.125 ** 0.5, 5)]  # sqrt((2^2 + 0) / 2), sqrt(0.25 / 2)
    assert f"(best before {scores[0]:.5f}, better)" in told.texts()[-1], told.texts()
    config = project.root / "kpack.yaml"  # score_direction says otherwise: it wins over the name
    config.write_text(config.read_text() + "score_direction: higher\n")
    submit(project.cfg(), "again")
    assert f"(best before {scores[0]:.5f}, not better)" in told.texts()[-1], told.texts()


def test_a_score_names_the_rank_change_where_the_api_gives_one(told, capsys):
    from packager.notify import submission_scored
    from packager.watch import KernelRef

    ref = KernelRef("alice", "x-infer", 4, "infer")
    cfg = make_cfg().model_copy(update={"backend": "kaggle"})
    text = submission_scored(cfg, ref, 77, 0.81, None, rank_before=12, rank_after=9, best_before=0.8)
    assert text == ("submission 77 of alice/x-infer v4 scored: public 0.81 (best before 0.80000, better); "
                    "rank 12 -> 9; https://www.kaggle.com/code/alice/x-infer (v4)")
    assert told.texts() == [f"[kpack] done: {text}"]
    assert "rank" not in submission_scored(cfg, ref, 78, 0.7)  # no rank in the answer: none said


def test_a_message_that_cannot_be_made_is_a_warning_not_a_failure(told, capsys):
    from packager.notify import chain_finished

    assert chain_finished(make_cfg(), "train", [{"kernel": "alice/x", "seconds": 60, "cv_score": 0.5},
                                                {"kernel": "alice/x-b", "seconds": None, "cv_score": "0.6"}]) != ""
    assert chain_finished(None, "train", [None]) == ""  # a row that is not one: must not raise
    assert "warning: notification not sent (chain_finished: " in capsys.readouterr().err


def test_a_chains_best_cv_follows_the_score_direction(told):
    from packager.notify import chain_finished

    rows = [{"kernel": "alice/x", "seconds": 60, "cv_score": 0.5}, {"kernel": "alice/x-b", "seconds": 60,
                                                                     "cv_score": 0.6}]
    assert "best CV 0.60000" in chain_finished(make_cfg(), "train", rows)  # the kit's F2: higher is better
    lower = make_cfg().model_copy(update={"score_direction": "lower"})  # own code scoring an error
    assert "best CV 0.50000" in chain_finished(lower, "train", rows)


def test_the_next_step_is_the_next_kernel_the_project_has():
    from packager.config import parse_config
    from packager.notify import next_step

    def cfg(*kinds):
        return parse_config({"competition": "digits-c", "kaggle_user": "alice",
                             "kernels": {k: {"entry": f"kernel_src/{k}.py"} for k in kinds}})

    assert next_step(cfg("train", "validate", "infer"), "train") == "kpack push validate"
    assert next_step(cfg("train", "infer"), "train") == "kpack push infer"  # no validate kernel: not suggested
    assert next_step(cfg("train", "validate", "infer"), "validate") == "kpack push infer"
    assert next_step(cfg("train", "infer"), "infer") == "kpack submit"
    assert next_step(cfg("train"), "train") == "nothing"
