# kscore: top-level Makefile. `make help` lists the targets.
#   make                      build the four services (-Werror)
#   make SANITIZER=address,undefined   the same tree, sanitized, in its own folder
#   make V=1                  show the commands

SHELL := /bin/bash
CC ?= gcc
V ?= 0
SANITIZER ?=
OPT ?= -O2
comma := ,

ifeq ($(SANITIZER),)
BUILD := build/default
SAN_FLAGS :=
else
BUILD := build/san-$(subst $(comma),-,$(SANITIZER))
SAN_FLAGS := -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
OPT := -O1
endif

PKGS := libnats libprotobuf-c libmicrohttpd jansson sqlite3 libcurl libcrypt libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-unused-parameter -Wstrict-prototypes
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) $(SAN_FLAGS) -MMD -MP \
              -Ilib -I$(BUILD)/gen $(PKG_CFLAGS) $(CFLAGS)
LDFLAGS_ALL := $(SAN_FLAGS) $(LDFLAGS)
LIBS_ALL := $(PKG_LIBS) -lpthread -lm

ifeq ($(V),0)
Q := @
say = @printf '  %-6s %s\n' $(1) $(2);
else
Q :=
say :=
endif

PROTOS := $(wildcard proto/kscore/v1/*.proto)
GEN_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
GEN_H := $(GEN_C:.c=.h)

LIB_SRC := $(wildcard lib/*.c)
LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC)) $(GEN_C:.c=.o)
LIBKS := $(BUILD)/libkscore.a

SERVICES := apigw iam audit reconciler
SERVICE_BINS := $(foreach s,$(SERVICES),$(BUILD)/bin/kscore-$(s))
# tools/<name>/*.c -> $(BUILD)/bin/kscore-<name> (command-line programs)
TOOLS := $(notdir $(wildcard tools/*))
TOOL_BINS := $(foreach t,$(TOOLS),$(BUILD)/bin/kscore-$(t))

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst %.c,$(BUILD)/%,$(UNIT_SRC))
ITEST_SRC := $(wildcard tests/integration/test_*.c)
ITEST_BINS := $(patsubst %.c,$(BUILD)/%,$(ITEST_SRC))
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all help deps run up down test unit integration bench valgrind clean \
        compose-up compose-down compose-test
.DEFAULT_GOAL := all
# keep every intermediate (generated code, test objects)
.SECONDARY:

all: $(SERVICE_BINS) $(TOOL_BINS)

help:
	@echo "make deps        install system packages and build etcd, kube-apiserver, kubectl, nats CLI into .deps/"
	@echo "make             build the four services into $(BUILD)/bin"
	@echo "make run         local control plane + all services in the foreground (Ctrl-C stops)"
	@echo "make up / down   the same in the background / stop it"
	@echo "make test        unit and integration tests against real servers"
	@echo "make unit        unit tests only (no servers)"
	@echo "make bench       benchmarks -> bench/REPORT.md"
	@echo "make fuzz        libFuzzer targets for FUZZ_SECONDS (default 60; scripts/fuzz.sh)"
	@echo "make valgrind    integration tests under valgrind"
	@echo "make compose-up  the docker-compose stack (deploy/compose/), built and healthy"
	@echo "make compose-down  stop it (data stays in its volumes)"
	@echo "make compose-test  end-to-end suite against a throwaway compose stack"
	@echo "SANITIZER=address,undefined  build or test a sanitized tree"

deps:
	$(Q)scripts/deps.sh

# ---- generated protobuf-c code (never committed) ----
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	$(call say,PROTO,$<)
	$(Q)mkdir -p $(BUILD)/gen
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

# ---- objects ----
$(BUILD)/%.o: %.c | $(GEN_H)
	$(call say,CC,$<)
	$(Q)mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c $(GEN_H)
	$(call say,CC,$<)
	$(Q)$(CC) $(filter-out -Werror -Wshadow,$(CFLAGS_ALL)) -c -o $@ $<

$(LIBKS): $(LIB_OBJ)
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

# ---- services: services/<name>/*.c (+ subfolders) linked with libkscore ----
define service_rule
$(1)_SRC := $$(shell find services/$(1) -name '*.c' 2>/dev/null)
$(1)_OBJ := $$(patsubst %.c,$(BUILD)/%.o,$$($(1)_SRC))
$(BUILD)/bin/kscore-$(1): $$($(1)_OBJ) $(LIBKS)
	$$(call say,LINK,$$@)
	$(Q)mkdir -p $$(dir $$@)
	$(Q)$$(CC) $(LDFLAGS_ALL) -o $$@ $$($(1)_OBJ) $(LIBKS) $(LIBS_ALL)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

define tool_rule
tool_$(1)_SRC := $$(shell find tools/$(1) -name '*.c' 2>/dev/null)
tool_$(1)_OBJ := $$(patsubst %.c,$(BUILD)/%.o,$$(tool_$(1)_SRC))
$(BUILD)/bin/kscore-$(1): $$(tool_$(1)_OBJ) $(LIBKS)
	$$(call say,LINK,$$@)
	$(Q)mkdir -p $$(dir $$@)
	$(Q)$$(CC) $(LDFLAGS_ALL) -o $$@ $$(tool_$(1)_OBJ) $(LIBKS) $(LIBS_ALL)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))

# ---- tests and benchmarks: one file, one binary ----
# unit and integration binaries live apart: build/<variant>/tests/{unit,integration}/test_x
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIBKS)
	$(call say,LINK,$@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBKS) $(LIBS_ALL) -lcmocka
$(BENCH_BINS): $(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIBKS)
	$(call say,LINK,$@)
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBKS) $(LIBS_ALL)

tests-build: $(UNIT_BINS) $(ITEST_BINS)
.PHONY: tests-build

unit: $(UNIT_BINS)
	$(Q)BUILD=$(BUILD) scripts/test.sh unit

integration: all $(ITEST_BINS)
	$(Q)BUILD=$(BUILD) scripts/test.sh integration

test: all $(UNIT_BINS) $(ITEST_BINS)
	$(Q)BUILD=$(BUILD) scripts/test.sh all

valgrind: all $(ITEST_BINS)
	$(Q)BUILD=$(BUILD) TEST_PREFIX="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --quiet" scripts/test.sh integration

bench: all $(BENCH_BINS)
	$(Q)BUILD=$(BUILD) scripts/bench.sh

run: all
	$(Q)BUILD=$(BUILD) scripts/run.sh foreground

up: all
	$(Q)BUILD=$(BUILD) scripts/run.sh background

down:
	$(Q)scripts/run.sh stop

# ---- the docker-compose stack (deploy/compose/, scripts/compose.sh) ----
compose-up:
	$(Q)scripts/compose.sh up

compose-down:
	$(Q)scripts/compose.sh down

compose-test:
	$(Q)scripts/compose.sh test

FUZZ_SECONDS ?= 60
fuzz:
	$(Q)scripts/fuzz.sh $(FUZZ_SECONDS)
.PHONY: fuzz

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
