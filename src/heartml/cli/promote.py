"""`heartml promote` and `scripts/promote-model.py`: the registry's status, promotion, history,
rollback; one layout and one set of flags for both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from heartml.cli.common import EXIT_REFUSED, fail, format_score, load_settings, user_errors

if TYPE_CHECKING:
    from heartml.registry import FamilyState, HistoryEntry, PromotionResult
    from heartml.settings import Settings


PROMOTE_HELP = """Promote a model version to Production (alias 'champion') across the family.

\b
  promote --list                 registry status (add --json for JSON)
  promote --auto                 promote the version tagged best_model=true, gated
  promote NAME [VERSION]         promote NAME's latest version, or VERSION
  promote --history              every promotion and gate refusal, newest first
  promote --rollback             make the previous champion the champion again

\b
A site's champion (alias 'champion-SITE', served to requests naming the site; the
global champion and the stages are left alone):
  promote --site SITE NAME [VERSION]   a person's choice for SITE (not gated)
  promote --auto --site SITE           the latest version adapted for SITE, through the
                                       site gate (calibration and ROC-AUC on SITE's rows)
  promote --rollback --site SITE       the site's previous champion again
  promote --history --site SITE        that site's promotions only

\b
On a registry with authentication the promotion is recorded under the account the server
authenticated (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), and promoting by
name, rolling back and --force need --reason "...": the reason is kept with the event.

\b
Exit codes:
  0  promoted, or already champion
  1  error: unknown model or version, no version tagged best, store unreachable,
     account refused or short of a permission, --reason missing
  2  refused by the gate (roc_auc below the minimum, calibration outside its band, or
     ROC-AUC worse than the champion's beyond the margin on the same held-out rows)
"""


def promote(
    name: Annotated[str | None, typer.Argument(help="Registered model name.")] = None,
    version: Annotated[int | None, typer.Argument(help="Version (default: latest).")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Promote the best-tagged version.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="Show the registry.")] = False,
    history: Annotated[
        bool, typer.Option("--history", help="Show every promotion and gate refusal.")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Restore the previous champion.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; change nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate.")] = False,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            help="Why: recorded with the promotion and shown by --history (required on an "
            "authenticated registry for NAME [VERSION], --rollback and --force).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    site: Annotated[
        str | None,
        typer.Option(
            "--site",
            help="The site whose champion (alias champion-SITE) to change, or whose history "
            "to show.",
        ),
    ] = None,
    min_roc_auc: Annotated[
        float | None, typer.Option("--min-roc-auc", help="Gate minimum (env HEARTML_MIN_ROC_AUC).")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            "--margin",
            help="Non-inferiority margin of the ROC-AUC difference with the champion "
            "(env HEARTML_PROMOTION_MARGIN).",
        ),
    ] = None,
) -> None:
    from heartml import registry

    modes = [bool(name), auto, list_, history, rollback]
    if sum(modes) != 1:
        fail("choose exactly one of NAME [VERSION], --auto, --list, --history, --rollback")
    if site is not None and list_:
        fail("--list shows every site's champion: it takes no --site")
    settings = load_settings(
        min_roc_auc=min_roc_auc, promotion_margin=margin, options={"promotion_margin": "--margin"}
    )

    with user_errors():
        if site is not None:
            from heartml.data.sites import check_site

            check_site(site)
        if list_:
            state = registry.read_family(settings)
            if as_json:
                typer.echo(json.dumps(family_json(state), indent=2))
            else:
                typer.echo(format_family(state), nl=False)
            return
        if history:
            entries = registry.promotion_history(settings)
            if site is not None:
                entries = [e for e in entries if e.site == site]
            if as_json:
                typer.echo(json.dumps([e.as_dict() for e in entries], indent=2))
            else:
                typer.echo(format_history(entries), nl=False)
            return
        if site is not None:
            result = _promote_site(
                settings,
                site,
                name,
                version,
                auto,
                rollback,
                as_json,
                reason=reason,
                force=force,
                dry_run=dry_run,
            )
        elif auto:
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
            result = registry.promote_best(
                settings, reason=reason, force=force, dry_run=dry_run, state=before
            )
        elif rollback:
            result = registry.rollback(settings, reason=reason, dry_run=dry_run)
        else:
            assert name is not None
            if not as_json:
                typer.echo(f" Looking for model: {name}")
            result = registry.promote_version(
                settings, name, version, reason=reason, force=force, dry_run=dry_run
            )
        _report_promotion(result, as_json)
        if auto and not as_json and not dry_run and not result.refused:
            _banner("📊 MLflow Model Registry - After Promotion")
            typer.echo(format_family(registry.read_family(settings)), nl=False)
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


promote.__doc__ = PROMOTE_HELP


def _promote_site(
    settings: Settings,
    site: str,
    name: str | None,
    version: int | None,
    auto: bool,
    rollback: bool,
    as_json: bool,
    *,
    reason: str | None,
    force: bool,
    dry_run: bool,
) -> PromotionResult:
    from heartml import registry

    if auto:
        if not as_json:
            latest = registry.read_family(settings).latest_adapted(site)
            typer.echo(f" Latest version adapted for site '{site}': {latest.ref}")
        return registry.promote_site_best(
            settings, site, reason=reason, force=force, dry_run=dry_run
        )
    if rollback:
        return registry.rollback_site(settings, site, reason=reason, dry_run=dry_run)
    assert name is not None
    if not as_json:
        typer.echo(f" Looking for model: {name} (for site '{site}')")
    return registry.promote_version(
        settings, name, version, site=site, reason=reason, force=force, dry_run=dry_run
    )


def _banner(title: str) -> None:
    typer.echo("")
    typer.echo("=" * 40)
    typer.echo(title)
    typer.echo("=" * 40)
    typer.echo("")


def _report_promotion(result: PromotionResult, as_json: bool) -> None:
    from heartml.registry import PromotionOutcome

    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    target = result.target
    typer.echo(f"✅ Found version {target.version}")
    typer.echo(f"   Current stage: {target.stage}")
    if result.outcome is PromotionOutcome.PROMOTED and result.site is not None:
        typer.echo("")
        typer.echo(f"🏥 Successfully {result.message}")
        if result.previous is not None:
            typer.echo(f"   Previous site champion: {result.previous.ref}")
    elif result.outcome is PromotionOutcome.PROMOTED:
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


# The scores first, in this order; lineage and the gate's details only in `--list --json`.
SCORE_TAGS = ("roc_auc", "roc_auc_ci", "holdout_roc_auc", "holdout_roc_auc_ci")
DETAIL_TAGS = frozenset(
    {
        "data_sha256",
        "data_sites",
        "git_commit",
        "config_hash",
        "split_seed",
        "split_test_size",
        "selection_metric",
        "gate_champion",
        "gate_comparison",
        "gate_calibration",
        "gate_evidence",
    }
)


def format_family(state: FamilyState) -> str:
    """The registry as `promote --list` prints it: 📦 model, 🏆/📌 version and stage, its
    aliases and tags (scores first; lineage and the gate's details are in ``--json``)."""
    from heartml.registry import EVENT_PREFIX, TAG_BEST

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
            first = [k for k in (TAG_BEST, *SCORE_TAGS) if k in v.tags]
            rest = sorted(
                k
                for k in v.tags
                if k not in first and k not in DETAIL_TAGS and not k.startswith(EVENT_PREFIX)
            )
            lines += [f"      Tag: {key} = {v.tags[key]}" for key in (*first, *rest)]
    sites = state.site_champions()
    if sites:
        lines += ["", "🏥 Site champions (alias champion-SITE; other sites: the champion above):"]
        for site, v in sites.items():
            how = (
                f"adapted, {v.tags.get('adaptation_method', '?')}"
                if v.adapted_for == site
                else "not adapted"
            )
            lines.append(f"   🏆 {site}: {v.name} v{v.version} ({how})")
    notes = state.disagreements()
    if site_notes := state.site_disagreements():
        lines += ["", "⚠️  A site's champion alias is held twice:"]
        lines += [f"   - {note}" for note in site_notes]
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
        "site_champions": {
            site: {
                "name": v.name,
                "version": v.version,
                "adapted": v.adapted_for == site,
                "adaptation_method": v.tags.get("adaptation_method"),
                "promoted_at": v.site_promoted_at(site),
            }
            for site, v in state.site_champions().items()
        },
        "consistent": state.consistent,
        "disagreements": state.disagreements() + state.site_disagreements(),
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
        where = f"  [site {entry.site}]" if entry.site else ""
        lines.append(
            f"{entry.at}  {entry.name} v{entry.version}  (ROC-AUC {format_score(entry.roc_auc)})"
            + where
        )
        if entry.promoted:
            lines.append(f"      replaced: {entry.previous or '-'}")
        else:
            lines.append("      outcome:  not promoted (the champion did not change)")
        lines.append(f"      reason:   {entry.reason}")
        lines.append(f"      by:       {entry.by}{_how_known(entry.authenticated)}")
        lines.append(f"      gate:     {format_gate(entry.gate)}")
    return "\n".join(lines) + "\n"


def format_gate(gate: dict[str, Any] | None) -> str:
    """One line of a promotion's gate verdict: the difference with the champion and its
    interval, the rows compared, the calibration, where the record is."""
    if not gate:
        return "not gated (promoted by name, rolled back, or before heartml gated on evidence)"
    parts = [str(gate.get("verdict"))]
    delta = gate.get("delta_roc_auc")
    if delta:
        parts.append(
            f"ROC-AUC difference {delta[0]:+.4f} [{delta[1]:+.4f}, {delta[2]:+.4f}] vs "
            f"{gate.get('champion')} ({gate.get('comparison')})"
            + (f" on site '{gate['site']}'" if gate.get("site") else "")
        )
    elif gate.get("champion") is None:
        parts.append("no champion to compare with")
    slope, intercept = gate.get("calibration_slope"), gate.get("calibration_intercept")
    if slope is not None and intercept is not None:
        parts.append(f"calibration slope {slope:.2f}, intercept {intercept:+.2f}")
    parts.append(f"evidence {gate.get('evidence')}")
    return "; ".join(parts)


def _how_known(authenticated: bool | None) -> str:
    if authenticated is None:
        return ""
    return " (authenticated account)" if authenticated else " (not authenticated)"
