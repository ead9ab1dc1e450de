"""The local Kaggle's kernel page (/code/<owner>/<slug>, where kpack's links to a local run point), opened in a
real headless Chromium: each version's status, failure, output links that download the file, and the log's
text, escaped; a report viewed in a sandbox where its script does not run; newest version first; 404 for a kernel
that does not exist; the stop button of a running session; the owner's page of all their kernels."""
from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from conftest import USER
from test_localkaggle_cli import make_kernel, ok, uniq
from test_report import _browser

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

GOOD = ("import pathlib\nprint('<script>document.title = \"ran\"</script> & done')\n"
        "pathlib.Path('/kaggle/working/sub').mkdir()\n"
        "pathlib.Path('/kaggle/working/sub/result.txt').write_text('<b>42</b>')\n"
        "pathlib.Path('/kaggle/working/report.html').write_text('<title>report</title><h1>the report</h1>"
        "<script>document.title = \"ran\"</script>')\n")
BAD = "raise SystemExit('broken on purpose')\n"


@pytest.mark.slow
def test_the_kernel_page_shows_every_version_in_a_real_browser(local_kaggle, run_kaggle, tmp_path):
    slug = uniq("page")
    for number, code in ((1, GOOD), (2, BAD)):
        ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / f"k{number}", slug, code))))
        local_kaggle.wait_kernel(USER, slug, number)
    url = f"{local_kaggle.url}/code/{USER}/{slug}"
    shown = _browser("--no-proxy-server", "--dump-dom", url)
    assert shown.returncode == 0, shown.stderr
    dom = shown.stdout
    newest, oldest = dom.index("Version 2: "), dom.index("Version 1: ")
    assert newest < oldest
    assert re.search(r'Version 2: <span class="ERROR">ERROR</span>', dom)
    assert re.search(r'Version 1: <span class="COMPLETE">COMPLETE</span>', dom)
    assert "broken on purpose" in dom[newest:oldest]
    # the kernel's output, as text: its markup escaped, never run (the title stays the page's own)
    assert "&lt;script&gt;document.title = \"ran\"&lt;/script&gt; &amp; done" in dom
    assert f"<title>{USER}/{slug}</title>" in dom and "<script>" not in dom
    href = re.search(r'<a href="([^"]+)">sub/result.txt</a>', dom[oldest:]).group(1)
    with NO_PROXY.open(local_kaggle.url + href, timeout=10) as answer:
        assert answer.read() == b"<b>42</b>"
    # a report has a "view" link: shown in the browser, in a sandbox where the kernel's script does not run
    view = re.search(r'<a href="([^"]+)">report.html</a> \([\d,]+ bytes\) \(<a href="([^"]+)">view</a>\)',
                     dom[oldest:]).group(2)
    assert view.endswith("/report.html?view=1")
    with NO_PROXY.open(local_kaggle.url + view, timeout=10) as answer:
        assert answer.headers["Content-Disposition"].startswith("inline")
        assert answer.headers["Content-Security-Policy"].startswith("sandbox;")
    shown = _browser("--no-proxy-server", "--dump-dom", local_kaggle.url + view)
    assert "<h1>the report</h1>" in shown.stdout and "<title>report</title>" in shown.stdout, shown.stdout
    with NO_PROXY.open(local_kaggle.url + href, timeout=10) as answer:  # without ?view=1: a download
        assert answer.headers["Content-Disposition"].startswith("attachment")
    with pytest.raises(urllib.error.HTTPError) as missing:
        NO_PROXY.open(f"{local_kaggle.url}/code/{USER}/no-such-{slug}", timeout=10)
    assert missing.value.code == 404


@pytest.mark.slow
def test_a_running_session_is_stopped_from_its_page(local_kaggle, run_kaggle, tmp_path):
    """kaggle.com's page has a stop button, and its API cannot cancel (it needs a session id no answer
    carries): the local page has one too. It posts the server's token, so another site's form cannot stop a
    session; the page reloads itself while a version runs, and neither is shown once it ended."""
    import urllib.parse

    slug = uniq("stop")
    ok(run_kaggle("kernels", "push", "-p", str(make_kernel(tmp_path / "k", slug, "import time\ntime.sleep(120)\n"))))
    local_kaggle.wait_kernel(USER, slug, 1, until=("RUNNING",), timeout=60)
    url = f"{local_kaggle.url}/code/{USER}/{slug}"
    shown = _browser("--no-proxy-server", "--dump-dom", url)
    assert shown.returncode == 0, shown.stderr
    dom = shown.stdout
    assert '<meta http-equiv="refresh" content="10">' in dom
    form = re.search(r'<form method="post" action="([^"]+)"><input type="hidden" name="token" value="([^"]+)">'
                     r'<button type="submit">Stop session</button></form>', dom)
    assert form and form.group(1) == f"/code/{USER}/{slug}/v1/stop", dom

    def post(token):
        data = urllib.parse.urlencode({"token": token}).encode()
        request = urllib.request.Request(local_kaggle.url + form.group(1), data=data, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        return NO_PROXY.open(request, timeout=10)

    # the owner's page lists every kernel with its newest version, the newest pushed first: this one, running
    mine = _browser("--no-proxy-server", "--dump-dom", f"{local_kaggle.url}/code/{USER}").stdout
    first = re.search(r'<tr><td><a href="([^"]+)">([^<]+)</a></td><td>(v\d+)</td><td class="(\w+)">', mine)
    assert first.groups() == (f"/code/{USER}/{slug}#v1", slug, "v1", "RUNNING"), mine
    assert '<meta http-equiv="refresh"' in mine and f'href="/code/{USER}"' in dom  # the kernel page links it
    with pytest.raises(urllib.error.HTTPError) as nobody:
        NO_PROXY.open(f"{local_kaggle.url}/code/nobody-{slug}", timeout=10)
    assert nobody.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as forged:
        post("not-the-token")
    assert forged.value.code == 403
    local_kaggle.wait_kernel(USER, slug, 1, until=("RUNNING",), timeout=0)  # the forged form stopped nothing
    with post(form.group(2)) as answer:  # the redirect back to the page is followed, as a browser does
        assert answer.url in (url, f"{url}#v1") and b"Version 1" in answer.read()
    ended = local_kaggle.wait_kernel(USER, slug, 1, timeout=30)
    assert ended["status"] == "CANCEL_ACKNOWLEDGED"
    dom = _browser("--no-proxy-server", "--dump-dom", url).stdout
    assert "CANCEL_ACKNOWLEDGED" in dom and "Stop session" not in dom and "http-equiv" not in dom
