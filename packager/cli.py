"""`kpack`: small verbs over one validated project config. Each command is a thin wrapper; the work lives in
one module per concern, imported only when its command runs (so `kpack --help` stays fast)."""
from __future__ import annotations

import sys

import click

from packager.config import KERNEL_KINDS, load_config
from packager.errors import UserError

kind_arg = click.argument("kind", type=click.Choice(KERNEL_KINDS))
only_opt = click.option("--only", multiple=True, metavar="VARIANT[:FOLD,...]",
                        help="only these members of kernels.train.members (once per variant)")
config_opt = click.option("--config", "config_path", default=None, help="project config (default: ./kpack.yaml)")


@click.group()
@click.version_option(package_name="kpack", message="%(prog)s %(version)s")
def cli() -> None:
    """Pack, push and watch Kaggle kernels; run them on the local Kaggle first."""


@cli.command()
@kind_arg
@config_opt
def build(kind: str, config_path: str | None) -> None:
    """Pack the entry's package, kpack_runtime and the config into one kernel script with its kernel-metadata.json."""
    cfg = load_config(config_path)
    from packager.build import build_kernel

    built = build_kernel(cfg, kind)
    click.echo(f"built {built.script} ({built.size} bytes, sha256 {built.sha256[:12]})")


@cli.command()
@kind_arg
@config_opt
def check(kind: str, config_path: str | None) -> None:
    """Run every check build and push make (config, entry, machine shape, metadata, kit, weights files); build
    nothing. Exits 2 when one fails."""
    from pathlib import Path

    from packager.preflight import run_all

    lines = run_all(load_config(config_path), kind, Path.cwd())
    for status, line in lines:
        click.echo(f"{status}: {line}")
    failed = sum(status == "error" for status, _ in lines)
    if failed:
        raise UserError(f"kpack check {kind}: {failed} of {sum(s != 'warning' for s, _ in lines)} checks failed")


@cli.command()
@kind_arg
@config_opt
@click.option("--wait/--no-wait", default=True, help="watch the kernel until it ends (and chain sessions)")
@only_opt
@click.option("--force", is_flag=True, help="push a campaign even when its forecast is over the weekly GPU quota")
@click.option("--plan", is_flag=True, help="infer: run only the runtime planner's timing (as <slug>-plan), print the plan")
def push(kind: str, config_path: str | None, wait: bool, only: tuple[str, ...], force: bool, plan: bool) -> None:
    """Build, update the datasets that changed, push the kernel and (by default) watch it to the end; with
    kernels.train.members, every member (variant x fold) as its own chain, within the session caps."""
    cfg = load_config(config_path)
    if plan:
        if kind != "infer" or not wait:
            raise UserError("--plan: only with `kpack push infer` (and waiting for it): it times the infer kernel")
        from packager.push import push_plan

        push_plan(cfg)
        return
    if _campaign(cfg, kind, only):
        from packager.tick import push_campaign

        push_campaign(cfg, only, wait=wait, force=force)
        return
    from packager.push import push_kernel

    push_kernel(cfg, kind, wait=wait)


def _campaign(cfg, kind: str, only: tuple[str, ...]) -> bool:
    """Whether KIND runs as a campaign (train with kernels.train.members); --only elsewhere is refused."""
    members = kind == "train" and cfg.kernel(kind).members is not None
    if only and not members:
        raise UserError(f"--only: kernels.{kind} has no members section (kernels.train.members) to choose from")
    return members


@cli.command()
@config_opt
@only_opt
@click.option("--retry", is_flag=True, help="members whose newest session ended ERROR or cancelled push that "
              "session again (once its cause is fixed)")
def tick(config_path: str | None, only: tuple[str, ...], retry: bool) -> None:
    """One step of the train run: poll every open member, download and record what ended, push the next
    sessions and queued members while slots are free; exits. Safe to run from cron, CI or twice at once."""
    cfg = load_config(config_path)
    _campaign(cfg, "train", only)
    from packager.tick import scheduled_step

    scheduled_step(cfg, only, retry=retry)


@cli.command("watch")
@kind_arg
@config_opt
@only_opt
@click.option("--retry", is_flag=True, help="push the newest session again when it ended ERROR or cancelled "
              "(once its cause is fixed: a secret attached, the quota refreshed), from the session before it")
def watch_cmd(kind: str, config_path: str | None, only: tuple[str, ...], retry: bool) -> None:
    """Follow the newest session of a pushed run to its end and push the sessions still to come (a campaign:
    `kpack tick` every KPACK_TICK_S seconds until every member is done or failed)."""
    cfg = load_config(config_path)
    if _campaign(cfg, kind, only):
        from packager.tick import watch_loop

        watch_loop(cfg, only, retry)
        return
    from packager.push import retry_session, watch_kernel

    (retry_session if retry else watch_kernel)(cfg, kind)


@cli.command()
@click.argument("kernel")
@config_opt
def status(kernel: str, config_path: str | None) -> None:
    """Status of a kernel (train|validate|infer or owner/slug[/N]); exits non-zero on ERROR."""
    cfg = load_config(config_path)
    from packager.watch import show_status

    show_status(cfg, kernel)


@cli.command()
@click.argument("kernel")
@click.option("-v", "--version", "version", type=int, default=None, help="kernel version (default: latest)")
@config_opt
def output(kernel: str, version: int | None, config_path: str | None) -> None:
    """Download a kernel version's output to runs/<kernel>/v<N>/."""
    cfg = load_config(config_path)
    from packager.watch import download_output

    click.echo(download_output(cfg, kernel, version))


@cli.command()
@click.argument("kernel")
@click.option("-f", "--follow", is_flag=True, help="go on printing new lines until the kernel ends")
@config_opt
def logs(kernel: str, follow: bool, config_path: str | None) -> None:
    """A kernel's log as plain text (train|validate|infer or owner/slug[/N]); -f follows a running kernel."""
    cfg = load_config(config_path)
    from packager.logs import show

    show(cfg, kernel, follow=follow)


@cli.command()
@click.argument("kind", required=False, type=click.Choice(KERNEL_KINDS))
@config_opt
def report(kind: str | None, config_path: str | None) -> None:
    """Build report.html (plots of curves, scores, thresholds, time budget) for the newest run with an output
    (of KIND, when given) and print its path."""
    cfg = load_config(config_path)
    from packager.report import report_newest

    click.echo(report_newest(cfg, kind))


@cli.command()
@config_opt
@click.option("-m", "--message", default=None, help="submission description")
def submit(config_path: str | None, message: str | None) -> None:
    """Make the code-competition submission from the latest complete infer kernel version."""
    cfg = load_config(config_path)
    from packager.submit import submit as do_submit

    do_submit(cfg, message)


@cli.command()
@config_opt
def scores(config_path: str | None) -> None:
    """Fill the leaderboard scores of earlier submissions that were still pending into the ledger."""
    cfg = load_config(config_path)
    from packager.submit import refresh_scores

    click.echo(f"{refresh_scores(cfg)} ledger row(s) updated with leaderboard scores")


@cli.command("ledger")
@click.option("-n", "count", type=int, default=20, show_default=True, help="how many of the newest rows")
@click.option("--kind", type=click.Choice(KERNEL_KINDS), default=None, help="only train, validate or infer")
@click.option("--campaign", is_flag=False, flag_value="", default=None, metavar="[NAME]",
              help="one line per member (its newest session's CV), the blend's CV and the LB public/private; "
                   "no NAME: the newest campaign")
@click.option("--csv", "as_csv", is_flag=True, help="every field of every row as CSV (all rows; -n is ignored)")
def ledger_cmd(count: int, kind: str | None, campaign: str | None, as_csv: bool) -> None:
    """The newest runs in the ledger (runs/ledger.jsonl): kernel version, status, CV and LB scores, commit."""
    from packager import ledger

    rows = [r for r in ledger.read() if kind in (None, r.get("kind"))]
    if as_csv:
        click.echo(ledger.csv_text(rows), nl=False)
    elif not rows:
        click.echo(f"no runs in {ledger.ledger_path()} yet")
    elif campaign is not None:  # no name: the newest campaign, not every train chain the ledger ever saw
        click.echo(ledger.campaign_table(rows, campaign or ledger.newest_campaign(rows)))
    else:
        click.echo(ledger.table(rows[-count:]))


@cli.command()
@click.argument("run")
@click.argument("text")
@click.option("-v", "--version", "version", type=int, default=None, help="that kernel version (default: newest)")
def note(run: str, text: str, version: int | None) -> None:
    """Set a free-text note on a run in the ledger: RUN is train|validate|infer, a member, or owner/slug."""
    from packager import ledger

    row = ledger.note(run, text, version)
    click.echo(f"note on {row['kernel']} v{row['version']}: {row['note']}")


@cli.command()
@click.argument("ci", type=click.Choice(["github"]))
@click.option("--every", default="10m", show_default=True, help="how often the tick runs: Nm (5..59) or Nh")
@click.option("--kpack", "kpack_spec", default=None, metavar="SPEC",
              help="what CI pip-installs as kpack (default: the git URL and commit this kpack came from)")
@click.option("--auth", type=click.Choice(["key", "token"]), default="key", show_default=True,
              help="Kaggle credentials as secrets: KAGGLE_USERNAME/KAGGLE_KEY, or KAGGLE_API_TOKEN")
@config_opt
def schedule(ci: str, every: str, kpack_spec: str | None, auth: str, config_path: str | None) -> None:
    """Write .github/workflows/kpack-tick.yml: `kpack tick` on a schedule in CI, the ledger committed back."""
    from packager.schedule import write_github

    cfg = load_config(config_path)
    for line in write_github(cfg, ".", every=every, kpack_spec=kpack_spec, auth=auth, config_path=config_path):
        click.echo(line)


@cli.command("probe-image")
@config_opt
def probe_image(config_path: str | None) -> None:
    """Run a probe kernel that records the image's `pip list` into datasets_meta/."""
    cfg = load_config(config_path)
    from packager.imageprobe import probe

    click.echo(probe(cfg))


@cli.command()
def demo() -> None:
    """The whole flow on the embedded local Kaggle: demo competition, push, wait, print the output."""
    from packager.demo import run_demo

    run_demo()


@cli.command("init")
@click.argument("directory", default=".", required=False)
@click.option("--competition", required=True, help="the competition's slug, as in its URL")
@click.option("--kit", "mode", flag_value="kit", help="with an editable copy of the training kit in kernel_src/")
@click.option("--bare", "mode", flag_value="bare",
              help="your own code: kernel_src/train.py to fill in, or (where training code exists) only kpack.yaml "
                   "and the Makefile, pointing at it")
@click.option("--entry", default=None, metavar="PATH", help="your train entry (a .py file defining main(config))")
@click.option("--user", default=None, metavar="KAGGLE_USER", help="your Kaggle user name (default: $KAGGLE_USERNAME)")
def init_cmd(directory: str, competition: str, mode: str | None, entry: str | None, user: str | None) -> None:
    """Start a competition repository in DIRECTORY (default: here), or add kpack.yaml and a Makefile to one that
    already has training code; refuses to overwrite any file."""
    from packager.init import init

    for line in init(directory, competition, mode, user, entry):
        click.echo(line)


def _register_local() -> None:
    from packager.localkaggle.cli import local

    cli.add_command(local)


_register_local()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        from packager.secrets_scan import collect_secrets, redact

        click.echo(redact(f"error: {exc}", collect_secrets(None)), err=True)  # it may quote a kernel's log
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
