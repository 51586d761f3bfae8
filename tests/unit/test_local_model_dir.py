"""Which registry locations are read in place, without MLflow."""

from __future__ import annotations

from pathlib import Path

from heartml.registry.store import local_model_dir


def test_a_local_model_folder_is_read_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "m 1" / "artifacts"
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    assert local_model_dir(folder.as_uri()) == folder  # file:// with a quoted space
    assert local_model_dir(str(folder)) == folder
    assert local_model_dir(f"file://localhost{folder}") == folder


def test_anything_else_goes_through_mlflow(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    assert local_model_dir("") is None
    assert local_model_dir((tmp_path / "missing").as_uri()) is None  # not (or no longer) there
    assert local_model_dir(tmp_path.parent.as_uri()) is None  # a folder without an MLmodel
    assert local_model_dir("relative/path") is None
    assert local_model_dir(f"file://otherhost{tmp_path}") is None
    assert local_model_dir("mlflow-artifacts:/1/models/m-1/artifacts") is None
    assert local_model_dir("s3://bucket/models/m-1/artifacts") is None
