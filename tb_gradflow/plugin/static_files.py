"""The dashboard's files (plugin_frontend/src/), served by name only.

    >>> content, content_type = read("index.js")
    >>> content_type
    'text/javascript'
    >>> read("../loader.py") is None
    True

The browser loads the files where they live in the repository: setup.py maps
`plugin_frontend/src/` to the package `tb_gradflow.plugin.static`, so the
wheel ships them, an editable install serves the working tree, and there is
no build or copy step. `importlib.resources` finds them in either.
"""

import functools
import importlib.resources

PACKAGE = "tb_gradflow.plugin.static"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _suffix(name):
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


@functools.lru_cache(maxsize=None)
def names():
    """The servable file names (a frozenset); empty if the package is missing."""
    try:
        root = importlib.resources.files(PACKAGE)
        return frozenset(
            entry.name for entry in root.iterdir() if entry.is_file() and _suffix(entry.name) in CONTENT_TYPES
        )
    except (ImportError, OSError):
        return frozenset()


def read(name):
    """(bytes, content type) of a dashboard file, or None if `name` is not one.

    Only names listed in the package are served: no path arithmetic on the
    request, so no traversal.
    """
    if name not in names():
        return None
    content = importlib.resources.files(PACKAGE).joinpath(name).read_bytes()
    return content, CONTENT_TYPES[_suffix(name)]
