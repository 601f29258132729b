#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` VM, from its busybox initramfs.
#
# It mounts the host's root filesystem read-only over 9p at /newroot, gives it the writable and
# kernel filesystems a booted system has, and runs each test binary chrooted there, so the tests
# find the same toolchain, Python virtualenv, `ip` and `systemd-analyze` as on the host. Each
# binary's output and exit status go to the writable `results` share; `done` there tells the host
# that every binary ran. Without it the host reports the VM as broken, quoting the console.
#
# /vm/plan.sh, written by the host for this run, sets boot_modules, modules_dir, the open files
# limits, reference_host_cs, binary_budget_s and patience_given, and defines in_host_root, reference and run_tests.

# The archive holds no /dev/console node (creating one would take root on the host), so the
# kernel started this script with nowhere to write: mount devtmpfs and open the console first.
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

say() { echo "vm-test: $*"; }
give_up() {
    say "setup failed: $*"
    poweroff -f
}

. /vm/plan.sh

mount -t proc proc /proc || give_up "mounting /proc"
mount -t sysfs sys /sys || give_up "mounting /sys"
for module in $boot_modules; do
    insmod "/modules/$module" || give_up "loading $module"
done

# cache=loose: nothing changes the host's files under a test run, and reading the toolchain and
# the test binaries through the page cache instead of a 9p round trip per read is what makes
# emulation bearable.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /newroot ||
    give_up "mounting the host's root filesystem (9p tag hostroot)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /results ||
    give_up "mounting the results share (9p tag results)"

# Each kernel filesystem the tests or drainer use, and tmpfs wherever they write.
mount -t proc proc /newroot/proc &&
    mount -t sysfs sys /newroot/sys &&
    mount -t devtmpfs dev /newroot/dev &&
    mkdir -p /newroot/dev/pts /newroot/dev/shm &&
    mount -t devpts devpts /newroot/dev/pts &&
    mount -t tmpfs shm /newroot/dev/shm &&
    mount -t tmpfs -o mode=1777 tmp /newroot/tmp &&
    mount -t tmpfs -o mode=755 run /newroot/run &&
    mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup &&
    mount -t bpf bpf /newroot/sys/fs/bpf &&
    mount -t tracefs tracefs /newroot/sys/kernel/tracing ||
    give_up "mounting the kernel filesystems and tmpfs in the host's root"

# The kernel runs /sbin/modprobe in this root to load modules on demand (veth, tcp_diag, ...):
# give busybox's modprobe the kernel package's module tree, indexed on the host.
mount --bind "/newroot$modules_dir" /lib/modules || give_up "binding $modules_dir"

ip link set lo up || give_up "bringing loopback up"
# Raised in this order, as the soft limit may not exceed the hard one.
ulimit -H -n "$open_files_hard" && ulimit -S -n "$open_files_soft" ||
    give_up "setting the open files limit to $open_files_soft (hard $open_files_hard)"
uname -r -v >/results/kernel
say "booted $(uname -r -v)"

# /proc/uptime's "seconds.hundredths" as hundredths. The 1 in front keeps a fraction such as 08
# from being read as octal.
centiseconds() {
    echo $((${1%.*} * 100 + 1${1#*.} - 100))
}
now_cs() {
    read -r up _ </proc/uptime
    centiseconds "$up"
}

# The factor every wait of the tests is stretched by (see xtask/src/vm/patience.rs): twice how much
# slower the reference runs here than on the host, the best of three runs each.
patience=1
best=
for _ in 1 2 3; do
    start=$(now_cs)
    reference >/dev/null 2>&1 || give_up "the reference (the test virtualenv's Python) failed"
    took=$(($(now_cs) - start))
    if [ -z "$best" ] || [ "$took" -lt "$best" ]; then best=$took; fi
done
patience=$(((2 * best + reference_host_cs - 1) / reference_host_cs))
[ "$patience" -ge 1 ] || patience=1
[ -z "$patience_given" ] || patience=$patience_given
echo "$best $reference_host_cs $patience" >/results/patience
say "patience $patience${patience_given:+ (given)}: the reference took ${best}0 ms here, ${reference_host_cs}0 ms on the host"
binary_limit=$((patience * binary_budget_s))

# Each line of a binary's output is stamped with the seconds since it started, so that the report
# can say when each test finished; a binary still running after binary_limit seconds is taken as
# hung and killed with its process group (coreutils' timeout, in the host's root), and the next
# one runs.
run_test() { # name, directory, executable, arguments...
    name=$1 dir=$2
    shift 2
    say "running $name"
    started=$(now_cs)
    {
        in_host_root /bin/sh -c 'cd "$1" && shift && exec timeout -s KILL "$@"' \
            sh "$dir" "$binary_limit" "$@" 2>&1
        echo $? >"/results/$name.status"
    } | while IFS= read -r line; do
        t=$(($(now_cs) - started))
        printf '+%d.%02d %s\n' $((t / 100)) $((t % 100)) "$line"
    done | tee "/results/$name.log"
}

run_tests
echo >/results/done
sync
say "finished"
poweroff -f
