"""Stage `download`: make a dataset available under the data root (see ``prepare_dataset``)."""

from __future__ import annotations

from pathlib import Path

from idap.data import prepare_dataset


def run(dataset: str, settings) -> Path:
    """Fetch or unpack ``dataset`` under ``settings.data.root``; returns its manifest path."""
    return prepare_dataset(dataset, settings.data.root)
