# Two commands do all the set-up on a fresh machine (see README):
#   make demo   creates .venv and runs the main job on the bundled demo scene
#   make test   creates .venv and runs the whole test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Shared 2-core machines: idle OpenMP threads must not spin, and torch gets an explicit count.
THREADS ?= 2
export OMP_WAIT_POLICY := PASSIVE
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
export HEMGS_THREADS := $(THREADS)

.PHONY: demo test test-fast venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: backend/pyproject.toml scripts/setup.sh
	PY=$(PY) bash scripts/setup.sh $(VENV)
	touch $@

demo: venv
	$(BIN)/hemgs demo data/demo/playbot_lod3.ply -o out/demo

# Test files spread over JOBS processes of one thread each (pytest-xdist; a file stays on one
# process, so its module fixtures are built once): 2.4 min instead of 4 on 2 cores.
JOBS ?= 2
test: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HEMGS_THREADS=1 $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile tests

# The quick loop while developing (under a minute): no fits, no Blender, no shared data.
test-fast: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HEMGS_THREADS=1 $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile tests \
		-m "not slow and not blender and not data"

clean:
	rm -rf $(VENV) out build dist
