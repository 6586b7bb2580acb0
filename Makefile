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

test: venv
	$(BIN)/python -m pytest -q tests

# The quick loop while developing (under a minute): no fits, no Blender, no shared data.
test-fast: venv
	$(BIN)/python -m pytest -q tests -m "not slow and not blender and not data"

clean:
	rm -rf $(VENV) out build dist
