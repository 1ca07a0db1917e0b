# make demo: pre-train a tiny MaskFeat ViT on embedded sample images, draw its predictions, fine-tune it and
# the same model from scratch, and compare.
# make test: the test suite.
# Both create .venv and install what they need on first use (torch from TORCH_SPEC).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# PyPI's torch is a CUDA build (several GB). On a machine without a GPU, the CPU build is much smaller:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
DEMO_DIR ?= runs/demo

.PHONY: install demo demo-video demo-detect test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m maskfeat pretrain -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)/pretrain
	$(PY) -m maskfeat visualize -c configs/pretrain/demo.yaml output_dir=$(DEMO_DIR)/pretrain visualize.num_images=4
	$(PY) -m maskfeat finetune -c configs/finetune/demo.yaml output_dir=$(DEMO_DIR)/finetune \
		model.checkpoint=$(DEMO_DIR)/pretrain/encoder.safetensors
	$(PY) -m maskfeat finetune -c configs/finetune/demo.yaml output_dir=$(DEMO_DIR)/scratch
	@echo "What the demo shows: pre-training learnt to predict masked HOG from the visible patches (its loss against"
	@echo "predicting the mean HOG; the pictures in $(DEMO_DIR)/pretrain/visualize), then a fine-tune on 8 labeled crops"
	@echo "per photo (18 classes), pre-trained vs from scratch, with the noise of a 144-crop validation set:"
	$(PY) bench/compare_runs.py --pretrain $(DEMO_DIR)/pretrain $(DEMO_DIR)/finetune $(DEMO_DIR)/scratch
	@echo "Outputs in $(DEMO_DIR): pretrain/ (metrics.jsonl, checkpoint-last.pt, encoder.safetensors, visualize/*.png), finetune/, scratch/"

demo-video: install
	$(PY) -m maskfeat pretrain -c configs/pretrain/video_demo.yaml output_dir=$(DEMO_DIR)/video_pretrain
	$(PY) -m maskfeat finetune -c configs/finetune/video_demo.yaml output_dir=$(DEMO_DIR)/video_finetune \
		model.checkpoint=$(DEMO_DIR)/video_pretrain/encoder.safetensors
	$(PY) -m maskfeat finetune -c configs/finetune/video_demo.yaml output_dir=$(DEMO_DIR)/video_scratch
	@echo "What the video demo shows: the video pipeline end to end, and that pre-training learnt to predict the masked"
	@echo "HOG of the embedded clips (its loss against predicting the mean HOG). The fine-tune asks which camera motion"
	@echo "a clip shows (6 classes, chance 16.7%, 24 validation clips): 72 training clips are too few for either model"
	@echo "to learn it (8 epochs here; 40 did no better from the pre-training), and both end near chance. With more"
	@echo "clips pre-training helps: bench/video_motion.py (1,200 clips, motions) and bench/video_cifar10.py (5,000"
	@echo "clips, classes); results in BENCHMARKS.md."
	$(PY) bench/compare_runs.py --pretrain $(DEMO_DIR)/video_pretrain $(DEMO_DIR)/video_finetune $(DEMO_DIR)/video_scratch

demo-detect: install
	$(PY) -m maskfeat detect -c configs/detect/demo.yaml output_dir=$(DEMO_DIR)/detect
	@echo "What the detection demo shows: maskfeat detect end to end on a generated AVA-format set (boxes moving through"
	@echo "real photos, 6 actions): its frame mAP (the official AVA metric) against random scores on the same boxes."

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf runs .pytest_cache

# make gpu-check: every GPU figure and CUDA-path check in one run of at most ~8 minutes (bench/gpu_check.py;
# reports in runs/gpu_check/<time>/, or GPU_CHECK_ARGS="--out DIR --work /tmp/gc"). It runs on the first Python
# with a CUDA torch: the venv's, else python3's own (a bare GPU image: torch stays as it is, and only the missing
# packages are pip-installed into runs/.gpu-site, from ./.whl when that folder holds wheels, since such a machine
# may reach no registry; `make gpu-wheels` fetches them where one is reachable); else it makes the venv
# (make install, torch from TORCH_SPEC) and runs there (with no GPU at all: the tiny CPU sizes).
GPU_PY ?= python3
GPU_WHEELS ?= .whl
GPU_WHEEL_SPECS ?= omegaconf==2.4.0 av==18.1.0
GPU_CHECK_ARGS ?=
HAS_CUDA := -c "import sys, torch; sys.exit(not torch.cuda.is_available())"
.PHONY: gpu-check gpu-wheels

gpu-check:
	@if test -x $(PY) && $(PY) $(HAS_CUDA) 2>/dev/null; then \
		$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS); \
	elif $(GPU_PY) $(HAS_CUDA) 2>/dev/null; then \
		$(GPU_PY) bench/gpu_check.py --install-missing runs/.gpu-site --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS); \
	else \
		$(MAKE) --no-print-directory install && $(PY) bench/gpu_check.py $(GPU_CHECK_ARGS); \
	fi

# wheels for a GPU machine without a registry (Python 3.12, x86-64 Linux): what its image lacks
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(GPU_WHEELS) $(GPU_WHEEL_SPECS)
