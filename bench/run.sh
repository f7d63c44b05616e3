#!/usr/bin/env bash
# bench/run.sh: measure mountd against the backing directory itself (native)
# and a no-passthrough go-fuse loopback (loopnopt, bench/loopnopt), in one run.
# See bench/README.md. Run as root from anywhere:
#
#   bench/run.sh [--size 1G] [--quick] [--rounds N] [--targets native,loopnopt,mountd]
#                [--base REV] [--meta-only]
#
# Progress goes to stderr, the result table (markdown) to stdout.
set -euo pipefail
export LC_ALL=C

usage() {
	cat <<'EOF'
usage: bench/run.sh [options]
  --size N[M|G]     size of the streaming file (default 1G; plain number = MiB)
  --quick           smoke run: 256 MiB file, 3 s fio jobs
  --runtime S       seconds per fio job (default 10)
  --rounds N        run every workload N times and report medians (default 1;
                    a round takes about 3 minutes with the defaults)
  --targets LIST    comma-separated subset of native,loopnopt,mountd (default all)
  --base REV        also run mountd built from git revision REV (target "base"),
                    side by side with the working tree's, and report mountd/base
  --meta-only       only the metadata workloads (untar, ls -lR, rm -rf)
  --dir DIR         where the temp dirs go (default $BENCH_DIR or /var/tmp/mountd-bench;
                    must be on a real disk, not tmpfs); the tarball is cached there
  -h, --help        this help
Run as root (drop_caches, FUSE mounts). Needs go, fio, curl, tar.
EOF
}

size_mib=1024
runtime=10
rounds=1
targets="native,loopnopt,mountd"
base="${BENCH_DIR:-/var/tmp/mountd-bench}"
base_rev="" meta_only=""
while (($#)); do
	case "$1" in
	--size | --runtime | --rounds | --targets | --dir | --base)
		[[ $# -ge 2 ]] || { echo "$1 needs a value" >&2; exit 2; } ;;
	esac
	case "$1" in
	--size)
		case "$2" in
		*[gG]) size_mib=${2%[gG]}; [[ $size_mib =~ ^[0-9]+$ ]] && size_mib=$((size_mib * 1024)) ;;
		*[mM]) size_mib=${2%[mM]} ;;
		*) size_mib=$2 ;;
		esac
		shift 2 ;;
	--quick) size_mib=256 runtime=3; shift ;;
	--runtime) runtime=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--targets) targets=$2; shift 2 ;;
	--dir) base=$2; shift 2 ;;
	--base) base_rev=$2; shift 2 ;;
	--meta-only) meta_only=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
	esac
done
[[ $size_mib =~ ^[0-9]+$ && $size_mib -ge 16 ]] || { echo "--size: want whole MiB or GiB (e.g. 512M, 1G), at least 16M" >&2; exit 2; }
[[ $runtime =~ ^[0-9]+$ && $runtime -ge 1 ]] || { echo "--runtime: want whole seconds" >&2; exit 2; }
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 ]] || { echo "--rounds: want a positive count" >&2; exit 2; }
[[ -z $base_rev ]] || targets+=",base"
has_target() { [[ ",$targets," == *",$1,"* ]]; }
for t in ${targets//,/ }; do
	case "$t" in native | loopnopt | mountd | base) ;; *) echo "--targets: unknown target $t" >&2; exit 2 ;; esac
done

# Progress goes to fd 9, a copy of the original stderr: a trap can fire while
# a command's stderr is redirected to a file, and its message must not land there.
exec 9>&2
log() { printf '[%(%T)T] %s\n' -1 "$*" >&9; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- checks
[[ $(id -u) -eq 0 ]] || die "run as root (needs drop_caches and FUSE mounts)"
[[ -n $meta_only ]] || command -v fio >/dev/null || die "fio is missing: apt-get install -y fio"
for c in go curl tar dd awk; do
	command -v "$c" >/dev/null || die "$c is missing"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$base"
fstype=$(stat -f -c %T "$base")
[[ $fstype != tmpfs && $fstype != ramfs ]] || die "$base is on $fstype; pick a disk with --dir"

run=$(mktemp -d "$base/run.XXXXXX")
native="$run/native"
loop_back="$run/loop-back" loop_mnt="$run/loop-mnt"
md_data="$run/mountd-data" md_mnt="$run/mountd-mnt"
base_data="$run/base-data" base_mnt="$run/base-mnt"
mkdir -p "$native" "$loop_back" "$loop_mnt" "$md_data" "$md_mnt" "$base_data" "$base_mnt"

# ---------------------------------------------------------------- cleanup
# Long commands run in the background and are waited for, so that a signal
# interrupts the wait at once instead of after the command (bash defers
# traps while a foreground child runs). Async children ignore SIGINT in a
# non-interactive shell, so cleanup stops them with SIGTERM.
child=""
bg() {
	"$@" &
	child=$!
	local rc=0
	wait "$child" || rc=$?
	child=""
	return "$rc"
}

loop_pid="" md_pid="" base_pid=""
mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

# stop_fs PID MOUNTPOINT: SIGTERM the daemon (it unmounts), then umount,
# then umount -l, then SIGKILL. Never leaves the mount behind.
stop_fs() {
	local pid=$1 mnt=$2 i
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	if mounted "$mnt"; then
		umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
	fi
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
	if mounted "$mnt"; then umount -l "$mnt" 2>/dev/null || true; fi
}

cleaned=""
cleanup() {
	local rc=$?
	[[ -z $cleaned ]] || return 0
	cleaned=1
	set +e
	trap '' INT TERM
	local i
	if [[ -n $child ]]; then
		kill -TERM "$child" 2>/dev/null
		for ((i = 0; i < 30; i++)); do
			kill -0 "$child" 2>/dev/null || break
			sleep 0.1
		done
	fi
	# A child stuck in a FUSE request gets unstuck when its daemon dies.
	stop_fs "$md_pid" "$md_mnt"
	stop_fs "$base_pid" "$base_mnt"
	stop_fs "$loop_pid" "$loop_mnt"
	if [[ -n $child ]]; then
		kill -KILL "$child" 2>/dev/null
		wait "$child" 2>/dev/null
	fi
	if grep -F " $run/" /proc/mounts >/dev/null; then
		log "WARNING: mounts left under $run, not deleting it:"
		grep -F " $run/" /proc/mounts >&9
	else
		rm -rf "$run"
	fi
	if ((rc != 0)); then log "exit status $rc"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- helpers
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# dd_mibs ERRFILE: MiB/s from dd's "N bytes ... copied, T s" line.
dd_mibs() {
	awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") t = $(i - 1); b = $1 }
	     END { if (t > 0) printf "%.1f", b / 1048576 / t; else print "ERR" }' "$1"
}

declare -A R # R[target,metric] = the values measured, one per round, space-separated
put() { R[$1,$2]="${R[$1,$2]:+${R[$1,$2]} }$3"; }
last() { echo "${R[$1,$2]##* }"; }

# seq TARGET KEY FILE: streaming write with fsync, drop caches, streaming read.
seq_rw() {
	local tg=$1 key=$2 f=$3 err="$run/dd.err"
	rm -f "$f"
	drop_caches
	log "$tg: streaming write ${size_mib} MiB -> ${f#"$run"/}"
	bg dd if=/dev/zero of="$f" bs=1M count="$size_mib" conv=fsync 2>"$err" || { cat "$err" >&2; die "dd write failed"; }
	put "$tg" "${key}_w" "$(dd_mibs "$err")"
	drop_caches
	log "$tg: streaming read"
	bg dd if="$f" of=/dev/null bs=1M 2>"$err" || { cat "$err" >&2; die "dd read failed"; }
	put "$tg" "${key}_r" "$(dd_mibs "$err")"
	log "$tg: ${key} write $(last "$tg" "${key}_w") MiB/s, read $(last "$tg" "${key}_r") MiB/s"
}

# fio_iops TARGET FILE RW: 4 KiB random I/O at queue depth 1 on FILE.
fio_iops() {
	local tg=$1 f=$2 rw=$3 out="$run/fio.out" field v
	[[ $rw == randread ]] && field=8 || field=49
	drop_caches
	log "$tg: fio $rw ${runtime}s"
	bg fio --name="$rw" --filename="$f" --size="${size_mib}M" --rw="$rw" --bs=4k \
		--ioengine=psync --iodepth=1 --direct=0 --runtime="$runtime" --time_based \
		--output-format=terse --terse-version=3 >"$out" 2>&1 || { cat "$out" >&2; die "fio $rw failed"; }
	v=$(awk -F';' -v f="$field" '$1 == "3" { printf "%.0f", $f }' "$out")
	[[ -n $v ]] || { cat "$out" >&2; die "no fio result"; }
	put "$tg" "$rw" "$v"
	log "$tg: $rw $v IOPS"
}

# fio_append TARGET FILE: 200-byte appends to a new FILE, each followed by
# fsync (a log, a database journal): the writes a power loss must not undo.
fio_append() {
	local tg=$1 f=$2 out="$run/fio.out" v
	rm -f "$f"
	log "$tg: fio append+fsync ${runtime}s"
	bg fio --name=append --filename="$f" --size=1G --rw=write --bs=200 --fsync=1 --fallocate=none \
		--ioengine=psync --iodepth=1 --runtime="$runtime" --time_based \
		--output-format=terse --terse-version=3 >"$out" 2>&1 || { cat "$out" >&2; die "fio append failed"; }
	v=$(awk -F';' '$1 == "3" { printf "%.0f", $49 }' "$out")
	[[ -n $v ]] || { cat "$out" >&2; die "no fio result"; }
	rm -f "$f"
	put "$tg" append "$v"
	log "$tg: append+fsync $v IOPS"
}

# Tarball of Go's own source tree (~11k files), cached across runs.
tarball="$base/gosrc-$(go env GOVERSION).tar"
if [[ ! -s $tarball ]]; then
	log "making $tarball from $(go env GOROOT)/src"
	tar -C "$(go env GOROOT)" -cf "$tarball.tmp" src
	mv "$tarball.tmp" "$tarball"
fi
ntar=$(tar -tf "$tarball" | wc -l)

# proc_mib PID FIELD: a /proc/PID/status memory field in MiB.
proc_mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

wait_mount() {
	local mnt=$1 pid=$2 logf=$3 i
	for ((i = 0; i < 100; i++)); do
		mounted "$mnt" && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "daemon exited before mounting $mnt"; }
		sleep 0.1
	done
	cat "$logf" >&2
	die "$mnt not mounted after 10 s"
}

free_port() {
	local p i
	for ((i = 0; i < 50; i++)); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free port"
}

# note_rss PHASE: log the daemons' high-water marks so far, to tell which
# workload set the peak.
note_rss() {
	local msg=""
	[[ -z $loop_pid ]] || msg+=" loopnopt $(proc_mib "$loop_pid" VmHWM) MiB"
	[[ -z $md_pid ]] || msg+=" mountd $(proc_mib "$md_pid" VmHWM) MiB"
	[[ -z $base_pid ]] || msg+=" base $(proc_mib "$base_pid" VmHWM) MiB"
	[[ -z $msg ]] || log "peak RSS after $1:$msg"
}

# daemon_pid TARGET: the PID of the target's daemon ("" for native).
daemon_pid() {
	case $1 in
	loopnopt) echo "$loop_pid" ;;
	mountd) echo "$md_pid" ;;
	base) echo "$base_pid" ;;
	esac
}
# cpu_ticks PID: user + system clock ticks the process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# timed TARGET KEY CMD...: run CMD followed by sync, store the seconds,
# and the daemon's CPU seconds (user + system) under KEY_cpu: on a busy
# machine the wall time is mostly other people's load, the CPU time much
# less so.
timed() {
	local tg=$1 key=$2 t0 pid c0=""
	shift 2
	pid=$(daemon_pid "$tg")
	[[ -z $pid ]] || c0=$(cpu_ticks "$pid")
	t0=$EPOCHREALTIME
	bg "$@"
	sync
	put "$tg" "$key" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')"
	[[ -z $c0 ]] || put "$tg" "${key}_cpu" "$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')"
}

# psi RESOURCE: microseconds some task stalled on it since boot (Linux PSI).
psi() { awk -F'total=' '/^some/ { print $2 }' "/proc/pressure/$1" 2>/dev/null || echo 0; }
# pressure RESOURCE START_US: percent of the wall time since t_runs some task stalled.
pressure() {
	awk -v a="$2" -v b="$(psi "$1")" -v t0="$t_runs" -v t1="$EPOCHREALTIME" \
		'BEGIN { if (t1 > t0 && b > 0) printf "%.0f%%", (b - a) / 1e4 / (t1 - t0); else print "n/a" }'
}

# ---------------------------------------------------------------- build
t_start=$EPOCHREALTIME
log "building in $repo -> $run"
if has_target loopnopt; then
	(cd "$repo" && go build -o "$run/loopnopt" ./bench/loopnopt) || die "building bench/loopnopt failed"
fi
if has_target mountd; then
	(cd "$repo" && go build -o "$run/mountd" ./cmd/mountd) || die "building cmd/mountd failed"
fi
if has_target base; then
	base_commit=$(git -C "$repo" rev-parse --short "$base_rev^{commit}") || die "--base: no such revision $base_rev"
	mkdir -p "$run/base-src"
	git -C "$repo" archive "$base_commit" | tar -x -C "$run/base-src" || die "git archive $base_rev failed"
	(cd "$run/base-src" && go build -o "$run/base" ./cmd/mountd) || die "building cmd/mountd at $base_rev failed"
	rm -rf "$run/base-src"
fi

# ---------------------------------------------------------------- mounts
declare -A DIR # DIR[target] = the directory the workloads run in
order=()
if has_target native; then
	DIR[native]=$native
	order+=(native)
fi
if has_target loopnopt; then
	"$run/loopnopt" --backing "$loop_back" --mount "$loop_mnt" >"$run/loopnopt.log" 2>&1 9>&- &
	loop_pid=$!
	wait_mount "$loop_mnt" "$loop_pid" "$run/loopnopt.log"
	R[loopnopt,rss_start]=$(proc_mib "$loop_pid" VmHWM)
	DIR[loopnopt]=$loop_mnt
	order+=(loopnopt)
fi
# start_mountd TARGET DATA MNT: start "$run/TARGET" as a daemon, log in;
# sets started_pid.
start_mountd() {
	local tg=$1 data=$2 mnt=$3 port url resp i
	port=$(free_port)
	"$run/$tg" --data "$data" --mount "$mnt" --listen "127.0.0.1:$port" >"$run/$tg.log" 2>&1 9>&- &
	started_pid=$!
	wait_mount "$mnt" "$started_pid" "$run/$tg.log"
	url="http://127.0.0.1:$port/api/system"
	for ((i = 0; i < 50; i++)); do
		curl -sf "$url/encryption-status" >/dev/null && break
		sleep 0.1
	done
	log "$tg: login (the first login derives the key with Argon2id)"
	resp=$(curl -s -X POST -H 'Content-Type: application/json' -d '{"password":"bench-password"}' "$url/login") || true
	[[ $resp == *'"success":true'* ]] || { cat "$run/$tg.log" >&2; die "$tg login failed: $resp"; }
	R[$tg,rss_start]=$(proc_mib "$started_pid" VmHWM)
	DIR[$tg]=$mnt
	order+=("$tg")
}
if has_target mountd; then
	start_mountd mountd "$md_data" "$md_mnt"
	md_pid=$started_pid
fi
if has_target base; then
	start_mountd base "$base_data" "$base_mnt"
	base_pid=$started_pid
fi

# ---------------------------------------------------------------- runs
t_runs=$EPOCHREALTIME psi_cpu=$(psi cpu) psi_io=$(psi io)
# Workload by workload, each on every target back to back, so that the
# ratios in a row compare runs made under the same background load.
for ((round = 1; round <= rounds; round++)); do
	((rounds == 1)) || log "round $round of $rounds"
	# Every other round runs the targets in reverse order, so that going
	# first or second (a warmer disk, the other's freed blocks) evens out.
	ord=("${order[@]}")
	if ((round % 2 == 0)); then
		ord=()
		for ((i = ${#order[@]} - 1; i >= 0; i--)); do ord+=("${order[i]}"); done
	fi
	if [[ -z $meta_only ]]; then
		for tg in "${ord[@]}"; do
			seq_rw "$tg" prot "${DIR[$tg]}/big.bin"
		done
		# In the round's order too: the second of two back-to-back runs
		# here read big.dat 5-7 times faster whichever tree it was.
		for tg in "${ord[@]}"; do
			[[ ($tg == mountd || $tg == base) && -n ${DIR[$tg]:-} ]] || continue
			data=$md_data
			[[ $tg == base ]] && data=$base_data
			# The protected file must really be encrypted on disk and the other
			# one must not, or the numbers measure the wrong thing.
			[[ $(head -c 6 "$data/big.bin") == MTDENC ]] || die "$tg: big.bin is not encrypted in the backing dir"
			seq_rw "$tg" plain "${DIR[$tg]}/big.dat"
			[[ -z $(head -c 4096 "$data/big.dat" | tr -d '\0') ]] || die "$tg: big.dat is not plaintext in the backing dir"
			rm -f "${DIR[$tg]}/big.dat"
		done
		note_rss "streaming"
		for rw in randread randwrite; do
			for tg in "${ord[@]}"; do
				fio_iops "$tg" "${DIR[$tg]}/big.bin" "$rw"
			done
		done
		for tg in "${ord[@]}"; do
			fio_append "$tg" "${DIR[$tg]}/log.bin"
		done
		note_rss "random I/O"
		for tg in "${ord[@]}"; do
			rm -f "${DIR[$tg]}/big.bin"
		done
		sync
	fi

	for tg in "${ord[@]}"; do
		mkdir "${DIR[$tg]}/tree"
		drop_caches
		log "$tg: untar $ntar entries + sync"
		timed "$tg" untar tar -C "${DIR[$tg]}/tree" -xf "$tarball"
	done
	for tg in "${ord[@]}"; do
		drop_caches
		log "$tg: ls -lR (cold cache)"
		timed "$tg" lsR ls -lR "${DIR[$tg]}/tree" >/dev/null
	done
	for tg in "${ord[@]}"; do
		drop_caches
		log "$tg: rm -rf + sync"
		timed "$tg" rmrf rm -rf "${DIR[$tg]}/tree"
		put "$tg" meta "$(awk -v a="$(last "$tg" untar)" -v b="$(last "$tg" lsR)" -v c="$(last "$tg" rmrf)" 'BEGIN { printf "%.3f", a + b + c }')"
		log "$tg: untar $(last "$tg" untar) s, ls -lR $(last "$tg" lsR) s, rm -rf $(last "$tg" rmrf) s"
	done
	note_rss "metadata"
done
for tg in "${order[@]}"; do
	# No protected files on native and loopnopt: one streaming figure
	# is the reference for both rows.
	[[ $tg == mountd || $tg == base ]] || R[$tg,plain_w]=${R[$tg,prot_w]:-} R[$tg,plain_r]=${R[$tg,prot_r]:-}
done

if [[ -n $loop_pid ]]; then
	R[loopnopt,rss]=$(proc_mib "$loop_pid" VmHWM)
	R[loopnopt,rss_end]=$(proc_mib "$loop_pid" VmRSS)
	stop_fs "$loop_pid" "$loop_mnt"
	loop_pid=""
fi
if [[ -n $md_pid ]]; then
	R[mountd,rss]=$(proc_mib "$md_pid" VmHWM)
	R[mountd,rss_end]=$(proc_mib "$md_pid" VmRSS)
	stop_fs "$md_pid" "$md_mnt"
	md_pid=""
fi
if [[ -n $base_pid ]]; then
	R[base,rss]=$(proc_mib "$base_pid" VmHWM)
	R[base,rss_end]=$(proc_mib "$base_pid" VmRSS)
	stop_fs "$base_pid" "$base_mnt"
	base_pid=""
fi
wall=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
noise="CPU $(pressure cpu "$psi_cpu"), IO $(pressure io "$psi_io")"

# ---------------------------------------------------------------- report
# val TARGET KEY: the median over the rounds, or "-".
val() {
	local v=${R[$1,$2]:-}
	[[ -n $v ]] || { echo "-"; return; }
	tr ' ' '\n' <<<"$v" | sort -g | awk '{ a[NR] = $1 } END {
		if (NR % 2) { print a[(NR + 1) / 2]; exit }
		m = sprintf("%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2); sub(/\.?0+$/, "", m); print m }'
}
# show UNIT VALUE: VALUE rounded for the table.
show() {
	[[ $2 != - ]] || { echo "-"; return; }
	case $1 in
	IOPS) awk -v v="$2" 'BEGIN { printf "%.0f", v }' ;;
	s) awk -v v="$2" 'BEGIN { printf "%.2f", v }' ;;
	*) awk -v v="$2" 'BEGIN { printf "%.1f", v }' ;;
	esac
}
# ratio A B KIND: speed ratio of A against reference B; for times B/A.
ratio() {
	local a=$1 b=$2 kind=$3
	[[ $a != - && $b != - ]] || { echo "-"; return; }
	awk -v a="$a" -v b="$b" -v k="$kind" 'BEGIN {
		if (k == "time") { if (a > 0) printf "%.2f", b / a; else print "-" }
		else { if (b > 0) printf "%.2f", a / b; else print "-" } }'
}

rows=(
	"prot_w|streaming write, protected (big.bin)|MiB/s|rate"
	"prot_r|streaming read, protected (big.bin)|MiB/s|rate"
	"plain_w|streaming write, non-protected (big.dat)|MiB/s|rate"
	"plain_r|streaming read, non-protected (big.dat)|MiB/s|rate"
	"randread|4 KiB random read, protected, QD1|IOPS|rate"
	"randwrite|4 KiB random write, protected, QD1|IOPS|rate"
	"append|200 B append + fsync, protected, QD1|IOPS|rate"
	"untar|untar $ntar entries + sync|s|time"
	"lsR|ls -lR (cold cache)|s|time"
	"rmrf|rm -rf + sync|s|time"
	"meta|metadata total|s|time"
	"untar_cpu|untar: daemon CPU (user+sys)|s|time"
	"lsR_cpu|ls -lR: daemon CPU (user+sys)|s|time"
	"rmrf_cpu|rm -rf: daemon CPU (user+sys)|s|time"
	"rss_start|daemon RSS after mount (+ login for mountd), VmHWM|MiB|none"
	"rss|daemon peak RSS over the run, VmHWM|MiB|none"
	"rss_end|daemon RSS at the end, VmRSS|MiB|none"
)

echo
echo "### mountd benchmark $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, file ${size_mib} MiB, fio ${runtime} s, wall ${wall} s"
echo
echo "Commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (dirty)'), $(uname -r)."
echo "$([[ $rounds -gt 1 ]] && echo "Medians of $rounds rounds. ")Stall pressure during the run (PSI some; 0% = quiet machine, high = noisy figures): $noise."
echo "Ratios are speed ratios: >1 means mountd is faster (for times: reference time / mountd time)."
echo "Native and loopnopt have no protected files: their one streaming figure is the reference for both rows."
[[ -z $base_rev ]] || echo "base is mountd built from $base_rev ($base_commit): mountd/base > 1 means the working tree is faster."
echo
if [[ -n $base_rev ]]; then
	echo "| workload | unit | native | loopnopt | mountd | base | mountd/native | mountd/loopnopt | mountd/base |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
else
	echo "| workload | unit | native | loopnopt | mountd | mountd/native | mountd/loopnopt |"
	echo "|---|---|---:|---:|---:|---:|---:|"
fi
for row in "${rows[@]}"; do
	IFS='|' read -r key name unit kind <<<"$row"
	n=$(val native "$key") l=$(val loopnopt "$key") m=$(val mountd "$key") b=$(val base "$key")
	if [[ $kind == none ]]; then
		rn="-" rl="-" rb="-"
	else
		rn=$(ratio "$m" "$n" "$kind") rl=$(ratio "$m" "$l" "$kind") rb=$(ratio "$m" "$b" "$kind")
	fi
	if [[ -n $base_rev ]]; then
		echo "| $name | $unit | $(show "$unit" "$n") | $(show "$unit" "$l") | $(show "$unit" "$m") | $(show "$unit" "$b") | $rn | $rl | $rb |"
	else
		echo "| $name | $unit | $(show "$unit" "$n") | $(show "$unit" "$l") | $(show "$unit" "$m") | $rn | $rl |"
	fi
done

# check NAME VALUE OP LIMIT
npass=0 nfail=0 nskip=0
check() {
	local name=$1 v=$2 op=$3 lim=$4 verdict
	if [[ $v == - || $lim == - || -z $lim ]]; then
		verdict="SKIP"
		nskip=$((nskip + 1))
	elif awk -v v="$v" -v l="$lim" -v op="$op" 'BEGIN { exit !((op == ">=" && v >= l) || (op == "<=" && v <= l) || (op == "<" && v < l)) }'; then
		verdict="PASS"
		npass=$((npass + 1))
	else
		verdict="FAIL"
		nfail=$((nfail + 1))
	fi
	echo "| $name | $v | $op $lim | $verdict |"
}
times() { [[ $1 != - ]] && awk -v a="$1" -v f="$2" 'BEGIN { printf "%.1f", a * f }' || echo "-"; }

echo
echo "#### issue 9 targets"
echo
echo "| target | mountd | needs | verdict |"
echo "|---|---:|---:|---|"
check "protected streaming write >= 0.9 x loopnopt (MiB/s)" "$(val mountd prot_w)" ">=" "$(times "$(val loopnopt prot_w)" 0.9)"
check "protected streaming read >= 0.9 x loopnopt (MiB/s)" "$(val mountd prot_r)" ">=" "$(times "$(val loopnopt prot_r)" 0.9)"
check "protected 4K random read >= loopnopt (IOPS)" "$(val mountd randread)" ">=" "$(val loopnopt randread)"
check "protected 4K random write >= loopnopt (IOPS)" "$(val mountd randwrite)" ">=" "$(val loopnopt randwrite)"
check "non-protected streaming write >= 0.9 x native (MiB/s)" "$(val mountd plain_w)" ">=" "$(times "$(val native plain_w)" 0.9)"
check "non-protected streaming read >= 0.9 x native (MiB/s)" "$(val mountd plain_r)" ">=" "$(times "$(val native plain_r)" 0.9)"
check "metadata total <= 1.1 x loopnopt (s)" "$(val mountd meta)" "<=" "$(awk -v a="$(val loopnopt meta)" 'BEGIN { if (a == "-") print "-"; else printf "%.3f", a * 1.1 }')"
check "daemon peak RSS < 100 MiB" "$(val mountd rss)" "<" "100"
echo
echo "$npass pass, $nfail fail, $nskip skipped. On a shared machine expect +-30 % or more between runs; see the stall pressure above."
log "done in ${wall} s"
