# Everything runs from a project-local virtual environment in .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU wheel of torch lies on disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH   := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<=2.14.1" || echo "torch==2.13.0")

.PHONY: setup demo view toy test test-fast bench format lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

## The main job: the viewer on the shipped default checkpoint. Without a display it plays
## 150 frames on a virtual screen and saves what the window showed to demo.png.
demo: setup
	@if [ -n "$$DISPLAY" ]; then MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/qgf view; \
	else MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/qgf view --play --frames 150 --screenshot demo.png \
	  && echo "no display: played 150 frames headless, screenshot in demo.png"; fi

toy: setup
	@if [ -n "$$DISPLAY" ]; then $(BIN)/qgf view --toy; \
	else $(BIN)/qgf view --toy --play --frames 150 --screenshot toy.png \
	  && echo "no display: ran the toy mode headless, screenshot in toy.png"; fi

## All tests (GUI tests start their own Xvfb when there is no display).
test: setup
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not gui"

bench: setup
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/qgf bench

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy core  # settings in pyproject.toml [tool.mypy]

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info
