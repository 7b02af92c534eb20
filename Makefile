# `make demo`: build .venv and train the tiny text GRPO recipe on CPU (config overrides in ARGS, e.g.
#   make demo ARGS="overwrite_output_dir=true" to train it again from scratch).
# `make test`: build/update .venv and run the test suite on two worker processes (one thread each: tests/conftest.py).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are pinned as a pair: the torch 2.13 CPU wheel breaks torchvision,
# which open_clip, qwen-vl-utils and the fast image processors import.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		scripts/train_text.py --config configs/tiny_text_grpo.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -rs --durations=15 -n 2 --dist worksteal tests

clean:
	rm -rf $(VENV) runs
