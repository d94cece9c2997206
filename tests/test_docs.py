"""The README and docs/ as a user reads them: every `--set` they show is a key the recipe validator
accepts, and every file they point to is in the repository."""

import glob
import os
import re

import pytest
from conftest import REPO

from edgekit.errors import EdgekitError
from edgekit.recipe import load_recipe

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
SET = re.compile(r"--set[ =]+([A-Za-z_][\w.]*=[^\s`\"')]*)")
RECIPE = re.compile(r"(?:--recipe[ =]+|\bRECIPE=)([\w./-]+)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def commands(path):
    """(line number, text) of each line, a command continued with a backslash joined into one."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    joined, start, parts = [], None, []
    for number, line in enumerate(lines, 1):
        start = start or number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        joined.append((start, " ".join(parts + [line])))
        start, parts = None, []
    return joined


def shown_overrides():
    """[(where, recipe, [key=value, ...])]: the overrides of one command (or one line of prose) go
    together, on the recipe that line names (digits, the default, when it names none)."""
    found = []
    for path in DOCS:
        for number, text in commands(path):
            sets = SET.findall(text)
            if sets:
                recipe = RECIPE.search(text)
                found.append(("{}:{}".format(os.path.relpath(path, REPO), number),
                              recipe.group(1) if recipe else "digits", sets))
    return found


def test_every_set_the_docs_show_is_a_valid_recipe_key():
    shown = shown_overrides()
    keys = {s.split("=")[0] for _, _, sets in shown for s in sets}
    # the check reaches the README and the reference, and the optimizer keys the recipe table names
    assert len(shown) >= 10 and {"teacher.optimizer.lr", "name", "data.root"} <= keys, keys
    failures = []
    for where, recipe, sets in shown:
        try:
            load_recipe(recipe, sets)
        except EdgekitError as exc:
            failures.append("{}: --recipe {} {}: {}".format(where, recipe, " ".join(sets), exc))
    assert failures == []
    # the check can fail: the key the README once showed is refused
    with pytest.raises(EdgekitError, match=r"unknown key 'optimizer'"):
        load_recipe("digits", ["optimizer.lr=0.01"])


def test_the_docs_point_only_inside_the_repository():
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert "shared/DESIGN.md" not in text and "/work/" not in text, path
        for target in LINK.findall(text):
            if "://" in target:
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            assert resolved.startswith(REPO + os.sep) and os.path.exists(resolved), (path, target)


def test_the_readme_keeps_the_two_commands_at_the_top_and_stays_short():
    with open(DOCS[0], encoding="utf-8") as f:
        text = f.read()
    first_block = text[text.index("```sh"):text.index("```", text.index("```sh") + 5)]
    assert "make deploy" in first_block and "make test" in first_block
    assert text.index("make deploy") < 1500
    assert len(text.split()) < 1200  # the reference lives in docs/
