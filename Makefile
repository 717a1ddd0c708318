# The two commands of the README, and a few more for development.
.PHONY: demo test test-unit test-reliability lint stack-up stack-down bench

VENV := .venv/bin

$(VENV)/stockflow: pyproject.toml
	bash .ci/bootstrap.sh
	@touch $@

## The main job: stack up, topics and tables, simulator + connectors + worker, live view.
demo: $(VENV)/stockflow
	$(VENV)/stockflow demo

## All tests against the real local stack (started if not running).
test: $(VENV)/stockflow
	$(VENV)/stockflow stack up
	$(VENV)/pytest

## The reliability suite in full (docs/reliability.md): worker churn x5, broker and
## controller loss on the 3-broker cluster, stores cut in a rebalance, a zombie, disk full.
## `make test` runs a trimmed version of it.
test-reliability: $(VENV)/stockflow
	$(VENV)/stockflow stack up
	STOCKFLOW_RELIABILITY_FULL=1 $(VENV)/pytest -m reliability tests/reliability

test-unit: $(VENV)/stockflow
	$(VENV)/pytest tests/unit tests/agents

lint: $(VENV)/stockflow
	$(VENV)/ruff check pipeline schemas connectors topologies bench tests
	$(VENV)/mypy pipeline schemas topologies

stack-up: $(VENV)/stockflow
	$(VENV)/stockflow stack up

stack-down:
	$(VENV)/stockflow stack down
