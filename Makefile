# Every target creates .venv from scratch when it is missing and is safe to re-run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest mutants clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,crf]'
# open_clip_torch only for its files (OpenAI's vocabulary and tokenizer, a test reference);
# without --no-deps it would pull torchvision, which the tests never import.
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt open_clip_torch
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default: the toy-world SSR demo.
demo: $(STAMP)
	$(BIN)/ssrseg demo

## Lint + type check + tests: what CI runs.
test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks research
	$(BIN)/ruff format --check src tests benchmarks research

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

## Mutation testing of the numeric layers (docs/testing.md; not part of `test`). Hours on 2
## cores: run it in the background, e.g. `nohup make mutants > mutants.log 2>&1 &`.
## MUTANTS='ssrseg.metrics*' limits it to some functions; results stay in mutants/.
MUTANTS ?=
mutants: $(STAMP)
	env -u PYTHONPATH OMP_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children 1 $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
