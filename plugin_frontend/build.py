"""Builds the Gradient Flow frontend: copies plugin_frontend/src/ into tb_gradflow/plugin/static/.

    python plugin_frontend/build.py           # write the static files
    python plugin_frontend/build.py --check   # exit 1 if they are not current (CI)

The frontend is plain ES modules, so the build is a byte-for-byte copy: no
Node, no bundler, no minifier, and the output is trivially reproducible. It
exists so that the wheel ships exactly what was reviewed in src/, and the
check (also run by tests/test_plugin_frontend.py) fails when someone edits
one side and forgets the other. Files in static/ that src/ no longer has are
removed.
"""

import argparse
import filecmp
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "plugin_frontend", "src")
OUT = os.path.join(ROOT, "tb_gradflow", "plugin", "static")
SHIPPED = (".js", ".css")


def sources():
    return sorted(name for name in os.listdir(SRC) if name.endswith(SHIPPED))


def differences():
    """Names that a build would write or delete (empty when current)."""
    wanted = set(sources())
    present = set(os.listdir(OUT)) if os.path.isdir(OUT) else set()
    changed = [
        name
        for name in sorted(wanted)
        if name not in present or not filecmp.cmp(os.path.join(SRC, name), os.path.join(OUT, name), shallow=False)
    ]
    stale = sorted(present - wanted)
    return changed, stale


def build():
    os.makedirs(OUT, exist_ok=True)
    changed, stale = differences()
    for name in changed:
        shutil.copyfile(os.path.join(SRC, name), os.path.join(OUT, name))
    for name in stale:
        path = os.path.join(OUT, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return changed, stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the static files are not current")
    args = parser.parse_args(argv)
    if args.check:
        changed, stale = differences()
        if changed or stale:
            print(
                "tb_gradflow/plugin/static is out of date "
                f"(changed: {', '.join(changed) or '-'}; stale: {', '.join(stale) or '-'}); "
                "run: python plugin_frontend/build.py",
                file=sys.stderr,
            )
            return 1
        print("tb_gradflow/plugin/static is current")
        return 0
    changed, stale = build()
    print(f"wrote {len(changed)} file(s), removed {len(stale)} into {os.path.relpath(OUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
