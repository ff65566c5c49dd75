"""docs/architecture.md against the code: the commands it lists, the module paths it names,
and what it says about who reads the environment."""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from app.cli.main import build_parser
from tests.helpers import ROOT

DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("app", "inference")
ENV_HEADING = "**Who reads the environment.**"
SETTINGS_MODULE = "app/config.py"
# a module path as the doc writes it: app/jobs/held.py, inference/base.py, app/cli/
PATH_RE = re.compile(r"(?<![\w/.])((?:app|inference)/(?:\w+/)*(?:\w+\.py)?)")
# any file the doc names in the repository: the modules above, tests, scripts, docs
FILE_RE = re.compile(
    r"(?<![\w/.])((?:app|inference|tests|scripts|docs)/(?:\w+/)*(?:[\w.-]+\.\w+)?)")


def doc_text() -> str:
    return DOC.read_text()


def section(text: str, heading: str) -> str:
    """The text under `## heading`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/architecture.md has no '## {heading}' section"
    return match.group(1)


def paragraph(text: str, start: str) -> str:
    """The paragraph that begins with `start`."""
    for block in re.split(r"\n\s*\n", text):
        if block.strip().startswith(start):
            return block
    raise AssertionError(f"docs/architecture.md has no paragraph beginning {start!r}")


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words, module of the function it runs) for every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = prefix + (name,)
                func = sub.get_default("func")
                yield words, func.__module__ if func is not None else None
                yield from commands(sub, words)


def module_files() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- who touches the process environment ------------------------------------------------

def _is_os_environ(node: ast.AST) -> bool:
    """`os.environ`, or a bare `environ` (from os import environ)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os") or \
        (isinstance(node, ast.Name) and node.id == "environ")


def _is_getenv(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in ("getenv", "putenv", "unsetenv")
            and isinstance(node.value, ast.Name) and node.value.id == "os") or \
        (isinstance(node, ast.Name) and node.id in ("getenv", "putenv"))


def _leading_text(node: ast.AST) -> str | None:
    """The variable name a read asks for, as far as it is written out: "SVD_X", or the
    literal start of an f-string (f"SVD_{name}" -> "SVD_")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def touches_environment(source: str) -> bool:
    """Reads or sets the process environment: os.environ in any form, os.getenv/putenv."""
    return any(_is_os_environ(n) or _is_getenv(n) for n in ast.walk(ast.parse(source)))


def svd_reads(source: str) -> list[str]:
    """The SVD_* variables this source reads from the process environment."""
    names = []
    for node in ast.walk(ast.parse(source)):
        asked = None
        if isinstance(node, ast.Call):
            f = node.func
            reads = (isinstance(f, ast.Attribute) and f.attr in ("get", "setdefault", "pop")
                     and _is_os_environ(f.value)) or (_is_getenv(f) and getattr(
                         f, "attr", getattr(f, "id", "")) == "getenv")
            if reads and node.args:
                asked = _leading_text(node.args[0])
        elif isinstance(node, ast.Subscript) and _is_os_environ(node.value) \
                and isinstance(node.ctx, ast.Load):
            asked = _leading_text(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_os_environ(c) for c in node.comparators):
            asked = _leading_text(node.left)                 # "SVD_X" in os.environ
        if asked is not None and asked.startswith("SVD_"):
            names.append(asked)
    return names


def test_the_environment_finders_see_reads_and_writes():
    assert svd_reads('import os\nos.environ.get("SVD_PORT")') == ["SVD_PORT"]
    assert svd_reads('import os\nos.getenv("SVD_PORT", "8000")') == ["SVD_PORT"]
    assert svd_reads('import os\nx = os.environ["SVD_HOST"]') == ["SVD_HOST"]
    assert svd_reads('import os\nif "SVD_X" in os.environ: pass') == ["SVD_X"]
    assert svd_reads('from os import environ\nenviron.get(f"SVD_{n}")') == ["SVD_"]
    # setting a child's or this process's variables is not reading them
    assert svd_reads('import os\nenv = {**os.environ, "SVD_WORKER_NAME": "a"}') == []
    assert svd_reads('import os\nos.environ["SVD_A"] = "1"') == []
    assert svd_reads('import os\nos.environ.get("HF_HOME")') == []
    assert touches_environment('import os\nos.environ["TRITON_CACHE_DIR"] = "x"')
    assert touches_environment('import os\nos.getenv("CUDA_VISIBLE_DEVICES")')
    assert not touches_environment('import os\nos.chmod("p", 0o700)')


# --- the doc against the code -----------------------------------------------------------

def test_every_command_and_subcommand_is_listed_with_its_module():
    listed = section(doc_text(), "Command line")
    found = list(commands(build_parser()))
    assert {words for words, _ in found} >= {("serve",), ("worker",), ("db",), ("db", "upgrade"),
                                             ("generate",), ("doctor",)}
    missing = []
    for words, module in found:
        if module is None:              # a group such as `db`: its subcommands run something
            continue
        invocation = "svd-server " + " ".join(words)
        path = module.replace(".", "/") + ".py"
        rows = [line for line in listed.splitlines() if f"`{invocation}`" in line]
        if not any(path in row for row in rows):
            missing.append(f"`{invocation}` with {path}")
    assert not missing, ("docs/architecture.md's 'Command line' section should list, on one "
                         "line each, " + "; ".join(missing))
    for words, _ in found:              # groups too: named somewhere on the page
        assert "svd-server " + " ".join(words) in doc_text(), words


def test_every_module_path_in_the_doc_exists():
    named = set(FILE_RE.findall(doc_text()))
    assert len(set(PATH_RE.findall(doc_text()))) > 40, \
        "the module paths in docs/architecture.md are no longer found"
    stale = sorted(p for p in named if not (ROOT / p).exists())
    assert not stale, f"docs/architecture.md names paths that do not exist: {stale}"


def test_the_environment_paragraph_names_every_module_that_touches_it():
    statement = paragraph(doc_text(), ENV_HEADING)
    named = set(PATH_RE.findall(statement))
    touching = {rel(p) for p in module_files() if touches_environment(p.read_text())}
    assert SETTINGS_MODULE in named, "the paragraph should name the settings module"
    unnamed = sorted(touching - named)
    assert not unnamed, (f"these modules read or set the process environment, but the "
                         f"'{ENV_HEADING}' paragraph of docs/architecture.md does not say so: "
                         f"{unnamed}")
    stale = sorted(named - touching - {SETTINGS_MODULE})
    assert not stale, (f"the '{ENV_HEADING}' paragraph of docs/architecture.md names modules "
                       f"that no longer touch the environment: {stale}")


def test_only_the_settings_module_reads_svd_variables():
    readers = {}
    for path in module_files():
        if rel(path) == SETTINGS_MODULE:
            continue
        names = svd_reads(path.read_text())
        if names:
            readers[rel(path)] = names
    assert not readers, ("SVD_* variables are read only by app/config.py (add a Settings "
                         f"field instead): {readers}")
