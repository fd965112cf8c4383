#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine (as root), for the dispatch tests.
#
# Idempotent: run it any number of times; it installs what is missing (Debian's slurm-wlm 22.05 and munge,
# with apt), writes /etc/slurm/slurm.conf for this host, starts munged, slurmctld and slurmd if they are not
# running, and waits until `sinfo` shows the node idle. Nothing here survives a reboot or a fresh CI machine,
# which is why .ci/run calls it every time.
#
# Exit 0 when the cluster answers; otherwise 1 with the failing step and the daemon's own error on stderr.
set -euo pipefail

PARTITION=debug
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm

say() { echo "setup-slurm: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts daemons)"

# ---- packages --------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
    say "installing slurmctld, slurmd, slurm-client and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || say "apt-get update failed; trying the install with the cached lists"
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || fail "apt-get install slurmctld slurmd slurm-client munge"
fi

# Stop the daemon whose pid file this is (only that process: never by name).
stop_pidfile() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$1"
}
running() { local pid; pid=$(cat "$1" 2>/dev/null || true); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# ---- munge: a key owned by munge, mode 400, and munged running as munge ----------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    stop_pidfile /run/munge/munged.pid  # a stale one that no longer answers
    runuser -u munge -- /usr/sbin/munged --force || fail "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || fail "munge does not answer after starting munged"
fi

# ---- slurm.conf for this host ----------------------------------------------------------------------------
HOST=$(hostname -s)
# slurmd -C prints this machine as slurmd sees it ("NodeName=vm CPUs=2 ... RealMemory=24105"); a node declared
# with more memory or CPUs than slurmd finds would be drained, so declare exactly that.
NODE_LINE=$(slurmd -C | head -1)
case "$NODE_LINE" in NodeName=*) ;; *) fail "slurmd -C printed '$NODE_LINE', expected a NodeName= line";; esac
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR" /run/slurm
NEW_CONF=$(cat <<EOF
# written by archscale .ci/setup-slurm.sh: a single-node cluster on localhost for tests
ClusterName=archscale-ci
# addresses given outright, so nothing depends on the host name resolving
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again once its old credential expires (default 120 s): the requeue test waits for it
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job that gives no --mem is allocated the whole node, and jobs run one at a time
DefMemPerCPU=2048
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
# seconds between scancel's SIGTERM (which submitit's jobs ignore, waiting for a pre-emption signal) and SIGKILL
KillWait=1
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
# a partition with a one-minute limit, for the test that a longer --job-time is refused before submission
PartitionName=short Nodes=$HOST MaxTime=1 State=UP
EOF
)
RESTART=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    say "writing $CONF for node $HOST"
    printf '%s\n' "$NEW_CONF" > "$CONF"
    RESTART=1
fi

# ---- daemons ---------------------------------------------------------------------------------------------
if [ "$RESTART" = 1 ]; then stop_pidfile /run/slurm/slurmd.pid; stop_pidfile /run/slurm/slurmctld.pid; fi
if ! running /run/slurm/slurmctld.pid; then
    say "starting slurmctld"
    /usr/sbin/slurmctld || fail "slurmctld did not start: $(tail -3 $LOG_DIR/slurmctld.log 2>/dev/null)"
fi
if ! running /run/slurm/slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd || fail "slurmd did not start: $(tail -3 $LOG_DIR/slurmd.log 2>/dev/null)"
fi

# ---- wait for the node ------------------------------------------------------------------------------------
state=""
for _ in $(seq 120); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mix|alloc) break ;;
        down*|drain*|drng*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mix|alloc) say "ready: node $HOST is $state in partition $PARTITION ($(sinfo -h -o '%c CPUs, %m MB' -n "$HOST"))" ;;
    *) fail "node $HOST is '${state:-not listed}' after 60 s: $(scontrol show node "$HOST" 2>&1 | grep -i reason || true) \
$(tail -3 $LOG_DIR/slurmd.log 2>/dev/null)" ;;
esac
