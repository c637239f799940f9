"""The Gradient Flow dashboard's files, installed as `tb_gradflow.plugin.static`.

setup.py maps this directory to that package so the files live in one place:
the wheel ships them, an editable install serves them from here, and
`tb_gradflow.plugin.static_files` finds them with importlib.resources.
"""
