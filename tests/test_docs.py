"""The documentation agrees with the code.

Every Python snippet in the docs is either included from an example file (which
test_examples.py runs) or a program of its own (which test_doc_snippets.py runs); here each
inline one must also compile and its imports must resolve, a quick check that needs no
subprocess. Every public name has an API reference entry, every page is in the navigation,
and the links and command-line options the docs mention exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import async_batch_llm
from async_batch_llm.testing.simulator._cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *PAGES]

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"\s*$')
DIRECTIVE = re.compile(r"^::: (?P<module>[\w.]+)\s*$(?P<options>(?:\n[ \t]+\S.*)*)", re.MULTILINE)

# Public names that deliberately have no reference entry of their own.
UNDOCUMENTED = {
    # pydantic-ai's own class, re-exported for code written against 0.7.2.
    ("async_batch_llm.llm_strategies", "Agent"),
    # A type variable of the strategy classes; the generic classes document it.
    ("async_batch_llm.llm_strategies", "TOutput"),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks() -> list[Block]:
    blocks = []
    for path in MARKDOWN:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            body = textwrap.dedent(match.group("body"))
            blocks.append(Block(path, line, match.group("lang"), body))
    return blocks


BLOCKS = code_blocks()
PYTHON_BLOCKS = [block for block in BLOCKS if block.lang in ("python", "py")]


def is_include(block: Block) -> bool:
    lines = [line for line in block.body.splitlines() if line.strip()]
    return bool(lines) and all(INCLUDE.match(line) for line in lines)


def check_imports(source: str, where: str) -> None:
    """Run the snippet's import statements, so that a renamed module or name fails."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            statement = ast.unparse(node)
            try:
                exec(statement, {})
            except ImportError as exc:
                pytest.fail(f"{where}: `{statement}` fails: {exc}")


def test_docs_have_python_snippets() -> None:
    """The scan finds the docs' code blocks (guards the checks below against a broken regex)."""
    assert len(PYTHON_BLOCKS) > 20
    assert any(is_include(block) for block in PYTHON_BLOCKS)


@pytest.mark.parametrize(
    "block", [b for b in PYTHON_BLOCKS if not is_include(b)], ids=lambda block: block.id
)
def test_inline_python_snippets_compile_and_import(block: Block) -> None:
    """A Python snippet written in the docs compiles and its imports resolve."""
    compile(block.body, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    check_imports(block.body, block.id)


def include_lines() -> list[tuple[str, str, str | None]]:
    found = []
    for path in MARKDOWN:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = INCLUDE.match(line)
            if match:
                where = f"{path.relative_to(ROOT)}:{number}"
                found.append((where, match.group("path"), match.group("section")))
    return found


@pytest.mark.parametrize(("where", "target", "section"), include_lines(), ids=lambda v: str(v))
def test_included_files_and_sections_exist(where: str, target: str, section: str | None) -> None:
    """Every snippet include names an existing file and, if given, a section marked in it."""
    path = ROOT / target
    assert path.is_file(), f"{where}: {target} does not exist"
    if section is not None:
        text = path.read_text(encoding="utf-8")
        assert f"--8<-- [start:{section}]" in text, f"{where}: no section {section!r}"
        assert f"--8<-- [end:{section}]" in text, f"{where}: section {section!r} never ends"


def nav_pages() -> list[str]:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:", 1)[1]
    return re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE)


def test_every_page_is_in_the_navigation_and_every_entry_exists() -> None:
    """The nav lists each docs page exactly once, and nothing that does not exist."""
    listed = nav_pages()
    assert len(listed) == len(set(listed))
    assert {str(page.relative_to(DOCS)) for page in PAGES} == set(listed)


def public_modules() -> list[ModuleType]:
    names = ["async_batch_llm"] + [
        info.name
        for info in pkgutil.walk_packages(async_batch_llm.__path__, "async_batch_llm.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


def reference_directives() -> dict[str, list[set[str] | None]]:
    """``module -> [members shown]`` for every ``::: module`` (``None``: all of ``__all__``)."""
    found: dict[str, list[set[str] | None]] = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            options = match.group("options")
            members: set[str] | None = None
            if re.search(r"members:\s*false", options):
                members = set()
            elif "members:" in options:
                members = set(re.findall(r"^\s+- (\w+)\s*$", options, re.MULTILINE))
            found.setdefault(match.group("module"), []).append(members)
    return found


def public_names() -> list[tuple[str, str]]:
    return [
        (module.__name__, name)
        for module in public_modules()
        for name in getattr(module, "__all__", [])
    ]


@pytest.mark.parametrize(
    ("module_name", "name"),
    [entry for entry in public_names() if entry not in UNDOCUMENTED],
    ids=lambda v: str(v),
)
def test_public_name_has_a_reference_entry(module_name: str, name: str) -> None:
    """Each name in a public module's __all__ is rendered on an API reference page."""
    directives = reference_directives()
    obj = getattr(importlib.import_module(module_name), name)
    # Where a directive may render it: its own module, where it is defined, or any public
    # module that exports the same object.
    candidates = {module_name, getattr(obj, "__module__", None)} | {
        module.__name__
        for module in public_modules()
        if name in getattr(module, "__all__", []) and getattr(module, name) is obj
    }
    if module_name == "async_batch_llm" and name.startswith("Simple"):
        # The aliases are documented in a table on the package page.
        assert f"`{name}" in (DOCS / "reference" / "package.md").read_text(encoding="utf-8")
        return
    for candidate in candidates - {None}:
        for members in directives.get(str(candidate), []):
            if members is None or name in members:
                return
    pytest.fail(f"{module_name}.{name} has no `::: module` entry in docs/reference/")


def test_every_example_is_listed_on_the_examples_page() -> None:
    """docs/examples.md names each runnable example."""
    page = (DOCS / "examples.md").read_text(encoding="utf-8")
    for example in sorted((ROOT / "examples").glob("*.py")):
        if not example.name.startswith("_"):
            assert f"`{example.name}`" in page, example.name


def test_simulator_guide_options_exist() -> None:
    """Every command-line option the simulator guide mentions is one the CLI accepts."""
    guide = (DOCS / "guides" / "simulator.md").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", guide))
    accepted = {opt for action in build_parser()._actions for opt in action.option_strings}
    assert mentioned
    assert mentioned <= accepted, mentioned - accepted


def test_readme_links_point_at_existing_files() -> None:
    """The README's relative links name files that exist in the repository."""
    readme = FENCE.sub("", (ROOT / "README.md").read_text(encoding="utf-8"))
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", readme)
    assert targets
    for target in targets:
        assert (ROOT / target).exists(), target


def docstring_snippets() -> list[tuple[str, str]]:
    """The fenced Python blocks of every public docstring."""
    snippets: list[tuple[str, str]] = []
    seen: set[int] = set()
    for module in public_modules():
        objects: list[tuple[str, object]] = [(module.__name__, module)]
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            objects.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                objects += [
                    (f"{module.__name__}.{name}.{attr}", member)
                    for attr, member in vars(obj).items()
                    if not attr.startswith("_") or attr == "__init__"
                ]
        for where, obj in objects:
            doc = own_docstring(obj)
            if doc is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            snippets += [(where, block) for block in literal_blocks(inspect.cleandoc(doc))]
    return snippets


def own_docstring(obj: object) -> str | None:
    """The docstring written for ``obj`` (not one inherited from its type, as a TypeVar's)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
    elif inspect.ismodule(obj) or inspect.isroutine(obj) or isinstance(obj, property):
        doc = obj.__doc__
    else:
        return None
    return doc if isinstance(doc, str) else None


def literal_blocks(doc: str) -> list[str]:
    """The fenced ```python blocks of a docstring (how mkdocstrings renders code)."""
    blocks = []
    for match in FENCE.finditer(textwrap.dedent(doc)):
        if match.group("lang") in ("python", "py"):
            blocks.append(textwrap.dedent(match.group("body")).strip("\n"))
    return blocks


DOCSTRING_SNIPPETS = docstring_snippets()


# Literal blocks with none of these are sample output or diagrams, not code.
CODE_MARKERS = re.compile(
    r"\bimport\b|\bdef |\bclass |\bawait\b|\basync\b|^\s*\w+ = ", re.MULTILINE
)


DOCSTRING_CODE = [
    (where, source) for where, source in DOCSTRING_SNIPPETS if CODE_MARKERS.search(source)
]


def test_docstring_snippets_are_found() -> None:
    """The scan finds the code examples in the API docstrings."""
    assert len(DOCSTRING_CODE) >= 3


@pytest.mark.parametrize(("where", "source"), DOCSTRING_CODE, ids=lambda v: str(v)[:60])
def test_docstring_snippets_compile_and_import(where: str, source: str) -> None:
    """A code example in a public docstring (rendered in the API reference) compiles."""
    compile(source, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    check_imports(source, where)


SPHINX_ROLE = re.compile(r":(class|meth|func|data|attr|mod|exc|obj|ref):`")


def test_docstrings_have_no_sphinx_roles() -> None:
    """mkdocstrings renders Markdown: a Sphinx role such as :class:`X` would show up raw."""
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SPHINX_ROLE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_install_instructions_install_this_project() -> None:
    """`pip install async-batch-llm` fetches upstream from PyPI: no page tells users to."""
    offenders = []
    for path in MARKDOWN:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            command = re.search(r"pip install\s+['\"]?async-batch-llm", line)
            if command and "upstream" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_version_is_not_one_of_upstreams() -> None:
    """The version is calendar based, so it never equals an upstream 0.x release."""
    major = int(async_batch_llm.__version__.split(".")[0])
    assert major >= 2026
