"""`kpack schedule github`: a scheduled GitHub Actions workflow that runs `kpack tick`, so a campaign goes on
with the laptop closed. The file comes from templates/kpack-tick.yml; what varies is filled in here: the cron,
the kpack to install, the secrets the project's config names (Kaggle, Telegram, the weights key when encrypt is
on), always as `${{ secrets.NAME }}`, never a value. A `backend: local` project is refused: a CI runner cannot
reach the local Kaggle on this machine."""
from __future__ import annotations

import re
import subprocess
from importlib import metadata, resources
from pathlib import Path

from packager.errors import UserError

WORKFLOW = Path(".github") / "workflows" / "kpack-tick.yml"
TICK = "kpack tick"  # the command the workflow runs: the one the tick tests run


def cron_of(every: str) -> str:
    """'10m' -> '*/10 * * * *', '2h' -> '0 */2 * * *'. GitHub runs schedules at most every 5 minutes."""
    found = re.fullmatch(r"\s*(\d+)\s*([mh])\s*", every or "")
    n, unit = (int(found[1]), found[2]) if found else (0, "")
    if unit == "m" and 5 <= n <= 59:
        return f"*/{n} * * * *"
    if (unit == "m" and n == 60) or (unit == "h" and n == 1):
        return "0 * * * *"
    if unit == "h" and 2 <= n <= 23:
        return f"0 */{n} * * *"
    raise UserError(f"--every {every}: give minutes 5..60 (e.g. 10m; GitHub runs schedules at most every 5 minutes) "
                    "or hours 1..23 (e.g. 2h)")


def secret_names(cfg, auth: str = "key") -> list[str]:
    """The environment the tick needs, each from the CI secret of the same name."""
    names = ["KAGGLE_API_TOKEN"] if auth == "token" else ["KAGGLE_USERNAME", "KAGGLE_KEY"]
    telegram = cfg.notifications.telegram
    if telegram is not None:
        names += [telegram.token_env, telegram.chat_id_env]
    for weights in (cfg.datasets.weights, cfg.models.weights):
        if weights is not None and weights.encrypt and weights.key_env not in names:
            names.append(weights.key_env)
    return names


def default_kpack_spec(source: Path | None = None) -> str:
    """This kpack's own pin: the VCS URL and commit pip recorded, or its git checkout's origin and HEAD."""
    import json

    try:
        direct = json.loads(metadata.distribution("kpack").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        direct = {}
    vcs = direct.get("vcs_info") or {}
    if source is None and vcs.get("vcs") == "git" and direct.get("url"):
        return f"kpack @ git+{direct['url']}@{vcs.get('commit_id') or vcs.get('requested_revision') or 'HEAD'}"
    source = source or Path(__file__).resolve().parent.parent
    try:
        git = lambda *args: subprocess.run(["git", *args], cwd=source, capture_output=True, text=True,  # noqa: E731
                                           check=True).stdout.strip()
        url, commit = git("remote", "get-url", "origin"), git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        url = commit = ""
    if re.match(r"^(https://|git@|ssh://)", url):
        url = re.sub(r"^git@([^:]+):", r"ssh://git@\1/", url)
        return f"kpack @ git+{url}@{commit}"
    raise UserError("kpack schedule: cannot tell where CI should install kpack from (this kpack has no git URL); "
                    "name it: --kpack 'kpack @ git+https://github.com/you/kpack@v0.3' (or a path in this repository)")


def render(cfg, every: str = "10m", kpack_spec: str | None = None, auth: str = "key",
           config_path: str | None = None) -> str:
    if cfg.backend == "local":
        raise UserError(f"{cfg.where('backend')}backend is local: a CI runner cannot reach the local Kaggle on this "
                        "machine; set backend: kaggle before scheduling ticks in CI")
    spec = kpack_spec or default_kpack_spec()
    if '"' in spec or "\n" in spec:
        raise UserError(f"--kpack {spec!r}: a pip requirement or path without quotes or newlines")
    names = secret_names(cfg, auth)
    command = TICK + (f" --config {config_path}" if config_path else "")
    version = metadata.version("kpack") if _installed() else "dev"
    text = resources.files("packager").joinpath("templates", "kpack-tick.yml").read_text(encoding="utf-8")
    for key, value in (("@VERSION@", version), ("@EVERY@", every), ("@CRON@", cron_of(every)),
                       ("@KPACK_SPEC@", spec), ("@COMMAND@", command),
                       ("@SECRET_LIST@", "\n".join(f"#   {name}" for name in names)),
                       ("@SECRET_ENV@", "\n".join(f"          {name}: ${{{{ secrets.{name} }}}}" for name in names))):
        text = text.replace(key, value)
    return text


def _installed() -> bool:
    try:
        metadata.version("kpack")
        return True
    except metadata.PackageNotFoundError:
        return False


def write_github(cfg, root: str | Path = ".", **options) -> list[str]:
    """Write the workflow under ROOT; refuses to overwrite one that exists. Returns the lines to print."""
    path = Path(root) / WORKFLOW
    if path.exists():
        raise UserError(f"{WORKFLOW} exists; kpack schedule does not overwrite it: remove it first to write a new one")
    text = render(cfg, **options)
    from packager.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    names = secret_names(cfg, options.get("auth", "key"))
    return [f"wrote {WORKFLOW} ({TICK}, cron {cron_of(options.get('every', '10m'))})",
            f"add these repository secrets (Settings > Secrets and variables > Actions): {', '.join(names)}",
            "then commit it and the ledger: git add -f .github/workflows/kpack-tick.yml runs/ledger.jsonl"]
