"""
The three PATCH flavours of the Kubernetes API, applied to plain dicts.

KMock 0.8 applies every PATCH as a recursive dict merge whatever the
``Content-Type``; real Kubernetes dispatches on it:

* ``application/merge-patch+json`` (RFC 7386; kopf, ``kubectl patch --type=merge``,
  kubectl apply for custom resources): dicts merge, ``null`` removes, lists replace.
* ``application/json-patch+json`` (RFC 6902): a list of operations.
* ``application/strategic-merge-patch+json`` (built-in kinds only; the
  ``kubernetes`` client's default for dict bodies, kubectl apply for built-in
  kinds): a merge patch in which lists of objects merge by their merge key.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

__all__ = ["merge_patch", "strategic_merge_patch", "json_patch", "PatchError"]


class PatchError(ValueError):
    """A patch that real Kubernetes would reject with 422/400."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value, never mutates its arguments."""
    # One copy of each argument, then a merge in place: copying again at every level would copy
    # the patched parts of an object once per level of nesting.
    return _merge_into(copy.deepcopy(target), copy.deepcopy(patch))


def _merge_into(target: Any, patch: Any) -> Any:
    """Merge ``patch`` into ``target`` (both owned by the caller: mutated and shared)."""
    if not isinstance(patch, dict):
        return patch
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_into(result.get(key), value)
    return result


# In Kubernetes' Go types, the patchMergeKey of most object lists is `name`
# (containers, env, volumes, volumeMounts, ports of services); `type` for
# status conditions; `containerPort` for container ports. Lists of scalars
# and lists without such a key are replaced, as in the real server.
_MERGE_KEYS = ("name", "type", "containerPort", "uid")


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    An approximation of Kubernetes' strategic merge patch without the Go schema.

    The merge key of a list is guessed from the items (the first of
    ``_MERGE_KEYS`` that every old and new item has). The ``$patch``,
    ``$retainKeys``, ``$setElementOrder/...`` and ``$deleteFromPrimitiveList/...``
    directives are honoured only as far as kubectl apply needs: ``$patch: delete``
    removes a list item, ``$patch: replace`` replaces a dict, the rest are dropped.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_lists(result[key], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_lists(old: list[Any], new: list[Any]) -> list[Any]:
    items = old + new
    if not items or not all(isinstance(item, dict) for item in items):
        return copy.deepcopy([item for item in new if not (isinstance(item, dict) and "$patch" in item)])
    merge_key = next((k for k in _MERGE_KEYS if all(k in item for item in items)), None)
    if merge_key is None:
        return copy.deepcopy(new)
    merged = [copy.deepcopy(item) for item in old]
    for item in new:
        index = next((i for i, o in enumerate(merged) if o[merge_key] == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 JSON patch (via ``jsonpatch``, which kopf and kmock already depend on)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(target, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        raise PatchError(str(e)) from e
    if not isinstance(result, dict):
        raise PatchError("a JSON patch must leave an object")
    return result
