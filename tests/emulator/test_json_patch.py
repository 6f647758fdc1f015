"""``filters.apply_json_patch``: jsonpatch does RFC 6902, the wrapper keeps the emulator's contract
(allowed paths, supported operations, errors as ``PatchError`` that the REST layer renders as 400)."""

from __future__ import annotations

import pytest

from aep_emulator.filters import PatchError, apply_json_patch

DOC = {"title": "t", "allOf": [{"$ref": "a"}], "tags": {"x": ["1"]}}


def test_applies_to_a_copy():
    patched = apply_json_patch(
        DOC,
        [
            {"op": "add", "path": "/allOf/-", "value": {"$ref": "b"}},
            {"op": "replace", "path": "/title", "value": "u"},
            {"op": "remove", "path": "/tags/x"},
            {"op": "test", "path": "/title", "value": "u"},
        ],
    )
    assert patched == {"title": "u", "allOf": [{"$ref": "a"}, {"$ref": "b"}], "tags": {}}
    assert DOC == {"title": "t", "allOf": [{"$ref": "a"}], "tags": {"x": ["1"]}}


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ([], "non-empty array"),
        ({"op": "add"}, "non-empty array"),
        ([{"op": "add", "value": 1}], "needs 'op' and 'path'"),
        ([{"op": "move", "from": "/title", "path": "/x"}], "'move' is not supported"),
        ([{"op": "add", "path": "title", "value": 1}], "must start with '/'"),
        ([{"op": "replace", "path": "", "value": {}}], "whole document"),
        ([{"op": "replace", "path": "/secret", "value": 1}], "'/secret' cannot be patched"),
        ([{"op": "add", "path": "/title"}], "needs a 'value'"),
        ([{"op": "replace", "path": "/missing", "value": 1}], "missing"),
        ([{"op": "remove", "path": "/allOf/5"}], "non-existent"),
        ([{"op": "test", "path": "/title", "value": "other"}], "test failed"),
    ],
)
def test_refusals_are_patch_errors(operations, message):
    allowed = lambda path: path != "/secret"  # noqa: E731
    with pytest.raises(PatchError, match=message):
        apply_json_patch(DOC, operations, allowed)
