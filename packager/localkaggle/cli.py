"""`kpack local ...`: run the local Kaggle and manage what lives in it.

    kpack local serve [--port P] [--root DIR] [--gpu-sessions N] [--cpu-sessions N] [--session-limit S]
                      [--lenient-kernel-sources] [--max-sessions N]
    kpack local stop [--port P]                                         (running sessions end ERROR)
    kpack local env [--port P] [--root DIR] [--user NAME] [--start]      eval "$(kpack local env)"
    kpack local competition create SLUG --data DIR --solution FILE [--code] [--title T] [--replace]
    kpack local competition mirror SLUG --data DIR [--sample N] [--seed S] [--test-fraction F] [--code] ...
    kpack local secret set LABEL --kernel OWNER/SLUG [--kernel ...] [--root DIR]   (the value from stdin)

Port, root and user default to kpack.yaml's `local.port`, `local.root` and `kaggle_user` when run where a
project config is, else to 8599, .localkaggle and kpack.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from packager.errors import UserError
from packager.localkaggle import client_env
from packager.localkaggle.scoring import DEFAULT_METRIC, METRICS

port_opt = click.option("--port", type=int, default=None, help="port on 127.0.0.1 (default: kpack.yaml or 8599)")
root_opt = click.option("--root", default=None, help="state folder (default: kpack.yaml or .localkaggle)")
user_opt = click.option("--user", default=None, help="local user name (default: kpack.yaml kaggle_user or kpack)")


def _defaults(port: int | None, root: str | None, user: str | None = None) -> tuple[int, Path, str]:
    cfg = None
    if port is None or root is None or user is None:
        try:
            from packager.config import find_config, load_config

            find_config()
            cfg = load_config()
        except UserError:
            cfg = None
    port = port if port is not None else (cfg.local.port if cfg else client_env.DEFAULT_PORT)
    root = root if root is not None else (cfg.local.root if cfg else client_env.DEFAULT_ROOT)
    user = user if user is not None else (cfg.kaggle_user if cfg else client_env.DEFAULT_USER)
    return port, Path(root).resolve(), user


def _store_error(fn):
    """Run fn, turning the store's refusals into one-line user errors."""
    from packager.localkaggle.store import StoreError

    try:
        return fn()
    except StoreError as err:
        raise UserError(err.message) from None


@click.group()
def local() -> None:
    """The local Kaggle: a server speaking Kaggle's API wire format, and a kernel runner."""


@local.command()
@port_opt
@root_opt
@click.option("--gpu-sessions", type=int, default=2, show_default=True,
              help="concurrent GPU (and TPU) sessions per user; a push over it is refused as on Kaggle (0: no cap)")
@click.option("--cpu-sessions", type=int, default=5, show_default=True,
              help="concurrent CPU sessions per user (Kaggle's number is not documented: a guess; 0: no cap)")
@click.option("--lenient-kernel-sources", is_flag=True,
              help="mount a source kernel's newest COMPLETE version (Kaggle: its newest must be COMPLETE)")
@click.option("--lenient-shapes", is_flag=True,
              help="run any machineShape, with no per-shape session limit (Kaggle refuses names it does not know)")
@click.option("--dataset-processing-s", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="seconds a new dataset version stays processing before it is ready (both 0: ready at once)")
@click.option("--dataset-processing-s-per-mb", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="seconds of processing per MB uploaded (Kaggle's figures are not published: a guess)")
@click.option("--gpu-quota-hours", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="weekly GPU hours per user (`kaggle quota`); a GPU push past them is refused (0: no quota)")
@click.option("--tpu-quota-hours", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="weekly TPU hours per user, as --gpu-quota-hours")
@click.option("--max-sessions", type=int, default=0, show_default=True,
              help="bound on sessions running at once on this machine, the rest wait QUEUED (0: none)")
@click.option("--session-limit", type=float, default=12 * 3600, show_default=True,
              help="seconds a session may run when its push sets no limit")
def serve(port: int | None, root: str | None, gpu_sessions: int, cpu_sessions: int, lenient_kernel_sources: bool,
          lenient_shapes: bool, dataset_processing_s: float, dataset_processing_s_per_mb: float,
          gpu_quota_hours: float, tpu_quota_hours: float, max_sessions: int, session_limit: float) -> None:
    """Run the local Kaggle in the foreground (Ctrl-C stops it)."""
    port, root_path, _ = _defaults(port, root, "-")
    answer = client_env.health(port)
    if answer:
        raise UserError(f"the local Kaggle already runs on port {port} (pid {answer.get('pid')}, root "
                        f"{answer.get('root')})")
    from packager.localkaggle.kernels_api import LENIENT_SHAPES_ENV
    from packager.localkaggle.server import serve as run

    if lenient_shapes:  # the rule reads the server's environment (KPACK_LOCAL_LENIENT_SHAPES=1 works as well)
        os.environ[LENIENT_SHAPES_ENV] = "1"

    try:
        run(root_path, port, max_sessions=max_sessions, session_limit_s=session_limit, gpu_sessions=gpu_sessions,
            cpu_sessions=cpu_sessions, strict_kernel_sources=not lenient_kernel_sources,
            dataset_processing_s=dataset_processing_s, dataset_processing_s_per_mb=dataset_processing_s_per_mb,
            gpu_quota_hours=gpu_quota_hours, tpu_quota_hours=tpu_quota_hours)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


@local.command()
@port_opt
def stop(port: int | None) -> None:
    """Stop the local Kaggle on this port (SIGTERM; queued sessions wait for the next start)."""
    import os
    import signal
    import time

    port, _, _ = _defaults(port, "-", "-")
    answer = client_env.health(port)
    if not answer:
        click.echo(f"no local Kaggle runs on port {port}")
        return
    os.kill(int(answer["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while client_env.health(port, timeout=0.5):
        if time.monotonic() > deadline:
            raise UserError(f"the local Kaggle (pid {answer['pid']}) did not stop within 60s")
        time.sleep(0.2)
    click.echo(f"stopped the local Kaggle on port {port} (pid {answer['pid']}, root {answer['root']})")


@local.command()
@port_opt
@root_opt
@user_opt
@click.option("--start", is_flag=True, help="start the server (detached) when it is not running")
def env(port: int | None, root: str | None, user: str | None, start: bool) -> None:
    """Print the export lines that point the unmodified kaggle client at the local Kaggle."""
    port, root_path, user = _defaults(port, root, user)
    if start:
        values = client_env.ensure_server(root_path, port, user)
    else:
        values = client_env.client_env(port, client_env.user_credentials(root_path, user))
        if not client_env.health(port):
            click.echo(f"# note: no local Kaggle answers on port {port}; start it with `kpack local serve "
                       f"--port {port} --root {root_path}` (or pass --start)", err=True)
    click.echo(client_env.export_lines(values), nl=False)


@local.group()
def competition() -> None:
    """Local competitions: data files that kernels mount, and a hidden solution to score against."""


@competition.command("create")
@click.argument("slug")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="folder of data files, copied whole and mounted in kernels as input/competitions/<slug>/ (the "
                   "solution must not be in it)")
@click.option("--solution", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV: id, the target column(s) (f1/f2-samples: one, space-separated labels), Usage (Public/Private)")
@click.option("--metric", type=click.Choice(list(METRICS)), default=DEFAULT_METRIC, show_default=True,
              help="how submissions are scored: use the real competition's")
@click.option("--code", is_flag=True, help="a code competition: notebook submissions only, internet off")
@click.option("--title", default=None)
@click.option("--replace", is_flag=True, help="rebuild it when it exists (its submissions stay)")
@root_opt
def competition_create(slug: str, data_dir: str, solution: str, metric: str, code: bool, title: str | None,
                       replace: bool, root: str | None) -> None:
    """Make (or with --replace, rebuild) a local competition; a running server sees it at once."""
    from packager.localkaggle.scoring import load_solution
    from packager.localkaggle.store import Store

    _, root_path, _ = _defaults(0, root, "-")
    try:
        rows = load_solution(Path(solution), metric).rows
    except (ValueError, OSError) as exc:
        raise UserError(f"{solution}: not a usable solution file: {exc}") from None
    info = _store_error(lambda: Store(root_path).create_competition(
        slug, Path(data_dir), Path(solution), code=code, title=title, replace=replace, metric=metric))
    kind = "code competition" if info["code"] else "competition"
    click.echo(f"{kind} {slug} ready in {root_path} ({len(list(Path(info['data_dir']).rglob('*')))} data entries, "
               f"scored by {metric})")
    if not any(usage for _, usage in rows.values()):
        click.echo(f"note: {solution} has no Usage column: every row counts for the public score and private scores "
                   "stay empty (add Usage with Public/Private per row)")


@competition.command("mirror")
@click.argument("slug")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True),
              help="the real competition's downloaded files (train.csv, sample_submission.csv, image folders)")
@click.option("--sample", type=click.IntRange(min=0), default=1000, show_default=True,
              help="rows of train.csv to take, stratified (0: all); they make the mirror's train and test sets")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True, help="share of the sampled rows that become the hidden test set")
@click.option("--id-column", default=None, help="default: sample_submission.csv's first column")
@click.option("--label-column", default=None, help="default: sample_submission.csv's other column")
@click.option("--metric", type=click.Choice(list(METRICS)), default=None,
              help="how submissions are scored: use the real competition's (default: f2-samples for space-separated "
                   "labels, accuracy for one class per row, rmse for a number)")
@click.option("--code", is_flag=True, help="a code competition: notebook submissions only, internet off")
@click.option("--title", default=None)
@click.option("--replace", is_flag=True, help="rebuild it when it exists (its submissions stay)")
@root_opt
def competition_mirror(slug: str, data_dir: str, sample: int, seed: int, test_fraction: float,
                       id_column: str | None, label_column: str | None, metric: str | None, code: bool,
                       title: str | None, replace: bool, root: str | None) -> None:
    """A local copy of a real competition from its downloaded files, its hidden test set drawn from train.csv."""
    from packager.localkaggle.mirror import mirror
    from packager.localkaggle.store import Store

    _, root_path, _ = _defaults(0, root, "-")
    if not Path(data_dir).is_dir():
        folder = Path(data_dir).name.removesuffix(".zip")
        raise UserError(f"{data_dir}: not a folder; unpack the download first (`unzip {data_dir} -d {folder}`) and "
                        f"pass --data {folder}")
    made, info = _store_error(lambda: mirror(Store(root_path), slug, Path(data_dir), sample, seed, test_fraction,
                                             id_column, label_column, code, title, replace, metric))
    kind = "code competition" if info["code"] else "competition"
    files = f", {made.files} files from {made.folder}/" if made.folder else ", no image folder named by the ids"
    click.echo(f"{kind} {slug} ready in {root_path}: mirror of {data_dir} (id {made.id_column}, label "
               f"{made.label_column}: {made.label_kind}, scored by {info['metric']}); train {made.train_rows} rows, test "
               f"{made.public_rows + made.private_rows} ({made.public_rows} public, {made.private_rows} private)"
               f"{files}")
    if made.missing:
        click.echo(f"note: {made.missing} files of the sampled rows are not in {made.folder}/; their kernels' "
                   "inputs lack them too")
    if made.skipped:
        click.echo(f"note: left out of the mirror: {', '.join(made.skipped)} (not named by train.csv's ids)")
    if made.kit_data:
        import yaml

        shown = yaml.safe_dump(made.kit_data, default_flow_style=True, sort_keys=False, width=10**6).strip()
        click.echo(f"kit: to read this layout, set in kpack.yaml's kit.data: {shown}")


@local.group()
def secret() -> None:
    """Secrets attached per kernel, as in Kaggle's web UI; a kernel's sessions see them as environment variables."""


@secret.command("set")
@click.argument("label")
@click.option("--kernel", "kernels", multiple=True, metavar="OWNER/SLUG",
              help="the kernel to attach it to (repeatable), as Kaggle attaches secrets per notebook")
@root_opt
def secret_set(label: str, kernels: tuple[str, ...], root: str | None) -> None:
    """Store LABEL's value, read from stdin (one trailing newline dropped), for each --kernel."""
    from packager.localkaggle.store import Store

    _, root_path, _ = _defaults(0, root, "-")
    refs = [k.strip().split("/") for k in kernels]
    if not refs or any(len(r) != 2 or not all(r) for r in refs):
        raise UserError(f"secret {label}: name the kernels it is attached to with --kernel OWNER/SLUG (repeatable), "
                        "as Kaggle attaches a secret per notebook")
    value = sys.stdin.read()
    if value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise UserError(f"secret {label}: no value on stdin (e.g. `printf %s \"$VALUE\" | kpack local secret "
                        f"set {label}`)")
    for owner, slug in refs:
        _store_error(lambda: Store(root_path).set_secret(owner, label, value, slug))
    click.echo(f"secret {label} attached to {', '.join('/'.join(r) for r in refs)} (their sessions see it as ${label})")
