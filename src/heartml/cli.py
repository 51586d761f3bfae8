"""The `heartml` command line: a thin Typer layer over the stage functions.

Every command parses its options, calls one library function, prints a table or JSON and exits
non-zero on failure with a one-line message. Heavy libraries (MLflow, scikit-learn, pandas)
are imported by the stage that needs them, so `heartml promote --list` pays only for MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from heartml.settings import Settings

if TYPE_CHECKING:
    from heartml.data import ValidationReport
    from heartml.registry import FamilyState, HistoryEntry, PromotionResult
    from heartml.train import TrainResult

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 2

app = typer.Typer(
    name="heartml",
    help="Heart-disease risk models: data, training, promotion and serving on MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Download and validate the UCI data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

log = logging.getLogger("heartml")


def _setup_logging() -> None:
    level = os.environ.get("HEARTML_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # MLflow logs every run URL and registration at INFO; the tables below say it better.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line to stderr and exit: the only way a heartml command reports an error."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Known failures become one line and exit 1; anything else too, unless HEARTML_DEBUG."""
    from heartml.data import DataError
    from heartml.experiment import ConfigError

    known: tuple[type[BaseException], ...] = (DataError, ConfigError)
    try:
        from heartml.registry import RegistryError
        from heartml.train import TrainingError

        known = (*known, RegistryError, TrainingError)
        yield
    except typer.Exit:
        raise
    except known as exc:
        fail(str(exc))
    except Exception as exc:
        if os.environ.get("HEARTML_DEBUG"):
            raise
        first = " ".join(str(exc).split())[:300]
        fail(f"unexpected {type(exc).__name__}: {first} (set HEARTML_DEBUG=1 for details)")


def _settings(**overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except Exception as exc:
        fail(f"invalid settings: {' '.join(str(exc).split())[:300]}")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Mirror to fetch from: a directory or base URL (env HEARTML_DATA_SOURCE).",
        show_default=False,
    ),
]
AllSitesOpt = Annotated[
    bool, typer.Option("--all-sites", help="All four sites, not only Cleveland.")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Cache directory (env HEARTML_DATA_DIR).")
]


def _sites(all_sites: bool) -> tuple[str, ...]:
    from heartml.data import ALL_SITES, DEFAULT_SITES

    return ALL_SITES if all_sites else DEFAULT_SITES


@data_app.command("download")
def data_download(
    source: SourceOpt = None,
    all_sites: AllSitesOpt = False,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch even if cached.")] = False,
) -> None:
    """Fetch the UCI files, check each sha256 and keep them in the cache."""
    from heartml.data import download_data

    settings = _settings(data_source=source, data_dir=data_dir)
    with _user_errors():
        result = download_data(settings, _sites(all_sites), force=force)
    for fetched in result.files:
        state = "downloaded" if fetched.downloaded else "cached"
        typer.echo(f"✅ {fetched.path} ({state}, sha256 {fetched.sha256[:12]}…)")


@data_app.command("validate")
def data_validate(
    all_sites: AllSitesOpt = False,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the cached rows against the schema (UCI coding); exit 1 on fatal violations."""
    from heartml.data import read_raw, validate_frame, verified_files

    settings = _settings(data_dir=data_dir)
    with _user_errors():
        report = validate_frame(read_raw(verified_files(settings, _sites(all_sites))))
    if as_json:
        typer.echo(json.dumps(_report_dict(report), indent=2))
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)


def _report_dict(report: ValidationReport) -> dict[str, object]:
    return {
        "rows": report.rows,
        "ok": report.ok,
        "missing": report.missing,
        "missing_rows": {column: list(rows) for column, rows in report.missing_rows.items()},
        "violations": [
            {
                "site": v.site,
                "row": v.row,
                "column": v.column,
                "message": v.message,
                "fatal": v.fatal,
            }
            for v in report.violations
        ],
    }


def _print_report(report: ValidationReport) -> None:
    typer.echo(f"📋 {report.rows} rows checked against the UCI schema")
    if report.missing:
        typer.echo("   missing values ('?' or a cleaned zero; imputed in training):")
        for column, count in report.missing.items():
            rows = report.missing_rows.get(column, ())
            shown = ", ".join(rows[:8]) + (f", … {len(rows) - 8} more" if len(rows) > 8 else "")
            typer.echo(f"     - {column}: {count} (rows {shown})")
    notes = [v for v in report.violations if not v.fatal]
    if notes:
        typer.echo(f"   {len(notes)} value(s) cleaned:")
        for note in notes[:20]:
            typer.echo(f"     - {note}")
        if len(notes) > 20:
            typer.echo(f"     … and {len(notes) - 20} more")
    for violation in report.fatal:
        typer.echo(f"❌ {violation}", err=True)
    typer.echo("✅ valid" if report.ok else f"❌ {len(report.fatal)} violation(s)")


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Experiment YAML (env HEARTML_EXPERIMENT_CONFIG)."),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Attempt to promote the best version.")
    ] = True,
) -> None:
    """Train every candidate, log and register them in MLflow, tag and promote the best."""
    from heartml.train import train_candidates

    settings = _settings(experiment_config=config)
    with _user_errors(), _step_progress("Training") as progress:
        result = train_candidates(settings, promote=promote, progress=progress)
    _print_training(result)


@contextmanager
def _step_progress(title: str) -> Iterator[Callable[[str, int], None]]:
    """A progress bar moved by the stage's events (each candidate fitted, each registered);
    each event also says how many steps there are."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn(f"{title} [progress.description]{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        auto_refresh=False,  # redrawn on each event; nothing moves in between
        transient=True,
        disable=not console.is_terminal,  # logs and CI get no bar and no stray blank line
    )
    task = bar.add_task("…", total=None)

    def advance(step: str, steps: int) -> None:
        bar.update(task, total=steps, advance=1, description=step)
        bar.refresh()

    with bar:
        bar.refresh()
        yield advance


def _print_training(result: TrainResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Candidates (held-out split and 5-fold CV on the training rows)")
    for column in ("candidate", "CV ROC-AUC", "ROC-AUC", "recall", "Brier", "registered as"):
        table.add_column(
            column, justify="left" if column in ("candidate", "registered as") else "right"
        )
    for candidate in sorted(result.candidates, key=lambda c: -c.metrics.roc_auc):
        m = candidate.metrics
        marker = " 🏆" if candidate is result.best else ""
        table.add_row(
            candidate.name + marker,
            f"{m.cv_roc_auc_mean:.4f} ± {m.cv_roc_auc_std:.4f}",
            f"{m.roc_auc:.4f}",
            f"{m.recall:.4f}",
            f"{m.brier_score:.4f}",
            f"{candidate.model_name} v{candidate.model_version}",
        )
    console = Console(width=120)
    console.print(table)
    best = result.best
    console.print(
        f"✅ Best model: {best.model_name} v{best.model_version} "
        f"(ROC-AUC: {best.metrics.roc_auc:.4f}), tagged best_model=true",
        markup=False,
        highlight=False,
    )
    if result.promotion is not None and not result.promotion.refused:
        console.print(f"🚀 {result.promotion.message}", markup=False, highlight=False)
    if result.promotion_warning:
        typer.echo(f"⚠️  warning: {result.promotion_warning}", err=True)


# --------------------------------------------------------------------------------------------
# promote
# --------------------------------------------------------------------------------------------

PROMOTE_HELP = """Promote a model version to Production (alias 'champion') across the family.

\b
  promote --list                 registry status (add --json for JSON)
  promote --auto                 promote the version tagged best_model=true, gated
  promote NAME [VERSION]         promote NAME's latest version, or VERSION
  promote --history              every promotion, newest first
  promote --rollback             make the previous champion the champion again

\b
Exit codes:
  0  promoted, or already champion
  1  error: unknown model or version, no version tagged best, store unreachable
  2  refused by the gate (roc_auc below the minimum or below the champion)
"""


def promote(
    name: Annotated[str | None, typer.Argument(help="Registered model name.")] = None,
    version: Annotated[int | None, typer.Argument(help="Version (default: latest).")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Promote the best-tagged version.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="Show the registry.")] = False,
    history: Annotated[bool, typer.Option("--history", help="Show every promotion.")] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Restore the previous champion.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; change nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    min_roc_auc: Annotated[
        float | None, typer.Option("--min-roc-auc", help="Gate minimum (env HEARTML_MIN_ROC_AUC).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance", help="Allowed drop below the champion (env HEARTML_PROMOTION_TOLERANCE)."
        ),
    ] = None,
) -> None:
    from heartml import registry

    modes = [bool(name), auto, list_, history, rollback]
    if sum(modes) != 1:
        fail("choose exactly one of NAME [VERSION], --auto, --list, --history, --rollback")
    settings = _settings(min_roc_auc=min_roc_auc, promotion_tolerance=tolerance)

    with _user_errors():
        if list_:
            state = registry.read_family(settings)
            if as_json:
                typer.echo(json.dumps(family_json(state), indent=2))
            else:
                typer.echo(format_family(state), nl=False)
            return
        if history:
            entries = registry.promotion_history(settings)
            if as_json:
                typer.echo(json.dumps([e.as_dict() for e in entries], indent=2))
            else:
                typer.echo(format_history(entries), nl=False)
            return
        if auto:
            before = registry.read_family(settings)
            if not as_json:
                _banner("📊 MLflow Model Registry - Before Promotion")
                typer.echo(format_family(before), nl=False)
                _banner(" Auto-Promoting Best Model")
                typer.echo(" Searching for best model...")
                best = before.best_tagged()
                typer.echo(
                    f"✅ Found best model: {best.name} v{best.version} "
                    f"(ROC-AUC: {format_score(best.roc_auc)})"
                )
                typer.echo(f" Looking for model: {best.name}")
            result = registry.promote_best(settings, force=force, dry_run=dry_run, state=before)
        elif rollback:
            result = registry.rollback(settings, dry_run=dry_run)
        else:
            assert name is not None
            if not as_json:
                typer.echo(f" Looking for model: {name}")
            result = registry.promote_version(
                settings, name, version, reason="manual promotion", force=force, dry_run=dry_run
            )
        _report_promotion(result, as_json)
        if auto and not as_json and not dry_run and not result.refused:
            _banner("📊 MLflow Model Registry - After Promotion")
            typer.echo(format_family(registry.read_family(settings)), nl=False)
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


promote.__doc__ = PROMOTE_HELP
app.command(name="promote", help=PROMOTE_HELP, no_args_is_help=False)(promote)


def _banner(title: str) -> None:
    typer.echo("")
    typer.echo("=" * 40)
    typer.echo(title)
    typer.echo("=" * 40)
    typer.echo("")


def format_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report_promotion(result: PromotionResult, as_json: bool) -> None:
    from heartml.registry import PromotionOutcome

    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    target = result.target
    typer.echo(f"✅ Found version {target.version}")
    typer.echo(f"   Current stage: {target.stage}")
    if result.outcome is PromotionOutcome.PROMOTED:
        typer.echo("")
        typer.echo(f"🚀 Promoting version {target.version} to Production...")
        typer.echo(f"✅ Successfully promoted {target.name} v{target.version} to Production!")
        if result.previous is not None:
            typer.echo(f"   Previous champion: {result.previous.ref}")
        for ref in result.archived:
            typer.echo(f"   Archived: {ref}")
    elif result.outcome is PromotionOutcome.REFUSED:
        typer.echo(f"⛔ Not promoted — {result.message}")
    else:
        typer.echo(f"ℹ️  {result.message}")
    for warning in result.warnings:
        typer.echo(f"⚠️  warning: {warning}", err=True)


def format_family(state: FamilyState) -> str:
    """The seed's registry layout: 📦 model, 🏆/📌 version and stage, its aliases and tags."""
    from heartml.registry import EVENT_PREFIX, TAG_BEST, TAG_ROC_AUC

    lines = ["📋 Registered Models:", "=" * 80]
    if not state.models:
        lines += ["", "   (no registered models in the family)"]
    champion = state.champion
    for model in state.models:
        lines += ["", f"📦 {model.name}"]
        for v in model.versions:
            icon = "🏆" if champion is not None and v.ref == champion.ref else "📌"
            lines.append(f"   {icon} Version {v.version} - Stage: {v.stage}")
            if v.aliases:
                lines.append(f"      Aliases: {', '.join(v.aliases)}")
            first = [k for k in (TAG_BEST, TAG_ROC_AUC) if k in v.tags]
            rest = sorted(k for k in v.tags if k not in first and not k.startswith(EVENT_PREFIX))
            lines += [f"      Tag: {key} = {v.tags[key]}" for key in (*first, *rest)]
    notes = state.disagreements()
    if notes:
        lines += ["", "⚠️  The champion alias and the Production stage disagree:"]
        lines += [f"   - {note}" for note in notes]
        if champion is not None:
            lines.append(
                f"   Resolve with: heartml promote {champion.name} {champion.version}"
                "  (or NAME VERSION of the version you want as champion)"
            )
    return "\n".join(lines) + "\n"


def family_json(state: FamilyState) -> dict[str, object]:
    from heartml.registry import EVENT_PREFIX

    champion = state.champion
    return {
        "champion": None
        if champion is None
        else {"name": champion.name, "version": champion.version, "roc_auc": champion.roc_auc},
        "consistent": state.consistent,
        "disagreements": state.disagreements(),
        "models": [
            {
                "name": m.name,
                "versions": [
                    {
                        "version": v.version,
                        "stage": v.stage,
                        "aliases": list(v.aliases),
                        "champion": champion is not None and v.ref == champion.ref,
                        "run_id": v.run_id,
                        "tags": {
                            k: t
                            for k, t in sorted(v.tags.items())
                            if not k.startswith(EVENT_PREFIX)
                        },
                    }
                    for v in m.versions
                ],
            }
            for m in state.models
        ],
    }


def format_history(entries: Sequence[HistoryEntry]) -> str:
    lines = ["📜 Promotion history (newest first):", "=" * 80]
    if not entries:
        lines.append("   (no promotions yet)")
    for entry in entries:
        lines.append(
            f"{entry.at}  {entry.name} v{entry.version}  (ROC-AUC {format_score(entry.roc_auc)})"
        )
        lines.append(f"      replaced: {entry.previous or '-'}")
        lines.append(f"      reason:   {entry.reason}")
        lines.append(f"      by:       {entry.by}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def _run(command: Any, args: list[str] | None = None) -> NoReturn:
    """Run a Typer/click command; usage errors exit 1, because exit 2 means 'refused'."""
    _setup_logging()
    try:
        code = command.main(args=args, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        # click's UsageError and friends (Typer vendors its own click): print them click's way.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(EXIT_ERROR)
        raise
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def main(args: list[str] | None = None) -> NoReturn:
    """The `heartml` console script."""
    _run(typer.main.get_command(app), args)


def promote_main(args: list[str] | None = None) -> NoReturn:
    """`scripts/promote-model.py`: the promote command on its own, same flags."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(help=PROMOTE_HELP)(promote)
    _run(typer.main.get_command(single), args)


# --------------------------------------------------------------------------------------------
# serve, export (heartml.serve.commands imports nothing heavy at module level)
# --------------------------------------------------------------------------------------------

from heartml.serve.commands import export, serve  # noqa: E402

app.command()(serve)
app.command()(export)
