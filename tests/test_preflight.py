"""Pre-flight checks (packager/preflight.py): the kit's settings and the weights files it names are checked on
this machine before anything is built or uploaded; `kpack check KIND` runs every check and prints one line each."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from packager import importcheck, preflight
from packager.build import build_kernel
from packager.config import load_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TIMM = metadata.version("timm")
ENTRY = "def main(config):\n    print('trained')\n"
BASE = """competition: mini-comp
kaggle_user: alice
kernels:
  train: {entry: kernel_src/train.py, accelerator: 'None'}
  infer: {entry: kernel_src/train.py, accelerator: 'None'}
datasets:
  weights: {slug: mini-comp-weights, dir: models}
kit:
  model: {name: resnet18%s}
  optim: {lr: %s}
"""


def project(tmp_path: Path, model: str = "", lr: str = "1.0e-3", extra: str = "", settings: bool = True) -> Path:
    """A project using the kit (kernel_src/settings.py is the repository's) with models/resnet18.a1_in1k.pth."""
    root = tmp_path / "proj"
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "__init__.py").write_text("")
    (root / "kernel_src" / "train.py").write_text(ENTRY)
    if settings:
        shutil.copy(REPO / "kernel_src" / "settings.py", root / "kernel_src" / "settings.py")
    (root / "models").mkdir()
    (root / "models" / "resnet18.a1_in1k.pth").write_bytes(b"weights")
    (root / "kpack.yaml").write_text(BASE % (model, lr) + extra)
    return root


def kpack(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packager.cli", *args], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}, timeout=120)


# --------------------------------------------------------------------------------------------- kit settings

def test_a_bad_kit_value_stops_the_build_before_anything_is_built(tmp_path):
    root = project(tmp_path, lr="fast")
    done = kpack(root, "build", "train")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: kpack.yaml: line 10: kit.optim.lr: expected a number (got 'fast')"]
    assert not (root / "build").exists()


def test_an_unknown_kit_key_stops_the_build(tmp_path):
    root = project(tmp_path, extra="  optimiser: {lr: 0.1}\n")
    done = kpack(root, "build", "infer")  # every kernel that runs the kit validates it
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: kpack.yaml: line 11: kit.optimiser: unknown field; remove it or check its spelling"]
    assert not (root / "build").exists()


def test_a_model_name_timm_does_not_know_stops_the_build_with_the_names_it_is_close_to(tmp_path):
    root = project(tmp_path)
    (root / "kpack.yaml").write_text((root / "kpack.yaml").read_text().replace("name: resnet18", "name: resnet18x"))
    done = kpack(root, "build", "train")  # the local backend: the kernel imports this venv's timm
    assert done.returncode == 2 and not (root / "build").exists()
    assert done.stderr.startswith(f"error: kpack.yaml: line 9: kit.model.name: timm {TIMM} has no model "
                                  "'resnet18x' (did you mean resnet18"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_hub_model_name_is_refused_and_a_tagged_or_project_registered_one_builds(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.a1_in1k.pth")
    config = (root / "kpack.yaml").read_text()
    (root / "kpack.yaml").write_text(config.replace("name: resnet18", "name: 'hf-hub:timm/resnet18.a1_in1k'"))
    done = kpack(root, "build", "train")
    assert done.returncode == 2 and "is read from the Hugging Face hub, which a Kaggle kernel without internet " \
        "cannot reach" in done.stderr, done.stderr
    (root / "kpack.yaml").write_text(config.replace("name: resnet18", "name: resnet18.a1_in1k"))
    assert kpack(root, "build", "train").returncode == 0  # arch.tag: the arch is timm's
    (root / "kernel_src" / "mynet.py").write_text("from timm.models import register_model\n\n\n@register_model\n"
                                                  "def my_tiny_net(pretrained=False, **kwargs):\n    ...\n")
    (root / "kpack.yaml").write_text(config.replace("name: resnet18", "name: my_tiny_net"))
    done = kpack(root, "check", "train")
    assert "ok: kit.model.name: my_tiny_net is registered by kernel_src/mynet.py" in done.stdout, done.stdout


def test_an_unknown_model_name_is_a_warning_when_the_kernels_timm_is_another_version(tmp_path, monkeypatch):
    root = project(tmp_path)
    text = (root / "kpack.yaml").read_text().replace("name: resnet18", "name: resnet18x")
    (root / "kpack.yaml").write_text(text.replace("dir: models}", "dir: models}\n  wheels: {slug: mini-comp-wheels, "
                                                  "requirements: req.txt}"))
    (root / "req.txt").write_text("timm==0.9.16\n")  # not the timm here: it may know names this one does not
    found = preflight.check_model(load_config(root / "kpack.yaml"), "train", root)
    assert found.line == f"kit.model.name: resnet18x is not a model of timm {TIMM} here"
    assert found.warnings[0].startswith(f"kit.model.name: timm {TIMM} has no model 'resnet18x'")
    assert found.warnings[0].endswith("the kernel imports timm 0.9.16, which may know it")
    (root / "req.txt").write_text(f"timm=={TIMM}\n")
    with pytest.raises(UserError, match=f"timm {TIMM} has no model 'resnet18x'"):
        preflight.check_model(load_config(root / "kpack.yaml"), "train", root)


def test_timm_names_are_listed_once_per_version_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    version, names = preflight._timm_models()
    cached = tmp_path / "cache" / "kpack" / f"timm-{version}-models.txt"
    assert version == TIMM and "resnet18" in names and cached.read_text().split() == sorted(names)
    cached.write_text("only_this_one\n")  # what the cache says is what the next look believes
    assert preflight._timm_models() == (TIMM, frozenset({"only_this_one"}))


def test_a_project_without_the_kit_is_not_checked(tmp_path):
    root = project(tmp_path, lr="fast", settings=False)  # its own kernel_src validates its own settings
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_kit(cfg, "train", root).line == (
        "kit: not checked: kernel_src/settings.py is not in this project (its entries validate their own settings)")
    build_kernel(cfg, "train", root=root)


def test_a_kit_copied_under_another_package_is_checked_where_it_lies(tmp_path):
    root = project(tmp_path, lr="fast")
    (root / "src").mkdir()
    (root / "kernel_src").rename(root / "src" / "mycomp")  # the kit's settings.py beside the entry, in src/mycomp/
    text = (root / "kpack.yaml").read_text().replace("kernel_src/train.py", "src/mycomp/train.py")
    (root / "kpack.yaml").write_text(text)
    cfg = load_config(root / "kpack.yaml")
    with pytest.raises(UserError, match=r"kit.optim.lr: expected a number \(got 'fast'\)"):
        preflight.check_kit(cfg, "train", root)


# --------------------------------------------------------------------------------------------- weights files

def test_a_weights_file_missing_from_the_weights_dataset_stops_the_build(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.tv_in1k.pth")
    done = kpack(root, "build", "train")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: kpack.yaml: line 9: kit.model.weights: 'resnet18.tv_in1k.pth' is not in models/ (the weights "
        "dataset mini-comp-weights; it holds: resnet18.a1_in1k.pth); put the file there or fix the name"]
    assert not (root / "build").exists()


def test_pretrained_needs_a_file_for_the_architecture(tmp_path):
    root = project(tmp_path, model=", pretrained: true")
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_weights(cfg, "train", root).line == (
        "kit.model.pretrained: resnet18.a1_in1k.pth is in models/ (the weights dataset mini-comp-weights)")
    (root / "models" / "resnet18.a1_in1k.pth").rename(root / "models" / "backbone.pth")
    with pytest.raises(UserError) as err:
        build_kernel(cfg, "train", root=root)
    assert str(err.value) == (
        f"{root / 'kpack.yaml'}: line 9: kit.model.pretrained: a file for 'resnet18' is not in models/ (the weights "
        "dataset mini-comp-weights; it holds: backbone.pth); name it 'resnet18.<tag>.pth' or map it in "
        "models/models.yaml")
    (root / "models" / "models.yaml").write_text("backbone.pth: resnet18\n")  # the kit's own mapping
    assert preflight.check_weights(cfg, "train", root).line.startswith("kit.model.pretrained: backbone.pth is in")


def test_weights_found_by_name_build(tmp_path):
    # a path is looked up by its name in the kernel (kernel_src/models.py), so only the name must be there
    root = project(tmp_path, model=", weights: /kaggle/input/mini-comp-weights/resnet18.a1_in1k.pth")
    built = build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert built.warnings == ()


def test_weights_may_come_from_another_dataset_source_with_a_warning(tmp_path):
    root = project(tmp_path, model=", weights: convnext.pth")
    text = (root / "kpack.yaml").read_text().replace(
        "accelerator: 'None'}", "accelerator: 'None', sources: {datasets: [bob/convnext-weights]}}", 1)
    (root / "kpack.yaml").write_text(text)
    built = build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert built.warnings == (
        "kit.model.weights: 'convnext.pth' is not in models/ (the weights dataset mini-comp-weights; it holds: "
        "resnet18.a1_in1k.pth); put the file there or fix the name; unless bob/convnext-weights holds it",)


def test_no_weights_dataset_at_all(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.a1_in1k.pth")
    text = (root / "kpack.yaml").read_text().replace("datasets:\n  weights: {slug: mini-comp-weights, dir: models}\n", "")
    (root / "kpack.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        build_kernel(load_config(root / "kpack.yaml"), "train", root=root)
    assert str(err.value) == (
        f"{root / 'kpack.yaml'}: line 7: kit.model.weights: 'resnet18.a1_in1k.pth' is in no dataset of the kernel: "
        f"add datasets.weights to {root / 'kpack.yaml'} with a dir holding it")


def test_validate_and_infer_do_not_need_the_pretrained_file(tmp_path):
    root = project(tmp_path, model=", weights: gone.pth")
    cfg = load_config(root / "kpack.yaml")
    assert preflight.check_weights(cfg, "infer", root).line == (
        "kit weights: not needed by the infer kernel (it loads the trained models)")
    build_kernel(cfg, "infer", root=root)


# --------------------------------------------------------------------------------------------- kpack check

def test_kpack_check_prints_one_line_per_check(tmp_path):
    root = project(tmp_path, model=", weights: resnet18.a1_in1k.pth")
    done = kpack(root, "check", "train")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ok: kpack.yaml: valid",
        "ok: kernels.train.entry: kernel_src/train.py defines main(config)",
        "ok: kernels.train.accelerator: None (CPU only); session_hours 12 of 12 h",
        "ok: kernels.train: kernel-metadata.json for alice/mini-comp-train ('Mini Comp Train') as the kaggle "
        "client accepts it",
        "ok: kit: valid for kernel_src/settings.py",
        f"ok: kit.model.name: resnet18 is a timm {TIMM} model",
        "ok: kit.model.weights: resnet18.a1_in1k.pth is in models/ (the weights dataset mini-comp-weights)",
        "ok: imports: every import of the packed code resolves (packed, standard library, wheels dataset or image)",
        "ok: kernels.train.sources: none to look up",
        "ok: code competition: not checked for the train kernel (only infer is submitted)",
        "ok: metric: not checked: kernel_src/metrics.py does not say the kit's BETA",  # settings.py only, here
    ]
    assert not (root / "build" / "kernels").exists()  # it builds nothing (the import check keeps a parse cache)


def test_kpack_check_reports_every_failure_and_exits_2(tmp_path):
    root = project(tmp_path, lr="fast")
    text = (root / "kpack.yaml").read_text().replace("accelerator: 'None'}", "accelerator: NvidiaK80}", 1)
    (root / "kpack.yaml").write_text(text)
    (root / "kernel_src" / "train.py").write_text("import nosuchpkg\n\n\ndef run(config):\n    pass\n")
    done = kpack(root, "check", "train")
    image = importcheck.kernel_sources(load_config(root / "kpack.yaml"), root).image.label
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "ok: kpack.yaml: valid",
        "error: kernel_src/train.py: no main(config) function; the kernel calls main(config) of its entry",
        "ok: kernels.train.accelerator: NvidiaK80 (not in kpack's table: taken for a GPU); session_hours 12 "
        "of 12 h",
        "warning: kernels.train.accelerator: 'NvidiaK80' is not a machine shape kpack knows (None, NvidiaTeslaT4, "
        "NvidiaTeslaT4Highmem, NvidiaL4, NvidiaL4X1, NvidiaTeslaA100, NvidiaH100, NvidiaRtxPro6000, TpuV38, "
        "Tpu1VmV38, TpuV5E8, TpuV6E8); it is pushed as given, and Kaggle refuses names it does not know",
        "ok: kernels.train: kernel-metadata.json for alice/mini-comp-train ('Mini Comp Train') as the kaggle "
        "client accepts it",
        "error: kpack.yaml: line 10: kit.optim.lr: expected a number (got 'fast')",
        "ok: kit.model.name: not checked: the kit settings are invalid",
        "ok: kit weights: not checked: the kit settings are invalid",
        "error: kernel_src/train.py:1: `import nosuchpkg` resolves to nothing in the kernel: nosuchpkg is not "
        f"packed, no wheels dataset, not in {image}; add a wheels dataset (datasets.wheels) whose requirements name "
        "its distribution, or pack its folder with kernels.train.packages",
        "ok: kernels.train.sources: none to look up",
        "ok: code competition: not checked for the train kernel (only infer is submitted)",
        "ok: metric: not checked: kernel_src/metrics.py does not say the kit's BETA",
    ]
    assert done.stderr.splitlines() == ["error: kpack check train: 3 of 11 checks failed"]


# --------------------------------------------------------------------------------------------- kpack push

def test_push_with_a_bad_kit_uploads_nothing(local_kaggle, tmp_path, monkeypatch):
    from packager.push import push_kernel
    from pushkit import isolate, make_project

    isolate(monkeypatch, tmp_path)
    proj = make_project(tmp_path, local_kaggle)
    shutil.copy(REPO / "kernel_src" / "settings.py", proj.root / "kernel_src" / "settings.py")
    with open(proj.root / "kpack.yaml", "a") as f:
        f.write("kit:\n  optim: {lr: fast}\n")
    monkeypatch.chdir(proj.root)
    local_kaggle.reset_stats()
    with pytest.raises(UserError, match=r"kpack.yaml: line \d+: kit.optim.lr: expected a number \(got 'fast'\)$"):
        push_kernel(proj.cfg(), "train", wait=False)
    assert proj.dataset() is None and proj.kernel_versions() == []
    assert not (proj.root / "build").exists()  # neither the kernel nor the weights dataset was built


# --------------------------------------------------------------------------------------------- on the backend

def backend_project(tmp_path: Path, server, competition: str, train: str = "", infer: str = "",
                    top: str = "") -> Path:
    """A project without the kit on the test's local Kaggle; `train`/`infer`: extra fields of those kernels."""
    root = tmp_path / "proj"
    if not root.exists():
        project(tmp_path, settings=False)
    (root / "kpack.yaml").write_text(
        f"competition: {competition}\nkaggle_user: alice\nlocal: {{port: {server.port}, root: '{server.root}'}}\n"
        f"{top}kernels:\n  train: {{entry: kernel_src/train.py, accelerator: 'None'{train}}}\n"
        f"  infer: {{entry: kernel_src/train.py, accelerator: 'None'{infer}}}\n"
        "datasets:\n  weights: {slug: " + competition + "-weights, dir: models}\n")
    return root


def check_lines(root: Path, kind: str, tmp_path: Path) -> tuple[int, list[str]]:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "packager.cli", "check", kind], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                       "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")})
    return done.returncode, [line for line in done.stdout.splitlines()
                             if "sources" in line or "competition" in line]


def test_sources_missing_on_the_backend_are_named_in_one_line(local_kaggle, run_kaggle, tmp_path):
    from conftest import USER
    from pushkit import make_competition
    from test_localkaggle_cli import make_dataset, make_kernel, ok, uniq
    from test_models import _create_model_with_cli

    comp, data, kernel = uniq("pf-comp"), uniq("pf-data"), uniq("pf-kernel")
    model_slug = uniq("pf-model")
    model = f"{USER}/{model_slug}/pytorch/base/1"
    sources = (f", sources: {{datasets: [{USER}/{data}, {USER}/{comp}-weights], kernels: [{USER}/{kernel}], "
               f"models: [{model}], competitions: [{comp}]}}")
    root = backend_project(tmp_path, local_kaggle, comp, train=sources)
    code, lines = check_lines(root, "train", tmp_path)
    assert code == 2
    assert lines == [
        f"error: kpack.yaml: line 5: kernels.train.sources: not on the local Kaggle (or not visible to alice): "
        f"dataset {USER}/{data}, kernel {USER}/{kernel}, model {model}, competition {comp}; fix the name or create "
        "it first",
        "ok: code competition: not checked for the train kernel (only infer is submitted)"]
    # made: each is found with one call; the weights dataset kpack itself makes is not looked up
    ok(run_kaggle("datasets", "create", "-p", str(make_dataset(tmp_path / "ds", data, {"a.csv": "x\n1\n"}))))
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "k", kernel, "print('hi')\n"))))
    _create_model_with_cli(run_kaggle, tmp_path / "m", model_slug, {"weights.bin": b"w"})
    make_competition(local_kaggle, comp, tmp_path / "c")
    local_kaggle.reset_stats()
    code, lines = check_lines(root, "train", tmp_path)
    assert code == 0, lines
    assert lines[0] == (f"ok: kernels.train.sources: 1 dataset, 1 kernel, 1 model, 1 competition found on the local "
                        f"Kaggle ({USER}/{comp}-weights: made by kpack in this push)")
    calls = local_kaggle.stats()["calls"]
    calls.pop("IntrospectToken", None)  # the client's own sign-in
    assert calls == {"GetDatasetStatus": 1, "GetKernel": 1, "GetModelInstance": 1, "ListCompetitions": 1}  # 1 each


def test_the_chains_own_sessions_are_not_looked_up(local_kaggle, tmp_path):
    comp = "pf-chain-comp"
    root = backend_project(tmp_path, local_kaggle, comp,
                           infer=f", sources: {{kernels: [alice/{comp}-train-b]}}")
    assert check_lines(root, "infer", tmp_path)[1][0] == (
        f"ok: kernels.infer.sources: none to look up (alice/{comp}-train-b: made by kpack in this push)")


def test_code_competition_infer_kernel_needs_the_internet_off(local_kaggle, tmp_path):
    from pushkit import make_competition
    from test_localkaggle_cli import uniq

    comp = uniq("pf-code")
    make_competition(local_kaggle, comp, tmp_path / "c")  # a code competition: the local Kaggle says so
    root = backend_project(tmp_path, local_kaggle, comp, infer=f", internet: true, sources: {{competitions: [{comp}]}}")
    local_kaggle.reset_stats()
    code, lines = check_lines(root, "infer", tmp_path)
    assert local_kaggle.stats()["calls"].get("ListCompetitions") == 1  # the sources and code checks ask once
    assert code == 2
    assert lines[-1] == (
        f"error: kpack.yaml: line 6: kernels.infer.internet: {comp} is a code competition (the local Kaggle's "
        "metadata): Kaggle takes submissions only from notebooks with the internet off; set internet: false (ship "
        "packages in the wheels dataset)")
    root = backend_project(tmp_path, local_kaggle, comp)
    code, lines = check_lines(root, "infer", tmp_path)
    assert code == 0 and lines[-2:] == [
        f"ok: code competition: {comp} (the local Kaggle's metadata): internet off; session_hours 12",
        f"warning: competition_limits.runtime_hours is not set: {comp} reruns the infer kernel under its own "
        "run-time limit (see its rules, often 9 h); set it to have kernels.infer.session_hours checked against it"]
    root = backend_project(tmp_path, local_kaggle, comp, top="competition_limits: {runtime_hours: 9}\n")
    assert check_lines(root, "infer", tmp_path)[1][-1] == (
        f"ok: code competition: {comp} (the local Kaggle's metadata): internet off; session_hours 9 fits its 9 h "
        "run-time limit")  # session_hours defaults to the tighter limit
    root = backend_project(tmp_path, local_kaggle, comp, infer=", session_hours: 10",
                           top="competition_limits: {runtime_hours: 9}\n")
    code, lines = check_lines(root, "infer", tmp_path)
    assert code == 2  # the config itself is refused, before any check runs
    done = kpack(root, "check", "infer")
    assert done.stderr.splitlines() == [
        "error: kpack.yaml: line 7: kernels.infer.session_hours: 10 h is over the competition's 9 h run-time limit "
        "(competition_limits.runtime_hours); use 9 or less"]


def test_competition_type_in_the_config_and_file_competitions(local_kaggle, tmp_path):
    from packager.localkaggle.store import Store
    from test_localkaggle_cli import uniq

    comp = uniq("pf-file")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sample_submission.csv").write_text("id,attribute_ids\na,0\n")
    (tmp_path / "solution.csv").write_text("id,attribute_ids,Usage\na,1,Public\n")
    Store(local_kaggle.root).create_competition(comp, tmp_path / "d", tmp_path / "solution.csv")
    root = backend_project(tmp_path, local_kaggle, comp, infer=", internet: true")
    assert check_lines(root, "infer", tmp_path)[1][-1] == (
        f"ok: code competition: {comp} is not one (the local Kaggle's metadata); the infer kernel is not submitted")
    root = backend_project(tmp_path, local_kaggle, comp, infer=", internet: true", top="competition_type: code\n")
    code, lines = check_lines(root, "infer", tmp_path)
    assert code == 2 and lines[-1].startswith(
        f"error: kpack.yaml: line 7: kernels.infer.internet: {comp} is a code competition (competition_type: code):")
    root = backend_project(tmp_path, local_kaggle, "pf-nowhere-comp")
    assert check_lines(root, "infer", tmp_path)[1][-2:] == [
        "ok: code competition: pf-nowhere-comp not found on the local Kaggle; not checked",
        "warning: competition: pf-nowhere-comp is not on the local Kaggle: set competition_type: code (or file) in "
        "kpack.yaml, or fix the slug"]


def test_a_kit_project_is_warned_when_the_competition_is_scored_by_another_metric(local_kaggle, tmp_path):
    """The kit maximises per-sample F-beta (BETA in its metrics.py): an F2 competition reads as it, an F1 or AUC
    one is a warning naming both (not an error: Kaggle's metric names are free text), and a kit whose BETA was
    set to 1 reads an F1 competition as its own. Without the kit nothing is said."""
    from packager.localkaggle.store import Store
    from test_localkaggle_cli import uniq

    store, comps = Store(local_kaggle.root), {}
    for metric in ("f2-samples", "f1-samples", "f1-macro", "auc"):
        comps[metric] = uniq("pf-metric")
        folder, solution = tmp_path / comps[metric] / "data", tmp_path / comps[metric] / "solution.csv"
        folder.mkdir(parents=True)
        (folder / "sample_submission.csv").write_text("id,attribute_ids\na,0\nb,0\n")
        solution.write_text("id,attribute_ids,Usage\na,1,Public\nb,0,Private\n")
        if metric == "auc":
            solution.write_text("id,y,Usage\na,1,Public\nb,0,Public\nc,1,Private\nd,0,Private\n")
        store.create_competition(comps[metric], folder, solution, metric=metric)

    def metric_lines(metric: str, beta: str | None = None, extra: str = "", average: str = "") -> list[str]:
        root = project(tmp_path / metric / (beta or "kit") / average / str(len(extra)), extra=extra)
        shutil.copy(REPO / "kernel_src" / "metrics.py", root / "kernel_src" / "metrics.py")
        if beta:
            text = (root / "kernel_src" / "metrics.py").read_text()
            (root / "kernel_src" / "metrics.py").write_text(text.replace("BETA = 2.0", f"BETA = {beta}"))
        if average:
            text = (root / "kernel_src" / "metrics.py").read_text()
            (root / "kernel_src" / "metrics.py").write_text(text.replace('AVERAGE = "samples"', f'AVERAGE = "{average}"'))
        text = (root / "kpack.yaml").read_text().replace("competition: mini-comp", f"competition: {comps[metric]}")
        (root / "kpack.yaml").write_text(f"local: {{port: {local_kaggle.port}, root: '{local_kaggle.root}'}}\n" + text)
        home = tmp_path / "home"
        (home / ".kaggle").mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "packager.cli", "check", "train"], cwd=root, text=True,
                              capture_output=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(home),
                                   "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]})
        assert done.returncode == 0, done.stdout + done.stderr
        return [line for line in done.stdout.splitlines()
                if line.split(": ")[1] == "metric" or "loss: soft_fbeta" in line]

    assert metric_lines("f2-samples") == [
        f"ok: metric: {comps['f2-samples']} is scored by 'F2 (mean over rows)', read as the kit's F2 per sample"]
    assert metric_lines("f1-samples") == [
        f"ok: metric: {comps['f1-samples']} is scored by 'F1 (mean over rows)'",
        f"warning: metric: {comps['f1-samples']} is scored by 'F1 (mean over rows)', not by what the kit maximises "
        "(F2 per sample, BETA and AVERAGE in kernel_src/metrics.py): its CV is not the leaderboard's number, and its "
        "thresholds and blend weights are chosen for F2 per sample; set BETA = 1 there, or ignore this if the "
        "metric's name misleads"]
    assert metric_lines("f1-samples", beta="1.0") == [
        f"ok: metric: {comps['f1-samples']} is scored by 'F1 (mean over rows)', read as the kit's F1 per sample"]
    soft = metric_lines("f1-samples", beta="1.0", extra="  stages: [{epochs: 1, loss: {soft_fbeta: 1.0}}]\n")
    assert soft[1:] == ["warning: kit.stages[0].loss: soft_fbeta is F2 per sample, the kit's metric "
                        "(kernel_src/metrics.py) is F1 per sample: that stage trains for another score; set the "
                        "term's beta: 1"]
    macro = metric_lines("f1-macro", beta="1.0")
    assert macro[1].endswith('chosen for F1 per sample; set AVERAGE = "macro" there, or ignore this if the metric\'s '
                             "name misleads")
    macro = metric_lines("f1-macro", beta="1.0", average="macro",
                         extra="  stages: [{epochs: 1, loss: {soft_fbeta: {weight: 1, beta: 1}}}]\n")
    assert macro == [f"ok: metric: {comps['f1-macro']} is scored by 'F1 (macro: mean over labels)', read as the "
                     "kit's macro F1",
                     "warning: kit.stages[0].loss: soft_fbeta is F1 per sample, the kit's metric "
                     "(kernel_src/metrics.py) is macro F1: that stage trains for another score; set the term's "
                     "average: macro"]
    auc = metric_lines("auc")
    assert len(auc) == 2 and auc[1].startswith(f"warning: metric: {comps['auc']} is scored by 'AUC (mean over "
                                               "columns)', not by what the kit maximises (F2 per sample,")
    assert auc[1].endswith("; score that metric in the kit, or ignore this if the metric's name misleads")


@pytest.mark.parametrize("named, read", [
    ("F2 (mean over rows)", ("samples", 2.0)), ("Mean F2 Score", ("samples", 2.0)), ("F-2", ("samples", 2.0)),
    ("Mean F-Score", ("samples", None)), ("MeanFScoreBeta", ("samples", None)), ("F1 (mean over rows)", ("samples", 1.0)),
    ("Mean F0.5 per sample", ("samples", 0.5)), ("Macro F1", ("macro", 1.0)), ("Micro-averaged F2", ("micro", 2.0)),
    ("Weighted F1", (None, None)), ("AUC", (None, None)), ("Log Loss", (None, None)), ("MAP@5", (None, None))])
def test_a_metric_name_is_read_as_an_averaged_fscore_and_its_beta(named, read):
    assert preflight._read_fbeta(named) == read


def test_a_backend_that_cannot_be_reached_is_said_once(tmp_path):
    root = backend_project(tmp_path, SimpleNamespace(port=1, root=tmp_path / "lk"), "pf-offline-comp",
                           infer=", sources: {datasets: [bob/some-data]}", top="backend: kaggle\n")
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "packager.cli", "check", "infer"], cwd=root, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                       "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")})
    assert done.returncode == 2
    assert done.stdout.splitlines()[-3:-1] == [
        f"error: no Kaggle credentials (backend: kaggle): none in KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY, "
        f"{home / '.kaggle' / 'kaggle.json'} or {home / '.kaggle'}/access_token; put the kaggle.json of "
        f"https://www.kaggle.com/settings (API, Create New Token) in {home / '.kaggle'}/ (chmod 600), or set "
        "KAGGLE_USERNAME and KAGGLE_KEY",
        "ok: code competition: not checked: Kaggle was not reached (see above)"]
