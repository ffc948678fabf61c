# imgdedup - build, test, install.
#   make            build/imgdedup, build/libimgdedup.a, build/nbdkit-imgdedup-plugin.so
#   make check      unit + end-to-end tests, normal build and ASan+UBSan build, fuzz smoke
#   make bench      benchmarks (docs/performance.md)
#   make install    PREFIX=/usr/local DESTDIR= (binary, static library, header,
#                   man page, pkg-config file libimgdedup.pc; the nbdkit plugin
#                   into nbdkit's plugin directory)
#   make install-check  install into a staging DESTDIR and build programs against it
#   make deps       install the Debian packages everything needs

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
SAN     ?= 0
PKG_CONFIG ?= pkg-config

PKGS := libcrypto libzstd libarchive libcurl zlib
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
NBDKIT_CFLAGS := $(shell $(PKG_CONFIG) --cflags nbdkit 2>/dev/null)
# where `make install` puts the nbdkit plugin, and where `imgdedup serve`
# looks for it when it is not next to the binary
NBDKIT_PLUGINDIR ?= $(shell $(PKG_CONFIG) --variable=plugindir nbdkit 2>/dev/null)
ifeq ($(NBDKIT_PLUGINDIR),)
NBDKIT_PLUGINDIR := $(PREFIX)/lib/nbdkit/plugins
endif
CMOCKA_CFLAGS := $(shell $(PKG_CONFIG) --cflags cmocka 2>/dev/null)
CMOCKA_LIBS   := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)

OPT ?= -O2
CFLAGS ?= $(OPT) -g
WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) -pthread -Ilib $(PKG_CFLAGS) $(CFLAGS)
# The nbdkit plugin runs inside nbdkit, which is not built with the
# sanitizers: it is built without them (with the ASan runtime preloaded into
# nbdkit, glibc's locale lock ends up corrupted and nbdkit hangs at exit in
# p11-kit's destructor).  The library code it runs is covered under the
# sanitizers by the unit tests and the other end-to-end tests.
PIC_CFLAGS := $(ALL_CFLAGS)
ifeq ($(SAN),1)
ALL_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDSAN := -fsanitize=address,undefined
endif
LDLIBS := $(PKG_LIBS) -pthread -lm
SERVE_DEFS := -DIDD_NBDKIT_PLUGINDIR='"$(NBDKIT_PLUGINDIR)"'

LIB_SRC  := $(sort $(wildcard lib/*/*.c))
CMD_SRC  := $(sort $(wildcard cmd/*.c))
TEST_SRC := $(sort $(wildcard tests/unit/*/test_*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CMD_OBJ  := $(CMD_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_HELPER_OBJ := $(BUILD)/tests/unit/testutil.o
# the nbdkit plugin: the library again, position-independent, in a .so
PLUGIN   := $(BUILD)/nbdkit-imgdedup-plugin.so
PIC_OBJ  := $(LIB_SRC:%.c=$(BUILD)/pic/%.o) $(BUILD)/pic/plugins/nbdkit/imgdedup.o

.SECONDARY:
.PHONY: all check check-build check-one unit e2e fuzz-smoke fuzz bench install install-check uninstall clean deps demo FORCE
all: $(BUILD)/imgdedup $(PLUGIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/cmd/serve.o: ALL_CFLAGS += $(SERVE_DEFS)

# Only plugin_init is exported from the plugin (NBDKIT_REGISTER_PLUGIN).
$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(PIC_CFLAGS) $(NBDKIT_CFLAGS) -fPIC -fvisibility=hidden -MMD -MP -c $< -o $@

$(PLUGIN): $(PIC_OBJ)
	$(CC) $(PIC_CFLAGS) -shared -o $@ $(PIC_OBJ) $(LDLIBS)

$(BUILD)/libimgdedup.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/imgdedup: $(CMD_OBJ) $(BUILD)/libimgdedup.a
	$(CC) $(ALL_CFLAGS) $(LDSAN) -o $@ $(CMD_OBJ) $(BUILD)/libimgdedup.a $(LDLIBS)

$(BUILD)/tests/unit/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CMOCKA_CFLAGS) -Itests/unit -MMD -MP -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TEST_HELPER_OBJ) $(BUILD)/libimgdedup.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDSAN) -o $@ $< $(TEST_HELPER_OBJ) $(BUILD)/libimgdedup.a $(CMOCKA_LIBS) $(LDLIBS)

check-build: $(BUILD)/imgdedup $(PLUGIN) $(TESTS)

# RESULTS: a file each runner appends its own counts to ("KIND PASSED
# FAILED"); make check sums them for its last line.
RESULTS ?=
unit: check-build
	@scripts/run-unit.sh $(or $(RESULTS),-) $(TESTS)

e2e: $(BUILD)/imgdedup $(PLUGIN)
	IMGDEDUP=$(abspath $(BUILD)/imgdedup) RESULTS=$(RESULTS) E2E_SANITIZED=$(SAN) tests/e2e/run-all.sh

check-one: unit e2e

# The whole suite twice: a normal build, then AddressSanitizer + UBSan;
# a warning-free clang build of everything, an installed copy, each fuzzer
# once.  Every runner appends what it counted to CHECK_RESULTS (cmocka's
# test counts, e2e scripts, fuzzers, the install check); the last line sums
# those, so a suite that did not run is not counted as passed.
CHECK_RESULTS := $(abspath build/check-results)
check:
	@scripts/install-deps
	@mkdir -p build && rm -f $(CHECK_RESULTS)
	@scripts/check-layers.sh >/dev/null
	$(MAKE) RESULTS=$(CHECK_RESULTS) check-one
	$(MAKE) RESULTS=$(CHECK_RESULTS) BUILD=build/asan SAN=1 OPT=-O1 check-one
	$(MAKE) CC=clang BUILD=build/clang check-build
	$(MAKE) install-check
	@echo "install-check 1 0" >> $(CHECK_RESULTS)
	$(MAKE) RESULTS=$(CHECK_RESULTS) fuzz-smoke
	@scripts/check-summary.sh $(CHECK_RESULTS)

fuzz-smoke fuzz:
	@FUZZ_MODE=$@ RESULTS=$(RESULTS) scripts/fuzz.sh

bench: $(BUILD)/imgdedup $(PLUGIN)
	IMGDEDUP=$(abspath $(BUILD)/imgdedup) bench/run-all.sh

# The README's first command: install what is missing, build, run the demo.
demo:
	@scripts/install-deps
	$(MAKE) all
	IMGDEDUP=$(abspath $(BUILD)/imgdedup) scripts/demo.sh

deps:
	scripts/install-deps

# The pkg-config file names PREFIX (where the files will live), never DESTDIR
# (where they are staged).  Regenerated whenever PREFIX changes.
VERSION := $(shell sed -n 's/^\#define IDD_VERSION "\(.*\)"/\1/p' lib/imgdedup.h)
$(BUILD)/libimgdedup.pc: libimgdedup.pc.in lib/imgdedup.h FORCE
	@mkdir -p $(dir $@)
	@sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
FORCE:

install: $(BUILD)/imgdedup $(BUILD)/libimgdedup.a $(BUILD)/libimgdedup.pc $(PLUGIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	           $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	           $(DESTDIR)$(NBDKIT_PLUGINDIR)
	install -m 755 $(PLUGIN) $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-imgdedup-plugin.so
	install -m 755 $(BUILD)/imgdedup $(DESTDIR)$(PREFIX)/bin/imgdedup
	install -m 644 $(BUILD)/libimgdedup.a $(DESTDIR)$(PREFIX)/lib/libimgdedup.a
	install -m 644 lib/imgdedup.h $(DESTDIR)$(PREFIX)/include/imgdedup.h
	install -m 644 imgdedup.1 $(DESTDIR)$(PREFIX)/share/man/man1/imgdedup.1
	install -m 644 $(BUILD)/libimgdedup.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/libimgdedup.pc

# Install into a staging directory and build programs against it with
# nothing but pkg-config (tests/install/check.sh).
INSTALL_CHECK_DIR := $(abspath $(BUILD)/install-check)
install-check: $(BUILD)/imgdedup $(BUILD)/libimgdedup.a
	@rm -rf $(INSTALL_CHECK_DIR)
	$(MAKE) --no-print-directory install DESTDIR=$(INSTALL_CHECK_DIR) PREFIX=/opt/imgdedup
	CC="$(CC)" PKG_CONFIG="$(PKG_CONFIG)" tests/install/check.sh $(INSTALL_CHECK_DIR) /opt/imgdedup
	@rm -rf $(INSTALL_CHECK_DIR)

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/imgdedup $(DESTDIR)$(PREFIX)/lib/libimgdedup.a \
	      $(DESTDIR)$(PREFIX)/include/imgdedup.h $(DESTDIR)$(PREFIX)/share/man/man1/imgdedup.1 \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/libimgdedup.pc \
	      $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-imgdedup-plugin.so

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
