#!/usr/bin/env bash
# Call a protected gocred route (GET /v1/whoami) with a proof of possession made using only
# ssh-keygen, base64/openssl and curl — the encoding of docs/proofs.md, step by step.
#
#   GOCRED_BROKER=https://127.0.0.1:8443 GOCRED_TOKEN="$(gocred token)" SSH_KEY=~/.ssh/id_ed25519 \
#     CURL_CACERT=~/.local/share/gocred/dev/tls/ca.pem examples/proof-with-ssh-keygen.sh
#
# SSH_KEY may also be a public key file whose private half is in ssh-agent (SSH_AUTH_SOCK).
set -euo pipefail
: "${GOCRED_BROKER:?set GOCRED_BROKER to the broker origin}"
: "${GOCRED_TOKEN:?set GOCRED_TOKEN to an access token (gocred token)}"
: "${SSH_KEY:?set SSH_KEY to the key the token is bound to}"

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

broker=${GOCRED_BROKER%/}
prefix="$broker/"                        # the widest allowed prefix: the broker's origin + "/"
exp=$(( $(date +%s) + 300 ))             # at most 600 s ahead
token_hash=$(printf '%s' "$GOCRED_TOKEN" | openssl dgst -sha256 -binary | b64url)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'gocred-proof-v1\ntoken:%s\nprefix:%s\nexp:%s\n' "$token_hash" "$prefix" "$exp" > "$tmp/msg"
ssh-keygen -q -Y sign -n gocred-proof@v1 -f "$SSH_KEY" "$tmp/msg" 2>/dev/null   # writes msg.sig
# The armored signature's body is the base64 of the binary SSHSIG blob.
sig=$(sed '1d;$d' "$tmp/msg.sig" | tr -d '\n' | base64 -d | b64url)
proof="v1.$exp.$(printf '%s' "$prefix" | b64url).$sig"

curl -fsS ${CURL_CACERT:+--cacert "$CURL_CACERT"} \
  -H "Authorization: Bearer $GOCRED_TOKEN" -H "Gocred-Proof: $proof" "$broker/v1/whoami"
echo
