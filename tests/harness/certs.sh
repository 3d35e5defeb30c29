#!/usr/bin/env bash
# outboxd test harness: makes the certificates the TLS tests use, with
# openssl, into DIR (created; files already there are replaced).
#
#   certs.sh DIR
#
# DIR then holds, all PEM, keys unencrypted and mode 0600:
#   ca.crt ca.key              the test CA
#   other-ca.crt               a CA that signed nothing here (a wrong sslrootcert)
#   server.crt server.key      for localhost and 127.0.0.1, signed by the CA
#   server-expired.crt/.key    the same names, expired in 2001
#   server-wronghost.crt/.key  for wrong.example only
#   client.crt client.key      CN=outboxd_cert (the user of PostgreSQL's cert
#                              authentication), also a Kafka mTLS client
#   client-expired.crt/.key    CN=outboxd_cert, expired in 2001
#   client-other-ca.crt/.key   CN=outboxd_cert, signed by other-ca
HARNESS_NAME=certs.sh
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
set -euo pipefail

(($# == 1)) || { echo "usage: $0 DIR" >&2; exit 64; }
dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v openssl >/dev/null || harness_die "openssl is not installed (Debian package openssl)"

# new_ca NAME: a self-signed CA, NAME.crt and NAME.key.
new_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outboxd test $1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/$1.key" -out "$dir/$1.crt" 2>/dev/null
}

# sign CA NAME CN SAN START END: NAME.key and NAME.crt for CN (SAN: a
# subjectAltName value, or "" for none), signed by CA, valid from START to
# END (openssl ca's YYYYMMDDHHMMSSZ).
sign() {
  local ca=$1 name=$2 cn=$3 san=$4 start=$5 end=$6
  local ext=$work/$name.ext
  {
    echo "[ext]"
    echo "basicConstraints = CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = serverAuth, clientAuth"
    [[ -n "$san" ]] && echo "subjectAltName = $san"
  } >"$ext"
  mkdir -p "$work/$ca"
  : >"$work/$ca/index.txt"
  [[ -f "$work/$ca/serial" ]] || openssl rand -hex 8 >"$work/$ca/serial"
  cat >"$work/$ca/ca.cnf" <<EOF
[ca]
default_ca = test
[test]
dir = $work/$ca
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
EOF
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$dir/$name.key" -out "$work/$name.csr" 2>/dev/null
  openssl ca -batch -notext -config "$work/$ca/ca.cnf" -cert "$dir/$ca.crt" -keyfile "$dir/$ca.key" \
    -startdate "$start" -enddate "$end" -extfile "$ext" -extensions ext \
    -in "$work/$name.csr" -out "$dir/$name.crt" 2>/dev/null
}

now=$(date -u -d "-1 hour" +%Y%m%d%H%M%SZ)  # a clock a little behind still accepts it
valid_until=$(date -u -d "+10 years" +%Y%m%d%H%M%SZ)
past_start=20000101000000Z
past_end=20010101000000Z

new_ca ca
new_ca other-ca
sign ca server localhost "DNS:localhost,IP:127.0.0.1" "$now" "$valid_until"
sign ca server-expired localhost "DNS:localhost,IP:127.0.0.1" "$past_start" "$past_end"
sign ca server-wronghost wrong.example "DNS:wrong.example" "$now" "$valid_until"
sign ca client outboxd_cert "" "$now" "$valid_until"
sign ca client-expired outboxd_cert "" "$past_start" "$past_end"
sign other-ca client-other-ca outboxd_cert "" "$now" "$valid_until"
rm -f "$dir/other-ca.key"
chmod 0600 "$dir"/*.key
chmod 0644 "$dir"/*.crt
harness_log "certificates in $dir"
