"""Build hook for the native hot path; all project metadata is in pyproject.toml.

setuptools reads ``[project]`` from pyproject.toml and this file only adds the
cffi extension (``knhkd.hotpath._ring_cffi``, built from ``native/``), so that
``pip install -e '.[test]'`` (the Makefile's set-up) compiles it with no hand step.
"""

from setuptools import setup

setup(cffi_modules=["native/ffibuild.py:ffibuilder"])
