"""The package's namespace: everything in ``__all__`` imports, and ``dir(wemap)`` lists it."""

from __future__ import annotations

import importlib

import pytest

import wemap


def test_every_public_name_imports_and_is_listed():
    pytest.importorskip("distributed")  # DaskMapper is in __all__ and needs dask
    module = importlib.import_module("wemap")
    names = dir(module)
    for name in wemap.__all__:
        assert getattr(module, name) is not None, name
        assert name in names, name
    assert {"Mapper", "WorkerMapper", "SharedMemWorkerMapper", "DaskMapper"} <= set(wemap.__all__)
