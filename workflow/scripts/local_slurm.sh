#!/usr/bin/env bash
# Start or stop a real single-node Slurm cluster on this machine, for tests and for trying
# workflow/profiles/slurm:
#
#   workflow/scripts/local_slurm.sh start    # munge, MariaDB, slurmdbd, slurmctld, slurmd
#   workflow/scripts/local_slurm.sh status
#   workflow/scripts/local_slurm.sh stop     # stops every daemon it started, by PID
#
# Debian's slurm-wlm (22.05), slurmdbd on mariadb-server for accounting (sacct), and munge;
# installed with apt-get when missing (needs root, as Slurm's daemons here do). One node with
# this machine's CPUs and memory and one GPU GRES: gres.conf's `Name=gpu File=/dev/null` makes
# `--gres=gpu:1` / `--gpus=1` schedulable on a machine without a GPU. Daemons run directly
# (no systemd). The configuration goes where Slurm looks by default (/etc/slurm), because the
# Snakemake Slurm job-step plugin clears SLURM_CONF; `stop` removes it again, so that with no
# controller up `scontrol` fails at once instead of waiting for one (every snakemake call with
# the Slurm plugin installed runs it). An existing /etc/slurm/slurm.conf not written by this
# script is never touched: the script refuses to start.
#
# State, logs and PID files live in $NUWA_SLURM_DIR (default /tmp/nuwa-slurm).
set -euo pipefail

STATE=${NUWA_SLURM_DIR:-/tmp/nuwa-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by nuwa workflow/scripts/local_slurm.sh"
CLUSTER=nuwa
DB_PORT=${NUWA_SLURM_DB_PORT:-3307}
DBD_PORT=${NUWA_SLURM_DBD_PORT:-6819}
CTLD_PORT=${NUWA_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${NUWA_SLURM_SLURMD_PORT:-6818}
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (Slurm's daemons and /etc/slurm need it)"
}

install_missing() {
    local missing=()
    for tool in slurmctld slurmd slurmdbd munged mariadbd sacct; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1 \
            || die "apt-get install ${PACKAGES[*]} failed; see $STATE/apt.log"
    fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up within ${seconds}s (logs in $STATE)"
        sleep 0.2
    done
}

write_conf() {  # write_conf PATH MODE: stdin -> PATH, refusing to clobber a foreign file
    local path=$1 mode=$2
    if [ -e "$path" ] && ! grep -qF "$MARKER" "$path"; then
        die "$path exists and was not written by this script; not touching a real cluster's configuration"
    fi
    { echo "$MARKER"; cat; } >"$path.tmp"
    chmod "$mode" "$path.tmp"
    mv "$path.tmp" "$path"
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if pid_alive "$STATE/munged.pid"; then return; fi
    munged --force --pid-file="$STATE/munged.pid" --socket=/run/munge/munge.socket.2 \
        --log-file="$STATE/munged.log" --key-file=/etc/munge/munge.key
    wait_for 10 munged munge -n
}

start_mariadb() {
    local datadir=$STATE/mysql
    if [ ! -d "$datadir/mysql" ]; then
        mariadb-install-db --user=root --datadir="$datadir" --auth-root-authentication-method=socket \
            >"$STATE/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/mariadb-install.log"
    fi
    if ! pid_alive "$STATE/mariadbd.pid"; then
        mariadbd --user=root --datadir="$datadir" --socket="$STATE/mysql.sock" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --pid-file="$STATE/mariadbd.pid" --log-error="$STATE/mariadbd.log" \
            --innodb-buffer-pool-size=64M --skip-name-resolve >/dev/null 2>&1 &
        wait_for 60 mariadb mariadb-admin --socket="$STATE/mysql.sock" ping
    fi
    mariadb --socket="$STATE/mysql.sock" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'nuwa-local-slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

write_configs() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    # leave 1 GiB to the system; DefMemPerCPU keeps one job from taking the whole node
    memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$CONF_DIR" "$STATE/spool/ctld" "$STATE/spool/d"
    write_conf "$CONF_DIR/slurmdbd.conf" 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=nuwa-local-slurm
StorageLoc=slurm_acct_db
EOF
    write_conf "$CONF_DIR/gres.conf" 644 <<EOF
Name=gpu File=/dev/null
EOF
    write_conf "$CONF_DIR/slurm.conf" 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName=$host CPUs=$cpus RealMemory=$memory Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_root
    mkdir -p "$STATE"
    install_missing
    local began=$SECONDS
    start_munge
    start_mariadb
    write_configs
    if ! pid_alive "$STATE/slurmdbd.pid"; then
        slurmdbd || die "slurmdbd failed to start; see $STATE/slurmdbd.log"
        wait_for 60 slurmdbd sacctmgr -n list cluster
    fi
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i add account nuwa Cluster="$CLUSTER" Description=nuwa Organization=nuwa >/dev/null 2>&1 || true
    sacctmgr -i add user root Account=nuwa Cluster="$CLUSTER" >/dev/null 2>&1 || true
    if ! pid_alive "$STATE/slurmctld.pid"; then
        slurmctld -i || die "slurmctld failed to start; see $STATE/slurmctld.log"
        wait_for 60 slurmctld scontrol ping
    fi
    if ! pid_alive "$STATE/slurmd.pid"; then
        slurmd || die "slurmd failed to start; see $STATE/slurmd.log"
    fi
    wait_for 60 "node $(hostname -s)" bash -c "sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'"
    log "cluster $CLUSTER up in $((SECONDS - began)) s: $(sinfo -h -N -o '%N %c CPUs %m MB %G %t')"
}

stop_daemons() {
    # SIGTERM to each daemon named, by the PID it wrote, then wait for all of them to go (each
    # takes 1.5-3 s to shut down: stopped together, not one after the other)
    local pids=() name pid
    for name in "$@"; do
        if pid_alive "$STATE/$name.pid"; then
            pid=$(cat "$STATE/$name.pid")
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$STATE/$name.pid"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    done
}

stop() {
    # Slurm's daemons first, then the database and munge they talk to
    stop_daemons slurmd slurmctld slurmdbd
    stop_daemons mariadbd munged
    for name in slurm.conf slurmdbd.conf gres.conf; do
        local path=$CONF_DIR/$name
        if [ -e "$path" ] && grep -qF "$MARKER" "$path"; then rm -f "$path"; fi
    done
    log "stopped"
}

status() {
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$STATE/$name.pid"; then echo "$name running (pid $(cat "$STATE/$name.pid"))"
        else echo "$name stopped"; fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
