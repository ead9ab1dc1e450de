"""Rule 5: the image is not what a guessed snapshot says. A package is left to the image only when a probe saw it
there; `kpack push` to backend kaggle probes a guessed, missing or stale snapshot first (KPACK_NO_PROBE=1: one
line saying how instead).

End to end, the local Kaggle plays kaggle.com (backend kaggle, the unmodified client pointed at it through
KAGGLE_API_ENVIRONMENT=LOCALHOST) and its image plays Kaggle's: the guessed snapshot claims a package the local
image does not have, the wheel ships anyway and the kernel runs; then the probe records the local image and a
pinned package it has at that version is left to it."""
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from packager import imageprobe, wheels
from packager.config import parse_config
from packager.errors import UserError
from test_wheels import toy_wheel

REPO = Path(__file__).resolve().parents[1]
KPACK = str(Path(sys.executable).parent / "kpack")
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)


def cfg(backend="kaggle"):
    return parse_config({"competition": "digits-c", "kaggle_user": "alice", "backend": backend,
                         "kernels": {"train": {"entry": "kernel_src/train.py", "accelerator": "None"}}})


def write_snapshot(root: Path, header: str, backend="kaggle") -> Path:
    path = wheels.snapshot_path(backend, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "# python: 3.12.1\nnumpy==2.0.2\n")
    return path


def probed(days_ago: float) -> str:
    return f"# source: probe\n# probed: {(NOW - timedelta(days=days_ago)):%Y-%m-%dT%H:%M:%SZ}\n"


@pytest.mark.parametrize("header, problem", [(None, "missing"), ("# source: guess\n", "a guess"),
                                             ("# source: probe\n", "a guess"), (probed(2), None),
                                             (probed(41), "probed 41 days ago")])
def test_snapshot_problem(tmp_path, header, problem):
    path = write_snapshot(tmp_path, header) if header is not None else tmp_path / "none.txt"
    assert imageprobe.snapshot_problem(path, now=NOW) == problem


def test_no_probe_says_how_in_one_line(tmp_path, monkeypatch, capsys):
    path = write_snapshot(tmp_path, "# source: guess\n")
    monkeypatch.setenv(imageprobe.NO_PROBE_ENV, "1")
    monkeypatch.setattr(imageprobe, "probe", lambda *a, **k: pytest.fail("probed despite KPACK_NO_PROBE"))
    imageprobe.ensure_probed(cfg(), tmp_path)
    out = capsys.readouterr()
    assert out.err == "" and out.out == (
        f"note: the image snapshot {path} is a guess and KPACK_NO_PROBE is set, so it is not probed: every package "
        "ships as a wheel, none is left to the image; refresh it with `kpack probe-image`\n")
    path.unlink()
    with pytest.raises(UserError, match="no image snapshot and KPACK_NO_PROBE is set; run `kpack probe-image`"):
        imageprobe.ensure_probed(cfg(), tmp_path)


def test_fresh_snapshot_and_local_backend_are_not_probed(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(imageprobe.NO_PROBE_ENV, raising=False)
    monkeypatch.setattr(imageprobe, "probe", lambda *a, **k: pytest.fail("probed a fresh snapshot"))
    write_snapshot(tmp_path, f"# source: probe\n# probed: {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}\n")
    imageprobe.ensure_probed(cfg(), tmp_path)
    write_snapshot(tmp_path, "# source: guess\n", backend="local")
    imageprobe.ensure_probed(cfg("local"), tmp_path)  # the local build reads its image: nothing to probe first
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------------------------- end to end

ENTRY = '''from kpack_runtime import deps


def main(config):
    import kpacka

    print("kpack-test shipped", sorted(deps._active["shipped"]), "kpacka", kpacka.VERSION)
'''


@pytest.mark.slow
def test_guessed_snapshot_ships_the_wheel_and_a_probe_lets_the_image_serve(local_kaggle, tmp_path):
    from packager.localkaggle.image import image_distributions

    pyyaml = image_distributions()["pyyaml"]
    python = ".".join(map(str, sys.version_info[:3]))  # the local image's Python plays the Kaggle image's
    prefix = f"snap{os.getpid() % 10000}"
    root = tmp_path / "project"
    (root / "kernel_src").mkdir(parents=True)
    (root / "kernel_src" / "__init__.py").write_text("")
    (root / "kernel_src" / "entry.py").write_text(ENTRY)
    (root / "requirements.txt").write_text(f"kpacka==1.0\npyyaml=={pyyaml}\n")
    (root / "kpack.yaml").write_text(
        f"competition: {prefix}-comp\nkaggle_user: alice\nbackend: kaggle\n"
        f"kernels:\n  train: {{entry: kernel_src/entry.py, slug: {prefix}-train, accelerator: 'None', "
        "session_hours: 0.05}\n"
        f"datasets:\n  wheels: {{slug: {prefix}-wheels, requirements: requirements.txt}}\n")
    # The guess claims both packages; the local image has pyyaml at that version but no kpacka.
    snapshot = write_snapshot(root, "# GUESS\n# source: guess\n")
    snapshot.write_text(f"# source: guess\n# python: {python}\nkpacka==1.0\npyyaml=={pyyaml}\n")
    links = tmp_path / "links"
    toy_wheel(links, "kpacka", "1.0")
    toy_wheel(links, "pyyaml", pyyaml)  # offline stand-in for the registry's pyyaml
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "PIP_", "UV_")) and k.lower() not in
           ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
    env.update(local_kaggle.env("alice"), HOME=str(home), TMPDIR=str(tmp_path), KAGGLE_CONFIG_DIR=str(home / ".kaggle"),
               KPACK_POLL_MIN_S="0.2", KPACK_POLL_MAX_S="1", PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links),
               UV_OFFLINE="1", UV_FIND_LINKS=str(links))

    def push(**extra):
        return subprocess.run([KPACK, "push", "train"], cwd=root, env={**env, **extra}, capture_output=True,
                              text=True, timeout=400)

    def manifest():
        return json.loads((root / "build" / "datasets" / f"{prefix}-wheels" / wheels.MANIFEST).read_text())

    def kernel_log(version: int) -> str:
        return "".join(p.read_text() for p in (root / "runs" / f"{prefix}-train" / f"v{version}").rglob("*.log"))

    first = push(KPACK_NO_PROBE="1")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert f"note: the image snapshot {wheels.KAGGLE_SNAPSHOT} is a guess and KPACK_NO_PROBE is set" in first.stdout
    assert manifest()["shipped"] == {"kpacka": "1.0", "pyyaml": pyyaml} and manifest()["image"] == {}
    assert "kpack-test shipped ['kpacka', 'pyyaml'] kpacka 1.0" in kernel_log(1)

    second = push()  # the snapshot is still a guess: probed first, on the local Kaggle standing in for Kaggle
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"the image snapshot {wheels.KAGGLE_SNAPSHOT} is a guess: probing the Kaggle image first" in second.stdout
    found = wheels.snapshot_file(snapshot)
    assert found.known and found.source == "probe" and found.packages["pyyaml"] == pyyaml
    assert "kpacka" not in found.packages and not (root / wheels.LOCAL_SNAPSHOT).exists()
    assert manifest()["shipped"] == {"kpacka": "1.0"} and manifest()["image"] == {"pyyaml": pyyaml}
    assert "kpack-test shipped ['kpacka'] kpacka 1.0" in kernel_log(2)

    third = push()  # probed and fresh now: no second probe
    assert third.returncode == 0 and "probing" not in third.stdout
