"""Build hooks; all project metadata is in pyproject.toml.

setuptools reads ``[project]`` from pyproject.toml and this file adds:
- the cffi extension (``knhkd.hotpath._ring_cffi``, built from ``native/``),
  so that ``pip install -e '.[test]'`` (the Makefile's set-up) compiles it
  with no hand step;
- the default conf tree: ``conf/`` (the operator-facing copy, the only one in
  git) is copied into the built package as ``knhkd/_conf``, where
  ``knhkd.config.DEFAULT_CONF`` finds it with ``importlib.resources``, so an
  installed daemon starts from any directory. An editable install has no
  copy and uses the checkout's ``conf/``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConf(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "knhkd" / "_conf"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(__file__).resolve().parent / "conf", target)


setup(
    cffi_modules=["native/ffibuild.py:ffibuilder"],
    cmdclass={"build_py": BuildWithConf},
)
