"""How the app spells its automatic tags. Pure: labels and values in, strings out.

Every automatic tag is ``"<label>:<something>"`` where ``<label>`` is a model's
``app_label.ModelName`` (its concrete model's, then its concrete parents'):

* ``"<label>:<pk>"``: one row (``"shop.Product:7"``);
* ``"<label>:*"``: the collection, carried by every value that read the model's table;
* ``"<label>:<attname>=<value>"``: the rows with that foreign-key value
  (``"shop.Review:product_id=5"``);
* ``"<label>:#"``: the coarse tag every entry with one of the model's automatic tags carries
  (storm control and unknown foreign-key values invalidate it).

The only module that spells them: capture, resolution, storm control and the SQL table index
all call these functions.
"""

from __future__ import annotations

from typing import Any

from django.db import models

COARSE_SUFFIX = ":#"


def auto_labels(model: type[models.Model]) -> tuple[str, ...]:
    """The labels automatic tags use for rows of ``model``: concrete model, then parents."""
    concrete = model._meta.concrete_model or model
    return (concrete._meta.label, *(p._meta.label for p in concrete._meta.get_parent_list()))


def instance_tag(label: str, pk: Any) -> str:
    return f"{label}:{pk}"


def collection_tag(label: str) -> str:
    return f"{label}:*"


def foreign_key_tag(label: str, attname: str, text: str) -> str:
    return f"{label}:{attname}={text}"


def coarse_tag(label: str) -> str:
    return f"{label}{COARSE_SUFFIX}"


def is_coarse(tag: str) -> bool:
    return tag.endswith(COARSE_SUFFIX)
