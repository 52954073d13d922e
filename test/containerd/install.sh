#!/usr/bin/env bash
# Install one containerd version for the end-to-end tests.
#
#   test/containerd/install.sh VERSION      # VERSION: 1.6.20 | 1.7.24 | 2.1.9
#
# The last line of stdout is the directory holding `containerd` and `ctr`.
# Idempotent: a version already installed is only verified.
#
# 1.6.20 is Debian 12's own package (installed system-wide with apt-get).
# Newer versions come from Debian's newer suites (1.7.24 from trixie, 2.1.9
# from sid, with fallbacks if those moved on): the .deb is
# fetched with a private apt configuration built from the mirror URIs this
# machine's own apt sources already use, and unpacked into the cache
#   ${WASISHIM_CACHE:-<repo>/.cache}/containerd/<version>/usr/bin
# without touching the system's packages.
set -euo pipefail

usage() { echo "usage: $0 1.6.20|1.7.24|2.1.9" >&2; exit 2; }
[ $# -eq 1 ] || usage
version=$1

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${WASISHIM_CACHE:-$repo/.cache}

log() { echo "install.sh: $*" >&2; }

# verify BINDIR: both binaries exist and containerd reports VERSION.
verify() {
    local bindir=$1 out
    [ -x "$bindir/containerd" ] && [ -x "$bindir/ctr" ] || return 1
    out=$("$bindir/containerd" --version 2>/dev/null) || return 1
    case "$out" in
        *" $version"* | *" v$version"*) return 0 ;;
        *) log "$bindir/containerd reports '$out', expected $version"; return 1 ;;
    esac
}

# The mirror URIs of the Debian archive (not -security, not third-party
# repositories) that this machine's apt already uses.
debian_uris() {
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            # deb822: a stanza's URIs and Suites; keep URIs of stanzas whose
            # suites are plain releases (not *-security).
            awk '
                function flush() {
                    if (uris != "" && suites != "" && suites !~ /security/) print uris
                    uris = ""; suites = ""
                }
                /^[[:space:]]*$/ { flush(); next }
                /^[[:space:]]*#/ { next }
                tolower($1) == "uris:"   { $1 = ""; uris = $0 }
                tolower($1) == "suites:" { $1 = ""; suites = $0 }
                END { flush() }
            ' "$f" | tr ' ' '\n'
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            # deb [options] URI SUITE COMPONENTS...
            awk '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i+1) !~ /security/) print $i
                }
            ' "$f"
        done
    } | grep -E '^[a-z]+://' | grep -E '/debian/?$' | sort -u
}

install_apt_system() {
    local bindir=/usr/bin
    if verify "$bindir"; then
        log "containerd $version already installed in $bindir"
    else
        if ! apt-cache policy containerd 2>/dev/null | grep -q "Candidate: $version"; then
            log "apt-get update"
            apt-get update -qq >&2
        fi
        log "apt-get install containerd runc"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "containerd=$version*" runc >&2
        verify "$bindir" || { log "containerd $version not usable in $bindir"; exit 1; }
    fi
    echo "$bindir"
}

# install_from_suites SUITE...: the first suite that has the version wins.
install_from_suites() {
    local dest=$cache/containerd/$version
    local bindir=$dest/usr/bin
    if verify "$bindir"; then
        log "containerd $version already installed in $bindir"
        echo "$bindir"
        return
    fi
    local suite
    for suite in "$@"; do
        if fetch_from_suite "$suite" "$dest"; then
            verify "$bindir" || { log "containerd $version not usable in $bindir"; exit 1; }
            echo "$bindir"
            return
        fi
    done
    log "containerd $version is in none of: $*"
    exit 1
}

# fetch_from_suite SUITE DEST: unpacks containerd $version from SUITE into
# DEST; returns 1 if SUITE does not have it.
fetch_from_suite() {
    local suite=$1 dest=$2
    local uris
    uris=$(debian_uris)
    [ -n "$uris" ] || { log "no Debian archive URI found in /etc/apt/sources.list{,.d}"; exit 1; }

    local aptdir=$cache/apt-$suite
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$aptdir/debs"
    local srclist=$aptdir/sources.list
    : >"$srclist.new"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    local uri
    for uri in $uris; do
        if [ -f "$keyring" ]; then
            echo "deb [signed-by=$keyring] $uri $suite main" >>"$srclist.new"
        else
            echo "deb $uri $suite main" >>"$srclist.new"
        fi
    done
    mv "$srclist.new" "$srclist"

    local opts=(
        -o "Dir::Etc::SourceList=$srclist"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::Cache::Archives=$aptdir/archives"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root"
    )

    # The exact Debian version string, e.g. 1.7.24~ds1-6.
    local debver=""
    find_debver() {
        apt-cache "${opts[@]}" madison containerd 2>/dev/null |
            awk -F'|' '{gsub(/ /, "", $2); print $2}' |
            grep -E "^$(printf '%s' "$version" | sed 's/\./\\./g')([~+-]|$)" | head -n1 || true
    }
    debver=$(find_debver)
    if [ -z "$debver" ]; then
        log "apt-get update ($suite)"
        # An unknown suite fails here; the caller tries the next one.
        apt-get "${opts[@]}" update -qq >&2 || log "apt-get update ($suite) failed"
        debver=$(find_debver)
    fi
    if [ -z "$debver" ]; then
        log "containerd $version not found in $suite; it has:"
        apt-cache "${opts[@]}" madison containerd >&2 || true
        rm -rf "$aptdir"
        return 1
    fi
    log "containerd $debver from $suite"

    # Called from an `if`, so `set -e` is off here: every step checks itself.
    local deb
    (cd "$aptdir/debs" && apt-get "${opts[@]}" download -qq "containerd=$debver" >&2) ||
        { log "apt-get download containerd=$debver failed"; exit 1; }
    deb=$(ls -t "$aptdir/debs"/containerd_*.deb | head -n1)
    [ -f "$deb" ] || { log "no .deb downloaded"; exit 1; }
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    dpkg-deb -x "$deb" "$dest.tmp" || { log "dpkg-deb -x $deb failed"; exit 1; }
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    echo "$debver" >"$dest/DEBIAN-VERSION"
    cp "$deb" "$dest/"
    # The package lists are large and only needed to find the .deb.
    rm -rf "$aptdir"
}

case "$version" in
    1.6.20) install_apt_system ;;
    # Later suites are fallbacks for when the first one has moved on.
    1.7.24) install_from_suites trixie trixie-updates ;;
    2.1.9) install_from_suites sid forky experimental ;;
    *) usage ;;
esac
