//! The jail's network rule: an app's processes (and builds) cannot connect to another app's
//! instance ports, another app's services, or berth's admin listener; they still reach their
//! own services, DNS and the outside world.
//!
//! Processes of every app share the host's network (the proxy reaches them on 127.0.0.1), so
//! the rule is a firewall rule keyed by the connecting socket's owner: each app runs as its own
//! user (`jails.rs`). berth keeps one nftables table of its own, `inet berth_<tag>`:
//!
//! ```text
//! set apps    { type uid }                  app and build users
//! set appgids { type gid }                  build groups (a build's network helper runs as
//!                                           root with its build's group: see below)
//! set guarded { type inet_service }         instance ports, the admin port, Docker's published ports
//! set own     { type uid . inet_service }   an app's own services' published ports
//! chain output (hook output): a connection (SYN) from @apps to a local address, to @guarded, not
//!                             (uid . port) in @own → reject (TCP reset); from @apps out of a
//!                             Docker bridge → reject; UDP from @apps to a local address
//!                             other than DNS (53) → reject; the same from @appgids, no own ports
//! chain input  (hook input):  a connection from a Docker bridge to @guarded → reject (containers
//!                             are apps too)
//! ```
//!
//! Only connection attempts (SYN without ACK) are matched: an app's answers to the proxy go to
//! the proxy's ephemeral port, which is in `guarded`.
//!
//! A build has a network namespace of its own (`berth-jail`'s private network): its servers
//! are on its own loopback, out of every other tenant's reach. What it sends out leaves through
//! slirp4netns, which runs as root (it joins the namespace) with the build's group, so its
//! sockets are matched by `meta skgid @appgids`.
//!
//! The table is replaced whole at start (one `nft -f` transaction), with the app users that
//! exist already, and changed by element after that. It is left in place when berth stops:
//! instances outlive berth, and so does their rule. nftables is driven through `nft -f -`
//! (Debian's `nftables`): one atomic transaction per change, the way Docker drives iptables;
//! the netlink crates for it are thin and little used.

use std::collections::{BTreeMap, BTreeSet};

/// The table of one berth (its tag comes from the data dir, as the build users').
pub(crate) struct Firewall {
    table: String,
    /// The own ports of each uid in `apps` (empty for builds).
    state: tokio::sync::Mutex<BTreeMap<u32, BTreeSet<u16>>>,
    /// The gids in `appgids`.
    gids: tokio::sync::Mutex<BTreeSet<u32>>,
}

impl Firewall {
    /// Replaces the table: `guarded` port ranges (inclusive) and the uids already known.
    /// Blocking (runs `nft`); an error names what is missing.
    pub(crate) fn start(
        tag: &str,
        guarded: &[(u16, u16)],
        uids: &[u32],
    ) -> Result<Firewall, String> {
        let table = format!("berth_{tag}");
        let ranges: Vec<String> = guarded
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let apps = if uids.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = uids.iter().map(u32::to_string).collect();
            format!("elements = {{ {} }}", list.join(", "))
        };
        let script = format!(
            "table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
               set apps {{ type uid; {apps} }}\n\
               set appgids {{ type gid; }}\n\
               set guarded {{ type inet_service; flags interval; elements = {{ {guarded} }} }}\n\
               set own {{ type uid . inet_service; }}\n\
               chain output {{\n\
                 type filter hook output priority 0; policy accept;\n\
                 meta skuid @apps fib daddr type local tcp flags & (syn | ack) == syn tcp dport @guarded meta skuid . tcp dport != @own reject with tcp reset\n\
                 meta skuid @apps oifname {{ \"docker*\", \"br-*\" }} reject\n\
                 meta skuid @apps fib daddr type local meta l4proto udp udp dport != 53 reject\n\
                 meta skgid @appgids fib daddr type local tcp flags & (syn | ack) == syn tcp dport @guarded reject with tcp reset\n\
                 meta skgid @appgids oifname {{ \"docker*\", \"br-*\" }} reject\n\
                 meta skgid @appgids fib daddr type local meta l4proto udp udp dport != 53 reject\n\
               }}\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 iifname {{ \"docker*\", \"br-*\" }} tcp flags & (syn | ack) == syn tcp dport @guarded reject with tcp reset\n\
               }}\n\
             }}\n",
            guarded = ranges.join(", "),
        );
        nft(&script)?;
        Ok(Firewall {
            table,
            state: tokio::sync::Mutex::new(uids.iter().map(|u| (*u, BTreeSet::new())).collect()),
            gids: tokio::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// `uid` is an app's (or a build's) user, whose own ports are exactly `own`.
    pub(crate) async fn allow(&self, uid: u32, own: &BTreeSet<u16>) -> Result<(), String> {
        let mut state = self.state.lock().await;
        let before = state.get(&uid).cloned();
        if before.as_ref() == Some(own) {
            return Ok(());
        }
        let t = &self.table;
        let mut script = format!("add element inet {t} apps {{ {uid} }}\n");
        let before = before.unwrap_or_default();
        let gone: Vec<String> = before
            .difference(own)
            .map(|p| format!("{uid} . {p}"))
            .collect();
        let new: Vec<String> = own
            .difference(&before)
            .map(|p| format!("{uid} . {p}"))
            .collect();
        if !gone.is_empty() {
            script.push_str(&format!(
                "delete element inet {t} own {{ {} }}\n",
                gone.join(", ")
            ));
        }
        if !new.is_empty() {
            script.push_str(&format!(
                "add element inet {t} own {{ {} }}\n",
                new.join(", ")
            ));
        }
        nft_async(script).await?;
        state.insert(uid, own.clone());
        Ok(())
    }

    /// `gid` is a build's group: what its network helper connects to is under the rule.
    pub(crate) async fn allow_gid(&self, gid: u32) -> Result<(), String> {
        let mut gids = self.gids.lock().await;
        if gids.contains(&gid) {
            return Ok(());
        }
        nft_async(format!(
            "add element inet {} appgids {{ {gid} }}\n",
            self.table
        ))
        .await?;
        gids.insert(gid);
        Ok(())
    }

    /// `uid` is gone (its app was destroyed).
    pub(crate) async fn forget(&self, uid: u32) -> Result<(), String> {
        let mut state = self.state.lock().await;
        let Some(own) = state.remove(&uid) else {
            return Ok(());
        };
        let t = &self.table;
        let mut script = format!("delete element inet {t} apps {{ {uid} }}\n");
        if !own.is_empty() {
            let list: Vec<String> = own.iter().map(|p| format!("{uid} . {p}")).collect();
            script.push_str(&format!(
                "delete element inet {t} own {{ {} }}\n",
                list.join(", ")
            ));
        }
        nft_async(script).await
    }
}

/// Runs `script` as one `nft -f -` transaction. Blocking (a few ms).
fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let out = Command::new("nft")
        .args(["-f", "-"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            child.wait_with_output()
        });
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "nft refused berth's rules: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "nft (nftables) is not installed: the jail's network rule needs it (Debian: apt install nftables)".into(),
        ),
        Err(e) => Err(format!("cannot run nft: {e}")),
    }
}

/// [`nft`] off the async threads.
async fn nft_async(script: String) -> Result<(), String> {
    tokio::task::spawn_blocking(move || nft(&script))
        .await
        .map_err(|e| format!("cannot run nft: {e}"))?
}
