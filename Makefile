# The two commands a newcomer needs: `make demo` and `make test`.
# Everything goes into a local virtual environment, .venv/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo's folder and size: three synthetic months (train, eval, incoming).
DEMO ?= local/demo
ROWS ?= 300000
# `make bench BASELINE=<commit>`: also what the current code costs more than that commit.
BASELINE ?=
# More pytest arguments, e.g. PYTEST_ARGS="-m cluster" for the cluster suite alone.
PYTEST_ARGS ?=

.PHONY: install demo test lint bench bench-scale bench-report report-screenshots clean-demo mutation

$(BIN)/taxi-job: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/taxi-job

demo: install
	$(BIN)/taxi-job sample-data --month 2021-01 --rows $(ROWS) $(DEMO)/data
	$(BIN)/taxi-job sample-data --month 2021-02 --rows $(ROWS) $(DEMO)/data
	$(BIN)/taxi-job sample-data --month 2021-03 --rows $(ROWS) $(DEMO)/data/incoming
	$(BIN)/taxi-job train --artifacts $(DEMO)/artifacts \
		--train-data $(DEMO)/data/yellow_tripdata_2021-01.parquet \
		--eval-data $(DEMO)/data/yellow_tripdata_2021-02.parquet
	$(BIN)/taxi-job infer --artifacts $(DEMO)/artifacts --input $(DEMO)/data/incoming
	$(BIN)/taxi-job report --artifacts $(DEMO)/artifacts --output $(DEMO)/report.html
	@echo "Artifacts in $(DEMO)/artifacts; predictions in $(DEMO)/artifacts/predictions"
	@echo "The report: $(DEMO)/report.html (open it in a browser)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check job tests benchmarks
	$(BIN)/ruff format --check job tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run.py --markdown $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python benchmarks/monitoring.py --markdown

# A year in one process against 2 shards side by side (README "Scaling out").
bench-scale: install
	$(BIN)/python benchmarks/scale.py --markdown

# The report at 200 model versions and 50,000 predicted inputs (README "Report").
bench-report: install
	$(BIN)/python benchmarks/report.py

# The demo's report in headless Chromium at 1280 and 390 px, into local/report/, and the
# README's picture (docs/report.png). Needs chromium and chromedriver (.ci/setup-tools).
report-screenshots: install
	test -f $(DEMO)/report.html || $(MAKE) demo
	$(BIN)/python scripts/report-screenshots.py $(DEMO)/report.html local/report docs/report.png

clean-demo:
	rm -rf $(DEMO)

# Mutation testing of the volume protocol (not in CI: 2,063 mutants, about 40 min with one
# child on a quiet 2-core machine, hours on a loaded one; MUTATE=volume alone, 267, 3-4 min).
# Scores and the review of survivors: benchmarks/RESULTS.md.
# One module at a time, one child: the machine is shared. Results stay in mutants/.
MUTATE ?= volume shards mapreduce registry artifacts
mutation: install
	for module in $(MUTATE); do $(BIN)/mutmut run --max-children 1 "job.$$module.*" || exit 1; done
	$(BIN)/mutmut results
