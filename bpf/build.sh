#!/usr/bin/env bash
# Compiles every bpf/*.bpf.c twice (ring and perf transport) into bpf/obj/, the objects that
# `cargo build` embeds. Needs clang and llvm-strip (Debian: clang llvm); Rust builds do not.
#   bpf/build.sh           regenerate the objects
#   bpf/build.sh --check   fail if a committed object differs from a fresh build (CI)
# The output is reproducible: relative paths only, DWARF stripped (BTF kept for CO-RE).
set -euo pipefail
cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
check=0
[ "${1:-}" = "--check" ] && check=1

out=obj
[ $check = 1 ] && out=$(mktemp -d) && trap 'rm -rf "$out"' EXIT
mkdir -p "$out"

build() { # source, variant, extra flags...
	local src=$1 variant=$2
	shift 2
	local obj="$out/${src%.bpf.c}.$variant.bpf.o"
	"$CLANG" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Iinclude -I. \
		-Wall -Werror -fdebug-prefix-map="$PWD"=. "$@" -c "$src" -o "$obj"
	"$STRIP" -g "$obj"
}

for src in *.bpf.c; do
	build "$src" ring
	build "$src" perf -DBPFSTREAM_PERF
done

if [ $check = 1 ]; then
	stale=0
	for obj in "$out"/*.o; do
		name=$(basename "$obj")
		if ! cmp -s "$obj" "obj/$name"; then
			echo "stale BPF object: bpf/obj/$name differs from a fresh build (run bpf/build.sh and commit)" >&2
			stale=1
		fi
	done
	for obj in obj/*.o; do
		[ -e "$out/$(basename "$obj")" ] || { echo "bpf/$obj has no source any more" >&2; stale=1; }
	done
	exit $stale
fi
