# flash-moe build. `make` builds build/flash-moe and build/libflashmoe.a; `make test` builds
# and runs every test (tests/run.sh). SANITIZE=address,undefined builds into build-san/.
# Sources are found by wildcard: adding a file under src/, tools/ or tests/ needs no edit here.
#   src/**/*.c            -> libflashmoe.a  (files ending _avx2/_avx512 get ISA flags, _neon
#                            only on aarch64, src/backend/cuda/ only with CUDA=1)
#   tools/*.c             -> flash-moe
#   tests/test_*.c        -> build/tests/test_*  (each linked with the library)
CC      ?= cc
ARCH    ?= $(shell $(CC) -dumpmachine | cut -d- -f1)
SANITIZE ?=
OPT     ?= -O2
BUILD   ?= $(if $(SANITIZE),build-san,build)$(if $(filter aarch64,$(ARCH)),-arm64,)

CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Wno-unused-parameter \
           -Wshadow -Wno-sign-compare -fno-strict-aliasing -pthread -Iinclude -Isrc -MMD -MP
LDLIBS  += -lpcre2-8 -lutf8proc -lmicrohttpd -lcjson -ledit -lm -lpthread
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=$(SANITIZE)
endif

ALL_SRC := $(shell find src -name '*.c' -not -path 'src/backend/cuda/*' | sort)
ifeq ($(ARCH),aarch64)
LIB_SRC := $(filter-out %_avx2.c %_avx512.c,$(ALL_SRC))
else
LIB_SRC := $(filter-out %_neon.c,$(ALL_SRC))
endif
TOOL_SRC := $(sort $(wildcard tools/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
LIB      := $(BUILD)/libflashmoe.a
BIN      := $(BUILD)/flash-moe

AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx512vnni -mfma -mf16c
# SIMD kernel files get a fixed code layout: where the linker happened to place the AVX2
# 4-bit kernel decided its DRAM rate by 10% on the Zen 3 VM (2 threads: 22.7 vs 25.2 GB/s
# Q4 g64 matvec, with the same rate from the cache), so functions and loops start on 64
# bytes, whatever else is linked.
KERN_ALIGN   := -falign-functions=64 -falign-loops=64

.PHONY: all test test-tsan clean tests
.SECONDARY:
all: $(BIN) $(LIB) $(TESTS)

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KERN_ALIGN) $(AVX2_FLAGS) -c $< -o $@
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KERN_ALIGN) $(AVX512_FLAGS) -c $< -o $@
$(BUILD)/%_neon.o: %_neon.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KERN_ALIGN) -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(TOOL_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

tests: $(TESTS) $(BIN)

test: tests
	FM_BUILD=$(BUILD) tests/run.sh

# ThreadSanitizer run of the threaded tests (tests named test_*thread* or listed in tests/tsan.list)
test-tsan:
	$(MAKE) SANITIZE=thread BUILD=build-tsan tests
	FM_BUILD=build-tsan FM_TSAN=1 tests/run.sh

clean:
	rm -rf build build-san build-tsan build-arm64 build-san-arm64

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TESTS:=.d)
