#!/usr/bin/env bash
# make test-matrix: the whole pytest suite on the QGIS versions users run besides Debian 12's 3.22,
# each in a Debian chroot built once and cached under .build/matrix/<suite>/ (gitignored):
#   QGIS 3.40 LTR  Debian 13 "trixie"
#   QGIS 3.44 LTR  Debian's development suite "sid"
# Usage: scripts/test_matrix.sh [3.40|3.44|trixie|sid ...] [-- pytest arguments]
#   (MATRIX="3.40" and PYTEST_ARGS="-x tests/test_dock.py" do the same from make).
# Needs root (debootstrap, chroot, bind mounts) and Debian's mirror. A chroot whose build did not
# finish is remade; one whose package list or requirements changed is brought up to date.
#
# In the chroot: Debian's QGIS stack (the same packages as the Makefile's APT_PACKAGES, recommends
# included as on the host), and a venv on its /usr/bin/python3 with --system-site-packages holding
# requirements.txt, constrained to the chroot's own Debian numpy/pandas/rasterio… (constraints.txt
# pins Debian 12's, which these suites do not have). The code under test is a clone of this work
# tree (its tracked files as they are, uncommitted edits included) in .build/matrix/<suite>/src,
# bind-mounted at /work/cloudprob (outside root's home); its .venv is a link to the chroot's venv.
# Every mount is undone on exit, on failure too, and every process left in the chroot is ended.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${MATRIX_MIRROR:-http://deb.debian.org/debian}"
# what the suite needs, as the Makefile's APT_PACKAGES, plus what the chroot lacks that the host has:
# proj-data (PROJ's grids), git (make_zip.sh), make, ca-certificates (replaced by the host's bundle)
APT_PACKAGES=(qgis python3-qgis qgis-providers python3-rasterio python3-scipy python3-geopandas gdal-bin
              python3-matplotlib python3-venv python3-pip nginx-light xvfb openssl proj-data git make
              ca-certificates)
# per suite: what the tests need besides. sid's Python is 3.14, for which the published 2024 release's
# pinned libraries (tests/published_requirements.txt: rasterio 1.4.3…) have no wheels; its oracle
# runs on sid's python3.13 (tests/test_published_variant.py reads CLOUDPROB_PUBLISHED_PYTHON)
declare -A EXTRA_APT=([trixie]="" [sid]="python3.13-venv")
declare -A EXTRA_ENV=([trixie]="" [sid]="CLOUDPROB_PUBLISHED_PYTHON=/usr/bin/python3.13")
# the Python packages Debian compiles for QGIS: pip must keep the chroot's versions of them
DEBIAN_PINNED=(numpy scipy pandas shapely pyproj rasterio geopandas)
INNER=/work/cloudprob   # the clone, inside the chroot
VENV=/opt/cloudprob-venv # the venv, inside the chroot

declare -A SUITE_OF=([3.40]=trixie [3.44]=sid [trixie]=trixie [sid]=sid)
declare -A LABEL_OF=([trixie]="QGIS 3.40 LTR (Debian 13 trixie)" [sid]="QGIS 3.44 LTR (Debian sid)")

suites=()
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; pytest_args=("$@"); break ;;
        *) [ -n "${SUITE_OF[$1]:-}" ] || { echo "test_matrix.sh: unknown version $1 (3.40, 3.44)" >&2; exit 2; }
           suites+=("${SUITE_OF[$1]}") ;;
    esac
    shift
done
if [ ${#suites[@]} -eq 0 ]; then
    for v in ${MATRIX:-3.40 3.44}; do
        [ -n "${SUITE_OF[$v]:-}" ] || { echo "test_matrix.sh: unknown version $v (3.40, 3.44)" >&2; exit 2; }
        suites+=("${SUITE_OF[$v]}")
    done
fi
if [ ${#pytest_args[@]} -eq 0 ] && [ -n "${PYTEST_ARGS:-}" ]; then
    read -r -a pytest_args <<<"$PYTEST_ARGS"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test_matrix.sh: needs root (debootstrap, chroot, bind mounts)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || "$root/scripts/install_system.sh" debootstrap

# ---- mounts, always undone -------------------------------------------------------------------
MOUNTED=()  # mount points, in the order made
CHROOT=""
end_chroot_processes() {  # every process whose root is the chroot: only this script's children live there
    [ -n "$CHROOT" ] || return 0
    local pid link left
    for signal in TERM KILL; do
        left=0
        for link in /proc/[0-9]*/root; do
            pid="${link#/proc/}"; pid="${pid%/root}"
            if [ "$(readlink "$link" 2>/dev/null)" = "$CHROOT" ]; then
                kill "-$signal" "$pid" 2>/dev/null && left=1
            fi
        done
        [ $left -eq 1 ] && [ $signal = TERM ] && sleep 2
    done
    return 0
}
unmount_all() {
    end_chroot_processes
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTED[$i]}" 2>/dev/null || umount -R -l "${MOUNTED[$i]}" \
            || echo "test_matrix.sh: could not unmount ${MOUNTED[$i]}" >&2
    done
    MOUNTED=()
}
trap unmount_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_chroot() {  # $1 chroot, $2 the clone to bind at $INNER (optional)
    local dir="$1"
    CHROOT="$(readlink -f "$dir")"
    # rslave: unmounting the chroot's /dev or /sys must never reach the host's
    mount --rbind /dev "$dir/dev"; mount --make-rslave "$dir/dev"; MOUNTED+=("$dir/dev")
    mount --bind /proc "$dir/proc"; MOUNTED+=("$dir/proc")
    mount --rbind /sys "$dir/sys"; mount --make-rslave "$dir/sys"; MOUNTED+=("$dir/sys")
    if [ -n "${2:-}" ]; then
        mkdir -p "$dir$INNER"
        mount --bind "$2" "$dir$INNER"; MOUNTED+=("$dir$INNER")
    fi
}

in_chroot() {  # $1 chroot, then a bash command run in it with a clean environment
    local dir="$1"; shift
    chroot "$dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PROJ_DATA=/usr/share/proj \
        QT_QPA_PLATFORM=offscreen /bin/bash -euo pipefail -c "$*"
}

# ---- build (once) ----------------------------------------------------------------------------
build_key() {  # $1 suite. What a built chroot depends on: a change redoes its packages and venv, not the base
    { printf '%s\n' "${APT_PACKAGES[@]}" ${EXTRA_APT[$1]} "${DEBIAN_PINNED[@]}"; cat "$root/requirements.txt";
      grep -v -E "^($(IFS='|'; echo "${DEBIAN_PINNED[*]}"))==" "$root/constraints.txt";
      cat /etc/ssl/certs/ca-certificates.crt; } | sha256sum | cut -d' ' -f1
}

build() {  # $1 suite
    local suite="$1" dir="$root/.build/matrix/$1" chroot="$root/.build/matrix/$1/root" start key fresh=0
    key="$(build_key "$suite")"
    if [ -f "$dir/built" ] && [ "$(cat "$dir/built")" = "$key" ]; then
        echo "== $suite: chroot cached in $chroot (built in $(cat "$dir/build-seconds" 2>/dev/null || echo ?) s)"
        return 0
    fi
    start=$SECONDS
    mkdir -p "$dir"
    if [ ! -f "$chroot/.debootstrap-done" ]; then
        if findmnt -rn -o TARGET | grep -q "^$dir/"; then
            echo "test_matrix.sh: something is still mounted under $dir; not removing it" >&2
            exit 1
        fi
        rm -rf "$chroot"
        echo "== $suite: debootstrap --variant=minbase $suite $chroot $MIRROR"
        debootstrap --variant=minbase "$suite" "$chroot" "$MIRROR" >"$dir/debootstrap.log" 2>&1 \
            || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
        touch "$chroot/.debootstrap-done"
        fresh=1
    fi
    cp /etc/resolv.conf "$chroot/etc/resolv.conf"
    # no service starts at install time (nginx-light would start on port 80 and hold the mounts)
    printf '#!/bin/sh\nexit 101\n' >"$chroot/usr/sbin/policy-rc.d"; chmod 755 "$chroot/usr/sbin/policy-rc.d"
    mount_chroot "$chroot"
    echo "== $suite: apt-get install ${APT_PACKAGES[*]} ${EXTRA_APT[$suite]}"
    # sid's Release file may be past its Valid-Until date
    in_chroot "$chroot" "apt-get -o Acquire::Check-Valid-Until=false update -qq &&
        apt-get -o Acquire::Check-Valid-Until=false install -y -qq ${APT_PACKAGES[*]} ${EXTRA_APT[$suite]} \
            >/var/log/cloudprob-apt.log 2>&1 \
        || { tail -30 /var/log/cloudprob-apt.log; exit 1; }
        apt-get clean"
    # the host's CA bundle and pip configuration (its constraints file only caps torch); after the
    # install, since ca-certificates writes its own bundle
    cp /etc/ssl/certs/ca-certificates.crt "$chroot/etc/ssl/certs/ca-certificates.crt"
    for conf in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt; do
        [ -f "$conf" ] && install -D -m 644 "$conf" "$chroot$conf"
    done
    # the chroot's own Debian versions of the compiled packages, and constraints.txt's other pins
    mkdir -p "$chroot$VENV"
    grep -v -E "^($(IFS='|'; echo "${DEBIAN_PINNED[*]}"))==" "$root/constraints.txt" >"$chroot/opt/constraints-matrix.txt"
    cp "$root/requirements.txt" "$chroot/opt/requirements.txt"
    echo "== $suite: venv $VENV (--system-site-packages) with requirements.txt"
    in_chroot "$chroot" "
        /usr/bin/python3 - ${DEBIAN_PINNED[*]} >>/opt/constraints-matrix.txt <<'EOF'
import sys
from importlib.metadata import version
for name in sys.argv[1:]:
    print(f'{name}=={version(name)}')
EOF
        test -x $VENV/bin/python || /usr/bin/python3 -m venv --system-site-packages $VENV
        $VENV/bin/python -m pip install -q --disable-pip-version-check -c /opt/constraints-matrix.txt \
            -r /opt/requirements.txt"
    unmount_all
    if [ $fresh = 1 ] || [ ! -f "$dir/build-seconds" ]; then
        echo $((SECONDS - start)) >"$dir/build-seconds"; rm -f "$dir/update-seconds"
    else  # the base was there: only its packages and venv were brought up to date
        echo $((SECONDS - start)) >"$dir/update-seconds"
    fi
    echo "$key" >"$dir/built"
    echo "== $suite: built in $((SECONDS - start)) s"
}

# ---- run -------------------------------------------------------------------------------------
clone() {  # $1 suite: the work tree's tracked files, as they are, in a clone of its own
    local src="$root/.build/matrix/$1/src" diff
    if [ ! -d "$src/.git" ]; then
        rm -rf "$src"
        git clone -q --no-hardlinks "$root" "$src"
    fi
    git -C "$src" fetch -q "$root" HEAD
    git -C "$src" checkout -q --force --detach FETCH_HEAD
    git -C "$src" clean -q -f -d  # untracked files go; ignored ones (.build caches, .venv) stay
    diff="$(git -C "$root" diff HEAD --binary)"
    if [ -n "$diff" ]; then
        git -C "$src" apply --whitespace=nowarn <<<"$diff"
    fi
    ln -sfn "$VENV" "$src/.venv"
}

run() {  # $1 suite; writes .build/matrix/<suite>/{pytest.log,warnings.jsonl,summary.txt}
    local suite="$1" dir="$root/.build/matrix/$1" chroot="$root/.build/matrix/$1/root" start status=0 site
    clone "$suite"
    site="$(ls -d "$chroot$VENV"/lib/python3*/site-packages | head -n1)"
    # the warnings recorder, a pytest plugin in the venv (not on PYTHONPATH, which subprocesses inherit)
    cp "$root/scripts/matrix_warnings.py" "$site/cloudprob_matrix_warnings.py"
    rm -f "$dir/warnings.jsonl"
    mount_chroot "$chroot" "$dir/src"
    echo "== $suite: pytest ${pytest_args[*]}"
    start=$SECONDS
    in_chroot "$chroot" "cd $INNER && MATRIX_WARNINGS_LOG=/tmp/cloudprob-warnings.jsonl; rm -f \$MATRIX_WARNINGS_LOG;
        export MATRIX_WARNINGS_LOG ${EXTRA_ENV[$suite]}
        exec .venv/bin/python -m pytest -p cloudprob_matrix_warnings ${pytest_args[*]}" \
        2>&1 | tee "$dir/pytest.log" || status=$?
    echo $((SECONDS - start)) >"$dir/run-seconds"
    unmount_all
    [ -f "$chroot/tmp/cloudprob-warnings.jsonl" ] && mv "$chroot/tmp/cloudprob-warnings.jsonl" "$dir/warnings.jsonl"
    summarise "$suite" "$status" >"$dir/summary.txt"
    return "$status"
}

summarise() {  # $1 suite, $2 pytest's exit status
    local suite="$1" dir="$root/.build/matrix/$1" chroot="$root/.build/matrix/$1/root" versions
    versions="$(chroot "$chroot" /usr/bin/env -i /bin/sh -c \
        "dpkg-query -W -f='\${Version}' qgis; printf ', Python '; python3 -c 'import platform; print(platform.python_version())'")"
    echo "== ${LABEL_OF[$suite]}: qgis $versions"
    echo "   pytest exit status $2: $(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$dir/pytest.log" | tail -n1 | tr -d =)"
    echo "   build $(cat "$dir/build-seconds") s (once, cached$([ -f "$dir/update-seconds" ] && \
        echo "; last brought up to date in $(cat "$dir/update-seconds") s")), run $(cat "$dir/run-seconds") s"
    python3 "$root/scripts/matrix_warnings.py" "$dir/warnings.jsonl" "$INNER"
}

overall=0
for suite in "${suites[@]}"; do
    build "$suite"
done
for suite in "${suites[@]}"; do
    run "$suite" || overall=1
done
echo
for suite in "${suites[@]}"; do
    cat "$root/.build/matrix/$suite/summary.txt"
done
exit $overall
