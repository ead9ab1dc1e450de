"""The unmodified `kaggle` CLI against the local Kaggle: every operation of kaggle-facts.md, with its exit code,
the files it writes and the text it prints.

What the client does on errors (kaggle 2.2.4), which these tests pin down:
- bad credentials: the server answers 401; the CLI prints its "Authentication required" help and exits 1
  (`kernels status` / `kernels output` turn the 401 into "Cannot access kernel ... Permission 'kernels.get'
  was denied" instead, also exit 1);
- `kernels push` with an `error` in the answer prints "Kernel push error: ..." and exits 0;
- `datasets create` / `version` with an error status print "... creation error: ..." and exit 0;
- any other HTTP error prints the server's message and exits 1.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import KAGGLE, USER

pytestmark = pytest.mark.timeout(300)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def title_of(slug: str) -> str:
    return slug.replace("-", " ").title()


def make_dataset(folder: Path, slug: str, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    meta = {"id": f"{USER}/{slug}", "title": title_of(slug), "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta))
    return folder


def make_kernel(folder: Path, slug: str, code: str, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "k.py").write_text(code)
    data = {"id": f"{USER}/{slug}", "title": title_of(slug), "code_file": "k.py", "language": "python",
            "kernel_type": "script", "enable_internet": False, **meta}
    (folder / "kernel-metadata.json").write_text(json.dumps(data))
    return folder


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


ROOT = 'import os, pathlib\nroot = pathlib.Path(os.environ["KPACK_KAGGLE_ROOT"])\n'


# --------------------------------------------------------------------------------------------- env

def test_env_prints_exports_for_the_unmodified_client(local_kaggle, tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "kpack"), "local", "env", "--port",
                           str(local_kaggle.port), "--root", str(local_kaggle.root), "--user", "bob"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    assert lines["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"
    assert lines["HTTP_PROXY"] == lines["http_proxy"] == f"http://127.0.0.1:{local_kaggle.port}"
    assert lines["NO_PROXY"] == lines["no_proxy"] == "''"
    assert lines["KAGGLE_USERNAME"] == "bob" and lines["KAGGLE_KEY"] and lines["KAGGLE_API_TOKEN"]
    user_file = local_kaggle.root / "users" / "bob.json"
    assert json.loads(user_file.read_text())["key"] == lines["KAGGLE_KEY"]
    assert user_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("args, stdin, message", [
    (["competition", "create", "c-x", "--data", ".", "--solution", "bad.csv"], "", "not a usable solution file"),
    (["secret", "set", "BAD-LABEL", "--kernel", "alice/k"], "v", "use letters, digits and _"),
    (["secret", "set", "EMPTY", "--kernel", "alice/k"], "", "no value on stdin"),
    (["secret", "set", "NO_KERNEL"], "v", "--kernel OWNER/SLUG"),
])
def test_local_commands_refuse_bad_input_in_one_line(tmp_path, args, stdin, message):
    (tmp_path / "bad.csv").write_text("id,a,b,c\n1,2,3,4\n")
    done = subprocess.run([str(Path(sys.executable).parent / "kpack"), "local", *args, "--root", str(tmp_path / "r")],
                          input=stdin, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "competitions").exists() and not (tmp_path / "r" / "secrets").exists()


SOLUTION_CSV = "id,attribute_ids,Usage\nt1,1 2,Public\nt2,3,Private\n"


def create_competition_cli(tmp_path: Path, data: Path, solution: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "kpack"), "local", "competition", "create", "c-x",
                           "--data", str(data), "--solution", str(solution), "--root", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.parametrize("where", ["solution.csv", "hidden/answers.csv"])
def test_competition_create_refuses_a_data_folder_holding_the_solution(tmp_path, where):
    # the data folder is copied whole into every kernel's inputs: the solution itself, or a copy of it under
    # any name, would hand the answers to the kernel
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "sample_submission.csv").write_text("id,attribute_ids\nt1,0\nt2,0\n")
    inside = data / where
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text(SOLUTION_CSV)
    solution = inside if where == "solution.csv" else tmp_path / "solution.csv"
    solution.write_text(SOLUTION_CSV)
    done = create_competition_cli(tmp_path, data, solution)
    copy = "" if solution == inside else f", a copy of {solution}"
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: the data folder holds the solution file ({inside}{copy}): every kernel mounts {data} whole; "
        "move the solution out of the data folder"]
    assert not (tmp_path / "r" / "competitions").exists()
    inside.unlink()  # moved out: accepted
    if inside.parent != data:
        inside.parent.rmdir()
    if solution == inside:
        solution = tmp_path / "solution.csv"
        solution.write_text(SOLUTION_CSV)
    done = create_competition_cli(tmp_path, data, solution)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"competition c-x ready in {tmp_path / 'r'} (2 data entries, scored by "
                                        "f2-samples)"]


def test_competition_create_usage_column(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample_submission.csv").write_text("id,attribute_ids\nt1,0\n")
    solution = tmp_path / "solution.csv"
    solution.write_text("id,attribute_ids,Usage\nt1,1,Public\nt2,2,Privat\n")
    done = create_competition_cli(tmp_path, data, solution)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: {solution}: not a usable solution file: line 3: Usage is 'Privat'; each row's Usage must be "
        "Public, Private or Ignored"]
    solution.write_text("id,attribute_ids\nt1,1\nt2,2\n")  # no Usage: public only, said once
    done = create_competition_cli(tmp_path, data, solution)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        f"note: {solution} has no Usage column: every row counts for the public score and private scores stay "
        "empty (add Usage with Public/Private per row)")


# --------------------------------------------------------------------------------------------- datasets

@pytest.mark.slow
def test_datasets_create_status_files_version_download(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("dset")
    folder = make_dataset(tmp_path / "ds", slug, {"a.csv": "x,y\n1,2\n", "sub/inner.txt": "inner\n",
                                                  "big.bin": os.urandom(200_000)})
    out = ok(run_kaggle("datasets", "create", "-p", str(folder), "--dir-mode", "zip"))
    assert f"Your private Dataset is being created. Please check progress at http://localhost/datasets/{USER}/{slug}" in out
    assert "Upload successful: sub.zip" in out
    assert ok(run_kaggle("datasets", "status", f"{USER}/{slug}")).strip() == "ready"
    listing = ok(run_kaggle("datasets", "files", f"{USER}/{slug}"))
    for name in ("a.csv", "big.bin", "sub/inner.txt"):  # an uploaded archive is unpacked, as on Kaggle
        assert name in listing

    (folder / "a.csv").write_text("x,y\n3,4\n")
    out = ok(run_kaggle("datasets", "version", "-p", str(folder), "-m", "second"))
    assert "Skipping folder: sub; use '--dir-mode' to upload folders" in out
    assert "Dataset version is being created. Please check progress at" in out
    info = json.loads(ok(run_kaggle("datasets", "status", f"{USER}/{slug}", "--format", "json")))
    assert info == {"status": "ready", "current_version_number": 2}
    v2 = ok(run_kaggle("datasets", "files", f"{USER}/{slug}"))
    assert "a.csv" in v2 and "sub/inner.txt" not in v2  # a version holds only what was uploaded in it

    ok(run_kaggle("datasets", "download", f"{USER}/{slug}", "-p", str(tmp_path / "dl"), "--unzip"))
    assert (tmp_path / "dl" / "a.csv").read_text() == "x,y\n3,4\n"
    assert (tmp_path / "dl" / "big.bin").read_bytes() == (folder / "big.bin").read_bytes()
    ok(run_kaggle("datasets", "download", f"{USER}/{slug}/1", "-f", "a.csv", "-p", str(tmp_path / "dl1")))
    assert (tmp_path / "dl1" / "a.csv").read_text() == "x,y\n1,2\n"

    again = run_kaggle("datasets", "create", "-p", str(folder))
    assert again.returncode == 0 and "is already in use by a dataset" in again.stdout


def test_dataset_status_of_unknown_dataset_fails(run_kaggle):
    done = run_kaggle("datasets", "status", f"{USER}/{uniq('nothing')}")
    assert done.returncode == 1 and "not found" in done.stderr


# --------------------------------------------------------------------------------------------- kernels

def test_kernels_push_status_output_pull(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("kern")
    code = ROOT + ('print("hello from the kernel")\n'
                   '(root / "working" / "result.txt").write_text("42\\n")\n'
                   '(root / "working" / "nested" / "deep").mkdir(parents=True)\n'
                   '(root / "working" / "nested" / "deep" / "f.json").write_text("{}")\n')
    folder = make_kernel(tmp_path / "k", slug, code)
    out = ok(run_kaggle("kernels", "push", "-p", str(folder)))
    page = f"http://127.0.0.1:{local_kaggle.port}/code/{USER}/{slug}"  # the page this server serves
    assert f"Kernel version 1 successfully pushed.  Please check progress at {page}" in out
    local_kaggle.wait_kernel(USER, slug, 1)
    assert ok(run_kaggle("kernels", "status", f"{USER}/{slug}")).strip() == \
        f'{USER}/{slug} has status "KernelWorkerStatus.COMPLETE"'

    target = tmp_path / "out"
    out = ok(run_kaggle("kernels", "output", f"{USER}/{slug}", "-p", str(target), "--page-size", "1"))
    assert (target / "result.txt").read_text() == "42\n"
    assert (target / "nested" / "deep" / "f.json").read_text() == "{}"
    log = json.loads((target / f"{slug}.log").read_text())
    first_stdout = next(e for e in log if e["stream_name"] == "stdout")  # the top line says which sandbox ran
    assert first_stdout["data"] == "hello from the kernel\n"
    assert f"Kernel log downloaded to {target / slug}.log" in out

    pulled = tmp_path / "pulled"
    out = ok(run_kaggle("kernels", "pull", f"{USER}/{slug}", "-p", str(pulled), "-m"))
    assert "Source code and metadata downloaded to" in out
    assert (pulled / f"{slug}.py").read_text() == code
    meta = json.loads((pulled / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{USER}/{slug}" and meta["enable_internet"] is False and meta["title"] == title_of(slug)

    (folder / "k.py").write_text(code + "# v2\n")
    out = ok(run_kaggle("kernels", "push", "-p", str(folder), "-t", "60"))
    assert "Kernel version 2 successfully pushed." in out
    ok(run_kaggle("kernels", "pull", f"{USER}/{slug}/1", "-p", str(tmp_path / "v1")))
    assert (tmp_path / "v1" / f"{slug}.py").read_text() == code
    record = local_kaggle.wait_kernel(USER, slug, 2)
    assert record["session_timeout_seconds"] == 60 and record["status"] == "COMPLETE"
    assert f"{USER}/{slug}" in ok(run_kaggle("kernels", "list", "--mine"))


@pytest.mark.slow
def test_kernel_failure_and_time_limit_end_in_error(run_kaggle, local_kaggle, tmp_path):
    crash, slow = uniq("crash"), uniq("slow")
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "c", crash, "raise SystemExit(3)\n"))))
    ok(run_kaggle("kernels", "push", "-t", "2", "-p",
                  str(make_kernel(tmp_path / "s", slow, "import time\ntime.sleep(60)\n"))))
    assert local_kaggle.wait_kernel(USER, crash)["status"] == "ERROR"
    record = local_kaggle.wait_kernel(USER, slow)
    assert record["status"] == "ERROR" and record["seconds"] < 30
    out = ok(run_kaggle("kernels", "status", f"{USER}/{slow}"))  # the CLI exits 0 on ERROR
    assert 'has status "KernelWorkerStatus.ERROR"' in out and "Failure message:" in out


def test_push_with_unknown_sources_lists_them_and_still_runs(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("srcs")
    folder = make_kernel(tmp_path / "k", slug, "print('ok')\n", dataset_sources=[f"{USER}/no-such-data"],
                         competition_sources=["no-such-competition"], kernel_sources=[f"{USER}/no-such-kernel"])
    out = ok(run_kaggle("kernels", "push", "-p", str(folder)))
    assert f"not valid dataset sources and could not be added to the kernel: ['{USER}/no-such-data']" in out
    assert "not valid competition sources and could not be added to the kernel: ['no-such-competition']" in out
    assert f"not valid kernel sources and could not be added to the kernel: ['{USER}/no-such-kernel']" in out
    assert local_kaggle.wait_kernel(USER, slug, 1)["status"] == "COMPLETE"


def test_rejected_push_prints_the_error_and_makes_no_version(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("rlang")
    folder = make_kernel(tmp_path / "k", slug, "cat('hi')\n", language="r")
    done = run_kaggle("kernels", "push", "-p", str(folder))
    assert done.returncode == 0 and "Kernel push error: language 'r' is not supported" in done.stdout
    status = run_kaggle("kernels", "status", f"{USER}/{slug}")
    assert status.returncode == 1 and "not found" in status.stderr


@pytest.mark.slow
def test_kernel_reads_a_dataset_and_another_kernels_output_in_both_layouts(run_kaggle, local_kaggle, tmp_path):
    data_slug, first, second = uniq("inputs"), uniq("first"), uniq("second")
    ok(run_kaggle("datasets", "create", "-p", str(make_dataset(tmp_path / "ds", data_slug, {"d.txt": "data!"}))))
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(
        tmp_path / "a", first, ROOT + '(root / "working" / "ckpt.txt").write_text("step 7")\n'))))
    local_kaggle.wait_kernel(USER, first, 1)
    reader = ROOT + f'''
import json
inp = root / "input"
found = {{
    "legacy_dataset": (inp / "{data_slug}" / "d.txt").read_text(),
    "new_dataset": (inp / "datasets" / "{USER}" / "{data_slug}" / "d.txt").read_text(),
    "legacy_kernel": (inp / "{first}" / "ckpt.txt").read_text(),
    "new_kernel": (inp / "notebooks" / "{USER}" / "{first}" / "ckpt.txt").read_text(),
}}
try:
    (inp / "{data_slug}" / "new.txt").write_text("x")
    found["read_only"] = False
except OSError:
    found["read_only"] = True
(root / "working" / "found.json").write_text(json.dumps(found))
'''
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(
        tmp_path / "b", second, reader, dataset_sources=[f"{USER}/{data_slug}"],
        kernel_sources=[f"{USER}/{first}"]))))
    record = local_kaggle.wait_kernel(USER, second, 1)
    assert record["status"] == "COMPLETE", record
    ok(run_kaggle("kernels", "output", f"{USER}/{second}", "-p", str(tmp_path / "o")))
    found = json.loads((tmp_path / "o" / "found.json").read_text())
    assert found == {"legacy_dataset": "data!", "new_dataset": "data!", "legacy_kernel": "step 7",
                     "new_kernel": "step 7", "read_only": True}


def test_a_secret_reaches_only_the_kernels_it_is_attached_to(run_kaggle, local_kaggle, tmp_path):
    kpack = str(Path(sys.executable).parent / "kpack")
    attached, other = uniq("secret"), uniq("nosecret")
    done = subprocess.run([kpack, "local", "secret", "set", "MY_SECRET", "--kernel", f"{USER}/{attached}", "--root",
                           str(local_kaggle.root)], input="s3cr3t\n", capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (local_kaggle.root / "secrets" / USER / f"{attached}.json").stat().st_mode & 0o777 == 0o600
    code = ROOT + '(root / "working" / "s.txt").write_text(os.environ.get("MY_SECRET", "-"))\n'
    for slug in (attached, other):
        ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / slug, slug, code))))
    for slug in (attached, other):
        local_kaggle.wait_kernel(USER, slug, 1)
        ok(run_kaggle("kernels", "output", f"{USER}/{slug}", "-p", str(tmp_path / "o" / slug)))
    assert (tmp_path / "o" / attached / "s.txt").read_text() == "s3cr3t"
    assert (tmp_path / "o" / other / "s.txt").read_text() == "-"  # another kernel of the same user: not attached


@pytest.mark.parametrize("lenient", [False, True], ids=["kaggle", "lenient-switch"])
def test_a_kernel_source_whose_newest_version_is_not_complete_is_invalid(local_kaggle, tmp_path, lenient):
    from conftest import LocalKaggleServer

    server = LocalKaggleServer(tmp_path / "root", None, 0, 120, "--lenient-kernel-sources").start() if lenient \
        else local_kaggle
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() not in
               ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
        (tmp_path / "home" / ".kaggle").mkdir(parents=True)
        env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path), KAGGLE_CONFIG_DIR=str(tmp_path / "home" / ".kaggle"),
                   **server.env(USER))

        def push(folder):
            return ok(subprocess.run([KAGGLE, "kernels", "push", "-p", str(folder)], env=env, text=True,
                                     capture_output=True, timeout=120))

        source, reader = uniq("src"), uniq("reader")
        push(make_kernel(tmp_path / "s1", source, ROOT + '(root / "working" / "o.txt").write_text("v1")\n'))
        server.wait_kernel(USER, source, 1)
        push(make_kernel(tmp_path / "s2", source, "import time\ntime.sleep(30)\n"))  # its newest: RUNNING
        server.wait_kernel(USER, source, 2, until=("RUNNING",))
        out = push(make_kernel(tmp_path / "r", reader, ROOT + 'print(sorted(str(p) for p in (root / "input").rglob("o.txt")))\n',
                               kernel_sources=[f"{USER}/{source}"]))
        invalid = "The following are not valid kernel sources and could not be added to the kernel"
        assert (invalid in out) is not lenient, out
        assert "Kernel version 1 successfully pushed" in out  # the version is made anyway, without the source
        from packager.localkaggle.store import Store

        record = Store(server.root).kernel_version(USER, reader, 1)
        assert record["metadata"]["kernel_data_sources"] == ([f"{USER}/{source}"] if lenient else [])
        server.admin("POST", "/_kpack/cancel", {"kernel": f"{USER}/{source}", "version": 2})
    finally:
        if lenient:
            server.stop()


@pytest.mark.slow
def test_a_push_over_the_gpu_session_cap_is_refused_with_kaggles_text(run_kaggle, local_kaggle, tmp_path):
    from packager.localkaggle.store import Store

    store = Store(local_kaggle.root)
    slugs = [uniq(f"cap{i}") for i in range(3)]
    for slug in slugs[:2]:
        ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / slug, slug, "import time\ntime.sleep(30)\n",
                                                                enable_gpu=True))))
    running = [local_kaggle.wait_kernel(USER, s, 1, until=("RUNNING",), timeout=60) for s in slugs[:2]]
    assert all(r["status"] == "RUNNING" for r in running)  # every accepted session runs: none waits locally
    third = make_kernel(tmp_path / slugs[2], slugs[2], "print('x')\n", enable_gpu=True)
    out = ok(run_kaggle("kernels", "push", "-p", str(third)))  # the client prints the error and exits 0
    assert "Maximum batch GPU session count of 2 reached." in out
    assert store.kernel(USER, slugs[2]) is None  # no version was made: Kaggle refuses, it does not queue
    cpu = uniq("cpu")
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / cpu, cpu, "print('x')\n"))))
    assert local_kaggle.wait_kernel(USER, cpu, 1)["status"] == "COMPLETE"  # CPU sessions have their own cap
    for slug in slugs[:2]:
        local_kaggle.admin("POST", "/_kpack/cancel", {"kernel": f"{USER}/{slug}", "version": 1})
    for slug in slugs[:2]:
        assert local_kaggle.wait_kernel(USER, slug, 1, timeout=60)["status"] == "CANCEL_ACKNOWLEDGED"
    assert 'KernelWorkerStatus.CANCEL_ACKNOWLEDGED' in ok(run_kaggle("kernels", "status", f"{USER}/{slugs[0]}"))
    assert "Maximum" not in ok(run_kaggle("kernels", "push", "-p", str(third)))  # a slot is free again
    assert local_kaggle.wait_kernel(USER, slugs[2], 1)["status"] == "COMPLETE"


# --------------------------------------------------------------------------------------------- competitions

def make_competition(local_kaggle, tmp_path: Path, slug: str, code: bool = False) -> None:
    data = tmp_path / f"{slug}-data"
    data.mkdir()
    (data / "sample_submission.csv").write_text("id,attribute_ids\nt1,0\nt2,0\nt3,0\n")
    (tmp_path / "solution.csv").write_text("id,attribute_ids,Usage\nt1,1 2,Public\nt2,3,Public\nt3,4 5,Private\n")
    args = ["local", "competition", "create", slug, "--data", str(data), "--solution",
            str(tmp_path / "solution.csv"), "--root", str(local_kaggle.root)] + (["--code"] if code else [])
    done = subprocess.run([str(Path(sys.executable).parent / "kpack"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_competition_file_submission_is_scored(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("comp")
    make_competition(local_kaggle, tmp_path, slug)
    (tmp_path / "good.csv").write_text("id,attribute_ids\nt1,1 2\nt2,3 4\nt3,4\n")
    (tmp_path / "bad.csv").write_text("id,attribute_ids\nt1,1 2\n")
    out = ok(run_kaggle("competitions", "submit", slug, "-f", str(tmp_path / "good.csv"), "-m", "good one"))
    assert "Successfully submitted" in out and "submissions remaining today" in out
    ok(run_kaggle("competitions", "submit", slug, "-f", str(tmp_path / "bad.csv"), "-m", "bad one"))
    table = ok(run_kaggle("competitions", "submissions", slug))
    good = next(line for line in table.splitlines() if "good one" in line)
    assert "SubmissionStatus.COMPLETE" in good and "0.91667" in good and "0.55556" in good
    bad = next(line for line in table.splitlines() if "bad one" in line)
    assert "SubmissionStatus.ERROR" in bad
    assert ok(run_kaggle("competitions", "files", slug)).count("sample_submission.csv") == 1

    missing = run_kaggle("competitions", "submit", uniq("nocomp"), "-f", str(tmp_path / "good.csv"), "-m", "x")
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.slow
def test_code_competition_scores_a_kernel_versions_output(run_kaggle, local_kaggle, tmp_path):
    comp, slug = uniq("codecomp"), uniq("infer")
    make_competition(local_kaggle, tmp_path, comp, code=True)
    code = ROOT + ('import time\n'
                   'assert (root / "input" / "competitions" / "' + comp + '" / "sample_submission.csv").exists()\n'
                   'time.sleep(4)\n'
                   '(root / "working" / "submission.csv").write_text("id,attribute_ids\\nt1,1 2\\nt2,3\\nt3,4 5\\n")\n')
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "k", slug, code, competition_sources=[comp]))))
    out = ok(run_kaggle("competitions", "submit", comp, "-k", f"{USER}/{slug}", "-v", "1", "-f", "submission.csv",
                        "-m", "from the notebook"))
    assert "submissions remaining today" in out
    local_kaggle.wait_kernel(USER, slug, 1)
    deadline = time.monotonic() + 30
    while "SubmissionStatus.PENDING" in (table := ok(run_kaggle("competitions", "submissions", comp))):
        assert time.monotonic() < deadline
    line = next(line for line in table.splitlines() if "from the notebook" in line)
    assert "SubmissionStatus.COMPLETE" in line and line.count("1.00000") == 2

    file_sub = run_kaggle("competitions", "submit", comp, "-f", str(tmp_path / "solution.csv"), "-m", "file")
    assert file_sub.returncode == 1 and "code competition" in file_sub.stderr
    online = uniq("online")
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "on", online, "print(1)\n",
                                                           enable_internet=True))))
    refused = run_kaggle("competitions", "submit", comp, "-k", f"{USER}/{online}", "-v", "1", "-f", "submission.csv",
                         "-m", "online")
    assert refused.returncode == 1 and "internet" in refused.stderr


# --------------------------------------------------------------------------------------------- credentials

def test_wrong_credentials_are_refused_clearly(run_kaggle, kaggle_env):
    bad_key = {**kaggle_env, "KAGGLE_KEY": "wrong"}
    del bad_key["KAGGLE_API_TOKEN"]
    done = run_kaggle("datasets", "list", "--mine", env=bad_key)
    assert done.returncode == 1 and "Authentication required to call the Kaggle API" in done.stdout
    done = run_kaggle("kernels", "status", f"{USER}/anything", env=bad_key)
    assert done.returncode == 1 and "Permission 'kernels.get' was denied" in done.stderr
    bad_token = {**kaggle_env, "KAGGLE_API_TOKEN": "not-a-token"}  # a stray token wins over a good key
    done = run_kaggle("competitions", "list", env=bad_token)
    assert done.returncode == 1 and "Authentication required" in done.stdout


def test_username_and_key_work_without_a_token(run_kaggle, kaggle_env, local_kaggle):
    env = dict(kaggle_env)
    del env["KAGGLE_API_TOKEN"]
    local_kaggle.reset_stats()
    done = run_kaggle("kernels", "list", "--mine", env=env)
    assert done.returncode == 0, done.stderr
    assert "IntrospectToken" not in local_kaggle.stats()["calls"]


def test_401_body_is_json_with_a_message(local_kaggle):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{local_kaggle.url}/api/v1/kernels.KernelsApiService/ListKernels", data=b"{}",
                                     headers={"Authorization": "Basic " + "YWxpY2U6d3Jvbmc="})  # alice:wrong
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(request, timeout=10)
    body = json.loads(err.value.read())
    assert err.value.code == 401 and body["code"] == 401 and "wrong credentials" in body["message"]


# --------------------------------------------------------------------------------------------- faults

def test_interrupted_upload_resumes_where_it_stopped(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("resume")
    blob = os.urandom(300_000)
    folder = make_dataset(tmp_path / "ds", slug, {"blob.bin": blob})
    local_kaggle.reset_stats()
    local_kaggle.faults({"method": "PUT", "kind": "503", "after_bytes": 100_000, "times": 2})
    out = ok(run_kaggle("datasets", "create", "-p", str(folder)))
    assert "Will resume upload at 100000." in out and "Will resume upload at 200000." in out
    puts = [p["content_range"] for p in local_kaggle.stats()["puts"]]
    assert puts == [None, "bytes */300000", "bytes 100000-299999/300000", "bytes */300000",
                    "bytes 200000-299999/300000"]
    assert local_kaggle.stats()["uploaded_bytes"] == 300_000  # no byte sent twice
    from packager.localkaggle.store import Store

    files = Path(Store(local_kaggle.root).dataset_version(USER, slug)["files_dir"])
    assert hashlib.sha256((files / "blob.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()


def test_a_dropped_upload_connection_is_retried_to_a_whole_file(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("dropped")
    blob = os.urandom(250_000)
    local_kaggle.reset_stats()
    local_kaggle.faults({"method": "PUT", "kind": "drop", "after_bytes": 60_000})
    ok(run_kaggle("datasets", "create", "-p", str(make_dataset(tmp_path / "ds", slug, {"blob.bin": blob}))))
    assert local_kaggle.stats()["faults_fired"] == {"PUT:drop": 1}
    from packager.localkaggle.store import Store

    files = Path(Store(local_kaggle.root).dataset_version(USER, slug)["files_dir"])
    assert (files / "blob.bin").read_bytes() == blob


@pytest.mark.slow
def test_upload_resumes_after_the_client_process_died(kaggle_env, local_kaggle, tmp_path, run_kaggle):
    slug = uniq("killed")
    blob = os.urandom(400_000)
    folder = make_dataset(tmp_path / "ds", slug, {"blob.bin": blob})
    local_kaggle.reset_stats()
    local_kaggle.faults({"method": "PUT", "kind": "slow", "bytes_per_s": 100_000, "times": 1})
    proc = subprocess.Popen([KAGGLE, "datasets", "create", "-p", str(folder)], env=kaggle_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while local_kaggle.stats()["uploaded_bytes"] < 100_000:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    ok(run_kaggle("datasets", "create", "-p", str(folder)))
    stats = local_kaggle.stats()
    assert stats["calls"]["StartBlobUpload"] == 1  # the second run reused the first run's upload token...
    ranges = [p["content_range"] for p in stats["puts"]]
    assert ranges[0] is None and ranges[1] == "bytes */400000"  # ...asked what the server has...
    assert None not in ranges[1:] and stats["uploaded_bytes"] == 400_000  # ...and sent only the rest, if any
    from packager.localkaggle.store import Store

    files = Path(Store(local_kaggle.root).dataset_version(USER, slug)["files_dir"])
    assert (files / "blob.bin").read_bytes() == blob


def test_rate_limit_with_retry_after_is_waited_out(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("limited")
    local_kaggle.reset_stats()
    local_kaggle.faults({"method": "StartBlobUpload", "kind": "429", "retry_after": 1, "times": 2})
    out = run_kaggle("datasets", "create", "-p", str(make_dataset(tmp_path / "ds", slug, {"a.txt": "a"})))
    assert out.returncode == 0 and "Will retry in 1.0 seconds" in out.stderr
    assert local_kaggle.stats()["calls"]["StartBlobUpload"] == 3
    assert local_kaggle.stats()["faults_fired"]["StartBlobUpload:429"] == 2


def test_a_lost_answer_to_create_version_does_not_make_two_versions(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("lost")
    folder = make_dataset(tmp_path / "ds", slug, {"a.txt": "one"})
    ok(run_kaggle("datasets", "create", "-p", str(folder)))
    (folder / "a.txt").write_text("two")
    local_kaggle.faults({"method": "CreateDatasetVersion", "kind": "drop", "when": "after"})
    out = ok(run_kaggle("datasets", "version", "-p", str(folder), "-m", "v2"))
    assert "Dataset version is being created" in out
    from packager.localkaggle.store import Store

    assert Store(local_kaggle.root).dataset(USER, slug)["versions"] == [1, 2]


def test_a_failed_save_kernel_makes_no_version(run_kaggle, local_kaggle, tmp_path):
    slug = uniq("flaky")
    folder = make_kernel(tmp_path / "k", slug, "print(1)\n")
    local_kaggle.faults({"method": "SaveKernel", "kind": "500"})
    done = run_kaggle("kernels", "push", "-p", str(folder))
    assert done.returncode == 1 and "injected fault" in done.stderr
    assert "Kernel version 1 successfully pushed" in ok(run_kaggle("kernels", "push", "-p", str(folder)))
