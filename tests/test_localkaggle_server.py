"""The local Kaggle's parts: scoring, the store's all-or-nothing versions, the upload protocol on the wire,
request parsing through a proxy, and a restart that loses nothing."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import KAGGLE, USER, LocalKaggleServer
from packager.localkaggle.scoring import Score, SubmissionError, fbeta, score_submission
from packager.localkaggle.store import Store, StoreError

# --------------------------------------------------------------------------------------------- scoring


def test_fbeta_weighs_recall_over_precision():
    assert fbeta({"1"}, {"1"}) == 1.0
    assert fbeta({"1"}, {"2"}) == 0.0
    assert fbeta(set(), set()) == 1.0
    assert fbeta({"3"}, {"3", "4"}) == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))   # precision 0.5, recall 1
    assert fbeta({"4", "5"}, {"4"}) == pytest.approx(5 * 0.5 / (4 + 0.5))       # precision 1, recall 0.5


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    path = tmp_path / "solution.csv"
    path.write_text("id,attribute_ids,Usage\nt1,1 2,Public\nt2,3,Public\nt3,4 5,Private\nt4,9,Ignored\n")
    return path


def test_scores_public_and_private_means(solution):
    score = score_submission(b"id,attribute_ids\nt1,1 2\nt2,3 4\nt3,4\nt4,0\n", solution)
    assert Score.text(score.public) == "0.91667" and Score.text(score.private) == "0.55556"
    reordered = score_submission(b"\xef\xbb\xbfattribute_ids,id\n4,t3\n1 2,t1\n3 4,t2\n,t4\n", solution)
    assert reordered.public == score.public and reordered.private == score.private


@pytest.mark.parametrize("body, message", [
    (b"", "empty"),
    (b"id,wrong\nt1,1\n", "exactly the columns id,attribute_ids"),
    (b"id,attribute_ids\nt1,1\nt1,2\nt2,3\nt3,4\nt4,5\n", "appears twice"),
    (b"id,attribute_ids\nt1,1\nt2,3\nt3,4\nt4,5\nzz,1\n", "unexpected id 'zz'"),
    (b"id,attribute_ids\nt1,1\n", "missing 3 of 4 rows"),
    (b"id,attribute_ids\nt1,1,2\n", "expected 2 values"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
])
def test_malformed_submissions_say_why(solution, body, message):
    with pytest.raises(SubmissionError, match=message):
        score_submission(body, solution)


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["accuracy", "rmse", "mae", "auc", "logloss"])
def test_each_metric_scores_as_sklearn_does_on_each_leaderboard(tmp_path, name):
    """Two target columns, public and private rows: each leaderboard's score is sklearn's on its rows (AUC and
    log loss: the mean over the columns, as Kaggle's column-wise metrics)."""
    import numpy as np
    from sklearn import metrics as sk

    rng = np.random.default_rng(3)
    n = 60
    if name == "accuracy":
        truth, pred = rng.choice(["cat", "dog", "owl"], (n, 2)), rng.choice(["cat", "dog", "owl"], (n, 2))
    elif name in ("rmse", "mae"):
        truth, pred = rng.normal(size=(n, 2)).round(4), rng.normal(size=(n, 2)).round(4)
    else:
        truth, pred = rng.integers(0, 2, (n, 2)), rng.random((n, 2)).round(4)
        pred[0, 0] = 0.0  # a hard 0: log loss clips it at 1e-15, as Kaggle's does
    usage = ["Public" if i % 3 else "Private" for i in range(n)]
    ids = [f"r{i}" for i in range(n)]
    solution = _write(tmp_path / "solution.csv", ["id", "a", "b", "Usage"],
                      [[i, *t, u] for i, t, u in zip(ids, truth.tolist(), usage)])
    body = "b,id,a\n" + "".join(f"{p[1]},{i},{p[0]}\n" for i, p in zip(ids, pred.tolist()))  # columns in any order
    score = score_submission(body.encode(), solution, name)

    def reference(rows):
        t, p = truth[rows], pred[rows]
        if name == "accuracy":
            return float((t == p).mean())
        if name == "rmse":
            return float(np.sqrt(sk.mean_squared_error(t.ravel(), p.ravel())))
        if name == "mae":
            return float(sk.mean_absolute_error(t.ravel(), p.ravel()))
        if name == "auc":
            return float(np.mean([sk.roc_auc_score(t[:, c], p[:, c]) for c in range(2)]))
        p = np.clip(p, 1e-15, 1 - 1e-15)  # Kaggle's clip (sklearn's own is now the float's eps, 2.2e-16)
        return float(np.mean([sk.log_loss(t[:, c], p[:, c], labels=[0, 1]) for c in range(2)]))

    public = [i for i, u in enumerate(usage) if u == "Public"]
    private = [i for i, u in enumerate(usage) if u == "Private"]
    assert score.public == pytest.approx(reference(public)) and score.private == pytest.approx(reference(private))


@pytest.mark.parametrize("name, beta", [("f1-samples", 1.0), ("f2-samples", 2.0)])
def test_per_sample_fbeta_scores_as_sklearn_does(tmp_path, name, beta):
    """Label lists, public and private rows: sklearn's fbeta_score(average='samples') on each leaderboard's
    rows (rows with no true and no predicted label, which sklearn scores 0, are left out: Kaggle's score 1)."""
    import numpy as np
    from sklearn import metrics as sk

    rng = np.random.default_rng(5)
    n, labels = 80, 6
    truth, pred = rng.random((n, labels)) < 0.3, rng.random((n, labels)) < 0.35
    truth[:, 0] |= ~(truth.any(axis=1) | pred.any(axis=1))  # no row empty in both
    usage = ["Public" if i % 3 else "Private" for i in range(n)]
    ids = [f"r{i}" for i in range(n)]
    cells = lambda row: " ".join(str(j) for j in np.flatnonzero(row))  # noqa: E731
    solution = _write(tmp_path / "solution.csv", ["id", "attribute_ids", "Usage"],
                      [[i, cells(t), u] for i, t, u in zip(ids, truth, usage)])
    body = "id,attribute_ids\n" + "".join(f"{i},{cells(p)}\n" for i, p in zip(ids, pred))
    score = score_submission(body.encode(), solution, name)
    for board, value in (("Public", score.public), ("Private", score.private)):
        rows = [i for i, u in enumerate(usage) if u == board]
        assert value == pytest.approx(sk.fbeta_score(truth[rows], pred[rows], beta=beta, average="samples",
                                                     zero_division=0))


def test_auc_ties_take_their_mean_rank():
    from packager.localkaggle.scoring import auc

    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_a_metric_refuses_what_it_cannot_read(tmp_path):
    numbers = _write(tmp_path / "numbers.csv", ["id", "y"], [["a", 1.5], ["b", 2.0]])
    with pytest.raises(SubmissionError, match=r"line 3: y 'n/a': not a number"):
        score_submission(b"id,y\na,1\nb,n/a\n", numbers, "rmse")
    with pytest.raises(SubmissionError, match=r"line 2: y 'inf': not a finite number"):
        score_submission(b"id,y\na,inf\nb,1\n", numbers, "rmse")
    with pytest.raises(ValueError, match=r"line 2: y '1.5': a binary target must be 0 or 1"):
        score_submission(b"id,y\na,1\nb,1\n", numbers, "auc")
    one_class = _write(tmp_path / "one.csv", ["id", "y", "Usage"], [["a", 1, "Public"], ["b", 1, "Public"],
                                                                    ["c", 0, "Private"], ["d", 1, "Private"]])
    with pytest.raises(ValueError, match="column y: the Public rows hold one class only"):
        score_submission(b"id,y\na,1\nb,1\nc,1\nd,1\n", one_class, "auc")
    two = _write(tmp_path / "two.csv", ["id", "x", "y"], [["a", "1 2", "3"]])
    with pytest.raises(ValueError, match="one label column"):
        score_submission(b"id,x,y\na,1,3\n", two)  # f2-samples: one column of labels


# --------------------------------------------------------------------------------------------- store

def _upload(store: Store, data: bytes, name: str = "f.bin", user: str = USER, complete: bool = True) -> str:
    token = store.new_upload(user, "dataset", name, len(data))
    store.upload_part(token).write_bytes(data if complete else data[: len(data) // 2])
    return token


def test_a_version_is_made_whole_or_not_at_all(tmp_path):
    store = Store(tmp_path)
    good, partial = _upload(store, b"a" * 10), _upload(store, b"b" * 10, "g.bin", complete=False)
    with pytest.raises(StoreError, match="incomplete: 5 of 10 bytes"):
        store.create_dataset(USER, USER, "demo-data", {"title": "Demo Data"}, [good, partial])
    assert store.dataset(USER, "demo-data") is None
    assert not [p for p in (tmp_path / "datasets").rglob("*") if p.is_file()]
    assert store.upload(good)["received"] == 10  # the finished upload is still there to try again

    store.upload_part(partial).write_bytes(b"b" * 10)
    info, created = store.create_dataset(USER, USER, "demo-data", {"title": "Demo Data"}, [good, partial])
    assert created and info["versions"] == [1]
    again, created = store.create_dataset(USER, USER, "demo-data", {"title": "Demo Data"}, [good, partial])
    assert not created and again["versions"] == [1]  # a client retry of the same call
    with pytest.raises(StoreError, match="already exists"):
        store.create_dataset(USER, USER, "demo-data", {"title": "Demo Data"}, [_upload(store, b"x")])

    third = _upload(store, b"c")
    version, created = store.create_dataset_version(USER, USER, "demo-data", [third], "v2")
    assert created and version["number"] == 2 and [f["name"] for f in version["files"]] == ["f.bin"]
    same, created = store.create_dataset_version(USER, USER, "demo-data", [third], "v2")
    assert not created and same["number"] == 2
    with pytest.raises(StoreError, match="unknown upload token"):
        store.create_dataset_version("mallory", USER, "demo-data", [_upload(store, b"z", user=USER)], "x")


def test_a_dataset_version_is_processing_for_its_time_even_across_a_restart(tmp_path):
    store = Store(tmp_path)
    store.create_dataset(USER, USER, "slow-data", {}, [_upload(store, b"a" * 500_000)], processing=(1.0, 2.0))
    assert store.dataset_statuses(USER, "slow-data")[1] == "BLOBS_RECEIVED"  # 1 + 1 s: the first of four stages
    assert store.ready_dataset_versions(USER, "slow-data") == []
    time.sleep(1.1)
    restarted = Store(tmp_path)  # the time is on disk: a restarted server goes on where it was
    assert restarted.dataset_statuses(USER, "slow-data")[1] in ("BLOBS_COPIED_TO_SDS", "INDIVIDUAL_BLOBS_COMPRESSED")
    time.sleep(1.0)
    assert restarted.ready_dataset_versions(USER, "slow-data") == [1]


def test_archives_unpack_into_a_folder_and_may_not_escape(tmp_path):
    import io
    import zipfile

    store = Store(tmp_path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/b.txt", "inside")
    info, _ = store.create_dataset(USER, USER, "zipped-data", {}, [_upload(store, buf.getvalue(), "pack.zip")])
    files = Path(store.dataset_version(USER, "zipped-data")["files_dir"])
    assert (files / "pack" / "a" / "b.txt").read_text() == "inside"

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "no")
    with pytest.raises(StoreError, match="outside the archive"):
        store.create_dataset(USER, USER, "evil-data", {}, [_upload(store, evil.getvalue(), "evil.zip")])
    assert not list(tmp_path.rglob("escaped.txt")) and store.dataset(USER, "evil-data") is None


def test_names_that_would_leave_the_root_are_refused(tmp_path):
    store = Store(tmp_path)
    for bad in ("..", "../x", "a/b", ""):
        with pytest.raises(StoreError):
            store.kernel_dir(USER, bad)
    assert store.kernel("..", "x") is None and store.user("../users/alice") is None


# --------------------------------------------------------------------------------------------- the wire

def _raw(server: LocalKaggleServer, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


def test_path_is_taken_from_an_absolute_url_as_a_proxy_client_sends_it(local_kaggle):
    creds = local_kaggle.env(USER)
    body = json.dumps({"token": creds["KAGGLE_API_TOKEN"]}).encode()
    status, _, raw = _raw(local_kaggle, b"POST http://localhost/api/v1/security.OAuthService/IntrospectToken HTTP/1.1\r\n"
                          b"Host: localhost\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status == 200 and json.loads(raw) == {"active": True, "clientId": "kpack-local", "username": USER,
                                                 "userId": json.loads(raw)["userId"], "scope": "resources.admin:*"}
    status, _, raw = _raw(local_kaggle, b"POST /v1/kernels.KernelsApiService/NoSuchMethod HTTP/1.1\r\n"
                          b"Host: x\r\nContent-Length: 2\r\n\r\n{}")
    assert status == 404 and "not implemented" in json.loads(raw)["message"]


def test_upload_protocol_probe_and_append(local_kaggle):
    store = Store(local_kaggle.root)
    token = store.new_upload(USER, "dataset", "wire.bin", 10)

    def put(body: bytes, content_range: str | None) -> tuple[int, dict]:
        headers = f"Content-Length: {len(body)}\r\n" + (f"Content-Range: {content_range}\r\n" if content_range else "")
        status, head, _ = _raw(local_kaggle, f"PUT /_kpack/upload/{token} HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
                               .encode() + body)
        return status, head

    status, head = put(b"", "bytes */10")
    assert status == 308 and "Range" not in head          # nothing stored yet
    assert put(b"0123", None)[0] == 308                   # a short body: stored, not complete
    status, head = put(b"", "bytes */10")
    assert status == 308 and head["Range"] == "bytes=0-3"
    assert put(b"456789", "bytes 4-9/10")[0] == 200
    assert put(b"", "bytes */10")[0] == 200
    assert store.upload_part(token).read_bytes() == b"0123456789"
    assert put(b"x", "bytes 11-11/10")[0] == 400


def test_fault_rules_are_listed_and_cleared(local_kaggle):
    local_kaggle.clear_faults()
    answer = local_kaggle.faults({"method": "GET", "kind": "503", "times": 0})
    assert answer["added"] == 1 and answer["rules"][0]["method"] == "GET"
    local_kaggle.clear_faults()
    assert local_kaggle.admin("GET", "/_kpack/faults") == {"rules": []}
    import urllib.error

    with pytest.raises(urllib.error.HTTPError):
        local_kaggle.faults({"method": "PUT", "kind": "teapot"})


# --------------------------------------------------------------------------------------------- restart

def _kaggle(env: dict, *args: str, cwd: Path) -> str:
    done = subprocess.run([KAGGLE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _env(server: LocalKaggleServer, tmp_path: Path) -> dict:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp_path / "tmp"), "KAGGLE_CONFIG_DIR": str(home / ".kaggle"),
            **server.env(USER)}


def _kernel(folder: Path, slug: str, code: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "k.py").write_text(code)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{USER}/{slug}", "title": slug.replace("-", " ").title(), "code_file": "k.py",
        "language": "python", "kernel_type": "script", "enable_internet": False}))
    return folder


@pytest.mark.slow
def test_a_restarted_server_has_everything_it_had(tmp_path):
    server = LocalKaggleServer(tmp_path / "root", max_sessions=1).start()
    try:
        env = _env(server, tmp_path)
        data = tmp_path / "ds"
        data.mkdir()
        (data / "x.csv").write_text("1,2\n")
        (data / "dataset-metadata.json").write_text(json.dumps(
            {"id": f"{USER}/keep-data", "title": "Keep Data", "licenses": [{"name": "CC0-1.0"}]}))
        _kaggle(env, "datasets", "create", "-p", str(data), cwd=tmp_path)
        root = 'import os, pathlib\nw = pathlib.Path(os.environ["KPACK_KAGGLE_ROOT"]) / "working"\n'
        _kaggle(env, "kernels", "push", "-p", str(_kernel(tmp_path / "a", "done-kernel",
                                                          root + '(w / "o.txt").write_text("kept")\n')), cwd=tmp_path)
        server.wait_kernel(USER, "done-kernel", 1)
        server.stop()                                      # a clean stop
        server.start()
        env = _env(server, tmp_path)
        assert _kaggle(env, "datasets", "status", f"{USER}/keep-data", cwd=tmp_path).strip() == "ready"
        assert "COMPLETE" in _kaggle(env, "kernels", "status", f"{USER}/done-kernel", cwd=tmp_path)
        _kaggle(env, "kernels", "output", f"{USER}/done-kernel", "-p", str(tmp_path / "out"), cwd=tmp_path)
        assert (tmp_path / "out" / "o.txt").read_text() == "kept"

        _kaggle(env, "kernels", "push", "-p", str(_kernel(tmp_path / "b", "long-kernel",
                                                          "import time\ntime.sleep(15)\n")), cwd=tmp_path)
        _kaggle(env, "kernels", "push", "-p", str(_kernel(tmp_path / "c", "queued-kernel",
                                                          root + '(w / "q.txt").write_text("ran")\n')), cwd=tmp_path)
        server.wait_kernel(USER, "long-kernel", 1, until=("RUNNING",))
        assert Store(server.root).kernel_version(USER, "queued-kernel", 1)["status"] == "QUEUED"
        server.stop(kill=True)                             # a crash, one session running, one queued
        server.start()
        env = _env(server, tmp_path)
        out = _kaggle(env, "kernels", "status", f"{USER}/long-kernel", cwd=tmp_path)
        assert "ERROR" in out and "restarted while this session ran" in out
        assert server.wait_kernel(USER, "queued-kernel", 1)["status"] == "COMPLETE"  # re-queued and run
        assert "Kernel version 2 successfully pushed" in _kaggle(
            env, "kernels", "push", "-p", str(tmp_path / "a"), cwd=tmp_path)   # numbering goes on
    finally:
        server.stop()


def test_ensure_server_refuses_a_port_held_by_something_else(tmp_path):
    from packager.errors import UserError
    from packager.localkaggle import client_env

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(UserError, match="taken by something that is not the local Kaggle"):
            client_env.ensure_server(tmp_path / "root", sock.getsockname()[1], "carol")


def test_ensure_server_starts_one_detached_and_reuses_it(tmp_path):
    from packager.localkaggle import client_env

    root, port = tmp_path / "root", None
    from conftest import free_port

    port = free_port()
    env = client_env.ensure_server(root, port, "carol")
    try:
        assert env["HTTP_PROXY"] == f"http://127.0.0.1:{port}" and env["KAGGLE_USERNAME"] == "carol"
        first = client_env.health(port)
        assert first and Path(first["root"]) == root.resolve() and (root / "server.log").exists()
        assert client_env.ensure_server(root, port, "carol") == env and client_env.health(port)["pid"] == first["pid"]
        from packager.errors import UserError

        with pytest.raises(UserError, match="not .*other"):
            client_env.ensure_server(tmp_path / "other", port, "carol")
        kpack = str(Path(os.sys.executable).parent / "kpack")
        done = subprocess.run([kpack, "local", "stop", "--port", str(port)], capture_output=True, text=True)
        assert done.returncode == 0 and "stopped the local Kaggle" in done.stdout and not client_env.health(port)
    finally:
        answer = client_env.health(port)
        if answer:
            os.kill(answer["pid"], 15)
            deadline = time.monotonic() + 20
            while client_env.health(port) and time.monotonic() < deadline:
                time.sleep(0.1)
