# Two commands on a fresh Debian 12 machine (as root): `make demo` and `make test`.
# Both install what they need first: Debian's QGIS 3.22 stack, a .venv on /usr/bin/python3
# with --system-site-packages (so QGIS, GDAL, rasterio, numpy come from Debian: one GDAL in
# the process), and the pinned pip packages of requirements.txt under constraints.txt.
SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-scipy python3-geopandas gdal-bin \
                python3-matplotlib python3-venv python3-pip nginx-light xvfb openssl
export QT_QPA_PLATFORM ?= offscreen

.PHONY: all deps system test test-matrix demo bench bench-national bench-dask zip wheel clean screenshot

all: test

system:
	@scripts/install_system.sh $(APT_PACKAGES)

$(VENV)/.installed: requirements.txt constraints.txt | system
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt
	@touch $@

deps: system $(VENV)/.installed

test: deps
	$(PY) -m pytest

# The same suite on QGIS 3.40 LTR (Debian 13) and 3.44 LTR (Debian sid), each in a Debian chroot built once
# under .build/matrix/ (root; see scripts/test_matrix.sh). MATRIX=3.40 or 3.44 for one; PYTEST_ARGS to choose tests.
test-matrix:
	scripts/test_matrix.sh

demo: deps
	$(PY) scripts/demo.py

bench: deps
	$(PY) benchmarks/run.py

# A synthetic UK-like year through the reference chain: FRACTION=1/16 (or 1/4, 1) for one share of the
# extent; without it 1/16, 1/4 and 1 in turn (the whole extent takes over an hour on 2 cores).
bench-national: deps
	$(PY) benchmarks/bench_national.py $(if $(FRACTION),--fraction $(FRACTION))

# The same chain on a 2-worker LocalCluster against in-process threads, the cores held equal, on the
# national benchmark's year: FRACTION=1/64 (or 1/256, 1/16); without it 1/64.
bench-dask: deps
	$(PY) benchmarks/bench_dask.py $(if $(FRACTION),--fraction $(FRACTION))

zip:
	scripts/make_zip.sh

# dist/cloud_probability_core-<version>-py3-none-any.whl: cloud_probability.core for Dask workers and
# cluster nodes (no QGIS side); its dependencies are pip's to resolve there, with -c constraints.txt
wheel: deps
	rm -f dist/cloud_probability_core-*.whl
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w dist .
	@ls dist/cloud_probability_core-*.whl

# never while make test-matrix has a chroot mounted: rm would follow its bind mounts into /dev and the clone
clean:
	@! findmnt -rn -o TARGET | grep -q '^$(CURDIR)/.build/' || { echo "clean: a chroot under .build/ is mounted" >&2; exit 1; }
	rm -rf .build demo_out bench_out dist .qgis-settings

# Screenshots into .build/screenshots/; UPDATE=1 writes the README's, docs/screenshots/.
screenshot: deps
	$(PY) scripts/screenshot.py $(if $(UPDATE),--update)
