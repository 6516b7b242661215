#!/bin/bash
# usage: run.sh <http-01|tls-alpn-01> [eab]
set -e
cd /tmp/pebble-run
read ACME MGMT HTTP TLS DNS CTS < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
EAB=false; [ "$2" = eab ] && EAB=true
cat > pebble.json <<JSON
{"pebble":{"listenAddress":"127.0.0.1:$ACME","managementListenAddress":"127.0.0.1:$MGMT",
 "certificate":"/tmp/pebble-run/rc/cert.pem","privateKey":"/tmp/pebble-run/rc/key.pem",
 "httpPort":$HTTP,"tlsPort":$TLS,"ocspResponderURL":"",
 "externalAccountBindingRequired":$EAB,
 "externalAccountMACKeys":{"kid-1":"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"},
 "certificateValidityPeriod":3600}}
JSON
pebble-challtestsrv -dns01 127.0.0.1:$DNS -http01 "" -https01 "" -tlsalpn01 "" \
  -management 127.0.0.1:$CTS -defaultIPv4 127.0.0.1 -defaultIPv6 "" > cts.log 2>&1 &
CPID=$!
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=${NONCEREJECT:-0} PEBBLE_AUTHZREUSE=${AUTHZREUSE:-0} \
  pebble -config pebble.json -dnsserver 127.0.0.1:$DNS > pebble.log 2>&1 &
PPID2=$!
trap 'kill $PPID2 $CPID 2>/dev/null' EXIT
for i in $(seq 50); do curl -s --cacert rc/ca.pem https://127.0.0.1:$ACME/dir >/dev/null && break; sleep 0.1; done
echo "ports acme=$ACME mgmt=$MGMT http=$HTTP tls=$TLS dns=$DNS cts=$CTS"
EABARGS=(); $EAB && EABARGS=(kid-1 zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W)
/tmp/acme-scratch/target/debug/acme-scratch https://127.0.0.1:$ACME/dir rc/ca.pem ${DOMAIN:-app.test} $HTTP $TLS $1 "${EABARGS[@]}"
curl -s --cacert rc/ca.pem https://127.0.0.1:$MGMT/roots/0 > root.pem
curl -s --cacert rc/ca.pem https://127.0.0.1:$MGMT/intermediates/0 > intermediate.pem
openssl verify -CAfile root.pem -untrusted /tmp/acme-scratch/chain.pem /tmp/acme-scratch/chain.pem
openssl x509 -in /tmp/acme-scratch/chain.pem -noout -subject -issuer -dates -ext subjectAltName
