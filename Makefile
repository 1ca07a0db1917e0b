# make demo: pre-train a tiny MaskFeat ViT on the embedded sample images, then draw its predictions.
# make test: the test suite.
# Both create .venv and install what they need on first use (torch from TORCH_SPEC).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/demo

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m maskfeat pretrain -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)
	$(PY) -m maskfeat visualize -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)
	@echo "demo outputs in $(DEMO_DIR): metrics.jsonl, checkpoint-last.pt, encoder.safetensors, visualize/*.png"

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf runs .pytest_cache
