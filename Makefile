# The two commands of README.md. Each does its own set-up first (a no-op once installed).
.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/esr-lab decay

test: setup
	.venv/bin/python -m pytest -q
