"""`kpack init`: a competition repository from nothing (--kit, --bare), or kpack added to one with training code.

The two slow tests run the README's "Start your own competition repository" section verbatim, in a temp folder,
through the real `kpack` and `make` on PATH, against a local Kaggle of their own. What they substitute:
- installing: `.venv/bin` goes first on PATH instead of the section's `uv tool install /path/to/kpack` line;
- the competition: its files are generated (packager.democomp, small) where the section says, ~/comp/my-comp/
  (HOME is a temp folder);
- right after the section's `kpack init` (and the `cd` that follows), the test edits the generated kpack.yaml:
  its `local:` section points at the test's server (port and root), and for the kit the `kit:` section is cut to
  a tiny CPU run (test_resnet on 32 px, one epoch); build/wheel-cache links to the repository's, as the demo's
  test does, so the wheels come from what a build here already downloaded.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import LocalKaggleServer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KPACK = str(BIN / "kpack")
SECTION = "## Start your own competition repository"
INSTALL = re.compile(r"^(uv tool|pipx|pip) install ")
COMPETITION = "my-comp"


def section_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", text[start:end if end > 0 else None], re.S)


NESTED_MAKE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")  # under `make test` a make the test runs would say its folder


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "TELEGRAM_", "KPACK_"))
           and k not in NESTED_MAKE
           and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    return env


def kpack(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([KPACK, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def bash(lines: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"$ {lines}\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    return done


def run_section(script: str, cwd: Path, env: dict, after_init, timeout: float = 900) -> str:
    """Run the section's lines in order, as bash does, pausing once after `kpack init` and the `cd` following it
    for `after_init(project_dir)`; the combined stdout."""
    lines = [line for line in script.splitlines() if line.strip()]
    at = next(i for i, line in enumerate(lines) if line.startswith("kpack init"))
    if at + 1 < len(lines) and lines[at + 1].startswith("cd "):
        at += 1
    first = bash(lines[:at + 1] + ["pwd"], cwd, env, 120)
    project = Path(first.stdout.strip().splitlines()[-1])
    after_init(project)
    rest = bash(lines[at + 1:], project, env, timeout)
    return first.stdout + rest.stdout + rest.stderr


def point_at(project: Path, server: LocalKaggleServer, **edits) -> None:
    config = yaml.safe_load((project / "kpack.yaml").read_text())
    config["local"] = {"port": server.port, "root": str(server.root)}
    config.update(edits)
    (project / "kpack.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cache = REPO / "build" / "wheel-cache"
    if cache.is_dir():
        (project / "build").mkdir(exist_ok=True)
        (project / "build" / "wheel-cache").symlink_to(cache)


def demo_data(home: Path) -> None:
    from packager.democomp import generate

    generate(home / "comp" / COMPETITION, n_train=150, n_test=40, image_size=32)


def ledger_rows(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "runs" / "ledger.jsonl").read_text().splitlines()]


def assert_full_run(project: Path, out: str) -> None:
    rows = ledger_rows(project)
    assert [(r["kind"], r["status"]) for r in rows] == [("train", "COMPLETE"), ("validate", "COMPLETE"),
                                                         ("infer", "COMPLETE")], out[-3000:]
    assert isinstance(rows[1]["cv_score"], float)
    assert isinstance(rows[2]["lb_score"], float) and 0 <= rows[2]["lb_score"] <= 1, out[-3000:]
    assert "public score" in out
    assert f"{COMPETITION}-infer" in out.split("kpack ledger")[-1] or f"{COMPETITION}-infer" in out


# ------------------------------------------------------------------------------------------- the README

def test_the_readme_section_has_the_three_flows():
    blocks = section_blocks()
    assert len(blocks) == 3
    assert INSTALL.match(blocks[0]) and "kpack init mycomp --competition my-comp --kit" in blocks[0]
    for block in blocks[1:]:
        assert "make push-train" in block and "make submit" in block
    assert "kpack init --competition my-comp --bare" in blocks[2]


@pytest.mark.slow
def test_readme_kit_flow_runs_verbatim(tmp_path):
    blocks = section_blocks()
    script = "\n".join(line for line in (blocks[0] + blocks[1]).splitlines() if not INSTALL.match(line))
    home = tmp_path / "home"
    env = clean_env(home)
    demo_data(home)
    server = LocalKaggleServer(tmp_path / "lk" / "root").start()
    tiny_kit = {"seed": 0, "data": {"image_size": 32, "channels": 1, "num_workers": 0},
                "model": {"name": "test_resnet"}, "augment": {"train": "none", "tta": ["none"]},
                "optim": {"batch_size": 32, "lr": 1.0e-2}, "stages": [{"epochs": 1, "loss": "bce"}]}
    work = tmp_path / "work"
    work.mkdir()
    try:
        out = run_section(script, work, env, lambda project: point_at(project, server, kit=tiny_kit))
    finally:
        server.stop()
    project = work / "mycomp"
    assert (project / "kernel_src" / "train.py").read_bytes() == (REPO / "kernel_src" / "train.py").read_bytes()
    assert_full_run(project, out)


OWN_LABELS = '''"""Shared by the entries: the label sets of a CSV of id,attribute_ids."""
import csv


def label_sets(path):
    with open(path, newline="") as f:
        return {row["id"]: row["attribute_ids"].split() for row in csv.DictReader(f)}
'''

OWN_TRAIN = '''import json
from collections import Counter

from kpack_runtime import inputs

from .labels import label_sets


def main(config):
    data = inputs.find_input(config["competition"], "competition")
    counts = Counter(label for labels in label_sets(data / "train.csv").values() for label in labels)
    (inputs.working_dir() / "model.json").write_text(json.dumps([label for label, _ in counts.most_common(2)]))
    (inputs.working_dir() / "state.json").write_text(json.dumps({"done": True}))
'''

OWN_VALIDATE = '''import json

from kpack_runtime import inputs

from mycomp.labels import label_sets


def main(config):
    top = json.loads(inputs.find_files("model.json")[0].read_text())
    truth = label_sets(inputs.find_input(config["competition"], "competition") / "train.csv")
    hits = sum(bool(set(top) & set(labels)) for labels in truth.values())
    (inputs.working_dir() / "metrics.json").write_text(json.dumps({"cv_score": hits / len(truth)}))
'''

OWN_INFER = '''import json

from kpack_runtime import inputs

from .labels import label_sets


def main(config):
    top = json.loads(inputs.find_files("model.json")[0].read_text())
    ids = label_sets(inputs.find_input(config["competition"], "competition") / "sample_submission.csv")
    rows = ["id,attribute_ids"] + [f"{image_id},{' '.join(top)}" for image_id in ids]
    (inputs.working_dir() / "submission.csv").write_text("\\n".join(rows) + "\\n")
'''


def own_repo(root: Path) -> Path:
    package = root / "src" / "mycomp"
    package.mkdir(parents=True)
    for name, text in {"__init__.py": "", "labels.py": OWN_LABELS, "train.py": OWN_TRAIN,
                       "validate.py": OWN_VALIDATE, "infer.py": OWN_INFER}.items():
        (package / name).write_text(text)
    (root / "tests").mkdir()
    (root / "tests" / "test_labels.py").write_text("def test_nothing():\n    pass\n")
    return root


@pytest.mark.slow
def test_readme_own_code_flow_runs_verbatim(tmp_path):
    """--bare in a repository of the user's own code (src/mycomp/, a package with relative and absolute imports):
    only kpack.yaml and the Makefile are added, and train, validate, infer and submit run on the local Kaggle."""
    home = tmp_path / "home"
    env = clean_env(home)
    demo_data(home)
    repo = own_repo(tmp_path / "myrepo")
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    server = LocalKaggleServer(tmp_path / "lk" / "root").start()
    added: list = []

    def after_init(project: Path) -> None:
        added.extend(sorted(set(p.relative_to(project) for p in project.rglob("*")) - set(before)))
        point_at(project, server)

    try:
        out = run_section(section_blocks()[2], tmp_path, env, after_init, timeout=600)
    finally:
        server.stop()
    assert added == [Path("Makefile"), Path("kpack.yaml")]
    config = yaml.safe_load((repo / "kpack.yaml").read_text())
    assert {kind: k["entry"] for kind, k in config["kernels"].items()} == {
        kind: f"src/mycomp/{kind}.py" for kind in ("train", "validate", "infer")}
    assert_full_run(repo, out)


# ------------------------------------------------------------------------------------------- what it writes

def listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kit_writes_a_repository_whose_config_and_makefile_work(tmp_path):
    done = kpack("init", "mycomp", "--competition", COMPETITION, "--kit", "--user", "alice", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    project = tmp_path / "mycomp"
    files = listing(project)
    from packager.init import kit_files

    kit = kit_files()
    assert {f"kernel_src/{name}": data for name, data in kit.items()}.items() <= files.items()
    assert "kernel_src/train.py" in files and not any("__pycache__" in name for name in files)
    assert set(files) - {f"kernel_src/{n}" for n in kit} == {
        ".gitignore", "Makefile", "README.md", "kpack.yaml", "models/README.md", "requirements-kernel.txt"}

    from packager.config import load_config

    cfg = load_config(project / "kpack.yaml")
    assert (cfg.competition, cfg.kaggle_user, cfg.backend) == (COMPETITION, "alice", "local")
    assert {k: v.entry for k, v in cfg.kernels.items()} == {
        "train": "kernel_src/train.py", "validate": "kernel_src/validate.py", "infer": "kernel_src/infer.py"}
    assert cfg.datasets.wheels.slug == "my-comp-wheels" and cfg.datasets.weights.slug == "my-comp-weights"
    assert cfg.kit["stages"] and "# " in files["kpack.yaml"].decode()  # commented
    from kpack_kit import settings  # the kit as installed, which init copied

    settings.from_config({"kit": cfg.kit, "competition": COMPETITION})  # the kit section is valid for the kit

    pins = lambda text: sorted(l for l in text.splitlines() if l.strip() and not l.startswith("#"))  # noqa: E731
    assert pins(files["requirements-kernel.txt"].decode()) == pins((REPO / "requirements-kernel.txt").read_text())
    ignored = files[".gitignore"].decode().splitlines()
    for pattern in ("build/", "runs/", ".localkaggle/", "*.key", "kaggle.json", "access_token", ".env"):
        assert pattern in ignored

    targets = ["push-train", "watch-train", "check-train", "logs-train", "push-validate", "push-infer", "submit",
               "scores", "ledger", "local-serve"]
    env = {k: v for k, v in os.environ.items() if k not in NESTED_MAKE}  # as a user types it, not under make test
    dry = subprocess.run(["make", "-n", *targets], cwd=project, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "kpack push train", "kpack watch train", "kpack check train", "kpack logs train", "kpack push validate",
        "kpack push infer", "kpack submit", "kpack scores", "kpack ledger", "kpack local serve"]


def test_bare_writes_one_entry_of_your_own(tmp_path):
    done = kpack("init", "new", "--competition", COMPETITION, "--bare", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = listing(tmp_path / "new")
    assert set(files) == {".gitignore", "Makefile", "README.md", "kpack.yaml", "models/README.md",
                          "requirements-kernel.txt", "kernel_src/train.py"}
    entry = files["kernel_src/train.py"].decode()
    assert "def main(config)" in entry and "kpack_runtime import inputs" in entry and "working_dir()" in entry
    assert all(line.startswith("#") for line in files["requirements-kernel.txt"].decode().splitlines())
    from packager.config import load_config

    cfg = load_config(tmp_path / "new" / "kpack.yaml")
    assert list(cfg.kernels) == ["train"] and cfg.kernels["train"].entry == "kernel_src/train.py"
    assert cfg.kit == {}


def test_bare_entry_runs_in_a_kernel(tmp_path, local_kaggle, kaggle_env):
    """The --bare starter, pushed as it is written, finds the competition through kpack_runtime.inputs and writes
    its output."""
    from packager.localkaggle.store import Store

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("id,attribute_ids\na,1\n")
    (tmp_path / "solution.csv").write_text("id,attribute_ids,Usage\na,1,Public\n")
    slug = f"bare-{os.getpid()}"
    Store(local_kaggle.root).create_competition(slug, tmp_path / "data", tmp_path / "solution.csv", code=True)
    assert kpack("init", "new", "--competition", slug, "--bare", "--user", "alice", cwd=tmp_path).returncode == 0
    project = tmp_path / "new"
    point_at(project, local_kaggle, kaggle_user="alice")
    config = yaml.safe_load((project / "kpack.yaml").read_text())
    config["kernels"]["train"]["accelerator"] = "None"  # as written but for the machine: a CPU session
    (project / "kpack.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in kaggle_env.items() if k not in NESTED_MAKE}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(["make", "push-train"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = next((project / "runs").glob(f"{slug}-train/v1"))
    assert json.loads((out / "files.json").read_text()) == ["train.csv"]
    assert json.loads((out / "state.json").read_text()) == {"done": True}


# ------------------------------------------------------------------------------------------- your own code

def test_init_in_a_repository_with_training_code_adds_only_the_config_and_makefile(tmp_path):
    repo = tmp_path / "myrepo"
    package = repo / "src" / "mycomp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("def main(config):\n    pass\n")
    (package / "infer.py").write_text("def main(cfg, working=None):\n    pass\n")
    (package / "util.py").write_text("def main():\n    pass\n")  # no config parameter: not an entry
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "x.py").write_text("def main(config):\n    pass\n")  # never searched
    before = listing(repo)
    done = kpack("init", "--competition", COMPETITION, cwd=repo)
    assert done.returncode == 0, done.stderr
    after = listing(repo)
    assert sorted(set(after) - set(before)) == ["Makefile", "kpack.yaml"]
    assert "note: add build/, runs/, .localkaggle/ to .gitignore" in done.stdout
    assert {name: after[name] for name in before} == before

    from packager.config import load_config

    cfg = load_config(repo / "kpack.yaml")
    # the build packs the entry's package itself (kernels.<kind>.packages lists more): the config says so
    assert {kind: (k.entry, k.packages) for kind, k in cfg.kernels.items()} == {
        "train": ("src/mycomp/train.py", []), "infer": ("src/mycomp/infer.py", [])}
    assert "# packed with it: src/mycomp/ (the package holding the entry)" in after["kpack.yaml"].decode()
    assert cfg.datasets.wheels is None and cfg.datasets.weights is None  # no requirements-kernel.txt, no models/
    assert "# validate: {entry: src/mycomp/validate.py" in after["kpack.yaml"].decode()

    again = kpack("init", "--competition", COMPETITION, cwd=repo)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        "error: .: kpack init would overwrite Makefile, kpack.yaml; move them away or init elsewhere (nothing was "
        "written)"]


def test_entry_packages_follow_the_layout(tmp_path):
    from packager.init import package_of

    (tmp_path / "a" / "b").mkdir(parents=True)
    for init in (tmp_path / "a" / "__init__.py", tmp_path / "a" / "b" / "__init__.py"):
        init.write_text("")
    assert package_of(tmp_path / "a" / "b" / "train.py") == tmp_path / "a"
    (tmp_path / "scripts").mkdir()
    assert package_of(tmp_path / "scripts" / "train.py") == tmp_path / "scripts"  # flat: the entry's siblings

    (tmp_path / "scripts" / "train.py").write_text("def main(config):\n    return 1\n")
    (tmp_path / "scripts" / "requirements-kernel.txt").write_text("")
    (tmp_path / "requirements-kernel.txt").write_text("timm==1.0.31\n")
    done = kpack("init", "--competition", COMPETITION, "--entry", "scripts/train.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "kpack.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["kernels"]["train"]["entry"] == "scripts/train.py" and "packages" not in config["kernels"]["train"]
    assert "# packed with it: the modules beside the entry" in text
    assert config["datasets"]["wheels"]["requirements"] == "requirements-kernel.txt"
    assert "weights" not in config["datasets"]


# ------------------------------------------------------------------------------------------- bad input

def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_init_over_existing_files_names_them_all_and_writes_nothing(tmp_path):
    project = tmp_path / "mycomp"
    (project / "kernel_src").mkdir(parents=True)
    (project / "Makefile").write_text("all:\n")
    (project / ".gitignore").write_text("*.log\n")
    (project / "kernel_src" / "train.py").write_text("def main(config):\n    pass\n")
    before = listing(project)
    line = one_error_line(kpack("init", "mycomp", "--competition", COMPETITION, "--kit", cwd=tmp_path))
    assert line == ("error: mycomp: kpack init would overwrite .gitignore, Makefile, kernel_src/train.py; move them "
                    "away or init elsewhere (nothing was written)")
    assert listing(project) == before and sorted(p.name for p in project.iterdir()) == [
        ".gitignore", "Makefile", "kernel_src"]


def test_a_file_where_init_writes_a_folder_is_refused(tmp_path):
    (tmp_path / "models").write_text("not a folder\n")
    line = one_error_line(kpack("init", ".", "--competition", COMPETITION, "--bare", cwd=tmp_path))
    assert line == "error: models: a file where kpack init writes a folder (nothing was written)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    line = one_error_line(kpack("init", "models/new", "--competition", COMPETITION, "--bare", cwd=tmp_path))
    assert line == "error: models: a file where kpack init writes a folder (nothing was written)"


def test_a_failed_write_removes_what_init_wrote(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk: the third file) leaves nothing behind, folders included."""
    from packager import init
    from packager.errors import UserError

    real, calls = init.atomic_write_bytes, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(init, "atomic_write_bytes", failing)
    (tmp_path / "keep.txt").write_text("mine\n")
    with pytest.raises(UserError, match=r": cannot write: No space left on device \(nothing was written\)$"):
        init.init(tmp_path, COMPETITION, "kit")
    assert len(calls) == 3 and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    calls.clear()
    with pytest.raises(UserError):
        init.init(tmp_path / "new" / "deeper", COMPETITION, "bare")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # the folders it made are gone too


@pytest.mark.parametrize("slug", ["My-Comp", "my_comp", "ab", "-my-comp", "my-comp-", "x" * 51, "my comp"])
def test_a_bad_competition_slug_is_refused(tmp_path, slug):
    line = one_error_line(kpack("init", "new", "--competition", slug, "--kit", cwd=tmp_path))
    assert line.startswith(f"error: --competition {slug!r}: expected the competition's slug as in its URL")
    assert not (tmp_path / "new").exists()


def test_bad_entries_and_flags(tmp_path):
    (tmp_path / "a.py").write_text("def main(config):\n    pass\n")
    (tmp_path / "b.py").write_text("def main(config):\n    pass\n")
    (tmp_path / "c.py").write_text("def run(config):\n    pass\n")
    cases = {
        ("--competition", COMPETITION): "several files define main(config) (a.py, b.py); name the train "
                                        "kernel's with --entry PATH",
        ("--competition", COMPETITION, "--entry", "c.py"): "--entry c.py: defines no main(config)",
        ("--competition", COMPETITION, "--entry", "nope.py"): "--entry nope.py: no such .py file",
        ("--competition", COMPETITION, "--entry", "a.py", "--kit"): "--entry names your own training code",
        ("--competition", COMPETITION, "--user", "bad user"): "--user 'bad user': expected your Kaggle user name",
    }
    for args, expected in cases.items():
        assert expected in one_error_line(kpack("init", *args, cwd=tmp_path)), args
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no training code here" in one_error_line(kpack("init", "--competition", COMPETITION, cwd=empty))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "b.py", "c.py", "empty"]
    assert not any(empty.iterdir())


def test_long_competition_slugs_leave_room_for_the_kernel_and_dataset_slugs(tmp_path):
    slug = "a" * 30 + "-" + "b" * 19  # 50 characters, Kaggle's longest
    assert kpack("init", "new", "--competition", slug, "--kit", cwd=tmp_path).returncode == 0
    from packager.config import load_config

    cfg = load_config(tmp_path / "new" / "kpack.yaml")
    assert all(len(k.slug) + len("-b") <= 50 for k in cfg.kernels.values())
    assert cfg.datasets.wheels.slug.endswith("-wheels") and len(cfg.datasets.weights.slug) <= 50
