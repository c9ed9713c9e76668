"""The error-code registry (protocol.errors.REGISTRY) is complete and unambiguous.

Every module of the four packages is imported (pkgutil.walk_packages), so a class is found wherever it
lives, and every MeshError subclass must own a code of its own that the registry allocates to it, under
the same name, rebuilt from a peer's report as the protocol class it derives from."""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter

import pytest

from protocol import errors
from protocol.errors import CODES, ERRORS_BY_CODE, REGISTRY, MeshError, RemoteProtocolError, error_from_code

PACKAGES = ("protocol", "common", "meshnode", "tools", "simulations")


def _import_everything() -> None:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            importlib.import_module(info.name)


def _subclasses(cls: type[MeshError]) -> list[type[MeshError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in PACKAGES


@pytest.fixture(scope="module")
def classes() -> list[type[MeshError]]:
    _import_everything()
    found = [c for c in _subclasses(MeshError) if _ours(c)]
    assert len(found) > len(ERRORS_BY_CODE)  # the walk reached the node's, tools' and simulator's classes
    return found


def _protocol_base(cls: type[MeshError]) -> type[MeshError]:
    return next(c for c in cls.__mro__ if c.__module__ == errors.__name__)


def test_codes_are_unique() -> None:
    assert [code for code, n in Counter(e.code for e in REGISTRY).items() if n > 1] == []
    assert [name for name, n in Counter(e.name for e in REGISTRY).items() if n > 1] == []
    assert len(CODES) == len(REGISTRY)


def test_every_class_owns_a_registered_code(classes: list[type[MeshError]]) -> None:
    for cls in classes:
        where = f"{cls.__module__}.{cls.__qualname__}"
        assert "code" in cls.__dict__ and "name" in cls.__dict__, f"{where} inherits its parent's code"
        assert cls.code in CODES, f"{where}: code {cls.code} is not in protocol.errors.REGISTRY"
        entry = CODES[cls.code]
        assert entry.name == cls.name, where
        assert entry.rebuilt_as is _protocol_base(cls), where


def test_no_code_is_owned_twice_or_by_nobody(classes: list[type[MeshError]]) -> None:
    owners = Counter(cls.code for cls in classes)
    assert {code: n for code, n in owners.items() if n > 1} == {}
    assert sorted(set(CODES) - set(owners)) == []


def test_a_reported_code_is_rebuilt_the_same_whatever_is_imported(classes: list[type[MeshError]]) -> None:
    # the node's own class for 701 is imported by now; a peer's 701 is still the protocol's StorageError
    rebuilt = error_from_code(701, "peer refused: gone")
    assert type(rebuilt) is errors.StorageError
    assert str(rebuilt) == "block-corrupt: peer refused: gone"
    for code, cls in ERRORS_BY_CODE.items():
        assert type(error_from_code(code, "x")) is cls
    assert type(error_from_code(999, "x")) is RemoteProtocolError
