# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.koemb-installed
BIN     := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test study clean-venv

# The stamp is written last, so an interrupted install is redone rather than trusted.
$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and alone: on these machines this resolves to a local CPU build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

.venv: $(STAMP)

# The demo: donor -> tokenizer expansion -> tiny Qwen3 (real tokenizer) -> six stages -> evaluation -> report.
demo: $(STAMP)
	$(BIN)/koemb run --config configs/demo.yaml --out outputs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
