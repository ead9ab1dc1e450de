"""What every kernel does before its entry runs (stdlib only: nothing else is importable yet).

`bootstrap(config)` first checks that the secrets the kernel needs are attached (check_secrets), then makes the
bundled wheels importable (deps) when the project has a wheels dataset, then readies the weights (weights) when
it has a weights dataset. The generated kernel script calls it, then imports the entry and calls main(config).

Secrets: Kaggle attaches them per notebook in its web UI, so a kernel without one stops at once, naming the
secret and the kernels to attach it to, rather than minutes later (or after importing torch) with a traceback.
Today the one secret a kpack kernel needs is the weights key (datasets.weights.encrypt, label key_env).
"""
from __future__ import annotations

import os
import sys


def bootstrap(config: dict) -> None:
    check_secrets(config)  # before anything is imported or unpacked
    datasets = config.get("datasets") or {}
    if datasets.get("wheels"):
        from kpack_runtime import deps

        deps.activate(config)
    if datasets.get("weights") or (config.get("models") or {}).get("weights") or _model_sources(config):
        from kpack_runtime import weights

        weights.prepare(config)


ALTERNATE_SUFFIX = "-b"  # packager/chain.py names the same pair: keep them alike
SLUG_MAX = 50


def _model_sources(config: dict) -> list:
    kernel = (config.get("kernels") or {}).get(config.get("kernel")) or {}
    return (kernel.get("sources") or {}).get("models") or []


def needed_secrets(config: dict) -> list[str]:
    sections = [(config.get("datasets") or {}).get("weights") or {}, (config.get("models") or {}).get("weights") or {}]
    return list(dict.fromkeys(s.get("key_env") or "KPACK_WEIGHTS_KEY" for s in sections if s.get("encrypt")))


def secret_present(label: str) -> bool:
    """The environment variable LABEL (how the local Kaggle passes secrets), else a Kaggle secret of that label."""
    if os.environ.get(label):
        return True
    try:
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return False
    try:
        return bool(UserSecretsClient().get_secret(label))
    except Exception:  # noqa: BLE001 - not attached, or not reachable: either way not here
        return False


def kernels_to_attach(config: dict) -> str:
    """The kernels that run this script: for train, every kernel of its session chain."""
    kind = config.get("kernel") or "train"
    kernel = (config.get("kernels") or {}).get(kind) or {}
    owner, slug = config.get("kaggle_user") or "<owner>", kernel.get("slug") or "<slug>"
    if kind != "train":
        return f"{owner}/{slug}"
    if (kernel.get("chain") or "alternate") == "alternate":
        other = slug[: SLUG_MAX - len(ALTERNATE_SUFFIX)].rstrip("-") + ALTERNATE_SUFFIX
        return f"{owner}/{slug} and {owner}/{other} (the two kernels its sessions alternate between)"
    return f"{owner}/{slug} and each session's own kernel ({owner}/{slug}-s2, {owner}/{slug}-s3, ...)"


def check_secrets(config: dict) -> None:
    """Stop the kernel (one line, exit 2) when a secret it needs is not attached."""
    missing = [label for label in needed_secrets(config) if not secret_present(label)]
    if missing:
        print(f"[kpack] error: Kaggle secret {', '.join(missing)} is not attached to this kernel: attach it "
              f"(Add-ons -> Secrets) to {kernels_to_attach(config)}", file=sys.stderr, flush=True)
        raise SystemExit(2)
