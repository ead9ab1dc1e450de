"""Run reports from real kit outputs: a two-session training chain (the second resumes the first's checkpoint),
then validate and infer on it; the PNGs and report.html each gets; report.html opened in a real headless
Chromium (a screenshot that is not blank, every image decoded, none referenced outside the file);
`kpack report` and the ledger's link to it."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from packager import democomp, ledger, report

SLUG = "digits-multilabel"
KIT = {"seed": 0, "data": {"image_size": 32, "folds": 2, "fold": 0, "num_workers": 0},
       "augment": {"train": "none", "valid": "none", "tta": ["none"]},
       "model": {"name": "test_resnet", "channels_last": False},
       "optim": {"batch_size": 8, "lr": 3e-3}, "schedule": {"name": "cosine", "warmup_steps": 2},
       "stages": [{"epochs": 3}], "log_every_steps": 1}
EVAL = {"thresholds": {"one_of": ["count"]}, "infer": {"batch_size": 8}}
REPO = Path(__file__).resolve().parents[1]


def kaggle_log(text: str) -> str:
    """Printed lines as Kaggle's JSON log (what watch.download saves as <slug>.log)."""
    entries = [{"stream_name": "stdout", "time": round(0.5 * i, 1), "data": line + "\n"}
               for i, line in enumerate(text.splitlines())]
    return "[" + "\n,".join(json.dumps(e) for e in entries) + "]"


def _run(entry, config: dict, root: Path, working: Path, slug: str, **kwargs):
    """One kit entry in this process, its stdout saved as the session's Kaggle log in its output."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("KPACK_KAGGLE_ROOT", str(root))
        mp.setenv("KPACK_SESSION_SECONDS", "3600")
        mp.chdir(root)
        (root / "working").mkdir(parents=True, exist_ok=True)
        result = entry(config, working=working, **kwargs)
    working.mkdir(parents=True, exist_ok=True)
    (working / f"{slug}.log").write_text(kaggle_log(out.getvalue()))
    return result, out.getvalue()


def _mount(root: Path, folder: Path, slug: str) -> None:
    target = root / "input" / "notebooks" / "alice" / slug
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, target)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/<slug>/v1 of a train chain (session 1 stops after 4 steps, session 2 finishes), validate, infer; and
    the ledger rows kpack would have written for them."""
    import torch

    from kernel_src import infer, train, validate

    base = tmp_path_factory.mktemp("report")
    comp = democomp.generate(base / "comp", seed=0, n_train=48, n_test=12, image_size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    outs = {name: base / "runs" / name / "v1" for name in ("rt-train", "rt-train-b", "rt-validate", "rt-infer")}

    def root(name):
        r = base / "roots" / name
        (r / "input" / "competitions").mkdir(parents=True)
        (r / "input" / "competitions" / SLUG).symlink_to(comp.data_dir)
        return r

    def config(kit):
        return {"competition": SLUG, "kaggle_user": "alice", "kernels": {}, "kit": kit}

    first = copy.deepcopy(KIT)
    first["session"] = {"max_steps": 4}
    try:
        r1 = root("s1")
        state, _ = _run(train.main, config(first), r1, outs["rt-train"], "rt-train")
        assert state["done"] is False and state["step"] == 4
        r2 = root("s2")
        _mount(r2, outs["rt-train"], "rt-train")
        state, _ = _run(train.main, config(KIT), r2, outs["rt-train-b"], "rt-train-b")
        assert state["done"] is True and state["step"] > 4
        kit = {**copy.deepcopy(KIT), **EVAL}
        r3 = root("v")
        _mount(r3, outs["rt-train-b"], "rt-train-b")
        _run(validate.run, config(kit), r3, outs["rt-validate"], "rt-validate")
        r4 = root("i")
        _mount(r4, outs["rt-train-b"], "rt-train-b")
        _mount(r4, outs["rt-validate"], "rt-validate")
        _run(infer.run, config(kit), r4, outs["rt-infer"], "rt-infer")
    finally:
        torch.set_num_threads(threads)
    os.environ["KPACK_LEDGER"] = str(base / "runs" / "ledger.jsonl")
    rows = (("rt-train", "train", 1), ("rt-train-b", "train", 2), ("rt-validate", "validate", 1),
            ("rt-infer", "infer", 1))
    for slug, kind, session in rows:
        ledger.append({"ts": "2026-12-02T06:00:00Z", "kernel": f"alice/{slug}", "kind": kind, "version": 1,
                       "session": session, "base_slug": "rt-train" if kind == "train" else slug,
                       "backend": "local", "status": "COMPLETE", "seconds": 60, "cv_score": None,
                       "output": str(outs[slug])})
    yield base, outs
    os.environ.pop("KPACK_LEDGER", None)


def test_train_report_has_curves_lr_classes_thresholds_and_both_sessions(runs):
    _, outs = runs
    path = report.write(outs["rt-train-b"])
    folder = path.parent
    for name in ("train_loss.png", "lr.png", "validation.png", "threshold.png", "classes.png", "budget.png"):
        assert (folder / name).stat().st_size > 5000, name
    data = report.collect(folder)
    assert [s for s, _ in data["sessions"]] == [1, 2]  # the chain, from the ledger
    assert data["ends"][0] == (1, 4) and len(data["budgets"]) == 2
    assert all(b["checkpoint_save_s"] > 0 for _, b in data["budgets"])  # each session saved a checkpoint
    sessions = {s["session"] for s in data["steps"]}
    assert sessions == {1, 2} and [s["step"] for s in data["steps"]] == sorted(s["step"] for s in data["steps"])
    assert len(data["history"]) == 3 and data["oof"]["classes"] and data["oof"]["groups"].keys() == {"digit", "count"}
    lrs = [s["lr"] for s in data["steps"]]
    assert max(lrs) > lrs[-1] and lrs[0] < max(lrs)  # warm-up, then cosine decay: a schedule, not a constant
    page = path.read_text()
    assert "CV (train)" in page and "half B" in page and "best F2 (validation fold)" not in page
    assert "time, session 2" in page and "unused" in page
    assert page.count('src="data:image/png;base64,') == 6


def test_validate_and_infer_reports(runs):
    _, outs = runs
    page = report.write(outs["rt-validate"]).read_text()
    for name in ("search.png", "thresholds.png", "groups.png", "blend.png"):
        assert (outs["rt-validate"] / name).is_file(), name
    scores = json.loads((outs["rt-validate"] / "oof_scores.json").read_text())
    curve = dict(zip(scores["curve"]["thresholds"], scores["curve"]["f2"]))
    assert curve[0.5] == pytest.approx(scores["at_0.5"]["f2"])  # the same blend, scored the same way
    assert f"{scores['cv_score']:.5f}" in page and scores["searched"]["rule"] in page
    assert "blend mean" in page and "exactly one count" in page  # every blend method, each one_of tried
    page = report.write(outs["rt-infer"]).read_text()
    assert (outs["rt-infer"] / "submission.png").is_file() and "submission.csv: 12 rows" in page


def test_a_report_names_and_scores_the_kits_fbeta(runs, tmp_path):
    """The kit's outputs say its beta (metrics.json, oof_scores.json); a kit set to F1 gets F1 curves and labels,
    the out-of-fold curve scored with that beta, not F2's."""
    import numpy as np

    from kernel_src import metrics as kit_metrics

    _, outs = runs
    assert json.loads((outs["rt-train-b"] / "metrics.json").read_text())["beta"] == 2.0
    assert json.loads((outs["rt-validate"] / "oof_scores.json").read_text())["beta"] == 2.0
    assert report.collect(outs["rt-train-b"])["metric"] == "F2"
    folder = tmp_path / "f1-run"
    shutil.copytree(outs["rt-train-b"], folder)
    for name in ("report.html", *(p.name for p in folder.glob("*.png"))):
        (folder / name).unlink(missing_ok=True)
    saved = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**saved, "beta": 1.0}))
    data = report.collect(folder)
    assert data["metric"] == "F1"
    oof, two = data["oof"], report.collect(outs["rt-train-b"])["oof"]
    probs, classes = np.load(folder / "oof.npy"), json.loads((folder / "classes.json").read_text())
    column = {str(label): j for j, label in enumerate(classes["ids"])}
    y = np.zeros(probs.shape, dtype=bool)
    for r, line in enumerate((folder / "oof.csv").read_text().splitlines()[1:len(probs) + 1]):
        for label in line.split(",", 1)[1].split():
            y[r, column[label]] = True
    at = oof["best_threshold"]
    assert oof["best_f2"] == pytest.approx(kit_metrics.fbeta_score(y, probs >= at, beta=1.0))
    assert oof["f2"] != pytest.approx(two["f2"])  # not F2's curve relabelled
    page = report.write(folder).read_text()
    assert f"Best global threshold {at:.2f}: F1 " in page and ": F2 " not in page


def test_budget_parts_add_up_to_the_session_limit():
    parts = report.budget_parts({"budget_s": 3600, "elapsed_s": 1000, "loop_started_s": 100, "train_step_s": 700,
                                 "validate_s": 150, "output_save_s": 20})
    assert parts == {"start-up": 100, "training": 700, "validation": 150, "checkpoints": 0, "final save": 20,
                     "other": 50, "unused": 2580}
    parts = report.budget_parts({"budget_s": 3600, "elapsed_s": 1000, "loop_started_s": 100, "train_step_s": 700,
                                 "validate_s": 150, "checkpoint_save_s": 30, "output_save_s": 20})
    assert parts["checkpoints"] == 30 and parts["other"] == 20 and sum(parts.values()) == 3600
    assert sum(parts.values()) == 3600


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert found, "no Chromium: `make setup` installs Debian's chromium package (apt-get install chromium)"
    return found


def _browser(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-dev-shm-usage", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_report_renders_in_a_real_browser(runs, tmp_path):
    import numpy as np
    from matplotlib import image

    _, outs = runs
    path = report.write(outs["rt-train-b"])
    page = path.read_text()
    # Every image is in the file: none points anywhere else (another folder, the network)
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    # ...and the browser decoded every one of them (naturalWidth > 0 once loaded), counted by a script in a copy
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => { document.title = "
                                  "'decoded ' + [...document.images].filter(i => i.complete && i.naturalWidth > 0)"
                                  ".length + ' of ' + document.images.length; });</script></body>"))
    dom = _browser("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert "<title>decoded 6 of 6</title>" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    done = _browser(f"--screenshot={shot}", "--window-size=1600,1400", "--virtual-time-budget=5000", path.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1400, 1600)
    plots = pixels[300:, :]  # below the summary table: the plots
    assert plots.std() > 0.1, "the screenshot's plot area is blank"
    colours = {tuple(p) for p in (plots[::7, ::7] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50  # lines, bars and text in several colours, not one flat fill
    if os.environ.get("KPACK_SAVE_REPORT_SCREENSHOT"):  # how docs/report.png was made
        shutil.copy(shot, os.environ["KPACK_SAVE_REPORT_SCREENSHOT"])


def test_kpack_report_builds_the_newest_and_the_ledger_links_to_it(runs, monkeypatch):
    from click.testing import CliRunner

    from packager.cli import cli

    base, outs = runs
    project = base / "project"
    project.mkdir(exist_ok=True)
    (project / "kpack.yaml").write_text("competition: digits-multilabel\nkaggle_user: alice\nbackend: local\n"
                                        "kernels:\n  train: {entry: kernel_src/train.py, slug: rt-train}\n")
    monkeypatch.chdir(project)
    (outs["rt-infer"] / report.REPORT).unlink(missing_ok=True)
    done = CliRunner().invoke(cli, ["report"])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == str(outs["rt-infer"] / report.REPORT) and (outs["rt-infer"] / "report.html").is_file()
    done = CliRunner().invoke(cli, ["report", "train"])
    assert done.output.strip() == str(outs["rt-train-b"] / report.REPORT)
    table = ledger.table(ledger.read()).splitlines()
    assert table[0].split()[-1] == "report"
    assert table[2].endswith(str(outs["rt-train-b"] / report.REPORT)) and table[4].endswith("report.html")


@pytest.mark.parametrize("average", ["samples", "macro", "micro"])
def test_the_report_scores_as_the_kit_does(average):
    """The report scores out-of-fold curves without importing the kit (its copy may be edited): the same numbers."""
    import numpy as np
    from kernel_src import metrics

    rng = np.random.default_rng(2)
    y, pred = rng.random((120, 7)) < 0.2, rng.random((120, 7)) < 0.3
    y[:, 6], pred[:, 6] = False, False
    for beta in (1.0, 2.0):
        assert report.fbeta_score(y, pred, beta, average) == pytest.approx(
            metrics.fbeta_score(y, pred, beta=beta, average=average))
