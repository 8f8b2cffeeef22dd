#!/usr/bin/env bash
# A throw-away, single-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   tests/slurm/local_slurm.sh start               install what is missing, write configs,
#                                                  start the daemons (idempotent)
#   tests/slurm/local_slurm.sh stop [--keep-conf]  stop the daemons started here (by PID,
#                                                  from their pid files), unlink the config
#   tests/slurm/local_slurm.sh status              daemon PIDs and `sinfo`
#
# Debian 12, root, no systemd needed. Everything lives under $IDAP_SLURM_DIR (configs,
# munge key and socket, MariaDB data, spool, logs, pid files) and every daemon listens on
# its own ports, so /etc/munge, /var/lib/mysql and /run are not touched and a site's own
# munge or MariaDB, if any, is left alone. The one file outside is the symlink
# /etc/slurm/slurm.conf -> $IDAP_SLURM_DIR/etc/slurm.conf: client commands inside a job
# must find the cluster without SLURM_CONF, because the executor plugin's job step drops
# every SLURM_* variable before it calls srun. `start` refuses to replace an
# /etc/slurm/slurm.conf that is not this symlink; `stop` removes it (unless --keep-conf),
# since a slurm.conf naming a dead controller makes every later `snakemake` call, local
# ones included, wait ~10 s at startup (docs/cluster.md).
#
# Environment (all optional):
#   IDAP_SLURM_DIR        state directory                      [/tmp/idap-slurm]
#   IDAP_SLURM_GPUS       fake GPUs declared as GRES (0..5)    [4]
#   IDAP_SLURM_CPUS       CPUs the node advertises             [4 x nproc]
#   IDAP_SLURM_MEM_MB     memory the node advertises (MB)      [max(80% of RAM, 40000)]
#   IDAP_SLURM_PORT       first of 4 consecutive TCP ports: slurmctld, slurmd, slurmdbd,
#                         MariaDB                              [16817]
#
# Accounting is always on (slurmdbd + MariaDB): Snakemake's SLURM executor plugin asks
# `sacct` for job states whenever `sacct` is installed, and `sacct` only answers with a
# database behind it (without one every status query fails and the workflow never ends).
set -euo pipefail

DIR="${IDAP_SLURM_DIR:-/tmp/idap-slurm}"
NGPU="${IDAP_SLURM_GPUS:-4}"
NCPU="${IDAP_SLURM_CPUS:-$(($(nproc) * 4))}"
PORT="${IDAP_SLURM_PORT:-16817}"
P_CTLD=$PORT P_SLURMD=$((PORT + 1)) P_DBD=$((PORT + 2)) P_SQL=$((PORT + 3))
NODE="$(hostname -s)"    # slurmd takes its NodeName from the short hostname
ETC="$DIR/etc" RUN="$DIR/run" LOG="$DIR/log" SPOOL="$DIR/spool" SQLDATA="$DIR/mysql"
SQLRUN="$DIR/mysqld"     # owned by the mysql user: its pid file and socket
DBPASS="idap-local-only"  # the database is bound to 127.0.0.1 and lives in $DIR
export SLURM_CONF="$ETC/slurm.conf"   # daemons read gres.conf, slurmdbd.conf beside it
LINK=/etc/slurm/slurm.conf

PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
# name:pidfile of every daemon started here
DAEMONS="munged:$RUN/munged.pid mariadbd:$SQLRUN/mariadbd.pid slurmdbd:$RUN/slurmdbd.pid
slurmctld:$RUN/slurmctld.pid slurmd:$RUN/slurmd.pid"

say() { printf '[local_slurm] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
pid_of() { [ -s "$1" ] && cat "$1"; }
running() { local p; p="$(pid_of "$1")" && kill -0 "$p" 2>/dev/null; }
pidfile() {
  local d
  for d in $DAEMONS; do
    if [ "${d%%:*}" = "$1" ]; then echo "${d#*:}"; fi
  done
}

# until SECONDS WHAT CMD...: poll CMD every 0.2 s
until_ok() {
  local limit=$1 what=$2 n=0; shift 2
  while ! "$@" >/dev/null 2>&1; do
    n=$((n + 1))
    [ "$n" -lt $((limit * 5)) ] || die "$what not ready after ${limit}s (logs: $LOG)"
    sleep 0.2
  done
}

# put FILE MODE < content: replace FILE only if the content differs; exit status 0 = changed
put() {
  local new; new="$(cat)"
  if [ -f "$1" ] && [ "$(cat "$1")" = "$new" ]; then return 1; fi
  printf '%s\n' "$new" >"$1.new" && chmod "$2" "$1.new" && mv "$1.new" "$1"
}

halt() {                 # halt NAME...: TERM each PID in its pid file, KILL after 10 s
  local name f p n=0 pids=""
  for name in "$@"; do
    f="$(pidfile "$name")"
    if running "$f"; then
      p="$(pid_of "$f")"
      kill "$p" && pids="$pids $p" && say "stopping $name (pid $p)"
    fi
    rm -f "$f"
  done
  for p in $pids; do
    while kill -0 "$p" 2>/dev/null; do
      n=$((n + 1))
      if [ "$n" -ge 50 ]; then kill -9 "$p" 2>/dev/null || true; break; fi
      sleep 0.2
    done
  done
}

install_missing() {
  local p missing=""
  for p in $PKGS; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed \
      || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  say "apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # word splitting intended
  apt-get install -y -qq --no-install-recommends $missing >"$DIR/apt.log" 2>&1 \
    || { tail -20 "$DIR/apt.log" >&2; die "apt-get install failed"; }
}

write_configs() {        # exit status 0 when slurm.conf or gres.conf changed
  local changed=1 gres="" i devs=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
  [ "$NGPU" -le "${#devs[@]}" ] || die "at most ${#devs[@]} fake GPUs"
  local mem="${IDAP_SLURM_MEM_MB:-}"
  # Rules ask for 8 GB a job; nothing enforces it here (no cgroups), and the test's jobs
  # use a few hundred MB, so advertise room for four of them whatever the machine has.
  [ -n "$mem" ] || mem="$(awk '/^MemTotal/ {m = int($2 / 1024 * 0.8); print (m > 40000 ? m : 40000)}' /proc/meminfo)"
  [ "$NGPU" -gt 0 ] && gres="Gres=gpu:$NGPU"
  put "$ETC/slurm.conf" 644 <<EOF && changed=0
# written by tests/slurm/local_slurm.sh; a single-node cluster for tests
ClusterName=idaptest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$P_CTLD
SlurmdPort=$P_SLURMD
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Advertise the CPUs and memory below even where the hardware has less, so that independent
# 2-thread jobs run side by side (the critical path need not queue behind the others).
SlurmdParameters=config_overrides
DefMemPerCPU=500
SchedulerType=sched/backfill
ReturnToService=2
# Finished jobs stay in squeue for 5 min (what the plugin's squeue fallback needs).
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$P_DBD
# the munge socket for talking to slurmdbd (AuthInfo only covers the cluster daemons)
AccountingStoragePass=$RUN/munge.sock
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$mem $gres State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
  # A GPU GRES must name one character device per GPU (slurmd rejects plain files and
  # registers none without File=); any existing device will do, nothing opens it.
  {
    echo "AutoDetect=off"
    for ((i = 0; i < NGPU; i++)); do echo "NodeName=$NODE Name=gpu File=${devs[$i]}"; done
  } | put "$ETC/gres.conf" 644 && changed=0
  put "$ETC/slurmdbd.conf" 600 <<EOF && DBD_CHANGED=1
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.sock
DbdHost=localhost
DbdPort=$P_DBD
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$P_SQL
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
  return $changed
}

start_munge() {
  [ -s "$ETC/munge.key" ] || dd if=/dev/urandom of="$ETC/munge.key" bs=1024 count=1 status=none
  chmod 400 "$ETC/munge.key"
  running "$RUN/munged.pid" && return 0
  munged --force --socket="$RUN/munge.sock" --key-file="$ETC/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$DIR/munged.seed" \
    </dev/null >/dev/null 2>&1
  until_ok 10 munged sh -c "munge -S '$RUN/munge.sock' -n | unmunge -S '$RUN/munge.sock'"
  say "munged up (pid $(pid_of "$RUN/munged.pid"))"
}

sql() { mariadb --no-defaults --socket="$SQLRUN/mysqld.sock" -u root "$@"; }

start_mariadb() {
  install -d -o mysql -g mysql -m 750 "$SQLRUN"
  if [ ! -d "$SQLDATA/mysql" ]; then
    install -d -o mysql -g mysql -m 750 "$SQLDATA"
    mariadb-install-db --no-defaults --user=mysql --datadir="$SQLDATA" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
  fi
  if ! running "$SQLRUN/mariadbd.pid"; then
    # mariadbd stays in the foreground: detach it and close its stdio.
    setsid mariadbd --no-defaults --user=mysql --datadir="$SQLDATA" \
      --pid-file="$SQLRUN/mariadbd.pid" --socket="$SQLRUN/mysqld.sock" \
      --port="$P_SQL" --bind-address=127.0.0.1 --skip-name-resolve \
      --log-error="$LOG/mariadbd.log" </dev/null >/dev/null 2>&1 &
    until_ok 30 mariadbd sql -e 'SELECT 1'
    say "mariadbd up (pid $(pid_of "$SQLRUN/mariadbd.pid"))"
  fi
  sql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
  running "$RUN/slurmdbd.pid" && return 0
  slurmdbd </dev/null >/dev/null 2>&1     # daemonizes
  until_ok 30 slurmdbd sacctmgr -n list cluster
  say "slurmdbd up (pid $(pid_of "$RUN/slurmdbd.pid"))"
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null; }

start_slurm() {
  if ! running "$RUN/slurmctld.pid"; then
    slurmctld </dev/null >/dev/null 2>&1  # daemonizes
    until_ok 30 slurmctld scontrol ping
    say "slurmctld up (pid $(pid_of "$RUN/slurmctld.pid"))"
  fi
  if ! running "$RUN/slurmd.pid"; then
    slurmd </dev/null >/dev/null 2>&1     # daemonizes
    until_ok 10 slurmd test -s "$RUN/slurmd.pid"
    say "slurmd up (pid $(pid_of "$RUN/slurmd.pid"))"
  fi
  local n=0 st=""
  while :; do            # until the node takes jobs; resume it if an old config drained it
    st="$(node_state || true)"
    case "$st" in
      idle | mix | alloc) break ;;
      drain* | drng* | down*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    n=$((n + 1))
    [ "$n" -lt 150 ] || die "node $NODE is '$st', not idle (logs: $LOG)"
    sleep 0.2
  done
}

link_conf() {
  if [ -e "$LINK" ] || [ -L "$LINK" ]; then
    [ "$(readlink "$LINK")" = "$SLURM_CONF" ] && return 0
    die "$LINK exists and is not this cluster's; not replacing it"
  fi
  install -d -m 755 "$(dirname "$LINK")"
  ln -s "$SLURM_CONF" "$LINK"
}

unlink_conf() {
  if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$SLURM_CONF" ]; then rm -f "$LINK"; fi
}

do_start() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu)"
  if [ -e "$LINK" ] && [ "$(readlink "$LINK")" != "$SLURM_CONF" ]; then
    die "$LINK exists and is not this cluster's; not replacing it"
  fi
  install -d -m 755 "$DIR" "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d"
  install_missing
  DBD_CHANGED=0
  if write_configs; then  # node definition changed: restart both SLURM daemons
    halt slurmd slurmctld
  fi
  [ "$DBD_CHANGED" = 0 ] || halt slurmdbd
  link_conf
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  say "up: node $NODE, $NCPU CPUs, $NGPU fake GPUs, partitions debug (default) and gpu"
}

do_stop() {
  # Jobs first (by ID, this cluster's only), then the SLURM daemons, then what they use.
  if running "$RUN/slurmctld.pid"; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
  fi
  halt slurmd slurmctld
  halt slurmdbd mariadbd munged
  [ "${1:-}" = --keep-conf ] || unlink_conf
}

do_status() {
  local d f rc=0
  for d in $DAEMONS; do
    f="${d#*:}"
    if running "$f"; then echo "${d%%:*}: running (pid $(pid_of "$f"))"
    else echo "${d%%:*}: stopped"; rc=3; fi
  done
  [ "$rc" = 0 ] && sinfo
  return $rc
}

case "${1:-}" in
  start) do_start ;;
  stop) do_stop "${2:-}" ;;
  status) do_status ;;
  *) echo "usage: $0 start | stop [--keep-conf] | status" >&2; exit 2 ;;
esac
