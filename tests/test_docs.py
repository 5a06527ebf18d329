"""The documentation is part of what is tested: the strict MkDocs build (broken links and anchors,
unknown API names, docstrings that cannot be parsed), every fenced ``python`` example in the README
and in ``docs/``, the README's two setup commands, the API reference's coverage of the public
names, every public docstring's Args/Shape/Returns, the design document's one-hop table against the
code, and that nothing in the repository cites a document outside it."""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
import types
import unicodedata
from pathlib import Path

import pytest
import torch

import channelnorm as cn

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

MAIN_JOB = 'pip install torch==2.13.0 && pip install -e ".[experiments]" && channelnorm compare'
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q -n 2'

# A fenced example may be preceded by one marker line, for an example that cannot run here (no GPU, several
# processes); the reason is shown by pytest -ra:
#   <!-- docs-test: skip REASON -->
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip)\s+(.+?)\s*-->")


def _examples():
    """(path, line, marker, code) for every ```python block of the README and docs/."""
    found = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                start = i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
                previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = MARKER.search(previous)
                if marker is None and "docs-test" in previous:
                    raise ValueError(f"{path}:{i}: malformed docs-test marker {previous!r}")
                found.append((path, start, marker.groups() if marker else None, "\n".join(lines[start:end])))
                i = end
            i += 1
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize(
    "path, line, marker, code", EXAMPLES,
    ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in EXAMPLES],
)
def test_code_example_runs(path, line, marker, code, tmp_path, monkeypatch):
    if marker is not None:
        pytest.skip(f"{path.name}:{line}: {marker[1]}")
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    torch.manual_seed(0)
    namespace = {"__name__": f"docs_example_{path.stem}_{line}"}
    exec(compile(code, f"{path}:{line}", "exec"), namespace)


def test_every_doc_has_examples_that_run():
    """The collector found the examples (a broken fence would silently drop them)."""
    names = {p.name for p, _, marker, _ in EXAMPLES if marker is None}
    assert {"README.md", "usage.md", "conversion.md", "robust.md"} <= names


def _api_names() -> set[str]:
    """Fully qualified names rendered by ``::: name`` directives (and their ``members:`` lists)."""
    names: set[str] = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        current = None
        in_members = False
        for line in page.read_text(encoding="utf-8").splitlines():
            directive = re.match(r":::\s+(\S+)", line)
            if directive:
                current = directive.group(1)
                names.add(current)
                in_members = False
            elif current and line.strip() == "members:":
                in_members = True
            elif current and in_members and re.match(r"\s+-\s+\w+", line):
                names.add(f"{current}.{line.split('-', 1)[1].strip()}")
            elif line.strip() and not line.startswith(" "):
                current, in_members = None, False
    return names


def _resolve(dotted: str):
    """The object a ``::: name`` directive renders (the longest importable module prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _public_spaces():
    """(qualified prefix, namespace) of every public namespace whose ``__all__`` is the public API."""
    from channelnorm import modules, registry
    from channelnorm.tools import momentum

    return [("channelnorm", cn), ("channelnorm.functional", cn.functional), ("channelnorm.convert", cn.convert),
            ("channelnorm.registry", registry), ("channelnorm.modules", modules),
            ("channelnorm.tools.momentum", momentum)]


def test_api_reference_covers_every_public_name():
    """Every public object (classes, functions, NORM_TYPES) is rendered by some ``::: name`` of docs/api/."""
    documented = {id(_resolve(name)) for name in _api_names()}
    missing = sorted({f"{prefix}.{name}" for prefix, space in _public_spaces() for name in space.__all__
                      if not isinstance(getattr(space, name), types.ModuleType)
                      and id(getattr(space, name)) not in documented})
    assert not missing, f"public names without an API reference entry in docs/api/: {missing}"


# ---------------------------------------------------------------- docstrings of the public API

DOCS_TOOLS = pytest.mark.skipif(sys.version_info < (3, 11), reason="the docs tools (test extra) need Python >= 3.11")


def _public_objects() -> dict[str, object]:
    """Every public class and function, under one qualified name each: the top level, the functional
    API, the model tools, the registry and the modules package (base classes included)."""
    found: dict[int, tuple[str, object]] = {}
    for prefix, space in _public_spaces():
        for name in space.__all__:
            obj = getattr(space, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and id(obj) not in found:
                found[id(obj)] = (f"{prefix}.{name}", obj)
    return dict(found.values())


def _sections(doc: str) -> dict[str, list]:
    """The docstring's sections as mkdocstrings sees them (griffe's Google parser): ``"parameters"`` and
    ``"attributes"`` map to the documented names, ``"returns"`` to its items, an admonition such as
    ``Shape:`` to its text under its lower-case title."""
    import griffe

    sections: dict[str, list] = {}
    for section in griffe.Docstring(doc, parser="google").parse(warnings=False):
        if section.kind.value in ("parameters", "attributes", "other parameters"):
            sections.setdefault(section.kind.value, []).extend(item.name.lstrip("*") for item in section.value)
        elif section.kind.value == "returns":
            sections.setdefault("returns", []).extend(section.value)
        elif section.kind.value == "admonition":
            sections.setdefault(section.title.lower(), []).append(section.value.contents)
    return sections


# Markup that the Markdown renderer shows wrongly: Sphinx roles (mkdocstrings renders them verbatim), and
# a line opening with ">" that is not a doctest prompt (a block quote).
ODD_MARKUP = re.compile(r":(class|func|meth|mod|attr|obj|data|exc):`|^[ \t]*>(?!>>)", re.M)


def docstring_problems(name: str, obj, kind: str) -> list[str]:
    """What the docstring of the public ``obj`` lacks. ``kind``: ``"module"`` (an ``nn.Module``: every
    constructor argument under ``Args:``, and ``Shape:``), ``"functional"`` (``Args:``, ``Shape:`` and
    ``Returns:``), ``"function"`` (``Args:``, and ``Returns:`` unless it returns None) or ``"record"`` (a
    NamedTuple or dataclass: every field under ``Args:`` or ``Attributes:``)."""
    doc = inspect.getdoc(obj) if not inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return [f"{name}: no docstring"]
    doc = inspect.cleandoc(doc)
    sections = _sections(doc)
    signature = inspect.signature(obj)
    params = [p.name for p in signature.parameters.values() if p.name != "self"]
    documented = sections.get("parameters", []) + sections.get("other parameters", [])
    if kind == "record":
        documented = documented + sections.get("attributes", [])
    problems = [f"{name}: argument {p!r} not under Args:" for p in params if p not in documented]
    problems += [f"{name}: Args: documents {p!r}, which is not an argument" for p in documented
                 if p not in params and kind != "record"]
    if kind in ("module", "functional") and not sections.get("shape"):
        problems.append(f"{name}: no Shape: section")
    returns_none = signature.return_annotation in (None, "None")
    if kind in ("functional", "function") and not returns_none and not sections.get("returns"):
        problems.append(f"{name}: no Returns: section")
    odd = ODD_MARKUP.search(doc)
    if odd:
        problems.append(f"{name}: markup that renders wrongly: {odd.group(0).strip()!r}")
    return problems


def _kind(name: str, obj) -> str:
    if inspect.isclass(obj):
        return "module" if issubclass(obj, torch.nn.Module) else "record"
    return "functional" if name.startswith("channelnorm.functional.") else "function"


@DOCS_TOOLS
def test_every_public_name_documents_its_arguments():
    """Args (each argument), Shape (modules, functionals) and Returns (functions), as torch.nn documents."""
    objects = _public_objects()
    assert len(objects) >= 50, sorted(objects)  # the walk found the whole API
    problems = [p for name, obj in sorted(objects.items()) for p in docstring_problems(name, obj, _kind(name, obj))]
    assert not problems, "\n".join(problems)


@DOCS_TOOLS
def test_docstring_check_catches_what_is_missing():
    """The check above fails on the faults it is there for."""

    def functional(input, weight=None, eps=1e-5):
        """Normalize.

        Args:
            input: the input.
            eps: added to the variance.
            channel_axis: gone from the signature.

        Returns:
            The output.
        """

    class Norm(torch.nn.Module):
        """A norm whose weight rendering breaks: see :class:`Other`.

        Args:
            num_channels: C.
        """

        def __init__(self, num_channels, eps=1e-5):
            super().__init__()

    def tool(model):
        """Does something to ``model``.

        Args:
            model: the model.
        """

    assert docstring_problems("f", functional, "functional") == [
        "f: argument 'weight' not under Args:", "f: Args: documents 'channel_axis', which is not an argument",
        "f: no Shape: section"]
    assert docstring_problems("Norm", Norm, "module") == [
        "Norm: argument 'eps' not under Args:", "Norm: no Shape: section",
        "Norm: markup that renders wrongly: ':class:`'"]
    assert docstring_problems("tool", tool, "function") == ["tool: no Returns: section"]
    tool.__doc__ = "Does it.\n\n    >= 2 renders as a quote.\n\n    Args:\n        model: m.\n\n    Returns:\n        m."
    assert docstring_problems("tool", tool, "function") == ["tool: markup that renders wrongly: '>'"]


@DOCS_TOOLS
def test_docs_build_strict(tmp_path):
    # The docs tools are in the test extra: a missing one fails here, it is not skipped.
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    # mkdocstrings rendered the docstrings, not just the headings.
    modules_page = (site / "api" / "modules" / "index.html").read_text(encoding="utf-8")
    assert "num_channels" in modules_page and "track_running_stats" in modules_page
    functional_page = (site / "api" / "functional" / "index.html").read_text(encoding="utf-8")
    assert "running_mean" in functional_page
    # fold is rendered as the function with its parameters, not as the alias `fold = _fold.fold`.
    tools_page = (site / "api" / "tools" / "index.html").read_text(encoding="utf-8")
    assert "example_input" in tools_page and "return_report" in tools_page and "_fold.fold" not in tools_page


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify, ASCII form)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")  # link text, no code marks
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


@pytest.mark.parametrize("name", ["README.md", "CHANGELOG.md"])
def test_relative_links_resolve(name):
    """Links outside docs/ (which the strict build checks) point at files and anchors that exist."""
    source = ROOT / name
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve()
        if not path.exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+\s+(.+)$", path.read_text(encoding="utf-8"), flags=re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{name}: broken links {broken}"


def test_readme_setup_commands_and_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MAIN_JOB in readme
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "the README is a landing page; details go to docs/"


# A citation of a design document that is not in the repository (the repo's own is docs/design.md, whose
# sections are cited as "docs/design.md §3"). Spelled in pieces so that this file does not match itself.
OUTSIDE_REFERENCE = re.compile(r"\b" + "DES" + r"IGN\b|\.\./" + "shared")


def test_repo_refers_only_to_itself():
    """Code, tests, documentation, benchmarks and packaging never cite a document outside the repo."""
    places = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml", ROOT / "pyproject.toml",
              *(ROOT / "docs").rglob("*.md"), *(ROOT / "benchmarks").rglob("*.py"),
              *(ROOT / "benchmarks").rglob("*.md"), *(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    assert len(places) > 100, len(places)  # the walk found the source and the tests
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in places
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE_REFERENCE.search(line)]
    assert not hits, "\n".join(hits)


def test_license_and_typing_marker_are_packaged():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; CI runs 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == {"text": "BSD-3-Clause"}
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "BSD 3-Clause License" in license_text and "the channelnorm authors" in license_text
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["channelnorm"]
    assert (ROOT / "src" / "channelnorm" / "py.typed").is_file()


def test_experiment_guide_lists_every_cli_flag():
    """docs/experiment.md keeps up with the command line: each option of ``channelnorm compare``."""
    from channelnorm.experiments.cli import build_parser

    guide = (ROOT / "docs" / "experiment.md").read_text(encoding="utf-8")
    parsers, flags = [build_parser()], set()
    while parsers:  # the parser and its subcommands' parsers
        parser = parsers.pop()
        for action in parser._actions:
            flags |= {opt for opt in action.option_strings if opt.startswith("--") and opt != "--help"}
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    assert {"--norms", "--out"} <= flags, flags  # the walk found the compare command's options
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", guide))
    assert not missing, f"flags of channelnorm compare not described in docs/experiment.md: {missing}"


def _one_hop_rows() -> list[list[str]]:
    """The cells of the per-norm table of docs/design.md section 4.3 (norm, scope, op row, code, tests)."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    start = text.index("| norm (module) |")
    table = text[start:text.index("\n\n", start)].splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table]


def test_design_one_hop_table_matches_the_code():
    """Each norm's row names its class's file and scope trait, a row of the op table, and files that exist."""
    from channelnorm.ops import dispatch

    rows = _one_hop_rows()
    named = set()
    for norm, scope, op_row, code, tests in rows:
        classes = re.findall(r"`(\w+)`", norm.split("(`")[0])
        for name in classes:
            named.add(name)
            obj = getattr(cn, name)
            home = re.search(r"\(`(modules/\w+\.py)`\)", norm)
            if home:
                assert inspect.getsourcefile(obj).endswith(home.group(1)), (name, home.group(1))
            trait = re.fullmatch(r'`"(\w+)"`', scope)
            if trait:
                assert obj.scope == trait.group(1), (name, obj.scope, scope)
        op = re.match(r"`(\w+)`", op_row)
        if op:
            assert op.group(1) in dispatch.OP_TABLE, op_row
            assert ("reference only" in op_row) == (dispatch.OP_TABLE[op.group(1)].backends == ("reference",)), op_row
        for path in re.findall(r"`([\w/]+\.py|[\w]+/)`", code):
            assert (ROOT / "src" / "channelnorm" / "ops" / path).exists(), path
        for path in re.findall(r"`(tests/[\w/]+\.py)`", tests):
            assert (ROOT / path).is_file(), path
    norms = {n for n in cn.__all__ if inspect.isclass(getattr(cn, n)) and issubclass(getattr(cn, n), cn.modules.AffineNorm)}
    assert norms <= named, f"norms without a row in the one-hop table of docs/design.md: {sorted(norms - named)}"
