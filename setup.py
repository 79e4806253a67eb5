"""Builds the compiled beam search, ``fusion._ctcsearch``; everything else is in setup.cfg.

The extension links KenLM statically. ``KENLM_ROOT`` names KenLM's source tree (for its
headers) and ``KENLM_LIB`` a folder with ``libkenlm.a`` and ``libkenlm_util.a`` built
with ``-fPIC`` and ``KENLM_MAX_ORDER=6``; ``make`` builds both from the kenlm sdist and
sets them. Without them the package installs without the extension and
``fusion.decoder.BeamSearchDecoder`` runs its Python search (same results, slower).
"""

import os

from setuptools import setup

ext_modules = []
root, lib = os.environ.get("KENLM_ROOT"), os.environ.get("KENLM_LIB")
if root and lib:
    from pybind11.setup_helpers import Pybind11Extension

    ext_modules.append(Pybind11Extension(
        "fusion._ctcsearch",
        ["fusion/csrc/ctc_search.cpp"],
        depends=["fusion/csrc/ctc_align.h"],
        include_dirs=[root],
        library_dirs=[lib],
        libraries=["kenlm", "kenlm_util", "z", "bz2", "lzma"],
        define_macros=[("KENLM_MAX_ORDER", "6"), ("NDEBUG", None)],
        extra_compile_args=["-O3"],
        cxx_std=17,
    ))

setup(ext_modules=ext_modules)
