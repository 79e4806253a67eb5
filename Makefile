# One-command set-up: every target installs what it needs into .venv/ first.
#   make demo   run the main job on the embedded default
#   make test   install everything and run the test suite
# A second run with everything present takes seconds (stamp files under .venv/).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
TORCH   := $(VENV)/.stamp-torch
DEPS    := $(VENV)/.stamp-deps
APT     := $(VENV)/.stamp-apt

# Debian packages the project needs (speech synthesis, KenLM's builder, headless browser).
APT_PACKAGES :=

.PHONY: install demo test lint clean

install: $(DEPS)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(APT): Makefile | $(PY)
ifneq ($(strip $(APT_PACKAGES)),)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endif
	touch $@

# torch 2.14.1 lies on this machine's disk (CUDA build, runs on the CPU); torchaudio 2.11.0's
# wheel pins another torch, so it goes in with --no-deps.
$(TORCH): | $(PY)
	$(PIP) install torch==2.14.1
	$(PIP) install --no-deps torchaudio==2.11.0
	touch $@

$(DEPS): setup.cfg pyproject.toml $(TORCH) $(APT)
	$(PIP) install -e '.[dev,bench]'
	touch $@

REAL_SPEECH ?= ../shared/data/real-speech

demo: $(DEPS)
	$(VENV)/bin/fusion demo --manifest $(REAL_SPEECH)/manifest.jsonl

test: $(DEPS)
	$(PY) -m pytest -q

lint: $(DEPS)
	$(VENV)/bin/flake8 fusion lm hmm tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
