"""Query helpers shared by Catalog, Schema Registry and Segmentation listings.

* ``property=`` expressions (Catalog and Schema Registry): ``name`` (exists), ``!name``,
  ``name==x``, ``name!=x``, ``name~regex``, ``name<x``, ``name<=x``, ``name>x``, ``name>=x``.
  A list-valued property matches ``==`` when it contains the value (``meta:intendedToExtend==...``).
  Names may be dotted to reach nested keys (``xdm:sourceSchema`` has no dot and works as is).
* ``orderBy`` / ``orderby`` (``asc:created``, ``desc:updated``, ``name,desc:updated``, ``-created``).
* JSON Patch (RFC 6902, applied by ``jsonpatch``) add / replace / remove / test, for Catalog tags and
  schema edits.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Any

import jsonpatch
import jsonpointer

_OPS = ("==", "!=", "<=", ">=", "~", "<", ">")


class FilterError(ValueError):
    """A malformed filter expression (rendered as a 400 by the caller)."""


def _lookup(obj: dict, name: str) -> tuple[bool, Any]:
    if name in obj:
        return True, obj[name]
    node: Any = obj
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _compare(actual: Any, op: str, expected: str) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    for value in values:
        if op in ("==", "!="):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if "*" in expected and isinstance(value, str):
                # `*` is a wildcard in Catalog filters; `**` is a literal star.
                pattern = expected.replace("**", "\0")
                hit = fnmatch.fnmatchcase(value, pattern.replace("[", "[[]").replace("\0", "[*]"))
            else:
                hit = text == expected
            if hit:
                return op == "=="
            continue
        if op == "~":
            if re.search(expected, str(value)):
                return True
            continue
        try:
            left: Any = float(value)
            right: Any = float(expected)
        except (TypeError, ValueError):
            left, right = str(value), expected
        if {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]:
            return True
    return op == "!="


def property_predicate(expression: str) -> Callable[[dict], bool]:
    """Compile one ``property=`` expression into a predicate over an object (its JSON form)."""
    expr = expression.strip()
    if not expr:
        raise FilterError("empty property filter")
    for op in _OPS:
        pos = expr.find(op)
        if pos > 0:
            name, value = expr[:pos].strip(), expr[pos + len(op) :]
            if op == "~":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise FilterError(
                        f"invalid regular expression in property filter {expr!r}: {exc}"
                    ) from exc

            def predicate(obj: dict, name: str = name, op: str = op, value: str = value) -> bool:
                found, actual = _lookup(obj, name)
                if not found:
                    return op == "!="  # an absent property differs from any value
                return _compare(actual, op, value)

            return predicate
    if expr.startswith("!"):
        name = expr[1:]
        return lambda obj: not _lookup(obj, name)[0]
    return lambda obj: _lookup(obj, expr)[0] and _lookup(obj, expr)[1] is not None


def apply_property_filters(items: Iterable[dict], expressions: list[str]) -> list[dict]:
    predicates = []
    for raw in expressions:
        predicates.append(property_predicate(raw))
    return [item for item in items if all(p(item) for p in predicates)]


def sort_items(items: list[dict], order: str | None, default: str = "asc:created") -> list[dict]:
    """Sort by ``asc:key`` / ``desc:key`` terms (comma separated; bare key = ascending; ``-key`` = desc)."""
    terms = [t.strip() for t in (order or default).split(",") if t.strip()]
    for term in reversed(terms):  # stable sorts, least significant key first
        direction, _, key = term.rpartition(":")
        if not direction and key.startswith("-"):
            direction, key = "desc", key[1:]
        if direction not in ("", "asc", "desc"):
            raise FilterError(f"invalid order term {term!r}: use asc:<field> or desc:<field>")
        items.sort(
            key=lambda it, k=key: (it.get(k) is None, _sortable(it.get(k))), reverse=direction == "desc"
        )
    return items


def _sortable(value: Any) -> Any:
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, str(value).lower() if value is not None else "")


class PatchError(ValueError):
    """An invalid JSON Patch document or operation (rendered as a 400 by the caller)."""


# The operations Catalog and Schema Registry accept. Adobe documents add / replace / remove for
# dataset tags and schema edits (https://experienceleague.adobe.com/docs/experience-platform/xdm/api/schemas.html);
# move and copy are left out because a path allow-list would have to police their ``from`` too.
_PATCH_OPS = ("add", "replace", "remove", "test")


def apply_json_patch(
    document: dict, operations: Any, allowed: Callable[[str], bool] = lambda p: True
) -> dict:
    """Apply RFC 6902 operations (add, replace, remove, test) to a copy of ``document``.

    ``jsonpatch`` does the RFC work; this wrapper keeps the emulator's contract on top of it:
    a non-empty array, only the operations above, only paths ``allowed`` accepts, never the
    whole document, and every failure as a ``PatchError`` naming the operation and path.
    """
    if not isinstance(operations, list) or not operations:
        raise PatchError("a JSON Patch document must be a non-empty array of operations")
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid patch operation {op!r}: needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind not in _PATCH_OPS:
            raise PatchError(f"patch operation {kind!r} is not supported (add, replace, remove, test)")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise PatchError(f"JSON pointer {path!r} must start with '/'")
        if path == "":
            raise PatchError("patching the whole document is not supported")
        if not allowed(path):
            raise PatchError(f"path {path!r} cannot be patched")
        if kind in ("add", "replace") and "value" not in op:
            raise PatchError(f"operation {kind} on {path!r} needs a 'value'")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(document, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"test failed: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(str(exc)) from exc
    if not isinstance(patched, dict):  # pragma: no cover - the whole-document path is refused above
        raise PatchError("the patched document is not an object")
    return patched
