//! Step 10: Landlock. The jail may `bind` TCP only to the ports it is given (an instance: its
//! own `PORT`; so no app can take a port berth gave another app, even one that crashed a moment
//! ago, nor hoard the instance range, nor open a listener another app could reach), and,
//! where the kernel has Landlock ABI 6 (Linux 6.12), it can neither connect to abstract unix
//! sockets nor signal processes from outside its own jail. Binding port 0 (an ephemeral port,
//! what a client socket gets) is always allowed.
//!
//! The bind rule needs Landlock ABI 4 (Linux 6.7): without it the jail cannot be built (a hard
//! requirement, never skipped in silence). The scopes are taken where the kernel has them,
//! and the helper says which (`--report`).

use landlock::{
    AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::JailError;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> JailError {
    move |e| JailError::Other(format!("landlock ({what}): {e}"))
}

/// What the kernel enforced, for `--report`.
pub(crate) struct Enforced {
    pub abi: i32,
    pub scopes: bool,
}

/// Restricts the calling thread (and everything it execs) to binding `ports` (inclusive
/// ranges) and port 0.
pub(crate) fn install(ports: &[(u16, u16)]) -> Result<Enforced, JailError> {
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::BindTcp)
        .map_err(err("the bind rule needs Landlock ABI 4, Linux 6.7"))?
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err("scopes"))?
        .create()
        .map_err(err("create"))?;
    let allowed = ports
        .iter()
        .flat_map(|(a, b)| *a..=*b)
        .chain([0])
        .map(|port| NetPort::new(port, AccessNet::BindTcp));
    created = created
        .add_rules(allowed.map(Ok::<_, landlock::RulesetError>))
        .map_err(err("rules"))?;
    let status = created.restrict_self().map_err(err("restrict"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(JailError::Other(
            "landlock: the kernel enforced nothing (Landlock ABI 4, Linux 6.7, is needed)".into(),
        ));
    }
    let abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32),
        _ => 0,
    };
    Ok(Enforced {
        abi,
        scopes: status.ruleset == RulesetStatus::FullyEnforced && abi >= ABI::V6 as i32,
    })
}
