"""The README's Python examples run as written, and every install hint names the
distribution (a package called ``app`` on the index belongs to someone else)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from app import BlockStore, Database
from app._hints import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    # Blocks inside a list item are indented with it.
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [textwrap.dedent(block) for block in blocks]


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_readme_python_block_runs(
    number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a database of its own: never data/memory.db of the checkout.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'readme.db'}"
    monkeypatch.setenv("APP_DATABASE_URL", url)
    namespace: dict[str, object] = {"__name__": f"readme_block_{number}"}
    exec(compile(python_blocks()[number], f"README.md python block {number}", "exec"), namespace)
    for value in namespace.values():
        close = getattr(value, "close", None) if type(value).__name__ == "DatabaseManager" else None
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


def _hints(text: str) -> list[str]:
    return re.findall(r"pip install[^`\n\"]*", text)


def test_every_install_hint_names_the_distribution() -> None:
    code = [f for f in sorted((ROOT / "app").rglob("*.py")) if f.name != "_hints.py"]
    sources = [README, ROOT / "benchmarks" / "README.md", *code]
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
