# vitc — `make` builds ./vit; `make test` builds and runs the suite; `make deps` installs
# the Debian packages; `make asan` runs the fast tests under AddressSanitizer/UBSan.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -fno-trapping-math -fno-math-errno -fopenmp -Isrc -I$(BUILD)/gen -MMD -MP
BUILD   ?= build

# The matrix library: oneDNN 3 (GNU OpenMP build, the Python package index's
# onednn-devel-cpu-gomp, which `make deps` installs into .deps/) when it is there: on the
# machines measured it runs every ViT product about twice as fast as Debian's oneDNN 2.6
# and has native bf16 kernels (bench/BENCHMARKS.md). `make DNNL=system` (or no .deps/)
# builds with Debian's libdnnl-dev alone.
DNNL_PREFIX := $(CURDIR)/.deps
DNNL    ?= $(if $(wildcard $(DNNL_PREFIX)/include/oneapi/dnnl/dnnl.h),local,system)
ifeq ($(DNNL),local)
DNNL_CFLAGS := -I$(DNNL_PREFIX)/include
DNNL_LIBS   := -L$(DNNL_PREFIX)/lib -Wl,-rpath,$(DNNL_PREFIX)/lib -ldnnl
else
DNNL_LIBS   := -ldnnl
endif
CFLAGS  += $(DNNL_CFLAGS)
LDLIBS  += -lpthread $(DNNL_LIBS) -ljpeg -lpng -lzip -lz -lprotobuf-c -lm -fopenmp

# MPI (--distributed) when Debian's Open MPI is installed; `make MPI=0` builds without it.
MPI     ?= $(if $(shell pkg-config --exists mpi 2>/dev/null && echo y),1,0)
ifeq ($(MPI),1)
CFLAGS  += -DVIT_MPI $(shell pkg-config --cflags mpi)
MPI_LIBS := $(shell pkg-config --libs mpi)
LDLIBS  += $(MPI_LIBS)
endif

SRC     := $(shell find src -name '*.c' ! -name main.c | sort)
OBJ     := $(SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/example.pb-c.o $(BUILD)/gen/event.pb-c.o $(BUILD)/gen/onnx.pb-c.o
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

# CUDA backend (src/backend/cuda/*.cu) when nvcc is found; `make CUDA=0` builds with no CUDA
# dependency at all, `make CUDA=1` insists on it. Objects made with and without -DVIT_CUDA
# (or -DVIT_NCCL) differ, so a change of CUDA, NCCL or DNNL rebuilds them ($(BUILD)/cuda.flag).
CUDA    ?= auto
NVCC    ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(CUDA),auto)
override CUDA := $(if $(NVCC),1,0)
endif
ifeq ($(CUDA),1)
ifeq ($(NVCC),)
$(error CUDA=1 but nvcc was not found: put it on PATH or pass NVCC=/path/to/nvcc)
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CU_SRC  := $(shell find src -name '*.cu' | sort)
OBJ     += $(CU_SRC:%.cu=$(BUILD)/%.o)
NVCCFLAGS ?= -O3
NVCCFLAGS += -std=c++17 -Isrc -MMD -MP -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
             -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-Wextra,-Wno-unused-parameter
CFLAGS  += -DVIT_CUDA
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++
else
TESTS   := $(filter-out $(BUILD)/tests/test_cuda,$(TESTS))
endif

# NCCL (--distributed --device cuda: one process per GPU) when CUDA and MPI are both in and
# nccl.h is in $(CUDA_HOME)/include or /usr/include; `make NCCL=0` leaves it out, `make NCCL=1`
# insists on it. Only src/dist/nccl_sync.c sees the CUDA and NCCL headers.
NCCL    ?= auto
NCCL_H  := $(if $(filter 11,$(CUDA)$(MPI)),$(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h)))
ifeq ($(NCCL),auto)
override NCCL := $(if $(NCCL_H),1,0)
endif
ifeq ($(NCCL),1)
ifneq ($(CUDA)$(MPI),11)
$(error NCCL=1 needs CUDA=1 and MPI=1 (the NCCL id travels over MPI))
endif
ifeq ($(NCCL_H),)
$(error NCCL=1 but nccl.h is in neither $(CUDA_HOME)/include nor /usr/include)
endif
CFLAGS  += -DVIT_NCCL
LDLIBS  += -lnccl
$(BUILD)/src/dist/nccl_sync.o: CFLAGS += -I$(CUDA_HOME)/include $(filter-out -I/usr/include/ -I$(CUDA_HOME)/include/,-I$(dir $(NCCL_H)))
endif

# cuDNN, for the opt-in VIT_CUDA_ATTENTION=cudnn attention (docs/gpu.md), when CUDA is in and
# cudnn_graph.h is in $(CUDNN_HOME)/include (default CUDA's; a pip nvidia-cudnn wheel's folder
# works too); `make CUDNN=0` leaves it out. Only src/backend/cuda/cuda_attention_cudnn.cu sees it.
CUDNN_HOME ?= $(CUDA_HOME)
CUDNN   ?= $(if $(wildcard $(CUDNN_HOME)/include/cudnn_graph.h),1,0)
ifeq ($(CUDA)$(CUDNN),11)
CUDNN_LIB := $(patsubst %/,%,$(dir $(firstword $(wildcard $(CUDNN_HOME)/lib64/libcudnn.so.9 $(CUDNN_HOME)/lib/libcudnn.so.9))))
ifeq ($(CUDNN_LIB),)
$(error CUDNN=1 but libcudnn.so.9 is in neither $(CUDNN_HOME)/lib64 nor $(CUDNN_HOME)/lib)
endif
LDLIBS  += -L$(CUDNN_LIB) -Wl,-rpath,$(CUDNN_LIB) -l:libcudnn.so.9
$(BUILD)/src/backend/cuda/cuda_attention_cudnn.o: NVCCFLAGS += -DVIT_CUDNN -I$(CUDNN_HOME)/include
else
override CUDNN := 0
endif

CUDA_FLAG := $(BUILD)/cuda.flag
$(shell mkdir -p $(BUILD) && (echo $(CUDA) $(NCCL) $(DNNL) $(CUDNN) | cmp -s - $(CUDA_FLAG) || echo $(CUDA) $(NCCL) $(DNNL) $(CUDNN) > $(CUDA_FLAG)))

DEBIAN_PACKAGES := build-essential pkg-config libdnnl-dev zlib1g-dev libzip-dev dataset-fashion-mnist python3 python3-pip libjpeg62-turbo-dev libpng-dev libprotobuf-c-dev protobuf-c-compiler openmpi-bin libopenmpi-dev
# Only for `make fuzz` (clang with libFuzzer); kept out of `make deps`.
FUZZ_PACKAGES   := clang libclang-rt-14-dev
FUZZ_SECONDS    ?= 60
FUZZ_CC         ?= clang
FUZZ_CFLAGS     := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -g -O1 \
                   -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Isrc

.PHONY: all test deps asan clean fixtures demo fuzz fuzz-toolchain deps-fuzz
all: vit

vit: $(BUILD)/src/main.o $(BUILD)/libvit.a
	$(CC) -o $@ $^ $(LDLIBS)

$(BUILD)/libvit.a: $(OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c $(CUDA_FLAG)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu $(CUDA_FLAG)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# tf.train.Example in C, generated by protoc-c (a pattern rule, so .c and .h come from one run).
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(dir $@)
	protoc-c --c_out=$(BUILD)/gen --proto_path=proto $<

$(BUILD)/gen/example.pb-c.o: $(BUILD)/gen/example.pb-c.c
	$(CC) $(CFLAGS) -c -o $@ $<

# TensorBoard events (proto/event.proto), the same way.
$(BUILD)/gen/event.pb-c.o: $(BUILD)/gen/event.pb-c.c
	$(CC) $(CFLAGS) -c -o $@ $<

# ONNX models (proto/onnx.proto), for the exporter, the same way.
$(BUILD)/gen/onnx.pb-c.o: $(BUILD)/gen/onnx.pb-c.c
	$(CC) $(CFLAGS) -c -o $@ $<

# Objects that include the generated header need it before they compile (make -j).
$(BUILD)/src/data/example.o: $(BUILD)/gen/example.pb-c.h
$(BUILD)/src/io/events.o: $(BUILD)/gen/event.pb-c.h
$(BUILD)/src/model/onnx_export.o: $(BUILD)/gen/onnx.pb-c.h

$(BUILD)/tests/%: tests/%.c $(BUILD)/libvit.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libvit.a $(LDLIBS)

tests: $(TESTS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libvit.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libvit.a $(LDLIBS)

test: vit $(TESTS)
	@sh tests/run.sh $(BUILD) ./vit

# Same suite without the long end-to-end training, under the sanitizers.
asan:
	$(MAKE) CUDA=0 BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined" \
	    LDLIBS="$(DNNL_LIBS) -ljpeg -lpng -lzip -lz -lprotobuf-c -lm -fopenmp $(MPI_LIBS) -fsanitize=address,undefined" build-asan/vit-asan tests-asan
	@VIT_SKIP_LONG=1 ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 sh tests/run.sh build-asan build-asan/vit-asan

build-asan/vit-asan: $(BUILD)/src/main.o $(BUILD)/libvit.a
	$(CC) -o $@ $^ $(LDLIBS)

# A binary inside a build folder of its own: `make BUILD=build-x CUDA=0 build-x/vit`, then
# `sh tests/run.sh build-x build-x/vit` (side builds that leave ./vit alone).
$(BUILD)/vit: $(BUILD)/src/main.o $(BUILD)/libvit.a
	$(CC) -o $@ $^ $(LDLIBS)

tests-asan: $(TESTS)

# The Python checks of the suite (checkpoints with safetensors, shards with tfrecord, event
# files with tensorboard, ONNX exports with onnx's checker and onnxruntime) need these pip
# packages; PyTorch is never needed to build or test.
PIP_PACKAGES := numpy safetensors tfrecord tensorboard onnx onnxruntime
# oneDNN 3 built against GNU OpenMP (the runtime the rest of vit uses; one per process), into
# .deps/ so nothing system-wide changes; its headers come with it.
ONEDNN_WHEEL := onednn-devel-cpu-gomp==2023.2.0

deps:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(DEBIAN_PACKAGES)
	python3 -m pip install --quiet $(PIP_PACKAGES) || python3 -m pip install --quiet --break-system-packages $(PIP_PACKAGES)
	python3 -m pip install --quiet --ignore-installed --no-warn-script-location --prefix $(DNNL_PREFIX) $(ONEDNN_WHEEL) || \
	python3 -m pip install --quiet --ignore-installed --no-warn-script-location --break-system-packages --prefix $(DNNL_PREFIX) $(ONEDNN_WHEEL)

deps-fuzz:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(FUZZ_PACKAGES)

# libFuzzer targets for the file readers, FUZZ_SECONDS each; not part of `make test`.
# New inputs go to $(BUILD)/fuzz/corpus_*, the committed seeds in fuzz/ stay untouched.
fuzz: $(BUILD)/fuzz/fuzz_npz $(BUILD)/fuzz/fuzz_safetensors $(BUILD)/fuzz/fuzz_tfrecord
	@mkdir -p $(BUILD)/fuzz/corpus_npz $(BUILD)/fuzz/corpus_safetensors $(BUILD)/fuzz/corpus_tfrecord
	$(BUILD)/fuzz/fuzz_npz -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/npz- $(BUILD)/fuzz/corpus_npz fuzz/corpus_npz
	$(BUILD)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/safetensors- $(BUILD)/fuzz/corpus_safetensors fuzz/corpus_safetensors
	$(BUILD)/fuzz/fuzz_tfrecord -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/tfrecord- $(BUILD)/fuzz/corpus_tfrecord fuzz/corpus_tfrecord

# Fails early with a hint when clang or its libFuzzer runtime is missing.
fuzz-toolchain:
	@printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null 2>/dev/null || \
	    { echo "make fuzz needs $(FUZZ_CC) with libFuzzer: run 'make deps-fuzz' (installs $(FUZZ_PACKAGES))"; exit 1; }

$(BUILD)/fuzz/fuzz_npz: fuzz/fuzz_npz.c src/io/npz.c src/io/npz.h src/util/atomic_file.c src/util/status.c | fuzz-toolchain
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_npz.c src/io/npz.c src/util/atomic_file.c src/util/status.c -lzip -lz

$(BUILD)/fuzz/fuzz_safetensors: fuzz/fuzz_safetensors.c src/io/safetensors.c src/io/safetensors.h src/io/json.c src/util/atomic_file.c src/util/status.c | fuzz-toolchain
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_safetensors.c src/io/safetensors.c src/io/json.c src/util/atomic_file.c src/util/status.c

TFR_FUZZ_SRC := src/data/tfrecord.c src/data/example.c src/util/crc32c.c src/util/atomic_file.c src/util/status.c
$(BUILD)/fuzz/fuzz_tfrecord: fuzz/fuzz_tfrecord.c $(TFR_FUZZ_SRC) src/data/tfrecord.h src/data/example.h $(BUILD)/gen/example.pb-c.c | fuzz-toolchain
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -I$(BUILD)/gen -o $@ fuzz/fuzz_tfrecord.c $(TFR_FUZZ_SRC) $(BUILD)/gen/example.pb-c.c -lprotobuf-c

# The README's first command: a small ViT learns Fashion-MNIST (flags in tests/demo.flags).
demo: vit
	./vit train $$(cat tests/demo.flags)

fixtures:
	python3 tools/make_fixtures.py tests/fixtures
	python3 tools/make_bf16_fixture.py tests/fixtures

clean:
	rm -rf build build-asan vit

-include $(shell find $(BUILD) build-asan -name '*.d' 2>/dev/null)
