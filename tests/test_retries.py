"""Retries: every Kaggle call waits out a 429's Retry-After, backs off on 5xx and dropped connections, and
ends in success or one clear error; a call that creates something is never made twice."""
import pytest
import requests

from packager import kaggle_api
from packager.errors import UserError


def http_error(status, retry_after=None, body=None):
    response = requests.Response()
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if body is not None:
        import json
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
    return requests.HTTPError(f"{status} error", response=response)


@pytest.fixture
def waits(monkeypatch):
    slept = []
    monkeypatch.setattr(kaggle_api, "sleep", slept.append)
    monkeypatch.setattr(kaggle_api, "policy", kaggle_api.RetryPolicy(attempts=5, base_s=1.0))
    return slept


def flaky(*failures, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    fn.calls = calls
    return fn


def test_429_waits_for_retry_after(waits):
    fn = flaky(http_error(429, retry_after=7), http_error(429, retry_after=3))
    assert kaggle_api.call("x", fn) == "ok"
    assert waits == [7.0, 3.0] and len(fn.calls) == 3


def test_5xx_and_dropped_connections_back_off(waits):
    fn = flaky(http_error(503), requests.ConnectionError("reset"), http_error(500))
    assert kaggle_api.call("x", fn) == "ok"
    assert waits == [1.0, 2.0, 4.0]


def test_gives_up_with_one_clear_error(waits):
    fn = flaky(*[http_error(503)] * 10)
    with pytest.raises(UserError) as err:
        kaggle_api.call("push kernel a/b", fn)
    assert "push kernel a/b failed after 5 attempts over 15s: HTTP 503" in str(err.value)
    assert err.value.exit_code == 1 and "\n" not in str(err.value)


def test_client_errors_are_not_retried(waits):
    fn = flaky(http_error(400, body={"code": 400, "message": "title too short"}))
    with pytest.raises(kaggle_api.KaggleCallError) as err:
        kaggle_api.call("push", fn)
    assert err.value.status == 400 and "title too short" in str(err.value)
    assert waits == [] and len(fn.calls) == 1


def test_validation_errors_become_user_errors(waits):
    fn = flaky(ValueError("Title must be at least five characters"))
    with pytest.raises(UserError, match="Title must be at least five"):
        kaggle_api.call("push", fn)


def test_lost_answer_is_not_repeated(waits):
    """The first attempt did the work but the connection dropped: `done` finds it, no second attempt."""
    fn = flaky(requests.ConnectionError("connection reset"))
    assert kaggle_api.call("create", fn, done=lambda: "made earlier") == "made earlier"
    assert len(fn.calls) == 1


def test_done_is_not_consulted_after_429(waits):
    consulted = []
    fn = flaky(http_error(429, retry_after=0))
    assert kaggle_api.call("create", fn, done=lambda: consulted.append(1)) == "ok"
    assert consulted == []


def test_huge_retry_after_is_reported_not_slept(waits):
    fn = flaky(http_error(429, retry_after=10_000))
    with pytest.raises(UserError, match="rate limited for 10000s"):
        kaggle_api.call("x", fn)
    assert waits == []


def test_retry_after_http_date():
    import email.utils
    import time
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= kaggle_api.retry_after(http_error(429, retry_after=when)) <= 31


# --------------------------------------------------------------------------------------------- against the local Kaggle

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from pushkit import isolate, make_project  # noqa: E402


@pytest.fixture
def project(local_kaggle, tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    local_kaggle.clear_faults()
    local_kaggle.reset_stats()
    proj = make_project(tmp_path, local_kaggle, weights_kb=600)
    monkeypatch.chdir(proj.root)
    yield proj
    kaggle_api._restore_env()
    local_kaggle.clear_faults()


def built_files(project) -> dict[str, int]:
    built = project.root / "build" / "datasets" / project.weights_slug
    return {p.name: p.stat().st_size for p in built.iterdir()
            if p.name not in ("dataset-metadata.json", "pushed.json")}


def whole_versions(project, *expected: dict[str, int]) -> list[int]:
    """The dataset's versions, after checking version i holds exactly the files expected[i] (default: the
    current build), each at its full size."""
    from packager.localkaggle.store import Store

    store = Store(project.server.root)
    info = project.dataset()
    for i, number in enumerate(info["versions"]):
        version = store.dataset_version("alice", project.weights_slug, number)
        want = expected[i] if i < len(expected) else built_files(project)
        assert {f["name"]: f["size"] for f in version["files"]} == want, f"v{number} is not whole"
    return info["versions"]


def push(project, wait=False):
    from packager.push import push_kernel

    return push_kernel(project.cfg(), "train", wait=wait)


@pytest.mark.parametrize("rule", [
    {"method": "SaveKernel", "kind": "429", "times": 2, "retry_after": 1},
    {"method": "SaveKernel", "kind": "503"},
    {"method": "SaveKernel", "kind": "drop"},
    {"method": "SaveKernel", "kind": "drop", "when": "after"},   # the version is made, the answer lost
    {"method": "SaveKernel", "kind": "500", "when": "after"},
], ids=lambda r: f"{r['method']}-{r['kind']}-{r.get('when', 'before')}")
def test_kernel_push_survives_faults_without_duplicates(project, local_kaggle, rule):
    local_kaggle.faults(rule)
    result = push(project)
    assert [v["number"] for v in project.kernel_versions()] == [1] and result.ref.version == 1
    assert local_kaggle.stats()["faults_fired"], "the fault never fired"


@pytest.mark.parametrize("rules", [
    [{"method": "StartBlobUpload", "kind": "429", "times": 2, "retry_after": 1}],
    [{"method": "PUT", "kind": "drop", "after_bytes": 100_000}],
    [{"method": "PUT", "kind": "503", "after_bytes": 100_000}],
    [{"method": "CreateDataset", "kind": "503"}],
    [{"method": "CreateDataset", "kind": "drop", "when": "after"}],
    [{"method": "GetDatasetStatus", "kind": "429", "times": 3, "retry_after": 1}],
], ids=lambda rs: "+".join(f"{r['method']}-{r['kind']}-{r.get('when', 'before')}" for r in rs))
def test_dataset_create_survives_faults_whole(project, local_kaggle, rules):
    local_kaggle.faults(*rules)
    push(project)
    assert whole_versions(project) == [1]
    assert [v["number"] for v in project.kernel_versions()] == [1]


@pytest.mark.parametrize("rule", [
    {"method": "CreateDatasetVersion", "kind": "drop", "when": "after"},
    {"method": "CreateDatasetVersion", "kind": "500"},
    {"method": "PUT", "kind": "drop", "after_bytes": 50_000},
])
def test_dataset_version_survives_faults_whole(project, local_kaggle, rule):
    push(project)
    first = built_files(project)
    (project.root / "models" / "backbone.tiny.pth").write_bytes(b"changed" * 50_000)
    local_kaggle.faults(rule)
    push(project)
    assert whole_versions(project, first) == [1, 2]
    assert local_kaggle.stats()["faults_fired"], "the fault never fired"


def test_persistent_failure_is_one_error_and_nothing_half_made(project, local_kaggle):
    local_kaggle.faults({"method": "StartBlobUpload", "kind": "503", "times": 0})
    with pytest.raises(UserError) as err:
        push(project)
    assert err.value.exit_code == 1 and "\n" not in str(err.value)
    assert "create dataset" in str(err.value) and "503" in str(err.value)
    assert project.dataset() is None and project.kernel_versions() == []
    local_kaggle.clear_faults()
    push(project)
    assert whole_versions(project) == [1]


@pytest.mark.slow
def test_watch_and_download_survive_faults(project, local_kaggle):
    local_kaggle.faults({"method": "GetKernelSessionStatus", "kind": "429", "times": 2, "retry_after": 1},
                        {"method": "ListKernelSessionOutput", "kind": "drop"},
                        {"method": "GET", "kind": "503", "times": 2})
    result = push(project, wait=True)
    assert result.status == "COMPLETE"
    assert json.loads((Path(result.output) / "state.json").read_text())["done"] is True
    assert set(local_kaggle.stats()["faults_fired"]) == {
        "GetKernelSessionStatus:429", "ListKernelSessionOutput:drop", "GET:503"}


@pytest.mark.parametrize("url, cause", [
    ("http://kpack-test.invalid/", "kpack-test.invalid: its name does not resolve (no network, or DNS failing)"),
    ("http://127.0.0.1:1/", "127.0.0.1:1: the connection was refused"),
])
def test_a_server_out_of_reach_is_one_short_line(waits, capsys, url, cause):
    """A real unreachable server (.invalid never resolves, port 1 refuses): the retry line and the error name the
    host and the cause in a few words, not urllib3's 300-character repr, and the same cause is said once."""
    with pytest.raises(kaggle_api.KaggleCallError) as err:
        kaggle_api.call("get kernel a/b", requests.get, url, timeout=10)
    assert str(err.value) == f"kaggle: get kernel a/b failed after 5 attempts over 15s: cannot reach {cause}"
    assert err.value.unreachable == f"cannot reach {cause}" and err.value.exhausted
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert capsys.readouterr().err == f"kaggle: get kernel a/b: cannot reach {cause}; retry 1/4 in 1.0s\n"


def test_a_tls_failure_is_not_retried(waits):
    """https to a plain-HTTP server: a real TLS failure, which fails the same way every time (as a proxy that
    intercepts TLS does)."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(kaggle_api.KaggleCallError) as err:
            kaggle_api.call("get kernel a/b", requests.get, f"https://127.0.0.1:{server.server_port}/", timeout=10)
    finally:
        server.shutdown()
    assert str(err.value).startswith(f"kaggle: get kernel a/b failed: cannot reach 127.0.0.1:{server.server_port}: "
                                     "TLS failed")
    assert waits == [] and not err.value.exhausted
