"""The runtime planner (kernel_src.planner) and infer's plan: arithmetic, the cheapest drop that fits, warn vs
refuse, and the prediction against the measured run of real tiny timm models (several members, TTA, a
hidden-test multiplier): the real kit's infer kernel pushed to the local Kaggle, and in a fake Kaggle root."""
import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from kernel_src import infer, planner
from kit_support import train_in_process
from packager import democomp

SLUG = "digits-multilabel"
REPO = Path(__file__).resolve().parents[1]


def _member(name, models=1, load=1.0, start=0.5, batch=0.1, views=None, weight=1.0):
    return planner.MemberPlan(name, models, load, start, batch, views or {"none": 1.0, "hflip": 1.0}, weight)


def _plan(members, session_s=1e6, factor=1.0, rows=100, batch_size=10, views=("none", "hflip"), elapsed=0.0):
    return planner.Plan.make(members, views=list(views), rows=rows, batch_size=batch_size,
                             hidden_test_factor=factor, write_s=2.0, session_s=session_s, elapsed_s=elapsed,
                             margin_s=10.0, timed_batches=5)


def test_prediction_arithmetic():
    a = _member("a", models=2, views={"none": 1.0, "hflip": 0.5})
    b = _member("b", models=1, load=3.0, start=0.0, batch=0.2, views={"none": 2.0, "hflip": 2.0})
    plan = _plan([a, b], rows=95, batch_size=10, factor=3.0, elapsed=100.0, session_s=1000.0)
    # 9.5 batches: a = 2 * (1 + 0.5 + 9.5 * (0.1 + 1.5)), b = 3 + 9.5 * 4.2; + 2 s writing
    assert plan.predicted_s == pytest.approx(2 * (1.5 + 9.5 * 1.6) + 3 + 9.5 * 4.2 + 2)
    # the hidden test set: 28.5 batches, writing x3
    assert plan.predicted_hidden_s == pytest.approx(2 * (1.5 + 28.5 * 1.6) + 3 + 28.5 * 4.2 + 6)
    assert plan.available_s() == pytest.approx(1000 - 100 - 10)
    assert plan.fits and plan.drop == {} and plan.drop_line() == "nothing to drop: the plan fits"
    saved = plan.as_dict(actual_s=40.0)
    assert saved["predicted_s"] == pytest.approx(plan.predicted_s, abs=1e-3) and saved["actual_s"] == 40.0
    assert [m["name"] for m in saved["members"]] == ["a", "b"] and saved["fits"] is True


def test_the_cheapest_drop_that_fits():
    # per member and batch: none 1 s, hflip 1 s, vflip 1 s; 10 batches; 3 members, c the lightest in the blend
    views = {"none": 1.0, "hflip": 1.0, "vflip": 1.0}
    members = [_member(n, load=0, start=0, batch=0, views=views, weight=w) for n, w in (("a", .4), ("b", .4), ("c", .2))]
    full = _plan(members, views=views, session_s=1e6).predicted_s
    assert full == pytest.approx(3 * 30 + 2)
    # 70 s free: one view dropped (3 x 20 + 2 = 62) fits, as does one member (2 x 30 + 2 = 62): the view goes
    plan = _plan(members, views=views, session_s=70 + 10)
    assert not plan.fits and plan.drop == {"views": ["none"], "members": [], "seconds": 62.0}
    assert plan.drop_line() == "drop TTA view(s) none (kit.augment.tta: ['hflip', 'vflip']): 62 s predicted"
    # 45 s free: no single drop fits; two views (3 x 10 + 2 = 32) against a view and a member (2 x 20 + 2 = 42):
    # as many drops, views first (no blend weight lost)
    assert _plan(members, views=views, session_s=45 + 10).drop["views"] == ["none", "hflip"]
    # 25 s free: two views and the lightest member (2 x 10 + 2 = 22)
    plan = _plan(members, views=views, session_s=25 + 10)
    assert plan.drop == {"views": ["none", "hflip"], "members": ["c"], "seconds": 22.0}
    assert "member(s) c" in plan.drop_line()
    # 5 s free: even one view of one member (12 s) does not fit
    plan = _plan(members, views=views, session_s=5 + 10)
    assert plan.drop == {} and plan.drop_line().startswith("no subset of TTA views and members fits")


def test_the_drop_search_is_greedy_beyond_its_limit(monkeypatch):
    monkeypatch.setattr(planner, "MAX_SEARCH", 4)
    members = [_member(n, load=0, start=0, batch=0, views={"none": 1.0, "hflip": 1.0}) for n in "abc"]
    plan = _plan(members, session_s=25 + 10)  # 10 batches: one member with both views (20 + 2) fits
    assert plan.drop and plan.drop["seconds"] <= 25 and len(plan.drop["members"]) <= 2


def test_time_member_excludes_the_warm_up():
    ticks = iter(range(1000))
    clock = lambda: float(next(ticks))  # every reading one second later
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.zeros(2, 3, 2, 2), None, [0, 1])] * 4
    views = {"none": lambda x: x, "hflip": lambda x: x.flip(-1)}
    timing = planner.time_member(net, batches, views, torch.device("cpu"), batches=2, warmup=1,
                                 clock=clock)
    # readings per batch: load start/end, then start/end per view: 1 s each; the first also t0 and first_load
    assert timing.batches == 2 and timing.batch_load_s == 1.0 and timing.view_s == {"none": 1.0, "hflip": 1.0}


# -------------------------------------------------------------------------------- real models, real timing

KIT = {"seed": 0, "data": {"image_size": 32, "folds": 2, "fold": 0, "num_workers": 0},
       "augment": {"train": "none", "valid": "none", "tta": ["none", "hflip"]},
       "model": {"name": "test_resnet", "channels_last": False},
       "optim": {"batch_size": 16, "lr": 3e-3}, "stages": [{"epochs": 1}], "log_every_steps": 1000}


def _config(kit: dict, **infer_settings) -> dict:
    kit = copy.deepcopy(kit)
    kit["infer"] = {"batch_size": 16, "plan_batches": 20, **infer_settings}
    return {"competition": SLUG, "kaggle_user": "kpack", "kernels": {"infer": {"session_hours": 9}}, "kit": kit}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three members (learning rates), two of them with both folds: five test_resnet models."""
    base = tmp_path_factory.mktemp("planner")
    comp = democomp.generate(base / "comp", seed=0, n_train=48, n_test=1200, image_size=32)
    runs = {}
    for member, lr, folds in (("a", 3e-3, (0, 1)), ("b", 1e-2, (0, 1)), ("c", 1e-3, (0,))):
        for fold in folds:
            runs[f"{member}-f{fold}"] = {**copy.deepcopy(KIT), "optim": {"batch_size": 16, "lr": lr},
                                         "data": {**KIT["data"], "fold": fold}}
    return comp, train_in_process(base, comp.data_dir, SLUG, {
        name: {"competition": SLUG, "kaggle_user": "kpack", "kernels": {}, "kit": kit} for name, kit in runs.items()})


def _root(tmp_path: Path, monkeypatch, comp, runs: Path, members: list[str], public_rows: int | None = None) -> Path:
    """A Kaggle root with the runs mounted; `public_rows`: a competition folder whose sample_submission holds
    only the first rows (the public test set of a competition that reruns on the hidden, larger one)."""
    root = tmp_path / "kaggle"
    (root / "input" / "competitions").mkdir(parents=True)
    (root / "working").mkdir()
    data = root / "input" / "competitions" / SLUG
    if public_rows is None:
        data.symlink_to(comp.data_dir)
    else:
        data.mkdir()
        for item in comp.data_dir.iterdir():
            if item.name != "sample_submission.csv":
                (data / item.name).symlink_to(item)
        pd.read_csv(comp.data_dir / "sample_submission.csv", dtype=str).head(public_rows).to_csv(
            data / "sample_submission.csv", index=False)
    for name in members:
        shutil.copytree(runs / name, root / "input" / "notebooks" / "kpack" / f"train-{name}")
    monkeypatch.setenv("KPACK_KAGGLE_ROOT", str(root))
    monkeypatch.delenv("KPACK_SESSION_SECONDS", raising=False)
    return root


ATTEMPTS = 5  # the 2-core CI machine is shared: a run that a load spike hit is measured again, up to this often


def _within_10_percent(measure) -> None:
    """measure() -> (predicted, actual): passes as soon as one attempt lands within 10%."""
    seen = []
    for _ in range(ATTEMPTS):
        predicted, actual = measure()
        seen.append(f"{predicted:.2f} s predicted, {actual:.2f} s taken ({100 * (predicted - actual) / actual:+.1f}%)")
        print(seen[-1])
        if abs(predicted - actual) <= 0.10 * actual:
            return
    pytest.fail("the plan missed by more than 10% in every attempt: " + "; ".join(seen))


@pytest.mark.slow
def test_plans_land_within_10_percent_of_the_runs_on_the_local_kaggle(trained, local_kaggle, tmp_path, monkeypatch):
    """The real kit's infer kernel pushed to the local Kaggle (sandbox, mounts, the packed script) over five
    trained models of three members with two TTA views: its own plan against its run, then the plan that
    `kpack push infer --plan` makes on a public test set of 400 rows with kit.infer.hidden_test_factor 3
    against the run on the 1200 rows."""
    import os
    import subprocess
    import sys

    import yaml

    from packager import ledger
    from packager.localkaggle.store import Store
    from pushkit import isolate

    comp, runs = trained
    isolate(monkeypatch, tmp_path)
    project, prefix = tmp_path / "project", f"plan{os.getpid() % 10000}"
    shutil.copytree(REPO / "kernel_src", project / "kernel_src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("a-f0", "a-f1", "b-f0", "b-f1", "c-f0"):
        shutil.copytree(runs / name, project / "models" / name, ignore=shutil.ignore_patterns("*.npy", "*.csv"))
    shutil.copy(REPO / "requirements-kernel.txt", project)
    if (REPO / "build" / "wheel-cache").is_dir():  # the wheels a build here downloaded; a fresh clone downloads them
        (project / "build").mkdir()
        (project / "build" / "wheel-cache").symlink_to(REPO / "build" / "wheel-cache")
    store = Store(local_kaggle.root)
    store.create_competition(f"{prefix}-full", comp.data_dir, comp.solution_csv, code=True)
    public = _public_copy(comp, tmp_path / "public", rows=400)
    store.create_competition(f"{prefix}-public", public, tmp_path / "public-solution.csv", code=True)
    monkeypatch.chdir(project)
    env = {**os.environ, "KPACK_POLL_MIN_S": "0.2", "KPACK_POLL_MAX_S": "1", "PYTHONPATH": str(REPO)}

    def push_infer(competition: str, *flags: str) -> dict:
        kit = copy.deepcopy(KIT)
        kit["infer"] = {"batch_size": 16, "plan_batches": 20, "hidden_test_factor": 3}
        (project / "kpack.yaml").write_text(yaml.safe_dump({
            "competition": competition, "kaggle_user": "alice", "backend": "local",
            "local": {"port": local_kaggle.port, "root": str(local_kaggle.root)},
            "kernels": {"infer": {"entry": "kernel_src/infer.py", "slug": f"{prefix}-infer", "accelerator": "None",
                                  "session_hours": 9, "sources": {"competitions": [competition]}}},
            "datasets": {"weights": {"slug": f"{prefix}-weights", "dir": "models"},
                         "wheels": {"slug": f"{prefix}-wheels", "requirements": "requirements-kernel.txt"}},
            "kit": kit}))
        done = subprocess.run([sys.executable, "-m", "packager.cli", "push", "infer", *flags], cwd=project,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        row = ledger.latest(kind="infer")
        assert row["status"] == "COMPLETE" and row["plan"]["fits"], row
        return row

    def own_plan():
        plan = push_infer(f"{prefix}-full")["plan"]
        return plan["predicted_s"], plan["actual_s"]

    _within_10_percent(own_plan)
    row = ledger.latest(kind="infer")
    plan = json.loads((Path(row["output"]) / infer.PLAN_FILE).read_text())
    assert sorted(m["models"] for m in plan["members"]) == [1, 2, 2]  # members go by name, which carries the training hash
    assert plan["views"] == ["none", "hflip"] and plan["rows"] == 1200
    assert plan["session_s"] <= 9 * 3600  # kernels.infer.session_hours, or the local Kaggle's shorter limit
    log = next(Path(row["output"]).glob("*.log")).read_text()
    assert "[kpack] plan: " in log and " taken (" in log
    sample = pd.read_csv(comp.data_dir / "sample_submission.csv", dtype=str)
    written = pd.read_csv(Path(row["output"]) / infer.SUBMISSION, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(sample.columns) and written.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()

    def hidden_plan():
        planned = push_infer(f"{prefix}-public", "--plan")
        assert planned["kernel"] == f"alice/{prefix}-infer-plan" and planned["plan"]["actual_s"] is None
        assert planned["plan"]["hidden_test_factor"] == 3
        return planned["plan"]["predicted_hidden_s"], push_infer(f"{prefix}-full")["plan"]["actual_s"]

    _within_10_percent(hidden_plan)


def _public_copy(comp, out: Path, rows: int) -> Path:
    """The competition with only its first `rows` test rows in sample_submission.csv (and the solution): the
    public test set of a competition that reruns its kernel on the hidden, larger one."""
    out.mkdir(parents=True)
    for item in comp.data_dir.iterdir():
        if item.name != "sample_submission.csv":
            (out / item.name).symlink_to(item)
    pd.read_csv(comp.data_dir / "sample_submission.csv", dtype=str).head(rows).to_csv(
        out / "sample_submission.csv", index=False)
    pd.read_csv(comp.solution_csv, dtype=str).head(rows).to_csv(out.parent / f"{out.name}-solution.csv", index=False)
    return out


@pytest.mark.slow
def test_a_plan_that_does_not_fit_is_refused_in_one_line(trained, tmp_path, monkeypatch, capsys):
    from kernel_src import clock
    import time

    comp, runs = trained
    root = _root(tmp_path, monkeypatch, comp, runs, ["a-f0", "b-f0"])
    kit = {**KIT, "session": {"margin_seconds": 0}}
    # a hidden test set making the run about 2000 s, and a session that leaves 1500 s of it: too little for
    # both members with both views, enough for one view or one member
    probe = json.loads(infer.run(_config(kit, plan_only=True), log=lambda line: None).read_text())
    factor = 2000 / probe["predicted_s"]
    monkeypatch.setenv("KPACK_SESSION_SECONDS", str(int(time.monotonic() - clock.STARTED + 1500)))
    with pytest.raises(SystemExit) as stop:
        infer.main(_config(kit, plan="refuse", hidden_test_factor=factor))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[kpack] error: the plan does not fit:"), err
    assert "(kit.infer.plan: warn runs it anyway)" in err[0]
    assert not (root / "working" / infer.SUBMISSION).exists()  # nothing predicted
    saved = json.loads((root / "working" / infer.PLAN_FILE).read_text())
    # What to drop depends on this run's timing (one view, or a member when the machine ran slower than the
    # probe): the line names what plan.json says; which drop is cheapest is test_the_cheapest_drop_that_fits's.
    drop = saved["drop"]
    assert saved["fits"] is False and 1 <= len(drop["views"]) + len(drop["members"]) <= 2, drop
    said = "; drop TTA view(s) " if drop["views"] else "; drop member(s) "
    assert said in err[0], err

    # warn: the same plan runs, with a warning that says what to drop
    lines: list[str] = []
    infer.run(_config(kit, plan="warn", hidden_test_factor=factor), log=lines.append)
    assert any(line.startswith("[kpack] warning: the plan does not fit") and "; drop " in line for line in lines)
    assert (root / "working" / infer.SUBMISSION).is_file()


def test_infer_plan_settings_are_validated():
    from kernel_src import settings

    with pytest.raises(settings.SettingsError, match=r"kit\.infer\.hidden_test_factor: expected a number above 0"):
        infer.kit_settings(_config({}, hidden_test_factor=0))
    with pytest.raises(settings.SettingsError, match=r"kit\.infer\.plan_batches"):
        infer.kit_settings(_config({}, plan_batches=0))
    with pytest.raises(settings.SettingsError, match=r"kit\.infer\.plan"):
        infer.kit_settings(_config({}, plan="maybe"))


# ------------------------------------------------------------------------ kpack push infer --plan, locally

PLAN_ENTRY = '''import json
import os
from pathlib import Path

import torch

from kernel_src import planner


def main(config):
    """The real planner over a tiny network: plan.json; without kit.infer.plan_only also a submission."""
    work = Path(os.environ.get("KPACK_KAGGLE_ROOT") or "/kaggle") / "working"
    settings = config["kit"].get("infer") or {}
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    views = ["none", "hflip"]
    timing = planner.time_member(net, [(torch.rand(8, 3, 4, 4), None, list(range(8)))] * 6,
                                 {"none": lambda x: x, "hflip": lambda x: x.flip(-1)},
                                 torch.device("cpu"), batches=4)
    members = [planner.MemberPlan(name, models, 0.01, timing.start_s, timing.batch_load_s, timing.view_s, weight)
               for name, models, weight in (("m1", 2, 0.6), ("m2", 1, 0.4))]
    plan = planner.Plan.make(members, views=views, rows=10 ** 9, batch_size=8, write_s=0.01, session_s=72.0,
                             hidden_test_factor=float(settings.get("hidden_test_factor", 1)), elapsed_s=1.0,
                             margin_s=1.0, timed_batches=timing.batches)
    actual = None
    if not settings.get("plan_only"):
        (work / "submission.csv").write_text("id,attribute_ids\\\\na,1\\\\n")
        actual = 3.5
    (work / "plan.json").write_text(json.dumps(plan.as_dict(actual)))
'''


@pytest.mark.slow
def test_kpack_push_infer_plan_prints_the_plan(local_kaggle, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from packager import ledger
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    project = make_project(tmp_path, local_kaggle, datasets=False, infer=True)
    repo = Path(__file__).resolve().parents[1]
    for name in ("planner.py",):
        shutil.copy(repo / "kernel_src" / name, project.root / "kernel_src" / name)
    project.write_entry(PLAN_ENTRY, "infer_entry.py")
    with open(project.root / "kpack.yaml", "a") as f:
        f.write("kit: {infer: {hidden_test_factor: 2}}\n")
    env = {**os.environ, "KPACK_POLL_MIN_S": "0.2", "KPACK_POLL_MAX_S": "1"}

    def kpack(*args):
        return subprocess.run([sys.executable, "-m", "packager.cli", *args], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=240)

    wrong = kpack("push", "train", "--plan")
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith("--plan: only with `kpack push infer` "
                                                                    "(and waiting for it): it times the infer kernel")
    done = kpack("push", "infer", "--plan")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    plan_line = next(line for line in out if line.startswith("plan: "))
    assert "TTA views (none, hflip)" in plan_line and "(x2)" in plan_line and "does NOT fit" in plan_line
    assert sum(line.startswith("  member m") for line in out) == 2
    assert any(line.startswith("to fit, drop ") or line.startswith("no subset of TTA views") for line in out)
    monkeypatch.chdir(project.root)
    row = ledger.latest(kind="infer")
    assert row["kernel"] == f"alice/{project.prefix}-infer-plan" and row["status"] == "COMPLETE"
    assert row["plan"]["actual_s"] is None and row["plan"]["fits"] is False and row["plan"]["predicted_s"] > 72
    assert row["plan"]["hidden_test_factor"] == 2

    # the infer kernel itself: its plan's prediction and the run's time in its ledger row
    done = kpack("push", "infer")
    assert done.returncode == 0, done.stdout + done.stderr
    row = ledger.latest(kind="infer")
    assert row["kernel"] == f"alice/{project.prefix}-infer" and row["plan"]["actual_s"] == 3.5


# ------------------------------------------------------------------ the members validate's thresholds.json names

@pytest.mark.slow
def test_infer_blends_exactly_the_members_thresholds_json_names(trained, tmp_path, monkeypatch, capsys):
    from kernel_src import validate

    comp, runs = trained
    root = _root(tmp_path / "validate", monkeypatch, comp, runs, ["a-f0", "a-f1", "b-f0", "b-f1"])
    validate.run(_config(KIT, plan="off"), log=lambda line: None)
    decision = json.loads((root / "working" / "thresholds.json").read_text())
    named = decision["blend"]["members"]
    assert len(named) == 2

    # a, b and c mounted: c, which validate did not blend, is left out; a and b get validate's weights
    root = _root(tmp_path / "extra", monkeypatch, comp, runs, ["a-f0", "a-f1", "b-f0", "b-f1", "c-f0"])
    shutil.copytree(tmp_path / "validate" / "kaggle" / "working", root / "input" / "notebooks" / "kpack" / "validate")
    lines: list[str] = []
    infer.run(_config(KIT, plan="off"), log=lines.append)
    blended = [line for line in lines if line.startswith("[kpack] member ") and "model(s)" in line]
    assert [line.split()[2].rstrip(":") for line in blended] == named
    assert any("not in" in line and "left out" in line for line in lines)
    sample = pd.read_csv(comp.data_dir / "sample_submission.csv", dtype=str)
    written = pd.read_csv(root / "working" / infer.SUBMISSION, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(sample.columns) and written.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()

    # only a mounted: the blend names b, which no mounted model is: one line, nothing written
    root = _root(tmp_path / "missing", monkeypatch, comp, runs, ["a-f0", "a-f1"])
    shutil.copytree(tmp_path / "validate" / "kaggle" / "working", root / "input" / "notebooks" / "kpack" / "validate")
    with pytest.raises(SystemExit) as stop:
        infer.main(_config(KIT, plan="off"))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "blends member" in err[0] and "which no mounted model is" in err[0]
    assert not (root / "working" / infer.SUBMISSION).exists()


@pytest.mark.slow
def test_a_sample_submission_of_another_layout_is_refused_in_one_line(trained, tmp_path, monkeypatch, capsys):
    comp, runs = trained
    root = _root(tmp_path, monkeypatch, comp, runs, ["c-f0"], public_rows=20)
    sample = root / "input" / "competitions" / SLUG / "sample_submission.csv"
    frame = pd.read_csv(sample, dtype=str)
    frame["extra"] = "0"
    frame.to_csv(sample, index=False)
    with pytest.raises(SystemExit):
        infer.main(_config(KIT, plan="off"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has columns ['id', 'attribute_ids', 'extra']: infer writes two" in err[0]
    assert not (root / "working" / infer.SUBMISSION).exists()
