# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv from
# requirements-dev.txt, build the extension (CUDA sources too when nvcc is present)
# and then run. Re-running skips every step whose inputs did not change.
SHELL := /bin/bash
PYTHON_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The real toolkit root: torch would guess the folder above nvcc, wrong for a wrapper.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) $(patsubst %/bin/nvcc,%,$(realpath $(shell command -v nvcc 2>/dev/null))))
export CUDA_HOME
NATIVE_SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
CMAKE_BUILD := build-cmake

SANITIZE_BUILD := build-asan
SANITIZE_LIB := $(abspath $(SANITIZE_BUILD))/libinterp_ext_ops.so

.PHONY: all venv build cmake sanitize-build sanitize chromium test test-fast wheel-check demo bench docs clean
all: build

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@
venv: $(VENV)/.deps

# The package, editable, without the native library: its metadata and the entry point.
$(VENV)/.installed: $(VENV)/.deps pyproject.toml setup.py
	INTERP_EXT_NO_NATIVE=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@
# The native library, in place, from a persistent ninja folder (build/): after an edit of
# one source only that file recompiles and the library relinks.
$(VENV)/.built: $(VENV)/.installed $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@
build: $(VENV)/.built

# The same library built by CMake against libtorch, for C++ users; a test loads it.
# CMake from PyPI: Debian's 3.25 lacks the CUDA20 dialect that torch's headers need.
$(CMAKE_BUILD)/.built: $(VENV)/.deps CMakeLists.txt $(NATIVE_SOURCES)
	$(VENV)/bin/cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	$(VENV)/bin/cmake --build $(CMAKE_BUILD)
	touch $@
cmake: $(CMAKE_BUILD)/.built

# The CPU kernels built with AddressSanitizer + UBSan (CMake, CPU only, one library);
# tests/test_sanitizer.py runs tests/sanitizer_cases.py against it in a fresh python.
$(SANITIZE_BUILD)/.built: $(VENV)/.deps CMakeLists.txt $(NATIVE_SOURCES)
	$(VENV)/bin/cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Debug -DINTERP_EXT_SANITIZE=ON \
	  -DINTERP_EXT_WITH_CUDA=OFF -DINTERP_EXT_CPU_ONLY_VARIANT=OFF
	$(VENV)/bin/cmake --build $(SANITIZE_BUILD)
	touch $@
sanitize-build: $(SANITIZE_BUILD)/.built
sanitize: build sanitize-build
	INTERP_EXT_SANITIZE_LIB=$(SANITIZE_LIB) $(PY) -m pytest -q tests/test_sanitizer.py

# Headless Chromium renders the explain gallery in a test (Debian package; the test
# skips where it cannot be installed, e.g. without root).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then APT="apt-get"; elif sudo -n true 2>/dev/null; then APT="sudo apt-get"; else APT=""; fi; \
	  if [ -n "$$APT" ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive $$APT install -y -q --no-install-recommends chromium >/dev/null \
	      || echo "chromium: install failed; the gallery test will skip"; \
	  else echo "chromium: not installed (needs root and apt); the gallery test will skip"; fi; }

test: build cmake sanitize-build chromium
	INTERP_EXT_CMAKE_LIB=$(abspath $(CMAKE_BUILD))/libinterp_ext_ops.so INTERP_EXT_SANITIZE_LIB=$(SANITIZE_LIB) \
	  $(PY) -m pytest -q tests

# The wheels (CPU-only, and with the CUDA sources when nvcc is present) in a fresh venv
# outside the checkout: the README's examples run from the installed package (CI runs it).
wheel-check: $(VENV)/.deps
	bash scripts/wheel_check.sh

demo: build
	$(PY) -m interp_ext.demo --out out

# The API reference from the docstrings (Sphinx autodoc + napoleon; docs/api/conf.py writes
# one page per public module) in docs/_build/html/index.html. Autodoc imports interp_ext, so
# the library is built first; -E re-reads every page (no warning hides in a stale cache)
# and any warning fails the build.
docs: build
	$(PY) -m sphinx -b html -E -W --keep-going -q docs/api docs/_build/html

bench: build
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build $(CMAKE_BUILD) $(SANITIZE_BUILD) interp_ext/_C*.so *.egg-info $(VENV)/.built $(VENV)/.installed
