"""JSON Schemas shipped with mlconv (package data)."""

import json
from importlib import resources


def load(name: str) -> dict:
    """A schema by file stem, e.g. ``load("manifest")``."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text())
