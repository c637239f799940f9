"""The frontend's one source, what the wheel ships of it, and the rules it must keep (no Node needed)."""

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "plugin_frontend" / "src"
SOURCES = sorted(p for p in SRC.iterdir() if p.suffix in (".js", ".css"))


def test_the_wheel_ships_the_dashboard_source_as_it_is(tmp_path):
    """One source: the files under plugin_frontend/src/ are what the wheel installs."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("tb_gradflow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            name.rsplit("/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if name.startswith("tb_gradflow/plugin/static/") and not name.endswith("/")
        }
    assert shipped.pop("__init__.py")  # the package marker (a docstring)
    assert shipped == {p.name: p.read_bytes() for p in SOURCES}


def test_the_installed_plugin_serves_the_files_of_the_source_tree():
    """An editable install (the README's) serves plugin_frontend/src/ itself: no copy to go stale."""
    from tb_gradflow.plugin import static_files

    assert static_files.names() == {p.name for p in SOURCES}
    for source in SOURCES:
        content, content_type = static_files.read(source.name)
        assert content == source.read_bytes()
        assert content_type == {".js": "text/javascript", ".css": "text/css"}[source.suffix]
    assert not (ROOT / "tb_gradflow" / "plugin" / "static").exists()  # no second copy in the repo
    for name in ("__init__.py", "../loader.py", "", "index.js/", "README.md"):
        assert static_files.read(name) is None


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


def test_entry_point_is_declared():
    assert "gradflow = tb_gradflow.plugin.loader:GradFlowLoader" in (ROOT / "setup.py").read_text()
