"""Installs are locked: what pyproject.toml allows, requirements/lock.txt pins, and the
environment running the tests holds exactly the pinned versions.

Regression: every dependency but torch was a bare ``>=``, so a fresh install pulled whatever
was newest that week (numpy 2.4, polars 2.1, sentence-transformers 6.3, faiss 1.15, ...), and
peft/gguf, needed for fine-tuning, were declared nowhere.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def _declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project["optional-dependencies"].items():
        groups[extra] = [Requirement(r) for r in reqs if not r.startswith("llmrecall[")]
    return groups


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _pins(ROOT / "requirements/lock.txt")
    for extra, reqs in _declared().items():
        for req in reqs:
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} (extra {extra or 'core'!r}) is not in the lock"
            # a local label (+cpu) is a build of the same release
            assert Version(pins[name]).public in req.specifier or Version(pins[name]) in req.specifier, \
                f"lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"


def test_installed_versions_equal_the_lock():
    pins = _pins(ROOT / "requirements/lock.txt")
    checked = 0
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in pins:
            assert Version(dist.version) == Version(pins[name]), \
                f"{name} {dist.version} is installed, the lock says {pins[name]}: run make install"
            checked += 1
    # the test environment holds the core, serve, lm and test extras: well over 100 packages
    assert checked >= 100


def test_fine_tuning_dependencies_are_declared():
    finetune = {canonicalize_name(r.name) for r in _declared()["finetune"]}
    assert {"peft", "gguf"} <= finetune


def test_native_builds_are_pinned_exactly():
    pins = _pins(ROOT / "requirements/lock.txt")
    lm = {canonicalize_name(r.name): r for r in _declared()["lm"]}
    assert str(lm["llama-cpp-python"].specifier) == f"=={pins['llama-cpp-python']}"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LLAMA_VERSION := {re.escape(pins['llama-cpp-python'])}$", makefile, re.M)
    build = _pins(ROOT / "requirements/build-lock.txt")
    assert "scikit-build-core" in build
