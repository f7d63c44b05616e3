#!/usr/bin/env bash
# bench/offline.sh: mountd fsck and export against cat and cp -a of the
# same data directory, in one run (issue 19's speed target: fsck and
# export at >= 0.8 of cat / cp -a). Run as root from anywhere:
#
#   bench/offline.sh [--files N] [--size MiB] [--rounds R] [--cold] [--dir DIR]
#
# It builds mountd, makes a data directory with N encrypted files of MiB
# each (written through a mount of a daemon), then times, round by round
# and interleaved: cat of every file to /dev/null vs mountd fsck, and
# cp -a of the data directory vs mountd export (sync before each, not
# timed). --cold drops the page cache before every timed command. Prints
# the median seconds and the ratios (baseline time / mountd time: 1.0 =
# as fast as the baseline).
set -euo pipefail
export LC_ALL=C

files=4 size=512 rounds=5 cold=0
base="${BENCH_DIR:-/var/tmp/mountd-bench}"
while (($#)); do
	case "$1" in
	--files) files=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--cold) cold=1; shift ;;
	--dir) base=$2; shift 2 ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
[[ $(id -u) == 0 ]] || { echo "run as root (FUSE mount, drop_caches)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$base"
work=$(mktemp -d "$base/offline.XXXXXX")
bin=$work/mountd
pid=""
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	mountpoint -q "$work/mnt" && umount -l "$work/mnt" || true
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$repo" && go build -o "$bin" ./cmd/mountd)
data=$work/data
pw=$work/pw
printf 'bench password\n' >"$pw"
chmod 600 "$pw"
"$bin" init --data "$data" --password-file "$pw" --no-recovery-key --kdf-time 2 --kdf-memory 19 --kdf-threads 1 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --data "$data" --mount "$work/mnt" --listen "127.0.0.1:$port" --log-level warn &
pid=$!
for _ in $(seq 100); do
	curl -sf "http://127.0.0.1:$port/api/system/encryption-status" >/dev/null && break
	sleep 0.1
done
"$bin" login --addr "127.0.0.1:$port" --password-file "$pw" >/dev/null
echo "writing $files x $size MiB through the mount..." >&2
for i in $(seq "$files"); do
	dd if=/dev/urandom of="$work/mnt/big-$i.bin" bs=1M count="$size" status=none
done
kill "$pid"
wait "$pid" || true
pid=""

drop() { sync; if ((cold)); then echo 3 >/proc/sys/vm/drop_caches; fi; }
# t CMD...: seconds the command takes.
t() {
	local s e
	s=$(date +%s.%N)
	"$@" >"$work/out" 2>&1 || { echo "failed: $*" >&2; cat "$work/out" >&2; exit 1; }
	e=$(date +%s.%N)
	echo "$e - $s" | bc -l
}
declare -a Tcat Tfsck Tcp Texp
for r in $(seq "$rounds"); do
	drop
	Tcat+=("$(t sh -c "cat '$data'/*.bin > /dev/null")")
	drop
	Tfsck+=("$(t "$bin" fsck --data "$data" --password-file "$pw")")
	rm -rf "$work/cp" "$work/exp"
	drop
	Tcp+=("$(t cp -a "$data" "$work/cp")")
	rm -rf "$work/cp"
	drop
	Texp+=("$(t "$bin" export --data "$data" --out "$work/exp" --password-file "$pw")")
	rm -rf "$work/exp"
	echo "round $r: cat ${Tcat[-1]} fsck ${Tfsck[-1]} cp ${Tcp[-1]} export ${Texp[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${Tcat[@]}") mf=$(median "${Tfsck[@]}") mp=$(median "${Tcp[@]}") me=$(median "${Texp[@]}")
mib=$((files * size))
mode=warm
((cold)) && mode=cold
echo "| $files x $size MiB, $mode cache, median of $rounds | seconds | MiB/s | baseline / mountd |"
echo "|---|---|---|---|"
printf '| cat | %.3f | %.0f | |\n' "$mc" "$(echo "$mib / $mc" | bc -l)"
printf '| mountd fsck | %.3f | %.0f | %.2f |\n' "$mf" "$(echo "$mib / $mf" | bc -l)" "$(echo "$mc / $mf" | bc -l)"
printf '| cp -a | %.3f | %.0f | |\n' "$mp" "$(echo "$mib / $mp" | bc -l)"
printf '| mountd export | %.3f | %.0f | %.2f |\n' "$me" "$(echo "$mib / $me" | bc -l)" "$(echo "$mp / $me" | bc -l)"
