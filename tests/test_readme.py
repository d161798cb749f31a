"""The documentation's Python examples run as written, its relative links resolve, and every
install hint names the distribution (a package called ``app`` on the index belongs to
someone else).

Pages: README.md, CHANGELOG.md, docs/**/*.md and benchmarks/*.md. Every ```python block runs
(dedented: blocks inside a list item are indented with it) on a database of its own; blocks
fenced otherwise (```sh, ```py) are shown, not run.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from app import BlockStore, Database
from app._hints import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def doc_pages() -> list[Path]:
    """Every Markdown page of the documentation, README first."""
    pages = [README, ROOT / "CHANGELOG.md"]
    pages += sorted((ROOT / "docs").rglob("*.md"))
    pages += sorted((ROOT / "benchmarks").glob("*.md"))
    return [page for page in pages if page.is_file()]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    return [textwrap.dedent(block) for block in blocks]


def _all_blocks() -> list[tuple[Path, int]]:
    return [(page, n) for page in doc_pages() for n in range(len(python_blocks(page)))]


BLOCKS = _all_blocks()


def test_the_docs_have_python_examples() -> None:
    assert len(python_blocks(README)) >= 2
    guide = [page for page, _ in BLOCKS if "guide" in page.parts]
    assert len(set(guide)) >= 4


@pytest.mark.parametrize(
    ("page", "number"), BLOCKS, ids=[f"{_name(page)}-{number}" for page, number in BLOCKS]
)
def test_doc_python_block_runs(
    page: Path, number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a database of its own: never data/memory.db of the checkout.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'readme.db'}"
    monkeypatch.setenv("APP_DATABASE_URL", url)
    name = f"{_name(page)} python block {number}"
    namespace: dict[str, object] = {"__name__": f"doc_block_{number}"}
    exec(compile(python_blocks(page)[number], name, "exec"), namespace)
    for value in namespace.values():
        close = getattr(value, "close", None) if type(value).__module__ == "app.legacy" else None
        dispose = getattr(value, "dispose", None) if isinstance(value, Database) else None
        for release in (close, dispose):
            if callable(release):
                release()
    written = [p for p in tmp_path.rglob("*.db")]
    assert written, "the example wrote nowhere"
    for path in written:
        with Database(f"sqlite:///{path}", create=False) as db:
            store = BlockStore(db)
            assert store.count() >= 1 and store.verify_chain().ok


# -- links --------------------------------------------------------------------------------

_FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The page without its code: fenced blocks and code spans hold no links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation removed, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on the page (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slugs_are_githubs() -> None:
    assert slug("The old API, and the rollout switch") == "the-old-api-and-the-rollout-switch"
    assert slug("asyncio: `app.aio`") == "asyncio-appaio"
    assert slug("Search at 100,000 and 1,000,000 blocks") == "search-at-100000-and-1000000-blocks"
    assert slug("Processes and fork()") == "processes-and-fork"


def _links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in doc_pages()
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8")))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


LINKS = _links()


def test_the_docs_link_to_each_other() -> None:
    assert len(LINKS) >= 50
    index = ROOT / "docs" / "index.md"
    targets = {(page.parent / t.split("#")[0]).resolve() for page, t in LINKS if page == index}
    for page in doc_pages():
        if page not in (index, README):
            assert page.resolve() in targets, f"docs/index.md does not link {_name(page)}"


@pytest.mark.parametrize(
    ("page", "target"), LINKS, ids=[f"{_name(page)}->{target}" for page, target in LINKS]
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page.resolve()
    assert destination.exists(), f"{_name(page)}: {target} names a missing file"
    if anchor:
        assert destination.suffix == ".md", f"{_name(page)}: an anchor into {destination.name}"
        assert anchor in anchors(destination), f"{_name(page)}: no heading for #{anchor}"


# -- install hints ------------------------------------------------------------------------


def _hints(text: str) -> list[str]:
    return re.findall(r"pip install[^`\n\"]*", text)


def test_every_install_hint_names_the_distribution() -> None:
    code = [f for f in sorted((ROOT / "app").rglob("*.py")) if f.name != "_hints.py"]
    sources = [*doc_pages(), *code]
    checked = 0
    for source in sources:
        for hint in _hints(source.read_text(encoding="utf-8")):
            if "greeum" in hint or "install_hint" in hint or hint.rstrip().endswith("pip install"):
                continue  # the benchmark's peer, or the function that writes the hint
            checked += 1
            # Local installs of a checkout (".", "-e .") are fine; by name, only ours.
            assert re.search(r"pip install (-[\w-]+ )*(\.|'?\.\[|'?" + DISTRIBUTION + ")", hint), (
                f"{source.name}: {hint!r}"
            )
            assert "'app[" not in hint and " app[" not in hint
    assert checked >= 3


def test_install_hints_in_messages() -> None:
    from app._hints import install_hint

    assert install_hint("plot") == f"pip install '{DISTRIBUTION}[plot]'"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'name = "{DISTRIBUTION}"' in pyproject
    assert 'app = "app.cli:main"' in pyproject  # the command keeps its name
