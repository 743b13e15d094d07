"""Build hook: compiles the repository's ``proto/`` into ``taskmint.v1``.

The protobuf and gRPC modules are generated on every build (wheel, editable
install, sdist) with ``grpc_tools.protoc`` from the build requirements and are
never committed, so the client cannot drift from the server's API. They are
written into ``src/taskmint/v1/`` (ignored by git) so that an editable install
sees them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
OUT = HERE / "src"
GENERATED = OUT / "taskmint" / "v1"


def proto_root() -> Path:
    """The directory holding ``taskmint/v1/*.proto``.

    In a clone it is the repository's ``proto/``; in an sdist it is the copy
    the sdist carries.
    """
    for root in (HERE.parent.parent / "proto", HERE / "proto"):
        if (root / "taskmint" / "v1").is_dir():
            return root
    raise RuntimeError(
        f"cannot find taskmint/v1/*.proto under {HERE.parent.parent / 'proto'} "
        f"or {HERE / 'proto'}: build from a taskmint checkout or its sdist"
    )


def generate() -> None:
    """Runs protoc (from grpcio-tools) over every taskmint proto file."""
    from grpc_tools import protoc  # a build requirement, see pyproject.toml

    root = proto_root()
    protos = sorted(str(p) for p in (root / "taskmint" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    GENERATED.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {root}")
    (GENERATED / "__init__.py").write_text(
        '"""Generated from proto/taskmint/v1 at build time; do not edit."""\n'
    )


class GenerateProto(Command):
    """``python setup.py generate_proto``: regenerate ``taskmint.v1``."""

    description = "generate taskmint.v1 from proto/"
    user_options: ClassVar[list[tuple[str, str, str]]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate()


class BuildPy(build_py):
    """Generates the stubs before the package is collected."""

    def run(self) -> None:
        generate()
        super().run()


class Sdist(sdist):
    """Carries the proto files so the sdist builds without the repository."""

    def make_release_tree(self, base_dir: str, files: list) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(proto_root(), Path(base_dir) / "proto", dirs_exist_ok=True)


# egg_info wants every package directory to exist before build_py runs.
GENERATED.mkdir(parents=True, exist_ok=True)

setup(
    packages=["taskmint", "taskmint.v1"],
    package_dir={"": "src"},
    cmdclass={"build_py": BuildPy, "sdist": Sdist, "generate_proto": GenerateProto},
)
