"""The repository's layout. platform/ is a source root only: a platform/__init__.py would shadow
the standard library's `platform` module, and flask, boto3 and uuid would break. The README's
Layout lists every room of the package, one line each."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_platform_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_standard_library_platform_is_reachable():
    out = subprocess.run(
        [sys.executable, "-c", "import platform, fieldsync; print(platform.system())"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("Linux", "Darwin", "Windows")


def test_public_surface_is_deliberate():
    import fieldsync
    assert fieldsync.__all__ == ["Error", "__version__"]
    from fieldsync import defs
    assert "load_model" in defs.__all__ and "build_model" in defs.__all__


def _layout_rooms() -> list[str]:
    """The rooms the README's "## Layout" block lists under `platform/fieldsync/`: the first
    word of each indented line below it."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    lines = block[:block.index("```")].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("platform/fieldsync/"))
    rooms = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        rooms.append(line.split()[0])
    return rooms


def test_readme_layout_lists_every_room_once():
    """Issue 11 property (8): every package directory and top-level module of platform/fieldsync
    has one line in the README's Layout, and the Layout names nothing that is not there."""
    package = ROOT / "platform" / "fieldsync"
    on_disk = sorted([p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists()]
                     + [p.name for p in package.glob("*.py") if p.name != "__init__.py"])
    listed = _layout_rooms()
    assert sorted(set(listed)) == sorted(listed), "a room is listed twice"
    assert sorted(listed) == on_disk
