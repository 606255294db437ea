"""Real data sets: a local JSON/JSONL/parquet/CSV file or folder, or a hub name when online."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompt_dataset(
    path_or_name: str | Path,
    split: str = "train",
    column_map: Mapping[str, str] | None = None,
) -> Dataset:
    """A data set from a local JSON/JSONL/parquet/CSV file or folder, or a hub name (online).

    `column_map` renames columns, {"numbers": "nums"}, so any source fits a template and the
    rewards. A local file is one split named "train" (slices such as "train[:100]" work).
    """
    from datasets import load_dataset

    path = Path(path_or_name)
    if path.exists():
        if path.is_dir():
            dataset = load_dataset(str(path), split=split)
        elif path.suffix.lower() in _FILE_BUILDERS:
            dataset = load_dataset(_FILE_BUILDERS[path.suffix.lower()],
                                   data_files={"train": str(path)}, split=split)
        else:
            raise ValueError(f"path_or_name {str(path)!r} has suffix {path.suffix!r}; "
                             f"local files must be one of {sorted(_FILE_BUILDERS)}")
    elif path.suffix.lower() in _FILE_BUILDERS or str(path_or_name).startswith((".", "/", "~")):
        raise ValueError(f"path_or_name {str(path_or_name)!r} looks like a local file but does "
                         "not exist")
    else:
        try:
            dataset = load_dataset(str(path_or_name), split=split)
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated: one clear message
            raise ValueError(
                f"could not load {str(path_or_name)!r} (split {split!r}) from the Hugging Face "
                f"hub: {type(exc).__name__}: {exc}. Offline, pass a local JSON/JSONL/parquet "
                "path instead") from exc
    return _rename(dataset, column_map)


def _rename(dataset: Dataset, column_map: Mapping[str, str] | None) -> Dataset:
    if not column_map:
        return dataset
    missing = [c for c in column_map if c not in dataset.column_names]
    if missing:
        raise ValueError(f"column_map names column(s) {missing} that the dataset lacks; it has "
                         f"{dataset.column_names}")
    clash = [new for old, new in column_map.items()
             if new in dataset.column_names and new not in column_map and new != old]
    if clash:
        raise ValueError(f"column_map would overwrite existing column(s) {clash}")
    return dataset.rename_columns(dict(column_map))
