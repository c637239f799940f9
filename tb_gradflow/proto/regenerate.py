"""Regenerates plugin_data_pb2.py from plugin_data.proto.

    pip install "grpcio-tools>=1.74,<1.76"   # bundles protoc 31.1
    python -m tb_gradflow.proto.regenerate

Only maintainers run this; users get the checked-in module. protoc 31.1 emits
gencode 6.31.1, the version TensorBoard 2.21 generates its own protos with.
"""

import pathlib
import sys

PROTO_DIR = pathlib.Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent.parent


def main():
    from grpc_tools import protoc  # Maintainer-only dependency.

    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={ROOT}",
            str(PROTO_DIR / "plugin_data.proto"),
        ]
    )
    sys.exit(rc)


if __name__ == "__main__":
    main()
