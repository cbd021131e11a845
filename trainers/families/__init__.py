"""The model families, one module each, behind :class:`~trainers.families.base.ModelFamily`.

``model.family: auto`` (the default) picks the family from the ``_class_name`` of the pipeline's
``model_index.json``; an explicit family must agree with it.
"""

from __future__ import annotations

import json
import os

from trainers.families.base import ModelFamily
from trainers.families.flux import Flux
from trainers.families.pixart import PixArtAlpha
from trainers.families.sd import StableDiffusion
from trainers.families.sd3 import StableDiffusion3
from trainers.families.sdxl import StableDiffusionXL

FAMILIES: dict[str, ModelFamily] = {
    f.name: f for f in (StableDiffusion(), StableDiffusionXL(), PixArtAlpha(), StableDiffusion3(), Flux())
}
BY_PIPELINE = {f.pipeline_class: f for f in FAMILIES.values()}
SUPPORTED = ", ".join(f"{f.pipeline_class} ({f.name})" for f in FAMILIES.values())


def pipeline_class(path: str) -> str | None:
    """``_class_name`` of the pipeline at ``path`` (a folder, or a hub id in the local cache), else None."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        index = _cached_index(path)
    if index is None:
        return None
    with open(index, encoding="utf-8") as f:
        return json.load(f).get("_class_name")


def _cached_index(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def family_problem(path: str, family: str) -> str | None:
    """Why ``family`` cannot load ``path``, or None: an unsupported pipeline class, or one of another family.
    A hub id that is not cached cannot be checked here; ``auto`` then needs the download at load time."""
    found = pipeline_class(path)
    if found is None:
        return None
    if found not in BY_PIPELINE:
        return f"{path!r} holds a {found}, which no model family loads; supported: {SUPPORTED}"
    if family not in ("auto", BY_PIPELINE[found].name):
        return (
            f"model.family={family!r} but {path!r} holds a {found}; set model.family=auto "
            f"(or {BY_PIPELINE[found].name})"
        )
    return None


def family_of(path: str, family: str, offline: bool = True) -> ModelFamily:
    """The family that loads ``path``: ``family`` itself, or for ``auto`` the one its pipeline class names.

    Raises:
        ValueError: the class is unsupported or belongs to another family than the one named.
    """
    problem = family_problem(path, family)
    if problem:
        raise ValueError(f"model.path: {problem}")
    if family != "auto":
        return FAMILIES[family]
    found = pipeline_class(path) or (None if offline else _downloaded_class(path))
    if found not in BY_PIPELINE:
        why = f"holds a {found}, which no model family loads" if found else "has no readable pipeline class"
        raise ValueError(f"model.path: {path!r} {why}; supported: {SUPPORTED}")
    return BY_PIPELINE[found]


def _downloaded_class(repo_id: str) -> str | None:
    from huggingface_hub import hf_hub_download

    with open(hf_hub_download(repo_id, "model_index.json"), encoding="utf-8") as f:
        return json.load(f).get("_class_name")
