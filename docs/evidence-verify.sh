#!/bin/sh
# Verifies an unpacked Cofre evidence pack with openssl alone (OpenSSL 3.0 or later).
#
#   tar xf cofre-evidence-obras-2026-07-01-2026-09-30.tar
#   cd cofre-evidence-obras-2026-07-01-2026-09-30
#   sh verify.sh /path/to/the/cofre-ca.pem-you-trust
#
# The CA given as the first argument is the one you trust (from your administrator, or check
# `openssl x509 -in ca.pem -noout -fingerprint -sha256` against the fingerprint you were given).
# Without an argument the pack's own ca.pem is used, which proves integrity but not origin.
# Exit status 0: the pack is exactly as Cofre signed it.
set -eu
ca="${1:-ca.pem}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The signing certificate was issued by the CA, for Cofre's audit signing key.
openssl verify -CAfile "$ca" audit/signing-certificate.pem
openssl x509 -in audit/signing-certificate.pem -noout -subject | grep -q 'CN *= *cofre-audit-signing'

# 2. The manifest is signed by that certificate's key (Ed25519).
openssl x509 -in audit/signing-certificate.pem -noout -pubkey > "$tmp/signer.pem"
openssl pkeyutl -verify -pubin -inkey "$tmp/signer.pem" -rawin -in MANIFEST.sha256 -sigfile MANIFEST.sha256.sig

# 3. Every file matches its SHA-256 in the manifest, and no file was added.
while read -r sum file; do
    got="$(openssl dgst -sha256 -r "$file" | cut -d' ' -f1)"
    if [ "$got" != "$sum" ]; then
        echo "FAILED: $file does not match the manifest" >&2
        exit 1
    fi
    echo "$file" >> "$tmp/listed"
done < MANIFEST.sha256
find . -type f ! -name MANIFEST.sha256 ! -name MANIFEST.sha256.sig | sed 's|^\./||' | sort > "$tmp/present"
sort "$tmp/listed" > "$tmp/listed.sorted"
if ! cmp -s "$tmp/present" "$tmp/listed.sorted"; then
    echo "FAILED: files not in the manifest:" >&2
    comm -23 "$tmp/present" "$tmp/listed.sorted" >&2
    exit 1
fi
echo "OK: the evidence pack is intact and signed by Cofre's audit key"
