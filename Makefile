# Two commands take a fresh machine to the lab's two jobs:
#   make report   execute the notebooks headless (results/ gets the table and figures)
#   make test     run the test suite
# Each creates the virtual environment from requirements.txt first when needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test report bench student grade clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

report: $(STAMP)
	$(PY) tools/run_notebook.py model_compression_and_pruning.ipynb
	$(PY) tools/run_notebook.py distillation_classification.ipynb

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

student: $(STAMP)
	$(PY) tools/make_student.py

grade: $(STAMP)
	$(PY) -m pytest --grade

clean:
	rm -rf dist results/*.ipynb .pytest_cache
