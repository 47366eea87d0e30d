#!/usr/bin/env bash
# Compiles the BPF programs: bpf/*.bpf.c and the examples (bpf/examples/) into bpf/obj/, the
# objects that `cargo build` embeds or the README runs; the programs of `bpfstream run`'s tests
# (bpf/tests/) into bpf/obj/tests/. A program on bpfstream.h is compiled twice (ring and perf
# transport). Needs clang and llvm-strip (Debian: clang llvm); Rust builds do not.
#   bpf/build.sh                      regenerate the objects
#   bpf/build.sh --check              fail if a committed object differs from a fresh build (CI)
#   bpf/build.sh --out DIR SOURCE...  build only these sources into DIR
# The output is reproducible: relative paths only, DWARF stripped (BTF kept for CO-RE).
set -euo pipefail
here=$PWD
cd "$(dirname "$0")"
bpf=$PWD
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}

build() { # source, output directory, variant, extra flags...
	local src=$1 dir=$2 variant=$3
	shift 3
	local obj
	obj="$dir/$(basename "${src%.bpf.c}")${variant:+.$variant}.bpf.o"
	"$CLANG" -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Iinclude -I. \
		-Wall -Werror -fdebug-prefix-map="$PWD"=. "$@" -c "$src" -o "$obj"
	"$STRIP" -g "$obj"
}

# A program on bpfstream.h (or on a header of ours that includes it) twice, one per transport
# (NAME.ring.bpf.o, NAME.perf.bpf.o); any other once (NAME.bpf.o), as its author wrote it.
program() { # source, output directory
	if grep -q '#include "bpfstream' "$1"; then
		build "$1" "$2" ring
		build "$1" "$2" perf -DBPFSTREAM_PERF
	else
		build "$1" "$2" ""
	fi
}

if [ "${1:-}" = "--out" ]; then
	[ $# -ge 3 ] || { echo "usage: $0 --out DIR SOURCE..." >&2; exit 2; }
	dir=$(cd "$here" && mkdir -p "$2" && cd "$2" && pwd)
	shift 2
	for src in "$@"; do
		program "$(cd "$here" && realpath --relative-to="$bpf" "$src")" "$dir"
	done
	exit 0
fi

check=0
[ "${1:-}" = "--check" ] && check=1

out=obj
[ $check = 1 ] && out=$(mktemp -d) && trap 'rm -rf "$out"' EXIT
mkdir -p "$out/tests"

for src in *.bpf.c examples/*.bpf.c; do
	program "$src" "$out"
done
for src in tests/*.bpf.c; do
	program "$src" "$out/tests"
done

if [ $check = 1 ]; then
	stale=0
	for obj in "$out"/*.o "$out"/tests/*.o; do
		name=${obj#"$out"/}
		if ! cmp -s "$obj" "obj/$name"; then
			echo "stale BPF object: bpf/obj/$name differs from a fresh build (run bpf/build.sh and commit)" >&2
			stale=1
		fi
	done
	for obj in obj/*.o obj/tests/*.o; do
		[ -e "$out/${obj#obj/}" ] || { echo "bpf/$obj has no source any more" >&2; stale=1; }
	done
	exit $stale
fi
