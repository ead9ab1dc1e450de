"""The project config: valid files load with their defaults; bad ones are refused with one line naming the field."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from packager.config import load_config, parse_config
from packager.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"competition": "digits-multilabel", "kaggle_user": "alice",
           "kernels": {"train": {"entry": "kernel_src/train.py"}}}


def test_repo_config_loads():
    cfg = load_config(REPO / "kpack.yaml")
    assert cfg.backend == "local"
    assert set(cfg.kernels) == {"train", "validate", "infer"}


def test_defaults_are_kaggle_safe():
    cfg = parse_config(copy.deepcopy(MINIMAL))
    train = cfg.kernels["train"]
    assert (train.accelerator, train.internet, train.private, train.session_hours) == ("NvidiaTeslaT4", False, True, 12)
    assert train.slug == "digits-multilabel-train" and train.title == train.slug
    assert cfg.backend == "local" and cfg.local.port == 8599


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["kernels"]["train"].update(accelerator="K80"), "kernels.train.accelerator: expected 'None', 'NvidiaTeslaT4'"),
    (lambda d: d.update(backend="colab"), "backend: expected 'local' or 'kaggle' (got 'colab')"),
    (lambda d: d.update(compettition="x"), "compettition: unknown field"),
    (lambda d: d["kernels"]["train"].pop("entry"), "kernels.train.entry: required field is missing"),
    (lambda d: d["kernels"]["train"].update(session_hours=13), "kernels.train.session_hours: expected less than or equal to 12"),
    (lambda d: d["kernels"]["train"].update(sources={"datasets": ["no-owner"]}), "kernels.train.sources.datasets: 'owner/slug'"),
    (lambda d: d.update(competition="Digits!"), "competition: a slug of 3-50 lowercase letters"),
    (lambda d: d["kernels"].update(predict={"entry": "x.py"}), "kernels.predict: expected 'train', 'validate' or 'infer'"),
])
def test_bad_config_is_refused_with_one_line(mutate, expected):
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    with pytest.raises(UserError) as err:
        parse_config(data, "kpack.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("kpack.yaml: " + expected), message


def test_cli_refuses_bad_config_with_one_line_and_nonzero_exit(tmp_path):
    bad = copy.deepcopy(MINIMAL)
    bad["kernels"]["train"]["internet"] = "sometimes"
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kpack.yaml: kernels.train.internet: expected a valid boolean, unable to interpret input (got 'sometimes')"]
    assert not (tmp_path / "build").exists()


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "kpack.yaml"
    path.write_text("competition: x\nkernels: [unclosed\n")
    with pytest.raises(UserError, match=r"kpack.yaml: line \d+ is not valid YAML"):
        load_config(path)


def test_missing_config_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KPACK_CONFIG", raising=False)
    with pytest.raises(UserError, match="no project config here"):
        load_config()


@pytest.mark.parametrize("name, value, expected", [
    ("KPACK_RETRY_ATTEMPTS", "many", "expected a whole number of at least 1"),
    ("KPACK_POLL_MAX_S", "-5", "expected a number of at least 0"),
])
def test_bad_environment_setting_is_one_line_naming_it(tmp_path, name, value, expected):
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(MINIMAL))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "status", "train"], cwd=tmp_path,
                            capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), name: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {name}={value!r}: {expected}; fix or unset it"]


def test_max_sessions_from_the_environment(monkeypatch):
    from packager import chain

    cfg = parse_config(MINIMAL)
    monkeypatch.setenv("KPACK_MAX_SESSIONS", "3")
    assert chain.max_sessions(cfg, "train") == 3
    monkeypatch.setenv("KPACK_MAX_SESSIONS", "0")
    with pytest.raises(UserError, match=r"^KPACK_MAX_SESSIONS='0': expected a whole number of at least 1"):
        chain.max_sessions(cfg, "train")


def test_an_error_line_never_shows_a_secret_value(tmp_path):
    bad = copy.deepcopy(MINIMAL)
    bad["kernels"]["train"]["internet"] = "hunter2-is-my-api-token"  # pasted into the wrong field
    (tmp_path / "kpack.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "packager.cli", "build", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                                 "MY_API_TOKEN": "hunter2-is-my-api-token"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: kpack.yaml: kernels.train.internet: expected a valid boolean, unable to interpret input "
        "(got '[redacted]')"]

