//! The app jail, attacked: an app deployed with a deploy-only token tries, from `web:`,
//! `release:` and postdeploy, every way out it can think of (berth's secrets, another app's
//! files, env and processes, its ports, the admin listener, privileges), and each attempt must
//! fail while the app itself still serves, writes its storage dir and `/tmp`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use serde_json::Value;
use test_support::{eventually, write_file, Berth};

/// Every attack the hostile app makes, by the name it reports. Each must come back
/// "blocked".
const ATTACKS: &[&str] = &[
    "read-admin-token",
    "read-berth-db",
    "list-other-apps",
    "read-victim-release",
    "read-victim-storage",
    "read-victim-environ",
    "see-other-processes",
    "signal-victim",
    "signal-berth",
    "ptrace-victim",
    "connect-victim-port",
    "connect-admin",
    "write-release",
    "write-etc",
    "write-data-dir",
    "list-root-home",
    "list-build-dirs",
    "docker-socket",
    "setuid-root",
    "setuid-binary-mount",
    "unshare-user-namespace",
    "mount-syscall",
    "privileges",
    "bind-instance-ports",
    "listen-on-another-port",
    "udp-to-local-port",
    "connect-victim-abstract-socket",
    "leave-the-cgroup",
    "unbounded-tmp",
];

/// What the hostile app must still be able to do, each "ok".
const WORKS: &[&str] = &["write-storage", "write-tmp", "read-own-release"];

const ATTACK_PY: &str = r#"import ctypes, json, os, signal, socket, subprocess, sys

D = os.environ

def attempt(fn):
    try:
        r = fn()
    except (KeyError, NameError, TypeError, AttributeError, ValueError) as e:
        # A mistake of the test, not a wall of the jail.
        return "TEST-ERROR: %s: %s" % (type(e).__name__, e)
    except Exception as e:
        return "blocked: %s: %s" % (type(e).__name__, str(e)[:150])
    return "blocked: nothing" if r is None else "LEAKED: " + repr(r)[:200]

def read(p):
    with open(p, "rb") as f:
        return f.read(200)

def listing(p):
    return [e for e in os.listdir(p)] or None

def environs():
    hits = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"victim-secret" in read("/proc/%s/environ" % pid):
                    hits.append(pid)
            except OSError:
                pass
    return hits or None

def others():
    me, seen = os.getuid(), []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat("/proc/" + pid).st_uid != me:
                    seen.append(pid)
            except OSError:
                pass
    return seen or None

def connect(port):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=3)
    s.close()
    return "connected to %s" % port

def kill(pid):
    # Signal 0 checks the permission to signal without delivering anything.
    os.kill(int(pid), 0)
    return "may signal %s" % pid

def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, int(pid), 0, 0) == 0:
        return "attached to %s" % pid
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

def mount_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", D["BERTH_STORAGE"].encode(), b"tmpfs", 0, None) == 0:
        return "mounted"
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

def write(p):
    with open(p, "w") as f:
        f.write("pwned")
    return "wrote " + p

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, timeout=10)
    if r.returncode == 0:
        return "ran: " + r.stdout.decode()[:100]
    raise OSError((r.stdout + r.stderr).decode()[:150])

def setuid0():
    os.setuid(0)
    return "uid 0"

def docker():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect("/var/run/docker.sock")
    return "docker socket"

def privileges():
    st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
    bad = {k: st[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh") if int(st[k], 16) != 0}
    if st["NoNewPrivs"].strip() != "1":
        bad["NoNewPrivs"] = st["NoNewPrivs"]
    if st["Seccomp"].strip() != "2":
        bad["Seccomp"] = st["Seccomp"]
    if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) or os.getgroups() not in ([], [os.getgid()]):
        bad["ids"] = (os.getuid(), os.getgid(), os.getgroups())
    return bad or None

def bind_instance_ports():
    # Every port of the instance range but its own is refused (EACCES), free or not.
    own, got, refused = int(D.get("PORT", "0")), [], 0
    for port in range(10000, 10064):
        if port == own:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            got.append(port)
        except PermissionError:
            refused += 1
        except OSError:
            pass
        finally:
            s.close()
    if not got and refused < 32:
        raise ValueError("only %d ports refused: the test proves nothing" % refused)
    return got or None

def listen_other():
    s = socket.socket()
    s.bind(("127.0.0.1", 6380))
    s.listen()
    return "listening on 6380"

def udp_local():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.1", 5355))
    return "sent a datagram to 127.0.0.1:5355"

def abstract():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect("\0berth-victim-abstract-v1")
    return "connected to the victim's abstract socket"

def cgroup():
    lines = open("/proc/self/cgroup").read().splitlines()
    return None if any("/berth/" in l for l in lines) else lines

def tmp_size():
    st = os.statvfs("/tmp")
    size = st.f_blocks * st.f_frsize
    return None if size <= 512 << 20 else "a /tmp of %d bytes" % size

DATA = D["VICTIM_DATA"]
ATTACKS = {
    "read-admin-token": lambda: read(DATA + "/admin-token"),
    "read-berth-db": lambda: read(DATA + "/berth.db"),
    "list-other-apps": lambda: [a for a in os.listdir(DATA + "/apps") if a != "attacker"] or None,
    "read-victim-release": lambda: read(DATA + "/apps/victim/releases/v1/app.py"),
    "read-victim-storage": lambda: read(DATA + "/apps/victim/storage/secret.txt"),
    "read-victim-environ": environs,
    "see-other-processes": others,
    "signal-victim": lambda: kill(D["VICTIM_PID"]),
    "signal-berth": lambda: kill(D["BERTH_PID"]),
    "ptrace-victim": lambda: ptrace(D["VICTIM_PID"]),
    "connect-victim-port": lambda: connect(D["VICTIM_PORT"]),
    "connect-admin": lambda: connect(D["ADMIN_PORT"]),
    "write-release": lambda: write("pwned"),
    "write-etc": lambda: write("/etc/berth-jail-test-pwned"),
    "write-data-dir": lambda: write(DATA + "/pwned"),
    "list-root-home": lambda: (listing("/root") or []) + (listing("/home") or []) or None,
    "list-build-dirs": lambda: listing(DATA + ".builds"),
    "docker-socket": docker,
    "setuid-root": setuid0,
    "setuid-binary-mount": lambda: run(["mount", "-t", "tmpfs", "none", D["BERTH_STORAGE"]]),
    "unshare-user-namespace": lambda: run(["unshare", "-r", "id"]),
    "mount-syscall": mount_syscall,
    "privileges": privileges,
    "bind-instance-ports": bind_instance_ports,
    "listen-on-another-port": listen_other,
    "udp-to-local-port": udp_local,
    "connect-victim-abstract-socket": abstract,
    "leave-the-cgroup": cgroup,
    "unbounded-tmp": tmp_size,
}

def works():
    out = {}
    for name, fn in {
        "write-storage": lambda: write(D["BERTH_STORAGE"] + "/mine.txt"),
        "write-tmp": lambda: write("/tmp/mine.txt"),
        "read-own-release": lambda: read("attack.py"),
    }.items():
        try:
            fn()
            out[name] = "ok"
        except Exception as e:
            out[name] = "FAILED: %s" % e
    return out

def report():
    return {"attacks": {k: attempt(f) for k, f in ATTACKS.items()}, "works": works(), "uid": os.getuid()}

if sys.argv[1] != "web":
    print("REPORT-%s %s" % (sys.argv[1], json.dumps(report())), flush=True)
    sys.exit(0)

# A daemon that leaves the process group and the session: it must still go with the app.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "100000"])
    os._exit(0)

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps(report()).encode() if self.path == "/report" else b"attacker up\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(D["PORT"])), H).serve_forever()
"#;

const VICTIM_PY: &str = r#"import os, socket, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
abstract = socket.socket(socket.AF_UNIX)
abstract.bind("\0berth-victim-abstract-" + os.environ["BERTH_RELEASE"])
abstract.listen()
threading.Thread(target=lambda: [abstract.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
with open(os.environ["BERTH_STORAGE"] + "/secret.txt", "w") as f:
    f.write("victim-secret-file")
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("victim %s uid=%d home=%s\n" % (os.environ["BERTH_RELEASE"], os.getuid(), os.environ["HOME"])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Every attack in `report` is blocked and every normal thing works; `from` names the
/// process type for the message.
fn assert_contained(report: &Value, from: &str) {
    for name in ATTACKS {
        let r = report["attacks"][name]
            .as_str()
            .unwrap_or("missing from the report");
        assert!(r.starts_with("blocked"), "{from}: {name}: {r}\n{report:#}");
    }
    for name in WORKS {
        let r = report["works"][name]
            .as_str()
            .unwrap_or("missing from the report");
        assert_eq!(r, "ok", "{from}: {name} must still work\n{report:#}");
    }
}

fn report_line(log: &str, tag: &str) -> Value {
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("REPORT-{tag} ")))
        .unwrap_or_else(|| panic!("no {tag} report in the deploy log:\n{log}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_hostile_app_cannot_leave_its_jail_from_web_release_or_postdeploy() {
    if !is_root() {
        eprintln!("SKIPPED: the jail needs root");
        return;
    }
    let b = Berth::start_with(BIN, "runtime = \"process\"", &[], "");

    // The victim: a secret in its env and in its storage dir.
    let victim = tmpdir(&b, "victim");
    write_file(&victim.join("Procfile"), b"web: python3 app.py\n");
    write_file(&victim.join("app.py"), VICTIM_PY.as_bytes());
    create_app(&b, "victim");
    let out = cli(&b, &["env:set", "SECRET=victim-secret", "-a", "victim"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = deploy(&b, "victim", &victim);
    assert!(out.status.success(), "{}", text(&out));
    let first = wait_body(&b, "victim", "victim v");
    let (_, insts) = api(&b, "GET", "/api/v1/apps/victim/instances", "");
    let web = insts
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["proc_type"] == "web")
        .unwrap()
        .clone();
    let (victim_pid, victim_port) = (web["pid"].as_u64().unwrap(), web["port"].as_u64().unwrap());
    // Never let the hostile app loose unjailed (as root it could mount over the host's dirs).
    let uid_of = |body: &str| -> u64 {
        body.split("uid=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let victim_uid = uid_of(&first);
    assert_ne!(victim_uid, 0, "the jail is off: {first}");

    // The attacker: its own app, a deploy-only token, and everything it needs to aim.
    create_app(&b, "attacker");
    let token = deploy_token(&b, "attacker");
    let data = b.path("data").canonicalize().unwrap();
    let vars = serde_json::json!({"set": {
        "VICTIM_DATA": data.display().to_string(),
        "VICTIM_PID": victim_pid.to_string(),
        "VICTIM_PORT": victim_port.to_string(),
        "BERTH_PID": b.child.id().to_string(),
        "ADMIN_PORT": b.admin.port().to_string(),
    }});
    let (st, v) = api_as(
        &b,
        &token,
        "PATCH",
        "/api/v1/apps/attacker/env",
        "application/json",
        vars.to_string().as_bytes(),
    );
    assert!(st < 300, "{st} {v}");
    let src = tmpdir(&b, "attacker");
    write_file(
        &src.join("Procfile"),
        b"web: python3 attack.py web\nrelease: python3 attack.py release\n",
    );
    write_file(
        &src.join("app.json"),
        br#"{"scripts": {"postdeploy": "python3 attack.py postdeploy"}}"#,
    );
    write_file(&src.join("attack.py"), ATTACK_PY.as_bytes());
    let id = deploy_ok(&b, &token, "attacker", &targz(&src));

    // release: and postdeploy reported into the deploy log, readable with the same token.
    let log = get_as(
        &b,
        &token,
        &format!("/api/v1/apps/attacker/deploys/{id}/log"),
    )
    .text();
    assert_contained(&report_line(&log, "release"), "release");
    assert_contained(&report_line(&log, "postdeploy"), "postdeploy");
    assert!(!log.contains("victim-secret"), "{log}");

    // web: asked through the proxy.
    let (st, body) = app_get(&b, "attacker", "/report");
    assert_eq!(st, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_contained(&report, "web");

    // Each app has its own user, never root, and the same one across deploys; the victim is
    // untouched and still serving, with its storage kept.
    assert_ne!(report["uid"].as_u64().unwrap(), victim_uid);
    assert!(pid_alive(victim_pid), "the victim was signalled");
    let out = deploy(&b, "victim", &victim);
    assert!(out.status.success(), "{}", text(&out));
    let second = wait_body(&b, "victim", "victim v2");
    assert_eq!(
        uid_of(&second),
        victim_uid,
        "the app's user is stable across deploys"
    );
    let storage = data.join("apps/victim/storage");
    assert!(
        second.contains(&format!("home={}", storage.display())),
        "{second}"
    );
    assert_eq!(
        std::fs::read_to_string(storage.join("secret.txt")).unwrap(),
        "victim-secret-file"
    );
    // Nothing was written where the attacker aimed.
    assert!(!data.join("pwned").exists());
    assert!(!std::path::Path::new("/etc/berth-jail-test-pwned").exists());

    // Destroying the attacker kills everything it started, the daemon that left its session
    // included, and its user goes.
    let attacker_uid = report["uid"].as_u64().unwrap();
    let runs_as = |uid: u64| {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("status")).is_ok_and(|st| {
                st.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    == Some(uid.to_string().as_str())
            })
        })
    };
    assert!(runs_as(attacker_uid), "the attacker runs");
    let out = cli(&b, &["apps:destroy", "attacker", "--confirm", "attacker"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually(T, "every process of the attacker to be gone", || {
        (!runs_as(attacker_uid)).then_some(())
    });

    // Destroying the app removes its user.
    let user_line = |uid: u64| {
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
            .map(str::to_string)
    };
    let line = user_line(victim_uid).expect("the victim's user exists");
    assert!(line.contains("berth app victim"), "{line}");
    let out = cli(&b, &["apps:destroy", "victim", "--confirm", "victim"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually(T, "the victim's user to be removed", || {
        user_line(victim_uid).is_none().then_some(())
    });
}

/// What the hostile container tries, by the name it reports; each must be "blocked".
const CONTAINER_ATTACKS: &[&str] = &[
    "no-new-privileges-off",
    "cap-net-raw",
    "cap-mknod",
    "cap-sys-admin",
    "mount",
    "unshare",
    "docker-socket",
    "connect-victim-container",
    "connect-admin-via-gateway",
];

/// The hostile container's start: the attacks, reported in `/www/report.txt`, then the app.
const ATTACK_SH: &str = r#"mkdir -p /tmp
r() { name=$1; shift; if "$@" >/tmp/out 2>&1; then echo "$name LEAKED $(head -c 100 /tmp/out | tr '\n' ' ')"; else echo "$name blocked"; fi; }
cap() { b=$(awk '/CapBnd/ {print $2}' /proc/self/status); [ $(( (0x$b >> $1) & 1 )) = 1 ]; }
gw=$(ip route | awk '/default/ {print $3}')
{
r no-new-privileges-off grep -q 'NoNewPrivs:[[:space:]]*0' /proc/self/status
r cap-net-raw cap 13
r cap-mknod cap 27
r cap-sys-admin cap 21
r mount mount -t tmpfs none /mnt
r unshare unshare -r true
r docker-socket test -e /var/run/docker.sock
r connect-victim-container nc -w 2 "$VICTIM_IP" "$VICTIM_PORT" </dev/null
r connect-admin-via-gateway nc -w 2 "$gw" "$ADMIN_PORT" </dev/null
r control-sees-its-own-status grep -q NoNewPrivs /proc/self/status
echo done
} > /www/report.txt
exec httpd -f -p "$PORT" -h /www
"#;

/// (IP address on its network, port inside) of the running container of `app`.
fn container_address(app: &str) -> (String, String) {
    let all = common::docker::app_containers(app);
    let c = all
        .first()
        .unwrap_or_else(|| panic!("no container of {app}"));
    let ip = c["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|n| n.values().next())
        .and_then(|n| n["IPAddress"].as_str())
        .unwrap()
        .to_string();
    let port = c["Ports"][0]["PrivatePort"].as_u64().unwrap().to_string();
    (ip, port)
}

#[test]
fn a_hostile_container_keeps_no_privileges_and_reaches_no_other_app() {
    if !is_root() || !common::docker::docker_available() {
        eprintln!("SKIPPED: needs root and a Docker daemon");
        return;
    }
    // The admin listener on every address, so that only the firewall keeps containers off it.
    let b = Berth::start_with(BIN, "admin = \"0.0.0.0:0\"", &[], "");
    let victim = tmpdir(&b, "dvictim");
    common::docker::docker_app(&victim, "victim inside\n", "");
    create_app(&b, "dvictim");
    common::docker::deploy_ok(&b, "dvictim", &victim);
    wait_body(&b, "dvictim", "victim inside");
    let (victim_ip, victim_port) = container_address("dvictim");

    create_app(&b, "dattacker");
    let vars = serde_json::json!({"set": {
        "VICTIM_IP": victim_ip,
        "VICTIM_PORT": victim_port,
        "ADMIN_PORT": b.admin.port().to_string(),
    }});
    let (st, v) = api(&b, "PATCH", "/api/v1/apps/dattacker/env", &vars.to_string());
    assert!(st < 300, "{st} {v}");
    let src = tmpdir(&b, "dattacker");
    common::docker::docker_app(&src, "attacker up\n", "COPY attack.sh /attack.sh\n");
    write_file(&src.join("attack.sh"), ATTACK_SH.as_bytes());
    let dockerfile = std::fs::read_to_string(src.join("Dockerfile")).unwrap();
    let cmd_line = dockerfile.lines().last().unwrap().to_string();
    write_file(
        &src.join("Dockerfile"),
        dockerfile
            .replace(&cmd_line, "CMD [\"/bin/sh\", \"/attack.sh\"]")
            .replace(
                "COPY www /www\n",
                "COPY www /www\nCOPY attack.sh /attack.sh\n",
            )
            .as_bytes(),
    );
    common::docker::deploy_ok(&b, "dattacker", &src);
    let report = eventually(T, "the container's report", || {
        let (st, body) = app_get(&b, "dattacker", "/report.txt");
        (st == 200 && body.contains("done")).then_some(body)
    });
    // The report itself works: a harmless command is reported as what it is.
    assert!(
        report.contains("control-sees-its-own-status LEAKED"),
        "{report}"
    );
    for name in CONTAINER_ATTACKS {
        let line = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from the report:\n{report}"));
        assert!(line.ends_with(" blocked"), "{line}\n{report}");
    }
    // A build may not start from the victim's image (the daemon's image store is shared), nor
    // make the daemon fetch from the host (ADD <url> runs outside the network rule).
    let victim_image = common::docker::app_containers("dvictim")[0]["Image"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(victim_image.starts_with("berth-"), "{victim_image}");
    let victim_id = common::docker::app_containers("dvictim")[0]["ImageID"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")[..10]
        .to_string();
    let dockerfile = |text: String| vec![("Dockerfile", text)];
    for (name, files, why) in [
        (
            "dthief",
            dockerfile(format!("FROM {victim_image}\nRUN cat /www/index.html\n")),
            "another app's image",
        ),
        // The same image, spelled so that no name check sees it.
        (
            "dthief2",
            dockerfile(format!("FROM docker.io/{victim_image}\n")),
            "another app's image",
        ),
        (
            "dthief3",
            dockerfile(format!("FROM scratch\nCOPY --from={victim_id} /www /www\n")),
            // Any prefix of an ID is one, refused by its form before the daemon is asked.
            "is an image ID",
        ),
        (
            "dthief6",
            dockerfile(format!("ARG b=alpinez\nARG bx={victim_image}\nFROM $bx\n")),
            "another app's image",
        ),
        (
            "dthief7",
            dockerfile(format!(
                "FROM scratch\nCOPY --fr\"om\"={victim_image} /www /www\n"
            )),
            "not a flag",
        ),
        (
            "dthief4",
            dockerfile(format!("# escape=`\nFROM `\n  {victim_image}\n")),
            "parser directive",
        ),
        (
            "dthief5",
            vec![
                (
                    "Procfile",
                    "web: python3 -m http.server $PORT\n".to_string(),
                ),
                (
                    "berth.toml",
                    format!("[services.stolen]\nimage = \"docker.io/{victim_image}\"\n"),
                ),
            ],
            "another app's image",
        ),
        (
            "dfetch",
            dockerfile(format!(
                "FROM scratch\nADD http://127.0.0.1:{}/api/v1/apps /apps.json\n",
                b.admin.port()
            )),
            "fetch it",
        ),
        // A registry on this machine: the daemon would connect to it from the host.
        (
            "dfetch2",
            dockerfile(format!("FROM 127.0.0.1:{}/x:y\n", b.admin.port())),
            "registry is refused",
        ),
    ] {
        create_app(&b, name);
        let dir = tmpdir(&b, name);
        for (file, text) in &files {
            write_file(&dir.join(file), text.as_bytes());
        }
        let (st, v) = upload(&b, name, &dir);
        assert_eq!(st, 202, "{v}");
        let d = wait_deploy(&b, name, v["id"].as_i64().unwrap());
        assert_eq!(d["status"], "failed", "{d}");
        assert!(d["reason"].as_str().unwrap_or("").contains(why), "{d}");
    }

    // A build's RUN steps run on the app's own network, never on Docker's default bridge
    // (where other tenants' builds and Swarm tasks are).
    create_app(&b, "dnet");
    let dir = tmpdir(&b, "dnet");
    // A word of this run's in the step, so that Docker's layer cache never skips it.
    let nonce = b.http.port();
    common::docker::docker_app(
        &dir,
        "dnet\n",
        &format!("RUN [\"/bin/sh\", \"-c\", \"echo ROUTE-{nonce}-$(ip route | grep default)\"]\n"),
    );
    let d = common::docker::deploy_ok(&b, "dnet", &dir);
    let (_, log) = api(
        &b,
        "GET",
        &format!("/api/v1/apps/dnet/deploys/{}/log", d["id"]),
        "",
    );
    let log = log.as_str().unwrap_or_default().to_string();
    let route = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ROUTE-{nonce}-")))
        .unwrap_or_else(|| panic!("no route in the build log: {log}"))
        .to_string();
    let network = common::docker::app_containers("dnet")[0]["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &network,
        ])
        .output()
        .unwrap();
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!gateway.is_empty(), "{network}");
    assert!(
        route.contains(&format!("via {gateway} ")),
        "the build ran on another network: {route} (the app's: {network}, {gateway})"
    );

    // The victim still serves; both apps go with their containers.
    wait_body(&b, "dvictim", "victim inside");
    for app in ["dattacker", "dvictim"] {
        let (st, v) = api(&b, "DELETE", &format!("/api/v1/apps/{app}"), "");
        assert_eq!(st, 204, "{v}");
    }
}

/// Forks sleepers until it has `LIMIT` or the kernel says no, writes how many it got to its
/// storage dir (one file per instance), then serves on one thread.
const GREEDY_PY: &str = r#"import errno, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
n, why = 0, "limit"
while n < int(os.environ["LIMIT"]):
    try:
        pid = os.fork()
    except OSError as e:
        why = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        time.sleep(100000)
        os._exit(0)
    n += 1
with open("%s/%s.txt" % (os.environ["BERTH_STORAGE"], os.environ["DYNO"]), "w") as f:
    f.write("%d %s" % (n, why))
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"greedy up\n")
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// One app's instances share one process budget (`[server] app_pids_budget`) and one memory
/// budget (`app_memory_budget`): however many instances it runs, they cannot together take the
/// host's pids or memory, and another app still starts.
#[test]
fn an_apps_instances_share_one_process_budget() {
    if !is_root() {
        eprintln!("SKIPPED: the jail needs root");
        return;
    }
    const BUDGET: u64 = 80;
    let b = Berth::start_with(
        BIN,
        &format!(
            "runtime = \"process\"\napp_pids_budget = {BUDGET}\napp_memory_budget = \"256MiB\""
        ),
        &[],
        "",
    );
    create_app(&b, "greedy");
    let out = cli(&b, &["env:set", "LIMIT=50", "-a", "greedy"]);
    assert!(out.status.success(), "{}", text(&out));
    let src = tmpdir(&b, "greedy");
    write_file(&src.join("Procfile"), b"web: python3 greedy.py\n");
    write_file(&src.join("greedy.py"), GREEDY_PY.as_bytes());
    let out = deploy(&b, "greedy", &src);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "greedy", "greedy up");
    let out = cli(&b, &["scale", "web=2", "-a", "greedy"]);
    assert!(out.status.success(), "{}", text(&out));

    let storage = b.path("data").join("apps/greedy/storage");
    let got = |dyno: &str| -> Option<(u64, String)> {
        let s = std::fs::read_to_string(storage.join(format!("{dyno}.txt"))).ok()?;
        let (n, why) = s.split_once(' ')?;
        Some((n.parse().ok()?, why.to_string()))
    };
    let (first, second) = eventually(T, "both instances to report their forks", || {
        Some((got("web.1")?, got("web.2")?))
    });
    // The first got all it asked; the second ran into the budget the first had mostly used.
    assert_eq!(first, (50, "limit".to_string()), "{second:?}");
    assert_eq!(second.1, "EAGAIN", "{first:?} {second:?}");
    assert!(
        first.0 + second.0 < BUDGET,
        "{first:?} + {second:?} is over the budget"
    );

    // Both instances' cgroups sit in one cgroup of the app's user, limited to the budget.
    let (_, insts) = api(&b, "GET", "/api/v1/apps/greedy/instances", "");
    let parents: Vec<std::path::PathBuf> = insts
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let pid = i["pid"].as_u64().unwrap();
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            let (root, path) = cgroups
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    match controllers {
                        "memory" => Some(("/sys/fs/cgroup/memory", path)),
                        "" => Some(("/sys/fs/cgroup", path)),
                        _ => None,
                    }
                })
                .unwrap();
            std::path::Path::new(&format!("{root}{path}"))
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .collect();
    assert_eq!(parents.len(), 2, "{insts}");
    assert_eq!(parents[0], parents[1], "one parent cgroup for the app");
    let limit = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .find_map(|f| std::fs::read_to_string(parents[0].join(f)).ok())
        .unwrap();
    assert_eq!(
        limit.trim(),
        (256u64 << 20).to_string(),
        "{}",
        parents[0].display()
    );

    // Another app has a budget of its own: it deploys and serves.
    create_app(&b, "bystander");
    let other = tmpdir(&b, "bystander");
    write_file(&other.join("Procfile"), b"web: python3 app.py\n");
    write_file(&other.join("app.py"), VICTIM_PY.as_bytes());
    let out = deploy(&b, "bystander", &other);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "bystander", "victim v1");
}

/// The victim's web process: `/probe` tries 127.0.0.1:8000 on the host's network.
const PROBE_PY: &str = r#"import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            socket.create_connection(("127.0.0.1", 8000), timeout=2).close()
            body = b"LEAKED: connected to 127.0.0.1:8000"
        except OSError as e:
            body = ("blocked %s" % e).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Builds run in a network of their own: a tenant's build that listens on a port first (to
/// catch another tenant's test traffic) catches nothing, the other tenant's test reaches its
/// own server on that same port, and no app process can reach a build's server.
#[test]
fn a_build_cannot_squat_or_reach_another_tenants_test_servers() {
    if !is_root() {
        eprintln!("SKIPPED: the jail needs root");
        return;
    }
    let b = Berth::start(BIN, "");
    // The squatter: its build listens on 127.0.0.1:8000, then waits (until cancelled).
    create_app(&b, "squatter");
    let squat = tmpdir(&b, "squatter");
    write_file(&squat.join("index.html"), b"squatter\n");
    write_file(
        &squat.join("berth.toml"),
        b"[build]\ncommand = \"python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.05; done; echo SQUATTING-$((1+1)); sleep 60\"\n",
    );
    let (st, v) = upload(&b, "squatter", &squat);
    assert_eq!(st, 202, "{v}");
    let squat_id = v["id"].as_i64().unwrap();
    eventually(T, "the squatter's build to listen", || {
        let (_, log) = api(
            &b,
            "GET",
            &format!("/api/v1/apps/squatter/deploys/{squat_id}/log"),
            "",
        );
        log.to_string().contains("SQUATTING-2").then_some(())
    });

    // The victim's test starts its own server on the same port and must reach it, not the
    // squatter's; its web process cannot reach the squatter's server either.
    create_app(&b, "victim");
    let victim = tmpdir(&b, "victim");
    write_file(&victim.join("marker.txt"), b"victim-marker\n");
    write_file(&victim.join("Procfile"), b"web: python3 app.py\n");
    write_file(&victim.join("app.py"), PROBE_PY.as_bytes());
    write_file(
        &victim.join("berth.toml"),
        b"[test]\ncommand = \"python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 & for i in $(seq 100); do curl -sf http://127.0.0.1:8000/marker.txt && exit 0; sleep 0.05; done; exit 1\"\n",
    );
    let out = deploy(&b, "victim", &victim);
    assert!(
        out.status.success(),
        "the victim's test did not reach its own server: {}",
        text(&out)
    );
    assert!(text(&out).contains("victim-marker"), "{}", text(&out));
    let (st, body) = app_get(&b, "victim", "/probe");
    assert_eq!(st, 200, "{body}");
    assert!(body.starts_with("blocked"), "{body}");

    let (st, v) = api(&b, "POST", &format!("/api/v1/builds/{squat_id}/cancel"), "");
    assert_eq!(st, 200, "{v}");
}
