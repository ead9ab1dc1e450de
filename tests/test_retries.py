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
    assert "push kernel a/b failed after 5 attempts: HTTP 503" in str(err.value)
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
