"""`heartml train`: every candidate trained, logged, registered; the best tagged and promoted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from heartml.cli.common import load_settings, user_errors

if TYPE_CHECKING:
    from heartml.training.train import TrainResult


def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Experiment YAML (env HEARTML_EXPERIMENT_CONFIG)."),
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Attempt to promote the best version.")
    ] = True,
) -> None:
    """Train every candidate, log and register them in MLflow, tag and promote the best.

    Interrupted (SIGINT, or SIGTERM as Jenkins sends on abort), it stops its workers and exits
    130 or 143 with one line saying what was registered; no version is left half-registered.
    """
    from heartml.training.train import TrainingInterrupted, train_candidates

    settings = load_settings(experiment_config=config)
    try:
        with user_errors(), _step_progress("Training") as progress:
            result = train_candidates(settings, promote=promote, progress=progress)
    except TrainingInterrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(stop.exit_code) from None
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

    best = result.best
    table = Table(
        title=f"Candidates, ranked by {best.scores.metric} (95 % intervals; calibration: "
        "out-of-fold)"
    )
    for column in (
        "candidate",
        "CV ROC-AUC",
        "held-out ROC-AUC",
        "cal. slope",
        "Brier",
        "registered as",
    ):
        table.add_column(
            column, justify="left" if column in ("candidate", "registered as") else "right"
        )
    for candidate in sorted(result.candidates, key=lambda c: -c.scores.score.estimate):
        s = candidate.scores
        marker = " 🏆" if candidate is best else ""
        table.add_row(
            candidate.name + marker,
            str(s.cv),
            str(s.holdout),
            "n/a" if s.oof_slope is None else f"{s.oof_slope:.2f}",
            f"{s.brier_score:.4f}",
            f"{candidate.model_name} v{candidate.model_version}",
        )
    console = Console(width=140)
    console.print(table)
    registered = [f"{c.model_name}/{c.model_version}" for c in result.candidates]
    console.print(
        f"📦 Registered {len(registered)} versions: {', '.join(registered)}",
        markup=False,
        highlight=False,
        soft_wrap=True,  # one line, however many candidates: what a log search finds
    )
    console.print(
        f"✅ Best model: {best.model_name} v{best.model_version} "
        f"(ROC-AUC: {best.scores.score.estimate:.4f}, {best.scores.metric}), "
        "tagged best_model=true",
        markup=False,
        highlight=False,
    )
    if result.promotion is not None and not result.promotion.refused:
        console.print(f"🚀 {result.promotion.message}", markup=False, highlight=False)
    if result.promotion_warning:
        typer.echo(f"⚠️  warning: {result.promotion_warning}", err=True)
