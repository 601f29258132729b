#!/bin/busybox sh
# PID 1 of a `cargo xtask vm-test` VM, from its busybox initramfs.
#
# It mounts the host's root filesystem read-only over 9p at /newroot, gives it the writable and
# kernel filesystems a booted system has, and runs each test binary chrooted there, so the tests
# find the same toolchain, Python virtualenv, `ip` and `systemd-analyze` as on the host. Each
# binary's output and exit status go to the writable `results` share; `done` there tells the host
# that every binary ran. Without it the host reports the VM as broken, quoting the console.
#
# /vm/plan.sh, written by the host for this run, sets boot_modules, modules_dir and the open files
# limits, and defines in_host_root and run_tests.

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

run_test() { # name, directory, executable, arguments...
    name=$1 dir=$2
    shift 2
    say "running $name"
    {
        in_host_root /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$dir" "$@" 2>&1
        echo $? >"/results/$name.status"
    } | tee "/results/$name.log"
}

run_tests
echo >/results/done
sync
say "finished"
poweroff -f
