# One entry point per job. Every target sets up (or reuses) the environment first: this
# checkout's own .venv over the shared third-party one (scripts/setup.sh).
.PHONY: setup test lint demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q --durations=15

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

demo: setup
	.venv/bin/dal demo

bench: setup
	.venv/bin/python -m bench

clean:
	rm -rf .venv .pytest_cache .ruff_cache
