#!/usr/bin/env bash
# Installs what tandem needs on Debian 12, idempotently: DPDK 22.11 LTS and
# its headers, libclang for bindgen, and the lab's tools (iproute2, iperf3,
# curl, python3 and the Prometheus client's parser, ethtool, nftables; keepalived, conntrackd and conntrack for
# the Linux reference pair of bench-failover; systemd-analyze for the units
# of dist/systemd; rsyslog, the lab's syslog collector; swtpm and
# tpm2-tools, a software TPM per node and the TPM stack tandem drives). Safe to run again;
# fast when done.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config libclang-dev
  libdpdk-dev dpdk dpdk-dev librte-net-pcap23
  iproute2 iputils-ping iperf3 curl python3 python3-prometheus-client ethtool nftables procps kmod util-linux coreutils
  keepalived conntrackd conntrack
  systemd rsyslog
  swtpm swtpm-tools tpm2-tools
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "install-deps: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
pkg-config --atleast-version=22.11 libdpdk || { echo "install-deps: DPDK >= 22.11 not found by pkg-config" >&2; exit 1; }
echo "install-deps: DPDK $(pkg-config --modversion libdpdk), $(cargo --version)"
