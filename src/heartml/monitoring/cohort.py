"""A scored cohort's drift against the reference profile of the model that scored it.

``heartml monitor --scored OUT`` reads the file ``heartml score --keep-features`` wrote: the
features as validated (null where absent), and the model's name and version on every row. The
features come from the scored file itself, not from the input beside it, so the report
measures exactly the rows that were scored (the refused ones are not in it), whatever became
of the input since, and whichever engine (local or Spark) wrote the file. The file is streamed
in batches: per feature, the counts in the profile's bins and the missing values, then PSI
(:func:`heartml.data.profile.population_stability`, as the server computes it), so memory does
not grow with the cohort. The profile comes from the registry, with the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from heartml.data.profile import ReferenceProfile, population_stability, read_profile
from heartml.data.schema import FEATURE_NAMES
from heartml.monitoring.log import MonitorError

if TYPE_CHECKING:
    import pyarrow.dataset as ds
    from numpy.typing import NDArray

    from heartml.settings import Settings

PROBABILITY_BINS = 20


@dataclass(frozen=True)
class CohortSummary:
    """What the report shows of one scored cohort."""

    path: Path
    rows: int
    model: str  # name/version
    profile: ReferenceProfile
    counts: tuple[NDArray[np.int64], ...]  # per feature, rows in each profile bin
    missing: dict[str, float]  # share of rows without the value, per feature
    psi: dict[str, float]
    probability_counts: NDArray[np.int64]  # PROBABILITY_BINS equal bins over [0, 1]
    positive: int  # rows predicted 1
    scored_at: str


def _dataset(path: Path) -> ds.Dataset:
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not path.exists():
        raise MonitorError(f"{path}: no such file")
    kind = "csv" if path.suffix.lower() == ".csv" else "parquet"
    try:
        dataset = ds.dataset(str(path), format=kind)
    except pa.ArrowException as exc:
        raise MonitorError(
            f"{path}: not a readable scored file ({' '.join(str(exc).split())[:160]})"
        ) from exc
    names = set(dataset.schema.names)
    wanted = {"probability", "prediction", "model_name", "model_version", "scored_at"}
    if not wanted <= names:
        raise MonitorError(
            f"{path}: not a file `heartml score` wrote (no {', '.join(sorted(wanted - names))})"
        )
    if missing := [n for n in FEATURE_NAMES if n not in names]:
        raise MonitorError(
            f"{path} has no feature column {', '.join(missing)}: score with --keep-features to "
            "monitor the cohort"
        )
    return dataset


def summarise_cohort(
    path: Path,
    profile_of: Callable[[str, int], ReferenceProfile],
    progress: Callable[[int], None] | None = None,
) -> CohortSummary:
    """One pass over the scored file; ``profile_of(name, version)`` gives the model's profile."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dataset = _dataset(path)
    columns = [
        *FEATURE_NAMES,
        "probability",
        "prediction",
        "model_name",
        "model_version",
        "scored_at",
    ]
    scanner = dataset.scanner(columns=columns, batch_size=131_072, batch_readahead=1)
    model: tuple[str, int] | None = None
    profile: ReferenceProfile | None = None
    counts: list[NDArray[np.int64]] = []
    missing = np.zeros(len(FEATURE_NAMES), dtype=np.int64)
    histogram = np.zeros(PROBABILITY_BINS, dtype=np.int64)
    rows = positive = 0
    stamps: set[str] = set()
    try:
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            names = pc.unique(batch.column("model_name").cast(pa.string())).to_pylist()
            versions = pc.unique(batch.column("model_version")).to_pylist()
            found = {(str(n), int(v)) for n in names for v in versions}
            if model is None and len(found) == 1:
                model = next(iter(found))
                profile = profile_of(*model)
                counts = [np.zeros(f.bins, dtype=np.int64) for f in profile.features]
            if len(found) != 1 or model not in found:
                raise MonitorError(f"{path}: scored by more than one model; monitor one at a time")
            assert profile is not None
            for i, feature in enumerate(profile.features):
                values = pc.cast(batch.column(feature.name), pa.float64()).to_numpy(
                    zero_copy_only=False
                )
                counts[i] += feature.bin_counts(values)
                missing[i] += int(np.isnan(values).sum())
            probability = batch.column("probability").to_numpy(zero_copy_only=False)
            histogram += np.histogram(probability, bins=PROBABILITY_BINS, range=(0.0, 1.0))[0]
            positive += int(pc.sum(batch.column("prediction")).as_py() or 0)
            stamps.update(
                str(s) for s in pc.unique(batch.column("scored_at").cast(pa.string())).to_pylist()
            )
            rows += batch.num_rows
            if progress is not None:
                progress(rows)
    except pa.ArrowException as exc:
        raise MonitorError(f"{path}: cannot read ({' '.join(str(exc).split())[:160]})") from exc
    if model is None or profile is None:
        raise MonitorError(f"{path}: no scored rows")
    psi = {
        f.name: population_stability(np.asarray(f.frequencies), counts[i])
        for i, f in enumerate(profile.features)
    }
    return CohortSummary(
        path=path,
        rows=rows,
        model=f"{model[0]}/{model[1]}",
        profile=profile,
        counts=tuple(counts),
        missing=dict(zip(FEATURE_NAMES, (missing / rows).tolist(), strict=True)),
        psi=psi,
        probability_counts=histogram,
        positive=positive,
        scored_at=", ".join(sorted(stamps)),
    )


def registry_profile(settings: Settings) -> Callable[[str, int], ReferenceProfile]:
    """The reference profile stored with a registered version (downloaded from the registry)."""

    def profile_of(name: str, version: int) -> ReferenceProfile:
        import tempfile

        from heartml.registry import read_family
        from heartml.registry.store import local_model_dir

        found = read_family(settings).find(name, version)  # unknown: the registry's one line
        if (in_place := local_model_dir(found.storage_location)) is not None:
            profile = read_profile(in_place)
        else:
            import mlflow.artifacts

            from heartml.registry import call_store, configure_mlflow

            configure_mlflow(settings)
            with tempfile.TemporaryDirectory(prefix="heartml-profile-") as local:
                path: str = call_store(
                    settings,
                    lambda: mlflow.artifacts.download_artifacts(
                        artifact_uri=found.uri, dst_path=local
                    ),
                    f"download {found.ref}",
                )
                profile = read_profile(Path(path))
        if profile is None:
            raise MonitorError(f"{name}/{version} has no reference profile: drift not measurable")
        return profile

    return profile_of
