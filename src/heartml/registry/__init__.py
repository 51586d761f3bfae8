"""Registry stage: list, tag best, promote, auto-promote, roll back — over the whole family.

- :mod:`~heartml.registry.values`: what the registry holds (versions, the family, results);
- :mod:`~heartml.registry.gate`: may a challenger replace the champion (pure);
- :mod:`~heartml.registry.plans`: what a promotion, reconcile, rollback or tagging changes (pure);
- :mod:`~heartml.registry.mlflow_io`: reading the family from MLflow, writing what a plan says;
- :mod:`~heartml.registry.actions`: the verbs, which read, plan and apply;
- :mod:`~heartml.registry.embedded`: the SQLite store created and migrated one process at a time;
- :mod:`~heartml.registry.access`: who may change what (accounts, levels, the reason rule; pure);
- :mod:`~heartml.registry.accounts`: the auth app's API (who am I, what may I, grants);
- :mod:`~heartml.registry.bootstrap`: accounts and grants made to match a versioned file.

Importing the package imports no MLflow: each function imports it when it talks to the store.
"""

from heartml.registry.access import AccessDeniedError, Account, ChangeKind
from heartml.registry.accounts import current_account, require_experiment_access
from heartml.registry.actions import (
    RECONCILE_PASSES,
    ReasonRequiredError,
    fetch_model_card,
    promote_best,
    promote_version,
    promotion_history,
    reconcile_family,
    rollback,
    tag_best_version,
    tag_candidate_version,
    whoami,
)
from heartml.registry.bootstrap import (
    AccessConfig,
    BootstrapReport,
    bootstrap_registry,
    load_access_config,
    share_with_promoters,
)
from heartml.registry.embedded import RepairResult, prepare_sqlite_store, repair_sqlite_store
from heartml.registry.gate import (
    Comparison,
    GateCheck,
    GateEvidence,
    GateInput,
    GateVerdict,
    ModelEvidence,
    Thresholds,
    judge_challenger,
)
from heartml.registry.mlflow_io import (
    call_store,
    configure_mlflow,
    ensure_experiment,
    family_from_raw,
    get_client,
    read_family,
    read_with_client,
)
from heartml.registry.outcome import PromotionOutcome, PromotionResult
from heartml.registry.plans import (
    BestTagPlan,
    Claim,
    Decision,
    PromotionPlan,
    ReconcilePlan,
    RollbackPlan,
    history_of,
    plan_best_tag,
    plan_claim,
    plan_promotion,
    plan_reconcile,
    plan_rollback,
)
from heartml.registry.values import (
    ARCHIVED,
    EVENT_PREFIX,
    NO_STAGE,
    PRODUCTION,
    TAG_BEST,
    TAG_MODEL_TYPE,
    TAG_PREVIOUS,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_REASON,
    TAG_ROC_AUC,
    BrokenStoreError,
    FamilyState,
    HistoryEntry,
    NotFoundError,
    RegisteredModel,
    RegistryError,
    StoreUnavailableError,
    VersionInfo,
    VersionSummary,
    utc_now_iso,
)

__all__ = [
    "ARCHIVED",
    "EVENT_PREFIX",
    "NO_STAGE",
    "PRODUCTION",
    "RECONCILE_PASSES",
    "TAG_BEST",
    "TAG_MODEL_TYPE",
    "TAG_PREVIOUS",
    "TAG_PROMOTED_AT",
    "TAG_PROMOTED_BY",
    "TAG_REASON",
    "TAG_ROC_AUC",
    "AccessConfig",
    "AccessDeniedError",
    "Account",
    "BestTagPlan",
    "BootstrapReport",
    "BrokenStoreError",
    "ChangeKind",
    "Claim",
    "Comparison",
    "Decision",
    "FamilyState",
    "GateCheck",
    "GateEvidence",
    "GateInput",
    "GateVerdict",
    "HistoryEntry",
    "ModelEvidence",
    "NotFoundError",
    "PromotionOutcome",
    "PromotionPlan",
    "PromotionResult",
    "ReasonRequiredError",
    "ReconcilePlan",
    "RegisteredModel",
    "RegistryError",
    "RepairResult",
    "RollbackPlan",
    "StoreUnavailableError",
    "Thresholds",
    "VersionInfo",
    "VersionSummary",
    "bootstrap_registry",
    "call_store",
    "configure_mlflow",
    "current_account",
    "ensure_experiment",
    "family_from_raw",
    "fetch_model_card",
    "get_client",
    "history_of",
    "judge_challenger",
    "load_access_config",
    "plan_best_tag",
    "plan_claim",
    "plan_promotion",
    "plan_reconcile",
    "plan_rollback",
    "prepare_sqlite_store",
    "promote_best",
    "promote_version",
    "promotion_history",
    "read_family",
    "read_with_client",
    "reconcile_family",
    "repair_sqlite_store",
    "require_experiment_access",
    "rollback",
    "share_with_promoters",
    "tag_best_version",
    "tag_candidate_version",
    "utc_now_iso",
    "whoami",
]
