# vitc — `make` builds ./vit; `make test` builds and runs the suite; `make deps` installs
# the Debian packages; `make asan` runs the fast tests under AddressSanitizer/UBSan.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -fno-trapping-math -fno-math-errno -fopenmp -Isrc -MMD -MP
LDLIBS  += -ldnnl -lz -lm -fopenmp
BUILD   ?= build

SRC     := $(shell find src -name '*.c' ! -name main.c | sort)
OBJ     := $(SRC:%.c=$(BUILD)/%.o)
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

DEBIAN_PACKAGES := build-essential libdnnl-dev zlib1g-dev dataset-fashion-mnist python3

.PHONY: all test deps asan clean fixtures demo
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
	    LDLIBS="-ldnnl -lz -lm -fopenmp -fsanitize=address,undefined" build-asan/vit-asan tests-asan
	@VIT_SKIP_LONG=1 ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 sh tests/run.sh build-asan build-asan/vit-asan

build-asan/vit-asan: $(BUILD)/src/main.o $(BUILD)/libvit.a
	$(CC) -o $@ $^ $(LDLIBS)

tests-asan: $(TESTS)

deps:
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(DEBIAN_PACKAGES)

# The README's first command: a small ViT learns Fashion-MNIST (flags in tests/demo.flags).
demo: vit
	./vit train $$(cat tests/demo.flags)

fixtures:
	python3 tools/make_fixtures.py tests/fixtures

clean:
	rm -rf build build-asan vit

-include $(shell find $(BUILD) build-asan -name '*.d' 2>/dev/null)
