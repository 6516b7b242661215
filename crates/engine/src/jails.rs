//! Each app's jail: the user its processes run as, the storage dir it keeps across deploys,
//! what it sees (a `berth_jail::Jail` for the process runtime) and what it may connect to
//! (`firewall.rs`).
//!
//! - **Its own user**: `berth-<tag>-<app>` (the tag, a hash of the data dir, keeps two berths
//!   apart; a long app name is cut and given a hash), a system user with its own group, no
//!   home and no login shell, whose comment names the app. It is made on the app's first
//!   start, kept across deploys and restarts (so the storage dir stays its), and removed with
//!   the app. An existing user with another comment is never taken over.
//! - **Its files**: the release directory is chowned to the app's user (it is mounted
//!   read-only in the jail: owning it changes nothing but what it can read) and
//!   `<data>/apps/<app>/storage` (mode 0700, the app's) is the one writable directory that
//!   survives deploys: `BERTH_STORAGE` and, unless the app sets one, `HOME`.
//! - **Its view**: berth's data dir and build dirs are hidden, with the release and storage
//!   bound back (see `berth-jail` for the rest).
//!
//! With `[server] jail = false` apps run as berth's user, unjailed, and berth says so at start.
//! When the jail cannot be built (berth is not root, no nftables, a kernel without mount
//! namespaces or seccomp), every start of app code fails with the reason: never a silent
//! fallback to an unjailed process.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::firewall::Firewall;

enum Mode {
    /// `[server] jail = false`.
    Off,
    On {
        firewall: Arc<Firewall>,
        /// Builds get a network of their own (`berth-jail`'s `--private-net`), or why not.
        build_net: Result<(), String>,
    },
    /// The jail was asked for and cannot be built: why.
    Unavailable(String),
}

pub(crate) struct Jails {
    mode: Mode,
    /// From the data dir (as the build users'): in user names and the firewall's table.
    tag: String,
    /// The data dir, absolute.
    data: PathBuf,
    /// What every jail hides on top of `berth_jail::ALWAYS_HIDDEN`: the data dir, the build
    /// dirs, the config file and the TLS keys it names.
    hide: Vec<PathBuf>,
    /// App users known to exist: (uid, gid) by app.
    users: Mutex<HashMap<String, (u32, u32)>>,
    /// The ports the firewall guards (`guarded_ports`), sorted and merged.
    guarded: Vec<(u16, u16)>,
    /// Each app's process budget (`[server] app_pids_budget`), its user's `RLIMIT_NPROC`.
    nproc: u64,
}

/// What a start of app code needs from its jail.
pub(crate) struct Prepared {
    /// `None`: the jail is off (`[server] jail = false`).
    pub jail: Option<::jail::Jail>,
    /// `BERTH_STORAGE` and `HOME` (the app's own `HOME` wins; see [`Prepared::apply_env`]).
    pub env: Vec<(String, String)>,
}

impl Prepared {
    /// `env` with the jail's variables added where the app did not set them.
    fn apply_env(&self, env: &mut Vec<(String, String)>) {
        for (k, v) in &self.env {
            if !env.iter().any(|(key, _)| key == k) {
                env.push((k.clone(), v.clone()));
            }
        }
    }
}

/// What a jailed process that wrote next to its code is told (its output said `Read-only file
/// system`), after the tail of its output.
pub(crate) fn read_only_hint(output: &[String]) -> Option<&'static str> {
    output
        .iter()
        .any(|l| l.contains("Read-only file system"))
        .then_some(
            "hint: the release is read-only in the app's jail; write to $BERTH_STORAGE (kept \
             across deploys) or /tmp instead",
        )
}

/// The ports an app's processes are refused (the firewall's `guarded` set): instances, the
/// admin listener, and the local port range Docker publishes services on.
fn guarded_ports(admin: Option<u16>) -> Vec<(u16, u16)> {
    let mut out = vec![(crate::PORTS.start, crate::PORTS.end - 1)];
    if let Some(p) = admin {
        out.push((p, p));
    }
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    out.push(ephemeral);
    // Overlapping intervals are refused by nft: merge them.
    out.sort();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in out {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Runs a trial jail (`berth jail <extra> … -- /bin/true`); what it printed, or why it failed.
fn trial(helper: &Path, extra: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(helper)
        .arg("jail")
        .args(extra)
        .args(["--uid", "65534", "--gid", "65534", "--", "/bin/true"])
        .env_clear()
        // berth's own working directory may be where the jail puts a private tmpfs (/tmp).
        .current_dir("/")
        .output()
        .map_err(|e| format!("cannot run the jail helper {}: {e}", helper.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Jails {
    /// Decides the mode (blocking: it runs `nft` and one trial jail). `helper` is the jail
    /// helper (`None`: `[server] jail = false`).
    pub(crate) fn new(
        data: &Path,
        helper: Option<&Path>,
        admin: Option<u16>,
        extra_hidden: Vec<PathBuf>,
        nproc: u64,
    ) -> Jails {
        let data = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
        let tag = crate::users::data_tag(&data);
        let mut scratch = data.as_os_str().to_owned();
        scratch.push(".builds");
        let mut hide = vec![
            data.clone(),
            PathBuf::from(scratch),
            PathBuf::from("/var/tmp/berth-builds"),
        ];
        hide.extend(
            extra_hidden
                .into_iter()
                .map(|p| p.canonicalize().unwrap_or(p))
                .filter(|p| p.is_absolute()),
        );
        let mut jails = Jails {
            mode: Mode::Off,
            tag,
            data,
            hide,
            users: Mutex::new(HashMap::new()),
            guarded: guarded_ports(admin),
            nproc,
        };
        let Some(helper) = helper else {
            tracing::warn!(
                "[server] jail = false: apps run UNJAILED as berth's own user; any deploy token \
                 can then run code with berth's privileges"
            );
            return jails;
        };
        jails.mode = match jails.start(helper) {
            Ok(firewall) => {
                tracing::info!("app jail on: each app runs as its own user, in its own mount namespace, with a seccomp filter and a firewall rule");
                let build_net = trial(helper, &["--private-net"]).map(drop);
                if let Err(why) = &build_net {
                    tracing::error!(
                        "builds cannot get a network of their own, so no build will run: {why}"
                    );
                }
                Mode::On {
                    firewall,
                    build_net,
                }
            }
            Err(why) => {
                tracing::error!(
                    "the app jail cannot be built, so no app process will start: {why}"
                );
                Mode::Unavailable(why)
            }
        };
        jails
    }

    fn start(&self, helper: &Path) -> Result<Arc<Firewall>, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "the app jail needs berth to run as root (each app runs as its own user); run \
                 berth as root, or set `[server] jail = false` to run apps unjailed as berth's user"
                    .into(),
            );
        }
        // One trial jail proves the kernel has what it needs, before any app depends on it.
        let report = trial(helper, &["--report"])?;
        if report.contains("scopes=off") {
            tracing::warn!(
                %report,
                "this kernel has no Landlock scopes (Linux 6.12): apps can reach each other's abstract unix sockets"
            );
        } else {
            tracing::info!(%report, "the jail's Landlock rules");
        }
        let known: Vec<u32> = crate::users::all()
            .into_iter()
            .filter(|(_, e)| {
                e.comment.starts_with("berth app ") && e.comment.ends_with(&self.comment_tail())
            })
            .map(|(_, e)| e.uid)
            .collect();
        let firewall = Firewall::start(&self.tag, &self.guarded, &known)
            .map_err(|e| format!("{e}; or set `[server] jail = false`"))?;
        Ok(Arc::new(firewall))
    }

    /// The jail of a build run as `user` in the scratch dir `dir` (`sandbox.rs`): it sees what
    /// an app's jail sees, with its own scratch dir writable instead of a release, and may
    /// listen on any port outside the guarded ones (test suites start servers). `Ok(None)`:
    /// the jail is off; `Err`: it cannot be built, and why.
    pub(crate) fn for_build(
        &self,
        user: &crate::sandbox::BuildUser,
        dir: &Path,
    ) -> Result<Option<::jail::Jail>, String> {
        match (&self.mode, user) {
            (Mode::Off, _) => Ok(None),
            (Mode::Unavailable(why), _) => Err(format!("the app jail cannot be built: {why}")),
            (Mode::On { .. }, None) => Err("the app jail has no build user to run as".into()),
            (
                Mode::On {
                    build_net: Err(why),
                    ..
                },
                _,
            ) => Err(format!(
                "a build runs in a network of its own, which cannot be made here: {why}"
            )),
            (Mode::On { .. }, Some(u)) => {
                let mut jail = ::jail::Jail::new(u.uid, u.gid);
                jail.hide = self.hide.clone();
                jail.writable = vec![dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())];
                // Its own loopback: the servers a test suite starts are its own, on any port.
                jail.private_net = true;
                jail.bind = unguarded(&self.guarded);
                Ok(Some(jail))
            }
        }
    }

    /// The firewall, for the build users (`sandbox.rs`).
    pub(crate) fn firewall(&self) -> Option<Arc<Firewall>> {
        match &self.mode {
            Mode::On { firewall, .. } => Some(firewall.clone()),
            _ => None,
        }
    }

    fn comment_tail(&self) -> String {
        format!("({})", self.tag)
    }

    fn user_name(&self, app: &str) -> String {
        // useradd allows 32 characters: "berth-" + 8 + "-" leaves 17 for the app.
        let short = if app.len() <= 17 {
            app.to_string()
        } else {
            let hash = crate::users::data_tag(Path::new(app));
            format!("{}-{hash}", &app[..8])
        };
        format!("berth-{}-{short}", self.tag)
    }

    fn comment(&self, app: &str) -> String {
        format!("berth app {app} {}", self.comment_tail())
    }

    /// The storage dir of `app` (made by [`Jails::prepare`]).
    pub(crate) fn storage(&self, app: &str) -> PathBuf {
        self.data.join("apps").join(app).join("storage")
    }

    /// Everything a start of `app`'s code in release dir `dir` needs: its user (made on first
    /// use), its storage dir, the release chowned to it, its firewall entry (with its own
    /// services' published ports `own`). With the jail off, only the storage dir and its env.
    pub(crate) async fn prepare(
        &self,
        app: &str,
        dir: &Path,
        own: BTreeSet<u16>,
    ) -> Result<Option<Prepared>, String> {
        let storage = self.storage(app);
        let env = vec![
            ("BERTH_STORAGE".to_string(), storage.display().to_string()),
            ("HOME".to_string(), storage.display().to_string()),
        ];
        let firewall = match &self.mode {
            Mode::Off => {
                // Unjailed, the storage dir is still where the app keeps its files.
                let st = storage.clone();
                tokio::task::spawn_blocking(move || std::fs::create_dir_all(&st))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| {
                        format!("cannot make the storage dir {}: {e}", storage.display())
                    })?;
                return Ok(Some(Prepared { jail: None, env }));
            }
            Mode::Unavailable(why) => return Err(format!("the app jail cannot be built: {why}")),
            Mode::On { firewall, .. } => firewall.clone(),
        };
        let known = crate::lock(&self.users).get(app).copied();
        let (uid, gid) = match known {
            Some(ids) => ids,
            None => {
                let (name, comment) = (self.user_name(app), self.comment(app));
                let ids =
                    tokio::task::spawn_blocking(move || crate::users::ensure(&name, &comment))
                        .await
                        .map_err(|e| e.to_string())??;
                crate::lock(&self.users).insert(app.to_string(), ids);
                ids
            }
        };
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("the release directory {}: {e}", dir.display()))?;
        let (st, release) = (storage.clone(), dir.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&st)
                .map_err(|e| format!("cannot make the storage dir {}: {e}", st.display()))?;
            std::os::unix::fs::chown(&st, Some(uid), Some(gid))
                .and_then(|()| {
                    std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| {
                    format!(
                        "cannot give the storage dir {} to the app: {e}",
                        st.display()
                    )
                })?;
            chown_tree(&release, uid, gid).map_err(|e| {
                format!(
                    "cannot give the release {} to the app: {e}",
                    release.display()
                )
            })
        })
        .await
        .map_err(|e| e.to_string())??;
        firewall.allow(uid, &own).await?;
        let mut jail = ::jail::Jail::new(uid, gid);
        jail.hide = self.hide.clone();
        jail.read_only = vec![dir];
        jail.writable = vec![storage];
        jail.nproc = Some(self.nproc);
        Ok(Some(Prepared {
            jail: Some(jail),
            env,
        }))
    }

    /// `app` is destroyed (its instances are stopped): whatever still runs as its user (a
    /// daemon that left its process group) is killed, then the user goes, then its firewall
    /// entry. Anything that cannot be done leaves the rest in place (a user whose processes
    /// survive keeps its firewall rule) and is logged.
    pub(crate) async fn remove_app(&self, app: &str) {
        crate::lock(&self.users).remove(app);
        let name = self.user_name(app);
        let comment = self.comment(app);
        let found = {
            let (name, comment) = (name.clone(), comment.clone());
            tokio::task::spawn_blocking(move || {
                crate::users::entry(&name)
                    .filter(|e| e.comment == comment)
                    .map(|e| (e.uid, e.gid))
            })
            .await
            .ok()
            .flatten()
        };
        // A user already gone is not looked for by its old uid: that uid may be someone
        // else's now (`users::kill_all`).
        let Some((uid, gid)) = found else {
            return;
        };
        let removed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            crate::users::kill_all(&crate::users::Account {
                name: name.as_str().into(),
                uid,
                gid,
            })?;
            // Only berth's user for this app, never one that merely has the name.
            if crate::users::entry(&name).is_some_and(|e| e.comment == comment)
                && !crate::users::remove(&name)
            {
                return Err(format!("userdel {name} failed"));
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = removed {
            tracing::error!(app, uid, "cannot remove the app's system user: {e}");
            return;
        }
        if let Some(fw) = self.firewall() {
            if let Err(e) = fw.forget(uid).await {
                tracing::warn!(app, "cannot remove the app's firewall entry: {e}");
            }
        }
    }
}

/// The ports (inclusive ranges, from 1) that are not in `guarded` (sorted, merged).
fn unguarded(guarded: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut next: u32 = 1;
    for (a, b) in guarded {
        if u32::from(*a) > next {
            out.push((next as u16, a - 1));
        }
        next = next.max(u32::from(*b) + 1);
    }
    if next <= 65535 {
        out.push((next as u16, 65535));
    }
    out
}

/// Gives the tree at `root` to `(uid, gid)`, links themselves and not what they point to;
/// the root last, so a root owned by `uid` means the whole tree is (a rollback reuses it).
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::symlink_metadata(root)?.uid() == uid {
        return Ok(());
    }
    fn walk(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&path, uid, gid)?;
            }
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
    walk(root, uid, gid)?;
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))
}

impl crate::Engine {
    /// The jail for `app`'s code from the release in `dir`, its variables added to `env`:
    /// `None` when the release runs no process on this host (containers have Docker's
    /// confinement; a static site without `release:` or postdeploy runs nothing).
    pub(crate) async fn jail_for(
        &self,
        app: &str,
        dir: &Path,
        spec: &build::manifest::AppSpec,
        env: &mut Vec<(String, String)>,
    ) -> Result<Option<Prepared>, String> {
        let runs_code = spec.kind == build::manifest::AppKind::Process
            || spec.release_command.is_some()
            || spec.postdeploy.is_some();
        if spec.image.is_some() || !runs_code {
            return Ok(None);
        }
        // The app's own services, published on 127.0.0.1: the only guarded ports it may reach.
        let mut own = BTreeSet::new();
        if let (false, Ok(docker)) = (spec.services.is_empty(), &self.docker) {
            let services = docker
                .services(app)
                .await
                .map_err(|e| format!("cannot read the app's services: {e}"))?;
            own.extend(services.iter().filter_map(|s| s.host_port));
        }
        let prepared = self.jails.prepare(app, dir, own).await?;
        if let Some(p) = &prepared {
            p.apply_env(env);
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unguarded_is_the_complement() {
        assert_eq!(
            super::unguarded(&[(8081, 8081), (10000, 29999), (32768, 60999)]),
            vec![(1, 8080), (8082, 9999), (30000, 32767), (61000, 65535)]
        );
        assert_eq!(super::unguarded(&[(1, 65535)]), vec![]);
        assert_eq!(super::unguarded(&[]), vec![(1, 65535)]);
    }
}
