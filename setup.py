"""Builds asrfuse's compiled parts with KenLM inside; everything else is in setup.cfg.

``pip install .``, ``pip wheel .`` and an sdist's install all build, with no environment
variables and no KenLM installed:

- ``kenlm_static``: KenLM's query library, from the copy of its sources in
  ``fusion/decoder/csrc/kenlm`` (kenlm 0.3.0's sdist, LGPL, licence files beside them), built
  once as a static library with ``KENLM_MAX_ORDER=6``. Compressed ARPA input (``.gz``,
  ``.bz2``, ``.xz``) is compiled in for each of zlib, bzip2 and xz whose header and
  library the compiler finds at build time (the build says which it found).
- ``fusion.decoder._ctcsearch``: the compiled beam search and aligner (``fusion/decoder/csrc``), pybind11.
- ``lm._kenlm``: KenLM's own Python binding (``kenlm.pyx``: ``Model``, ``State``), Cython,
  which ``lm.ngram.KenLM`` uses; so the PyPI ``kenlm`` module is not needed.

A build that cannot happen (no C++17 compiler, say) fails the install with the
compiler's error: there is no silent fallback (the decoder needs the compiled search).

Rebuild after editing ``fusion/decoder/csrc/ctc_search.cpp`` or ``ctc_align.h`` (only the changed
extension recompiles; KenLM's objects under ``build/`` are reused), in seconds::

    .venv/bin/python setup.py build_ext --inplace

``.venv/bin/pip install --no-build-isolation -e .`` works too, but recompiles both
extensions each time (it builds them in a temporary folder; KenLM's objects are reused).
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
import tempfile
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext, naive_recompile
from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib

KENLM = "fusion/decoder/csrc/kenlm"
MAX_ORDER = "6"  # KenLM's State holds MAX_ORDER-1 words: the same for every part
KENLM_MACROS = [("KENLM_MAX_ORDER", MAX_ORDER), ("NDEBUG", None)]
if platform.system() == "Linux":
    KENLM_MACROS.append(("HAVE_CLOCKGETTIME", None))

# (macro, header, library) for each compression KenLM can read, used where found
COMPRESSION = [("HAVE_ZLIB", "zlib.h", "z"), ("HAVE_BZLIB", "bzlib.h", "bz2"),
               ("HAVE_XZLIB", "lzma.h", "lzma")]


def kenlm_sources() -> list[str]:
    """KenLM's library sources: lm/, util/, util/double-conversion/, less programs and tests."""
    files = [f for d in ("lm", "util", "util/double-conversion")
             for f in sorted(glob(f"{KENLM}/{d}/*.cc"))
             if not f.endswith(("main.cc", "test.cc"))]
    if not files:
        raise RuntimeError(f"{KENLM}: KenLM's sources are missing (a broken checkout or sdist)")
    return files + [f"{KENLM}/python/score_sentence.cc"]


def _links(compiler, header: str, library: str) -> bool:
    """Whether a program including ``header`` compiles and links with ``-l<library>``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.cc")
        src.write_text(f"#include <{header}>\nint main() {{ return 0; }}\n")
        saved = os.dup(2)  # the failing probe's compiler errors are expected: hide them
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                objects = compiler.compile([str(src)], output_dir=tmp)
                compiler.link_executable(objects, "probe", output_dir=tmp, libraries=[library])
            return True
        except Exception:  # CompileError, LinkError
            return False
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class BuildKenLM(build_clib):
    """build_clib that first finds which compression libraries KenLM can use, and keeps
    KenLM's objects in one folder under ``build/`` for every kind of build (an editable
    install builds in a fresh temporary folder), so that they compile once."""

    def finalize_options(self) -> None:
        super().finalize_options()
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        self.build_temp = self.build_clib = os.path.join("build", f"kenlm.{tag}")

    def build_libraries(self, libraries) -> None:
        found = [(m, lib) for m, h, lib in COMPRESSION if _links(self.compiler, h, lib)]
        print(f"KenLM: compressed ARPA support: {', '.join(lib for _, lib in found) or 'none'}"
              f" (of zlib, bz2, lzma)", file=sys.stderr)
        for _, info in libraries:
            info["macros"] = list(info["macros"]) + [(m, None) for m, _ in found]
        for ext in self.distribution.ext_modules:  # the library's users link them
            ext.libraries = ext.libraries + [lib for _, lib in found if lib not in ext.libraries]
        super().build_libraries(libraries)


class BuildExt(build_ext):
    """build_ext that builds KenLM first (also for ``build_ext --inplace``) and runs Cython."""

    def run(self) -> None:
        self.run_command("build_clib")  # its output folder is on the link path already
        try:
            from Cython.Build import cythonize
        except ImportError:
            raise RuntimeError("Cython>=3 is needed to build lm._kenlm (pyproject.toml's build "
                               "requirements: pip installs it unless --no-build-isolation)") from None
        for ext in self.extensions:  # .pyx -> .cpp under build/, the extension kept
            if any(s.endswith(".pyx") for s in ext.sources):
                ext.sources = cythonize([ext], build_dir="build/cython", quiet=True,
                                        include_path=[f"{KENLM}/python"],
                                        compiler_directives={"language_level": "3"})[0].sources
        super().run()


ParallelCompile(default=0, needs_recompile=naive_recompile).install()  # KenLM's 40 files

libraries = [("kenlm_static", {
    "sources": kenlm_sources(),
    "include_dirs": [KENLM],
    "macros": KENLM_MACROS,
    "cflags": ["-O3", "-g0", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-w"],  # -w: not ours
})]

ext_modules = [
    Pybind11Extension(
        "fusion.decoder._ctcsearch",
        ["fusion/decoder/csrc/ctc_search.cpp"],
        depends=["fusion/decoder/csrc/ctc_align.h"],
        include_dirs=[KENLM],
        libraries=["kenlm_static"],
        define_macros=KENLM_MACROS,
        extra_compile_args=["-O3", "-g0"],  # -g0: no debug info (a sevenfold smaller library)
        cxx_std=17,
    ),
    Extension(
        "lm._kenlm",
        [f"{KENLM}/python/kenlm.pyx"],
        language="c++",
        include_dirs=[KENLM],
        libraries=["kenlm_static"],
        define_macros=KENLM_MACROS,
        extra_compile_args=["-O3", "-g0", "-std=c++17", "-fvisibility=hidden"],
    ),
]

setup(libraries=libraries, ext_modules=ext_modules,
      cmdclass={"build_clib": BuildKenLM, "build_ext": BuildExt})
