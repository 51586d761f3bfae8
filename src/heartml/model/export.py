"""Export stage: the champion's model files and a small ``model.json``, for a container image.

``heartml export DIR`` writes the MLflow model directory of the champion (``MLmodel``,
``model.skops``, the ONNX form in ``extra_files/``, requirements) plus ``model.json`` (name,
version, run id, roc_auc, model type, promoted_at, exported_at); ``heartml serve --model-dir
DIR`` serves it with no tracking server.
The directory is replaced as a whole: the new export is written beside it and renamed into
place, so a reader sees the old export or the new one, never a mixture.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartml.errors import one_line
from heartml.registry import VersionSummary, utc_now_iso

if TYPE_CHECKING:
    from heartml.settings import Settings

logger = logging.getLogger(__name__)

MODEL_INFO_FILE = "model.json"


class ExportError(Exception):
    """The champion could not be exported or read back; the message is one line."""


@dataclass(frozen=True, slots=True)
class ExportInfo(VersionSummary):
    """The contents of ``model.json``: the champion's summary and when it was exported."""

    exported_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    info: ExportInfo
    files: tuple[str, ...]


def read_export_info(directory: Path) -> ExportInfo:
    """Read and check ``DIR/model.json``; raise ExportError when DIR is not an export."""
    path = directory / MODEL_INFO_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExportError(f"{directory} is not an exported model: no {MODEL_INFO_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not {"name", "version", "exported_at"} <= data.keys():
        raise ExportError(f"{path} lacks name, version or exported_at")
    if not (directory / "MLmodel").is_file():
        raise ExportError(f"{directory} has {MODEL_INFO_FILE} but no MLmodel file")
    try:
        roc_auc = data.get("roc_auc")
        return ExportInfo(
            name=str(data["name"]),
            version=int(data["version"]),
            run_id=str(data.get("run_id") or ""),
            roc_auc=None if roc_auc is None else float(roc_auc),
            model_type=data.get("model_type"),
            promoted_at=data.get("promoted_at"),
            exported_at=str(data["exported_at"]),
        )
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path} has a malformed field: {exc}") from exc


def _replace_directory(staged: Path, directory: Path) -> None:
    """Put ``staged`` at ``directory``; an existing export there is replaced, nothing else is."""
    if directory.exists():
        if not directory.is_dir():
            raise ExportError(f"{directory} exists and is not a directory")
        contents = list(directory.iterdir())
        if contents and not (directory / MODEL_INFO_FILE).is_file():
            raise ExportError(
                f"{directory} is not empty and holds no earlier export; choose another directory"
            )
        retired = directory.with_name(f".{directory.name}.old-{staged.name}")
        directory.rename(retired)
        staged.rename(directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staged.rename(directory)


def export_champion(settings: Settings, directory: Path) -> ExportResult:
    """Write the champion's model files and ``model.json`` to ``directory``."""
    from heartml.registry import configure_mlflow, read_family

    champion = read_family(settings).champion
    if champion is None:
        raise ExportError(
            f"no champion in the {settings.model_prefix}* family (alias "
            f"'{settings.champion_alias}' or stage Production): promote a version first"
        )
    directory = directory.expanduser().absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        from heartml.model.engine import load_engine
        from heartml.registry.store import local_model_dir

        uri = champion.uri
        try:
            if (in_place := local_model_dir(champion.storage_location)) is not None:
                shutil.copytree(in_place, staged, dirs_exist_ok=True)
            else:
                import mlflow.artifacts

                configure_mlflow(settings)
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staged))
            # What is exported must load the way serving loads it.
            load_engine(staged)
        except Exception as exc:
            raise ExportError(f"could not download or load {uri}: {one_line(exc)}") from exc
        if not (staged / "MLmodel").is_file():
            raise ExportError(f"{uri} has no MLmodel file")
        info = ExportInfo(
            **champion.summary.summary_fields(), exported_at=utc_now_iso(timespec="milliseconds")
        )
        (staged / MODEL_INFO_FILE).write_text(
            json.dumps(info.as_dict(), indent=2) + "\n", encoding="utf-8"
        )
        staged.chmod(0o755)
        files = tuple(sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()))
        _replace_directory(staged, directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    logger.info("exported %s v%s to %s", info.name, info.version, directory)
    return ExportResult(directory=directory, info=info, files=files)
