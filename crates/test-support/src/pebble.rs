//! A real ACME server for berth's ACME integration tests: [Pebble] (Let's Encrypt's test CA)
//! plus `pebble-challtestsrv` as its DNS server, both on loopback, in a fresh temp dir, stopped
//! when the [`Pebble`] value is dropped.
//!
//! What this sets up (see `docs/research/acme.md`, sections 2 and 4):
//!
//! - a throwaway CA and a listener certificate for Pebble's own HTTPS endpoints (Debian's package
//!   ships none), made with the `openssl` CLI; the ACME client under test trusts
//!   [`Pebble::ca_pem_path`];
//! - `pebble-challtestsrv` answering every A query with 127.0.0.1 (and no AAAA), so any test
//!   name (`app.test`) resolves to loopback, where berth's listeners are; all its challenge
//!   responders are disabled, so nothing binds on all interfaces;
//! - `pebble` with its validation authority pointed at berth's HTTP port (HTTP-01) and HTTPS
//!   port (TLS-ALPN-01), without random VA sleeps, nonce rejections or authorization reuse, so
//!   tests are fast and deterministic.
//!
//! Pebble regenerates its roots and forgets all accounts and orders at every start: each
//! [`Pebble`] is a fresh CA.
//!
//! [Pebble]: https://github.com/letsencrypt/pebble

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The Pebble server binary (Debian package `pebble`).
const PEBBLE: &str = "pebble";
/// Pebble's companion mock DNS server (same package).
const CHALLTESTSRV: &str = "pebble-challtestsrv";
/// How long each process gets to come up before the start counts as failed.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports are picked this many times when a picked port was taken before the process
/// could bind it (ports are picked by binding port 0 and releasing it: a small race).
const START_ATTEMPTS: usize = 3;
/// The key id of the one external account binding key, when EAB is required.
const EAB_KID: &str = "berth-test-kid";

/// How to configure a [`Pebble`].
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Port on 127.0.0.1 that Pebble's VA connects to for HTTP-01 (berth's HTTP listener).
    pub http_port: u16,
    /// Port on 127.0.0.1 that Pebble's VA connects to for TLS-ALPN-01 (berth's HTTPS listener).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds (`None`: Pebble's default, about 5 years). Short
    /// periods make renewal testable.
    pub validity_secs: Option<u64>,
    /// Require external account binding; the harness then configures one key and exposes it
    /// through [`Pebble::eab`].
    pub eab: bool,
}

/// A running Pebble and its DNS server, on ephemeral loopback ports; both processes are
/// killed when this is dropped.
pub struct Pebble {
    /// `pebble` itself (ACME API and management API).
    pebble: Child,
    /// `pebble-challtestsrv` (mock DNS for the VA).
    challtestsrv: Child,
    /// Certificates, config and logs; removed on drop.
    dir: tempfile::TempDir,
    /// Pebble's ACME listener (`/dir`).
    acme: SocketAddr,
    /// Pebble's management listener (`/roots/0`, `/intermediates/0`, ...), HTTPS.
    mgmt: SocketAddr,
    /// challtestsrv's management API (`/add-a`, ...), plain HTTP.
    dns_mgmt: SocketAddr,
    /// The throwaway CA that signed Pebble's listener certificate.
    ca_pem: PathBuf,
    /// (kid, base64url HMAC key) when EAB is required.
    eab: Option<(String, String)>,
}

/// Why one start attempt failed.
struct StartError {
    /// A picked port was taken by someone else: worth retrying with fresh ports.
    port_clash: bool,
    message: String,
}

impl Pebble {
    /// Are `pebble`, `pebble-challtestsrv`, `openssl` and `curl` installed? If not, print a loud
    /// SKIPPED line (so a skipped test is visible in the output) and return `false`:
    ///
    /// ```no_run
    /// use berth_test_support::pebble::{Pebble, PebbleOptions};
    ///
    /// if !Pebble::available() {
    ///     return;
    /// }
    /// let pebble = Pebble::start(PebbleOptions { http_port: 8080, tls_port: 8443, ..Default::default() });
    /// println!("{}", pebble.directory_url());
    /// ```
    pub fn available() -> bool {
        let missing: Vec<&str> = [PEBBLE, CHALLTESTSRV, "openssl", "curl"]
            .into_iter()
            .filter(|b| find_in_path(b).is_none())
            .collect();
        if missing.is_empty() {
            return true;
        }
        eprintln!(
            "!!! SKIPPED: ACME test needs {} on PATH (apt install pebble openssl curl) !!!",
            missing.join(", ")
        );
        false
    }

    /// Generate the listener certificate, write the config, start challtestsrv and Pebble, and
    /// wait until Pebble's directory answers. Panics with the processes' log tails if they do
    /// not come up.
    pub fn start(opts: PebbleOptions) -> Pebble {
        let mut last = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&opts) {
                Ok(p) => return p,
                Err(e) if e.port_clash && attempt < START_ATTEMPTS => {
                    eprintln!(
                        "pebble harness: port clash, retrying with fresh ports:\n{}",
                        e.message
                    );
                    last = e.message;
                }
                Err(e) => panic!("starting Pebble failed: {}", e.message),
            }
        }
        panic!("starting Pebble failed {START_ATTEMPTS} times on port clashes: {last}")
    }

    /// One attempt: fresh temp dir, fresh ports.
    fn try_start(opts: &PebbleOptions) -> Result<Pebble, StartError> {
        let fatal = |message: String| StartError {
            port_clash: false,
            message,
        };
        let dir = tempfile::Builder::new()
            .prefix("berth-pebble-")
            .tempdir()
            .map_err(|e| fatal(format!("cannot create a temp dir: {e}")))?;
        let certs = make_listener_certs(dir.path()).map_err(fatal)?;
        let eab = if opts.eab {
            Some((EAB_KID.to_string(), random_b64url(48).map_err(fatal)?))
        } else {
            None
        };

        let [acme, mgmt, cts] = pick_tcp_ports::<3>();
        let dns = pick_dns_port();
        let (acme, mgmt, dns_mgmt, dns) =
            (loopback(acme), loopback(mgmt), loopback(cts), loopback(dns));

        let config = pebble_config(opts, acme, mgmt, &certs, eab.as_ref());
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string())
            .map_err(|e| fatal(format!("cannot write {}: {e}", config_path.display())))?;

        // challtestsrv first: Pebble's VA needs its DNS once validations start.
        let cts_log = dir.path().join("challtestsrv.log");
        let mut challtestsrv = spawn_logged(
            Command::new(CHALLTESTSRV).args([
                "-dns01",
                &dns.to_string(),
                // Disable every challenge responder (they default to all interfaces).
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &dns_mgmt.to_string(),
                "-defaultIPv4",
                "127.0.0.1",
                // No AAAA answers: the VA would otherwise try ::1 first.
                "-defaultIPv6",
                "",
            ]),
            &cts_log,
        )
        .map_err(fatal)?;
        if let Err(e) = wait_challtestsrv(&mut challtestsrv, dns, dns_mgmt, &cts_log) {
            stop(&mut challtestsrv);
            return Err(e);
        }

        let pebble_log = dir.path().join("pebble.log");
        let pebble = match spawn_logged(
            Command::new(PEBBLE)
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &dns.to_string()])
                // No random 0-5 s sleep before each validation.
                .env("PEBBLE_VA_NOSLEEP", "1")
                // No rejected good nonces (default 5 %: flaky issuances).
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                // Every order gets fresh authorizations (default: 50 % reuse).
                .env("PEBBLE_AUTHZREUSE", "0"),
            &pebble_log,
        ) {
            Ok(c) => c,
            Err(e) => {
                stop(&mut challtestsrv);
                return Err(fatal(e));
            }
        };
        let mut p = Pebble {
            pebble,
            challtestsrv,
            dir,
            acme,
            mgmt,
            dns_mgmt,
            ca_pem: certs.ca,
            eab,
        };
        // From here on, Drop stops both processes on every error path.
        p.wait_pebble()?;
        Ok(p)
    }

    /// Poll until `GET /dir` answers 200 over TLS with our CA, or Pebble exits, or time runs out.
    fn wait_pebble(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = self.directory_url();
        loop {
            if let Ok(Some(status)) = self.pebble.try_wait() {
                let log = self.logs();
                return Err(StartError {
                    port_clash: log.contains("address already in use"),
                    message: format!(
                        "pebble exited with {status} before serving {url}\n{}",
                        self.log_tails()
                    ),
                });
            }
            // A cheap connect first: spawn curl only once something listens.
            if TcpStream::connect_timeout(&self.acme, Duration::from_millis(200)).is_ok() {
                match curl(&self.ca_pem, &url) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(StartError {
                            port_clash: false,
                            message: format!(
                                "pebble did not serve {url} within {STARTUP_TIMEOUT:?}: {e}\n{}",
                                self.log_tails()
                            ),
                        })
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError {
                    port_clash: false,
                    message: format!(
                        "pebble did not listen on {} within {STARTUP_TIMEOUT:?}\n{}",
                        self.acme,
                        self.log_tails()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ACME directory URL, `https://127.0.0.1:<port>/dir`, for the client under test.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// PEM file of the throwaway CA that signed Pebble's own HTTPS listener certificate (SANs
    /// `IP:127.0.0.1`, `DNS:localhost`): the root the ACME client must trust to talk to Pebble.
    /// Not the CA that signs issued certificates (that is [`Pebble::root_pem`]).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// The root certificate (PEM) that issued certificates chain up to, from Pebble's
    /// management API (`/roots/0`). Pebble makes a new one at every start. Use it to verify
    /// the chains berth obtains (they are leaf + intermediate).
    pub fn root_pem(&self) -> String {
        let url = format!("https://{}/roots/0", self.mgmt);
        let pem = curl(&self.ca_pem, &url)
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.log_tails()));
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "GET {url} did not return a PEM certificate: {pem:?}"
        );
        pem
    }

    /// `(kid, HMAC key)` of the external account binding key when the options asked for EAB.
    /// The key is base64url (no padding), as ACME servers hand it out: decode it to bytes
    /// before giving it to the client library (instant-acme's `ExternalAccountKey::new`).
    pub fn eab(&self) -> Option<(String, String)> {
        self.eab.clone()
    }

    /// challtestsrv's management API (plain HTTP), e.g. to give a name another address:
    /// `POST http://<addr>/add-a {"host":"foo.test","addresses":["127.0.0.9"]}`. By default
    /// every name resolves to 127.0.0.1 (and has no AAAA record).
    pub fn dns_mgmt(&self) -> SocketAddr {
        self.dns_mgmt
    }

    /// Process ids of (pebble, pebble-challtestsrv), for tests that check cleanup.
    pub fn pids(&self) -> (u32, u32) {
        (self.pebble.id(), self.challtestsrv.id())
    }

    /// Both processes' complete logs (Pebble's logs every request and validation): print this
    /// when an issuance fails.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- pebble.log ---\n{}--- challtestsrv.log ---\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    /// The last lines of both logs, for panic messages.
    fn log_tails(&self) -> String {
        format!(
            "--- pebble.log (tail) ---\n{}--- challtestsrv.log (tail) ---\n{}",
            tail(&self.dir.path().join("pebble.log")),
            tail(&self.dir.path().join("challtestsrv.log"))
        )
    }
}

impl Drop for Pebble {
    /// Kill and reap both processes (they hold no state worth a graceful stop); the temp dir
    /// goes after.
    fn drop(&mut self) {
        stop(&mut self.pebble);
        stop(&mut self.challtestsrv);
    }
}

/// Kill and reap `child` (errors ignored: it may have exited already).
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Paths of the generated listener certificate files.
struct ListenerCerts {
    /// The throwaway CA (trusted by clients of Pebble).
    ca: PathBuf,
    /// Pebble's listener certificate (signed by `ca`).
    cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    key: PathBuf,
}

/// Make a throwaway CA and a listener certificate for Pebble (SANs `IP:127.0.0.1`,
/// `DNS:localhost`) in `dir` with the `openssl` CLI. Our own config file is used so the
/// system's `openssl.cnf` defaults play no part.
fn make_listener_certs(dir: &Path) -> Result<ListenerCerts, String> {
    let cnf = dir.join("openssl.cnf");
    std::fs::write(
        &cnf,
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         CN = berth test: Pebble listener CA\n\
         [ca_ext]\n\
         basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [leaf_ext]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", cnf.display()))?;
    let p = |name: &str| dir.join(name);
    let (ca_key, ca, key, csr, cert) = (
        p("ca-key.pem"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
    );
    let ec_key = |out: &Path| -> Vec<std::ffi::OsString> {
        [
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ]
        .iter()
        .map(Into::into)
        .chain([out.as_os_str().to_owned()])
        .collect()
    };
    openssl(&ec_key(&ca_key))?;
    openssl(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-x509".as_ref(),
        "-config".as_ref(),
        cnf.as_os_str(),
        "-extensions".as_ref(),
        "ca_ext".as_ref(),
        "-key".as_ref(),
        ca_key.as_os_str(),
        "-days".as_ref(),
        "3650".as_ref(),
        "-out".as_ref(),
        ca.as_os_str(),
    ])?;
    openssl(&ec_key(&key))?;
    openssl(&[
        "req".as_ref(),
        "-new".as_ref(),
        "-config".as_ref(),
        cnf.as_os_str(),
        "-subj".as_ref(),
        "/CN=localhost".as_ref(),
        "-key".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
    ])?;
    openssl(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        ca.as_os_str(),
        "-CAkey".as_ref(),
        ca_key.as_os_str(),
        "-set_serial".as_ref(),
        "2".as_ref(),
        "-days".as_ref(),
        "3650".as_ref(),
        "-extfile".as_ref(),
        cnf.as_os_str(),
        "-extensions".as_ref(),
        "leaf_ext".as_ref(),
        "-out".as_ref(),
        cert.as_os_str(),
    ])?;
    Ok(ListenerCerts { ca, cert, key })
}

/// Run `openssl <args>`; on failure, the command line and its stderr.
fn openssl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<Vec<u8>, String> {
    let shown = || {
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl (apt install openssl): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// `n` random bytes as base64url without padding (the form of ACME EAB HMAC keys).
fn random_b64url(n: usize) -> Result<String, String> {
    let out = openssl(&["rand", "-base64", &n.to_string()])?;
    Ok(String::from_utf8_lossy(&out)
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect())
}

/// Pebble's JSON config (key names as in `docs/research/acme.md`, section 2).
fn pebble_config(
    opts: &PebbleOptions,
    acme: SocketAddr,
    mgmt: SocketAddr,
    certs: &ListenerCerts,
    eab: Option<&(String, String)>,
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "listenAddress": acme.to_string(),
        "managementListenAddress": mgmt.to_string(),
        "certificate": certs.cert.to_string_lossy(),
        "privateKey": certs.key.to_string_lossy(),
        "httpPort": opts.http_port,
        "tlsPort": opts.tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab.is_some(),
    });
    if let Some((kid, key)) = eab {
        c["externalAccountMACKeys"] = serde_json::json!({ kid: key });
    }
    if let Some(secs) = opts.validity_secs {
        c["certificateValidityPeriod"] = secs.into();
    }
    serde_json::json!({ "pebble": c })
}

/// `127.0.0.1:port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `N` distinct free TCP ports on 127.0.0.1: all listeners are held until every port is
/// picked, then released for the processes to bind (Pebble cannot report a port it chose).
fn pick_tcp_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 (TCP)"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .expect("local_addr of a bound TCP listener")
            .port()
    })
}

/// A port on 127.0.0.1 free for both TCP and UDP (challtestsrv's DNS serves both), or, after
/// many tries, one free for TCP only (the start then retries if the UDP bind fails).
fn pick_dns_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 (TCP)");
        let port = tcp
            .local_addr()
            .expect("local_addr of a bound TCP listener")
            .port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    pick_tcp_ports::<1>()[0]
}

/// Spawn `cmd` with stdin closed and stdout + stderr appended to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let file = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let file2 = file
        .try_clone()
        .map_err(|e| format!("cannot dup {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(file2)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {:?} (apt install pebble): {e}",
                cmd.get_program()
            )
        })
}

/// Wait until challtestsrv answers on its management port and answers DNS queries over UDP
/// and TCP. It does not exit when its DNS port is taken (it only logs the bind error), hence
/// the DNS queries.
fn wait_challtestsrv(
    child: &mut Child,
    dns: SocketAddr,
    mgmt: SocketAddr,
    log: &Path,
) -> Result<(), StartError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let clash = text.contains("address already in use");
        let exited = child.try_wait().ok().flatten();
        if clash || exited.is_some() {
            let why = exited.map_or("could not bind a port".to_string(), |s| {
                format!("exited with {s}")
            });
            return Err(StartError {
                port_clash: clash,
                message: format!(
                    "pebble-challtestsrv {why}\n--- challtestsrv.log (tail) ---\n{}",
                    tail(log)
                ),
            });
        }
        let mgmt_up = TcpStream::connect_timeout(&mgmt, Duration::from_millis(200)).is_ok();
        if mgmt_up && dns_answers_udp(dns) && dns_answers_tcp(dns) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError {
                port_clash: false,
                message: format!(
                    "pebble-challtestsrv did not answer DNS on {dns} (UDP and TCP) and HTTP on {mgmt} within {STARTUP_TIMEOUT:?}\n--- challtestsrv.log (tail) ---\n{}",
                    tail(log)
                ),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A DNS query for `A ready.test.` with id 0x4265.
const DNS_QUERY: [u8; 28] = [
    0x42, 0x65, // id
    0x01, 0x00, // flags: standard query, recursion desired
    0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 1 question
    5, b'r', b'e', b'a', b'd', b'y', 4, b't', b'e', b's', b't', 0, // ready.test.
    0x00, 0x01, 0x00, 0x01, // type A, class IN
];

/// Is `reply` a DNS response to [`DNS_QUERY`]?
fn is_dns_reply(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[..2] == DNS_QUERY[..2] && reply[2] & 0x80 != 0
}

/// Does a DNS server answer [`DNS_QUERY`] over UDP at `addr`?
fn dns_answers_udp(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    if sock.send_to(&DNS_QUERY, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == addr && is_dns_reply(&buf[..n]))
}

/// Does a DNS server answer [`DNS_QUERY`] over TCP (length-prefixed) at `addr`?
fn dns_answers_tcp(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut msg = (DNS_QUERY.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&DNS_QUERY);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut len = [0u8; 2];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).is_ok() && is_dns_reply(&reply)
}

/// `curl -sf` `url` trusting only `ca`: the body on a 2xx, else curl's error.
fn curl(ca: &Path, url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run curl (apt install curl): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("curl {url}: body is not UTF-8: {e}"))
}

/// The last 40 lines of the file at `path` (empty if unreadable).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(40)..].join("\n");
    out.push('\n');
    out
}

/// The first `name` in a `PATH` directory.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
