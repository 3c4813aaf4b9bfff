"""The browser-test harness itself (no browser started): a missing Chromium fails the run in CI
and only skips elsewhere; screenshots reach docs/admin only when asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.admin.e2e import ui


@pytest.fixture
def no_chromium(monkeypatch, tmp_path):
    monkeypatch.delenv("FIELDSYNC_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ui, "CHROMIUM", str(tmp_path / "chromium"))
    assert ui.find_chromium() is None


def test_a_missing_chromium_fails_in_ci(no_chromium, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Chromium is not installed.*CI: browser tests never skip"):
        ui.Browsers().get()


def test_a_missing_chromium_skips_with_the_fix_elsewhere(no_chromium, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ci/chromium.sh"):
        ui.Browsers().get()


def test_chromium_is_found_where_debian_puts_it():
    assert ui.find_chromium() is not None, "run bash ci/chromium.sh (make test does)"


class FakePage:
    def screenshot(self, *, path, **options):
        assert options["animations"] == "disabled" and options["caret"] == "hide"
        Path(path).write_bytes(b"\x89PNG fake")


def test_screenshots_reach_docs_only_when_asked(monkeypatch, tmp_path):
    docs = tmp_path / "docs" / "admin"
    monkeypatch.setattr(ui, "DOCS_SCREENSHOTS", docs)
    monkeypatch.delenv("FIELDSYNC_TEST_SCREENSHOTS", raising=False)
    kept = ui.screenshot(FakePage(), "some-page")
    assert kept.read_bytes().startswith(b"\x89PNG") and not docs.exists()     # `make test`: git tree clean
    monkeypatch.setenv("FIELDSYNC_TEST_SCREENSHOTS", "1")
    ui.screenshot(FakePage(), "some-page")
    assert (docs / "some-page.png").read_bytes() == kept.read_bytes()
    with pytest.raises(ValueError):
        ui.screenshot(FakePage(), "../escape")
