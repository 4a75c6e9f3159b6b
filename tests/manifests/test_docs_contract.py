"""docs/contract.md is the one place the repository states its external contract.

Code, tests and docs point at its sections ("docs/contract.md §2.3"), never at
a file outside the repository; each such pointer names a section that exists;
and its configuration section, like the README's table, names every variable
the operator reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from operator_engine.config import VARIABLES

from ._support import ROOT

PAGE = ROOT / "docs" / "contract.md"
README = ROOT / "README.md"
# Folders that are not the project's own text: tools, caches, build output.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    ".venv-checkov",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    "build",
    "dist",
    "out",
}
# Spelled so that this file does not match itself: the upper-case name of the
# contract file outside the repository, and the folder it lives in.
OUTSIDE_POINTER = re.compile(r"\b" + "contract".upper() + r"\b|\.\./" + "shared")
SECTION_POINTER = re.compile(r"docs/contract\.md\s+((?:§[0-9]+(?:\.[0-9]+)?(?:\s*[–,-]\s*)?)+)")


def text_files() -> list[Path]:
    """The repository's own text files (binary ones hold a NUL byte; links are read where they point)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and b"\0" not in path.read_bytes():
                found.append(path)
    return found


def contract_sections() -> set[str]:
    """The section numbers of docs/contract.md: "## 2. ..." gives "2", "### 2.3 ..." gives "2.3"."""
    return set(re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", PAGE.read_text(encoding="utf-8"), re.M))


def section_text(number: int) -> str:
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/contract.md has no section {number}"
    return match.group(0)


def test_nothing_points_outside_the_repository():
    offenders = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if OUTSIDE_POINTER.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "point at docs/contract.md instead:\n" + "\n".join(offenders)


def test_every_pointer_into_the_contract_names_an_existing_section():
    sections = contract_sections()
    pointers = 0
    missing = []
    for path in text_files():
        for match in SECTION_POINTER.finditer(path.read_text(encoding="utf-8", errors="replace")):
            for number in re.findall(r"§([0-9]+(?:\.[0-9]+)?)", match.group(1)):
                pointers += 1
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}: §{number}")
    assert pointers >= 20, "the code and tests point at the contract's sections"
    assert not missing, f"no such section in docs/contract.md (it has {sorted(sections)}): {missing}"


def test_the_contract_has_its_six_sections_in_order():
    headings = re.findall(r"^## ([0-9]+)\. ", PAGE.read_text(encoding="utf-8"), re.M)
    assert headings == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.parametrize("name", [v.name for v in VARIABLES])
def test_every_variable_is_in_the_contract_and_in_the_readme_table(name):
    assert f"`{name}`" in section_text(3), f"{name} is missing from docs/contract.md §3"
    table_rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    assert any(f"`{name}`" in row.split("|")[1] for row in table_rows), f"{name} is missing from README's table"


def test_the_readme_links_the_contract():
    assert "](docs/contract.md)" in README.read_text(encoding="utf-8")


def test_the_contract_links_only_files_that_exist():
    text = PAGE.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert (PAGE.parent / target).exists(), target
