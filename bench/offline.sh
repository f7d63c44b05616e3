#!/usr/bin/env bash
# bench/offline.sh: mountd fsck and export against cat and cp -a of the
# same data directory, in one run (issue 19's speed target: fsck and
# export at >= 0.8 of cat / cp -a). Run as root from anywhere:
#
#   bench/offline.sh [--files N] [--size MiB] [--rounds R] [--cold] [--dir DIR]
#                    [--read-mbps N] [--bin [LABEL=]PATH]...
#
# It builds mountd (or takes each --bin: a prebuilt binary, e.g. main's and
# a branch's, compared in the same run), makes a data directory with N
# encrypted files of MiB each (written through a mount of a daemon), then
# times, round by round and interleaved: cat of every file to /dev/null vs
# mountd fsck, and cp -a of the data directory vs mountd export (sync
# before each, not timed). --cold drops the page cache before every timed
# command. --read-mbps runs every timed command in a blkio cgroup (v1)
# that throttles its reads from the disk to N MB/s, a slower disk than
# this VM's (use with --cold). It also times fsck of a data directory holding only the
# verifier ("unlock": process start and the password's KDF, a fixed cost
# in every fsck and export). Prints, per command, the median seconds, the
# median CPU seconds (user + system; what the load of a shared machine
# disturbs least), the ratios (baseline time / mountd time: 1.0 = as fast
# as the baseline; "net" leaves the unlock out) and the load average.
set -euo pipefail
export LC_ALL=C

files=4 size=512 rounds=5 cold=0 mbps=0
base="${BENCH_DIR:-/var/tmp/mountd-bench}"
labels=() bins=()
while (($#)); do
	case "$1" in
	--files) files=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--cold) cold=1; shift ;;
	--read-mbps) mbps=$2; shift 2 ;;
	--dir) base=$2; shift 2 ;;
	--bin)
		if [[ $2 == *=* ]]; then labels+=("${2%%=*}"); bins+=("$(realpath "${2#*=}")")
		else labels+=("mountd$((${#bins[@]} + 1))"); bins+=("$(realpath "$2")"); fi
		shift 2 ;;
	-h | --help) sed -n '2,23p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
[[ $(id -u) == 0 ]] || { echo "run as root (FUSE mount, drop_caches)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$base"
work=$(mktemp -d "$base/offline.XXXXXX")
pid="" cg=""
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	mountpoint -q "$work/mnt" && umount -l "$work/mnt" || true
	rm -rf "$work"
	[[ -n $cg ]] && rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
if ((mbps)); then
	[[ -d /sys/fs/cgroup/blkio ]] || { echo "--read-mbps needs the cgroup v1 blkio controller" >&2; exit 2; }
	dev=$(findmnt -no MAJ:MIN -T "$work" | tr -d ' ')
	[[ -e /sys/dev/block/$dev/partition ]] && dev=$(cat "/sys/dev/block/$dev/../dev")
	cg=/sys/fs/cgroup/blkio/mountd-offline-bench.$$
	mkdir "$cg"
	echo "$dev $((mbps * 1000000))" >"$cg/blkio.throttle.read_bps_device"
fi

if ((${#bins[@]} == 0)); then
	(cd "$repo" && go build -o "$work/mountd" ./cmd/mountd)
	labels=(mountd) bins=("$work/mountd")
fi
bin=${bins[0]} # makes the data directory
data=$work/data
pw=$work/pw
printf 'bench password\n' >"$pw"
chmod 600 "$pw"
"$bin" init --data "$data" --password-file "$pw" --no-recovery-key --kdf-time 2 --kdf-memory 19 --kdf-threads 1 2>/dev/null
mkdir -p "$work/empty"
cp -a "$data/auth" "$work/empty/"

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
# t NAME CMD...: runs the command, appends its seconds and CPU seconds to
# the lists of NAME.
declare -A T C
t() {
	local name=$1 TIMEFORMAT='%R %U %S' r u s
	shift
	if [[ -n $cg ]]; then set -- sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"; fi
	{ time "$@" >"$work/out" 2>&1; } 2>"$work/time" || { echo "failed: $*" >&2; cat "$work/out" >&2; exit 1; }
	read -r r u s <"$work/time"
	T[$name]+="$r " C[$name]+="$(echo "$u + $s" | bc -l) "
}
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$rounds"); do
	drop
	t cat sh -c "cat '$data'/*.bin > /dev/null"
	for i in "${!bins[@]}"; do
		drop
		t "fsck:$i" "${bins[i]}" fsck --data "$data" --password-file "$pw"
		drop
		t "unlock:$i" "${bins[i]}" fsck --data "$work/empty" --password-file "$pw"
	done
	rm -rf "$work/cp"
	drop
	t cp cp -a "$data" "$work/cp"
	rm -rf "$work/cp"
	for i in "${!bins[@]}"; do
		drop
		t "export:$i" "${bins[i]}" export --data "$data" --out "$work/exp" --password-file "$pw"
		rm -rf "$work/exp"
	done
	line="round $r:"
	for k in "${!T[@]}"; do line+=" $k $(echo "${T[$k]}" | awk '{print $NF}')"; done
	echo "$line" >&2
done
median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mib=$((files * size))
mode="warm cache"
((cold)) && mode="cold cache"
((mbps)) && mode+=", reads at $mbps MB/s"
echo "| $files x $size MiB, $mode, median of $rounds, load $load0 -> $(cut -d' ' -f1-3 /proc/loadavg) | seconds | CPU s | MiB/s | baseline / mountd | net of unlock |"
echo "|---|---|---|---|---|---|"
row() { # row LABEL KEY [BASEKEY UNLOCKKEY]
	local m c
	m=$(median "${T[$2]}") c=$(median "${C[$2]}")
	if (($# == 2)); then
		printf '| %s | %.3f | %.3f | %.0f | | |\n' "$1" "$m" "$c" "$(echo "$mib / $m" | bc -l)"
		return
	fi
	local b u
	b=$(median "${T[$3]}") u=$(median "${T[$4]}")
	printf '| %s | %.3f | %.3f | %.0f | %.2f | %.2f |\n' "$1" "$m" "$c" "$(echo "$mib / $m" | bc -l)" \
		"$(echo "$b / $m" | bc -l)" "$(echo "$b / ($m - $u)" | bc -l)"
}
row cat cat
for i in "${!bins[@]}"; do
	row "${labels[i]} fsck" "fsck:$i" cat "unlock:$i"
done
row cp\ -a cp
for i in "${!bins[@]}"; do
	row "${labels[i]} export" "export:$i" cp "unlock:$i"
done
for i in "${!bins[@]}"; do
	row "${labels[i]} unlock (fsck of the verifier alone)" "unlock:$i"
done
