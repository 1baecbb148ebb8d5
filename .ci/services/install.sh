#!/usr/bin/env bash
# Installs the programs the launcher tests of dagger-net drive for real (OpenSSH, a
# single-node Slurm with munge, Open MPI) and does the root-level preparation they need.
#
# The tests start their own daemons on 127.0.0.1 with throwaway keys, configuration and
# state in temp dirs, and stop them by pid: nothing here starts a service. Packages already
# installed are not touched, so a second run takes well under a second.
#
# Usage: .ci/services/install.sh     (as root, or as a user with sudo)
set -euo pipefail

packages=(openssh-server openssh-client slurmd slurmctld slurm-client munge openmpi-bin)
# The programs the tests need, by package above.
programs=(sshd ssh ssh-keygen slurmd slurmctld srun salloc sinfo squeue scancel munged mpirun)

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    echo "install.sh: needs root or sudo to install ${packages[*]}" >&2
    exit 1
fi

have_all() {
    local p
    for p in "${programs[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$p" >/dev/null 2>&1 || return 1
    done
}

if ! have_all; then
    missing=()
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    echo "install.sh: installing ${missing[*]}"
    # Never start the packaged services while installing (the tests run their own).
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    apt_install() {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/tmp/dagger-services-apt.log 2>&1
    }
    # Fresh images often have no package lists: update only when the install needs it.
    if ! apt_install; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            >>/tmp/dagger-services-apt.log 2>&1
        apt_install || { tail -n 30 /tmp/dagger-services-apt.log >&2; exit 1; }
    fi
    [ "$made_policy" -eq 0 ] || "${sudo[@]}" rm -f "$policy"
    have_all || { echo "install.sh: programs still missing after install" >&2; exit 1; }
fi

# sshd refuses to start (as root) without its privilege separation directory.
"${sudo[@]}" mkdir -p /run/sshd
"${sudo[@]}" chmod 755 /run/sshd

echo "install.sh: ready: $(dpkg-query -W -f='${Package} ${Version}\n' "${packages[@]}" | paste -sd, -)"
