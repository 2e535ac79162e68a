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

demo: $(STAMP)
	$(BIN)/koemb vocab train-donor --like builtin:qwen3-embedding --corpus builtin:ko-sample --vocab-size 8000 --out outputs/demo/donor
	$(BIN)/koemb vocab expand --base builtin:qwen3-embedding --donor outputs/demo/donor/tokenizer.json \
		--corpus builtin:ko-sample --max-new-tokens 3000 --out outputs/demo/tokenizer --overwrite
	$(BIN)/koemb vocab analyze --tokenizer builtin:qwen3-embedding --tokenizer outputs/demo/tokenizer --corpus builtin:ko-sample

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
