"""platform/ is a source root only: a platform/__init__.py would shadow the standard library's
`platform` module, and flask, boto3 and uuid would break."""

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
