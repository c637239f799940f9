"""The frontend's source, its shipped copy and the rules it must keep (no Node needed)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "plugin_frontend" / "src"
STATIC = ROOT / "tb_gradflow" / "plugin" / "static"
SOURCES = sorted(p for p in SRC.iterdir() if p.suffix in (".js", ".css"))


def test_shipped_static_files_equal_a_fresh_build():
    result = subprocess.run(
        [sys.executable, str(ROOT / "plugin_frontend" / "build.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in STATIC.iterdir()) == [p.name for p in SOURCES]
    for source in SOURCES:
        assert (STATIC / source.name).read_bytes() == source.read_bytes(), source.name


def test_build_check_notices_a_stale_copy(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "plugin_frontend"))
    try:
        import build
    finally:
        sys.path.pop(0)
    out = tmp_path / "static"
    monkeypatch.setattr(build, "OUT", str(out))
    assert build.main(["--check"]) == 1
    build.main([])
    assert build.main(["--check"]) == 0
    (out / "app.js").write_text("// edited by hand\n")
    (out / "leftover.js").write_text("")
    assert build.differences() == (["app.js"], ["leftover.js"])
    build.main([])
    assert build.differences() == ([], [])


@pytest.mark.parametrize("source", [p for p in SOURCES if p.suffix == ".js"], ids=lambda p: p.name)
def test_data_never_reaches_html_parsing(source):
    text = source.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in text, f"{source.name} uses {sink}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_request_leaves_tensorboards_origin(source):
    text = source.read_text()
    assert not re.search(r"https?://", text), f"{source.name} has an absolute URL"
    assert not re.search(r"""(fetch|import)\(\s*["'`]/""", text), f"{source.name} has a root-relative URL"
    assert not re.search(r"""from\s+["'](?!\./)""", text), f"{source.name} imports a bare or absolute module"
    assert "@import" not in text and "url(" not in text


def test_entry_module_exports_render_and_the_page_follows_the_colour_scheme():
    assert "export { render }" in (SRC / "index.js").read_text()
    assert "export async function render()" in (SRC / "app.js").read_text()
    assert "prefers-color-scheme: dark" in (SRC / "style.css").read_text()


def test_static_files_are_package_data():
    setup = (ROOT / "setup.py").read_text()
    assert '"tb_gradflow.plugin": ["static/*"' in setup
    assert "gradflow = tb_gradflow.plugin.loader:GradFlowLoader" in setup
