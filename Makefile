# make demo: pre-train a tiny MaskFeat ViT on embedded sample images, draw its predictions, fine-tune it and
# the same model from scratch, and compare.
# make test: the test suite.
# Both create .venv and install what they need on first use (torch from TORCH_SPEC).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/demo

.PHONY: install demo demo-video test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m maskfeat pretrain -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)/pretrain
	$(PY) -m maskfeat visualize -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)/pretrain visualize.num_images=4
	$(PY) -m maskfeat finetune -c configs/finetune/demo.yaml output_dir=$(DEMO_DIR)/finetune \
		model.checkpoint=$(DEMO_DIR)/pretrain/encoder.safetensors
	$(PY) -m maskfeat finetune -c configs/finetune/demo.yaml output_dir=$(DEMO_DIR)/scratch
	@echo "Fine-tuning on the embedded labeled images: MaskFeat pre-trained vs from scratch"
	$(PY) bench/compare_runs.py $(DEMO_DIR)/finetune $(DEMO_DIR)/scratch
	@echo "Outputs in $(DEMO_DIR): pretrain/ (metrics.jsonl, checkpoint-last.pt, encoder.safetensors, visualize/*.png), finetune/, scratch/"

demo-video: install
	$(PY) -m maskfeat pretrain -c configs/pretrain/video_demo.yaml output_dir=$(DEMO_DIR)/video_pretrain
	$(PY) -m maskfeat finetune -c configs/finetune/video_demo.yaml output_dir=$(DEMO_DIR)/video_finetune \
		model.checkpoint=$(DEMO_DIR)/video_pretrain/encoder.safetensors
	$(PY) -m maskfeat finetune -c configs/finetune/video_demo.yaml output_dir=$(DEMO_DIR)/video_scratch
	@echo "Telling the camera motion of the embedded sample clips: MaskFeat pre-trained vs from scratch"
	$(PY) bench/compare_runs.py $(DEMO_DIR)/video_finetune $(DEMO_DIR)/video_scratch

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf runs .pytest_cache
