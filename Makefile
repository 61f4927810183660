# vitc — `make` builds ./vit; `make test` builds and runs the suite; `make deps` installs
# the Debian packages; `make asan` runs the fast tests under AddressSanitizer/UBSan.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -fno-trapping-math -fno-math-errno -fopenmp -Isrc -MMD -MP
LDLIBS  += -ldnnl -ljpeg -lpng -lzip -lz -lm -fopenmp
BUILD   ?= build

SRC     := $(shell find src -name '*.c' ! -name main.c | sort)
OBJ     := $(SRC:%.c=$(BUILD)/%.o)
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

DEBIAN_PACKAGES := build-essential libdnnl-dev zlib1g-dev libzip-dev dataset-fashion-mnist python3 python3-pip libjpeg62-turbo-dev libpng-dev
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

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

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
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined" \
	    LDLIBS="-ldnnl -ljpeg -lpng -lzip -lz -lm -fopenmp -fsanitize=address,undefined" build-asan/vit-asan tests-asan
	@VIT_SKIP_LONG=1 ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 sh tests/run.sh build-asan build-asan/vit-asan

build-asan/vit-asan: $(BUILD)/src/main.o $(BUILD)/libvit.a
	$(CC) -o $@ $^ $(LDLIBS)

tests-asan: $(TESTS)

# The Python checks of the suite (reading checkpoints with the safetensors package) need
# two small pip packages; PyTorch is never needed to build or test.
PIP_PACKAGES := numpy safetensors

deps:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(DEBIAN_PACKAGES)
	python3 -m pip install --quiet $(PIP_PACKAGES) || python3 -m pip install --quiet --break-system-packages $(PIP_PACKAGES)

deps-fuzz:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(FUZZ_PACKAGES)

# libFuzzer targets for the file readers, FUZZ_SECONDS each; not part of `make test`.
# New inputs go to $(BUILD)/fuzz/corpus_*, the committed seeds in fuzz/ stay untouched.
fuzz: $(BUILD)/fuzz/fuzz_npz $(BUILD)/fuzz/fuzz_safetensors
	@mkdir -p $(BUILD)/fuzz/corpus_npz $(BUILD)/fuzz/corpus_safetensors
	$(BUILD)/fuzz/fuzz_npz -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/npz- $(BUILD)/fuzz/corpus_npz fuzz/corpus_npz
	$(BUILD)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/safetensors- $(BUILD)/fuzz/corpus_safetensors fuzz/corpus_safetensors

# Fails early with a hint when clang or its libFuzzer runtime is missing.
fuzz-toolchain:
	@printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null 2>/dev/null || \
	    { echo "make fuzz needs $(FUZZ_CC) with libFuzzer: run 'make deps-fuzz' (installs $(FUZZ_PACKAGES))"; exit 1; }

$(BUILD)/fuzz/fuzz_npz: fuzz/fuzz_npz.c src/io/npz.c src/io/npz.h src/util/status.c | fuzz-toolchain
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_npz.c src/io/npz.c src/util/status.c -lzip -lz

$(BUILD)/fuzz/fuzz_safetensors: fuzz/fuzz_safetensors.c src/io/safetensors.c src/io/safetensors.h src/io/json.c src/util/status.c | fuzz-toolchain
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_safetensors.c src/io/safetensors.c src/io/json.c src/util/status.c

# The README's first command: a small ViT learns Fashion-MNIST (flags in tests/demo.flags).
demo: vit
	./vit train $$(cat tests/demo.flags)

fixtures:
	python3 tools/make_fixtures.py tests/fixtures

clean:
	rm -rf build build-asan vit

-include $(shell find $(BUILD) build-asan -name '*.d' 2>/dev/null)
