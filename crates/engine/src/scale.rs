//! Scaling in place (`berth scale web=3`), as `heroku ps:scale` does: no new release. Added
//! instances of the live release start, pass the health check and join the route; removed
//! ones leave the route, drain and stop. The release's recorded formation follows, so a
//! restart after a crash brings up the new count.

use crate::pipeline::{formation_of, Config, DeployLog, Failure, ReleaseRun, Started};
use crate::{lock, Engine, EngineError, Live, Target};
use build::manifest::{AppKind, AppSpec};
use std::net::SocketAddr;
use std::sync::Arc;

impl Engine {
    /// Bring the live release `version` to the app's formation.
    pub(crate) async fn scale_in_place(
        self: &Arc<Self>,
        app: &str,
        deploy_id: i64,
        version: i64,
        log: &DeployLog,
        started: &mut Started,
    ) -> Result<(), Failure> {
        let a = self.app(app)?;
        let release = self
            .store
            .release(app, version)
            .map_err(EngineError::from)?
            .ok_or_else(|| Failure(format!("live release v{version} disappeared")))?;
        let spec = AppSpec::from_json(&release.spec)
            .map_err(|e| Failure(format!("release v{version} has a bad spec: {e}")))?;
        if spec.kind == AppKind::Static {
            return Err(Failure("a static site has no processes to scale".into()));
        }
        let mut config = match Config::parse(&release.config) {
            Some(c) => c,
            None => Config {
                env: self.app_env(app, &spec, None)?,
                formation: a.formation.clone(),
            },
        };
        let mut env = self.live_env(app, &spec, &config.env).await;
        let jail = self
            .jail_for(app, &release.dir, &spec, &mut env)
            .await
            .map_err(Failure)?;
        let current: Vec<store::Instance> = self
            .store
            .instances(app)
            .map_err(EngineError::from)?
            .into_iter()
            .filter(|i| i.release_version == version)
            .collect();

        // Start what is missing.
        let run = ReleaseRun {
            app,
            version,
            dir: &release.dir,
            spec: &spec,
            env: &env,
            formation: &a.formation,
            jail: jail.as_ref(),
            generation: a.live_generation,
        };
        if crate::swarm::on_swarm(&spec) {
            return self
                .scale_services(&run, deploy_id, current, config, log, started)
                .await;
        }
        let mut new_web = Vec::new();
        for proc_type in spec.processes.keys() {
            let want = formation_of(&spec, &a.formation, proc_type);
            for index in 1..=want {
                if current
                    .iter()
                    .any(|i| &i.proc_type == proc_type && i.index == index)
                {
                    continue;
                }
                log.line(&format!("-----> Starting {proc_type}.{index}"));
                new_web.extend(self.start_new(&run, proc_type, index, started).await?);
            }
        }
        if !new_web.is_empty() {
            log.line(&format!(
                "-----> Waiting for {} new web instance(s) to pass the health check",
                new_web.len()
            ));
            self.wait_healthy(app, &new_web, &spec, log).await?;
        }

        // Route the new set; what is beyond the formation leaves the route first.
        let removed: Vec<store::Instance> = current
            .iter()
            .filter(|i| formation_of(&spec, &a.formation, &i.proc_type) < i.index)
            .cloned()
            .collect();
        let mut web: Vec<SocketAddr> = current
            .iter()
            .filter(|i| i.proc_type == "web" && !removed.contains(i))
            .filter_map(|i| i.port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        web.extend(new_web.iter().map(|(_, a)| *a));
        let health_path = lock(&self.live)
            .get(app)
            .and_then(|l| l.health_path.clone());
        let target = if web.is_empty() {
            Target::None
        } else {
            Target::Upstreams(web)
        };
        config.formation = a.formation.clone();
        let live = Live {
            version,
            target,
            health_path,
            follow: None,
            hsts: spec.hsts.clone(),
        };
        // The deploy names its release only once the new formation is recorded: a scale cut
        // off before that is failed at the next start (reconcile), not taken as done.
        self.set_live(app, live, || {
            self.store
                .set_release_config(app, version, &config.to_json())
                .and_then(|()| self.store.set_deploy_release(deploy_id, version))
                .map_err(EngineError::from)
        })?;
        started.instances.clear();
        if !removed.is_empty() {
            log.line(&format!(
                "-----> Draining and stopping {} instance(s)",
                removed.len()
            ));
            self.retire(app, removed, spec.drain_timeout, spec.stop_grace, log)
                .await;
        }
        Ok(())
    }
}
