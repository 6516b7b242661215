//! [`MultiRuntime`]: one [`Runtime`] for the engine in front of the process runtime and, when a
//! daemon is reachable, the Docker and Swarm runtimes. An instance with swarm options goes to
//! Swarm, one with an image to Docker, anything else to the process runtime; one-off tasks
//! always run as processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{
    DockerRuntime, Event, InstanceInfo, InstanceSpec, InstanceState, ProcessRuntime, Runtime,
    RuntimeError, SwarmRuntime, TaskOutcome, TaskSpec,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Process,
    Docker,
    Swarm,
}

/// Routes each call to the process or the Docker runtime. See the module docs.
pub struct MultiRuntime {
    pub process: Arc<ProcessRuntime>,
    pub docker: Option<Arc<DockerRuntime>>,
    /// The daemon's Swarm runtime (`docker.swarm()`).
    pub swarm: Option<Arc<SwarmRuntime>>,
    /// Which runtime runs each started or adopted id.
    owners: Mutex<HashMap<String, Which>>,
    events: broadcast::Sender<Event>,
    /// Tasks forwarding both runtimes' events into `events`.
    forwarders: Vec<JoinHandle<()>>,
}

impl MultiRuntime {
    /// Must be called inside a tokio runtime (it spawns the event forwarders).
    pub fn new(process: Arc<ProcessRuntime>, docker: Option<Arc<DockerRuntime>>) -> Arc<Self> {
        let events = broadcast::channel(1024).0;
        let mut forwarders = vec![forward(process.subscribe(), events.clone())];
        let swarm = docker.as_ref().map(|d| d.swarm());
        if let Some(docker) = &docker {
            forwarders.push(forward(docker.subscribe(), events.clone()));
        }
        if let Some(swarm) = &swarm {
            forwarders.push(forward(swarm.subscribe(), events.clone()));
        }
        Arc::new(MultiRuntime {
            process,
            docker,
            swarm,
            owners: Mutex::new(HashMap::new()),
            events,
            forwarders,
        })
    }

    fn docker(&self, spec: &InstanceSpec) -> Result<&Arc<DockerRuntime>, RuntimeError> {
        self.docker.as_ref().ok_or_else(|| {
            RuntimeError::Docker(format!(
                "no Docker daemon: instance {} needs image {}",
                spec.id,
                spec.image.as_deref().unwrap_or_default()
            ))
        })
    }

    fn swarm(&self, spec: &InstanceSpec) -> Result<&Arc<SwarmRuntime>, RuntimeError> {
        self.swarm.as_ref().ok_or_else(|| {
            RuntimeError::Docker(format!(
                "no Docker daemon: instance {} runs on Swarm",
                spec.id
            ))
        })
    }

    fn which(&self, id: &str) -> Option<Which> {
        lock(&self.owners).get(id).copied()
    }

    fn record(&self, id: &str, which: Which) {
        lock(&self.owners).insert(id.to_string(), which);
    }
}

impl Drop for MultiRuntime {
    fn drop(&mut self) {
        for task in &self.forwarders {
            task.abort();
        }
    }
}

/// Copies every event of `rx` into `tx` until `rx`'s runtime is gone.
fn forward(mut rx: broadcast::Receiver<Event>, tx: broadcast::Sender<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let _ = tx.send(event);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "runtime events lagged");
                    // Lost events may have been task changes: the engine looks at every route.
                    let _ = tx.send(Event::Endpoints { id: String::new() });
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

#[async_trait::async_trait]
impl Runtime for MultiRuntime {
    fn name(&self) -> &'static str {
        "multi"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<InstanceInfo, RuntimeError> {
        let id = spec.id.clone();
        let (which, info) = if spec.swarm.is_some() {
            // Known as Swarm's before it starts: a failed start is undone there too.
            let swarm = self.swarm(&spec)?;
            self.record(&id, Which::Swarm);
            (Which::Swarm, swarm.start(spec).await?)
        } else if spec.image.is_some() {
            (Which::Docker, self.docker(&spec)?.start(spec).await?)
        } else {
            (Which::Process, self.process.start(spec).await?)
        };
        self.record(&id, which);
        Ok(info)
    }

    async fn adopt(
        &self,
        spec: InstanceSpec,
        pid: u32,
        pid_start: u64,
    ) -> Result<Option<InstanceInfo>, RuntimeError> {
        let id = spec.id.clone();
        let (which, info) = if spec.swarm.is_some() {
            (
                Which::Swarm,
                self.swarm(&spec)?.adopt(spec, pid, pid_start).await?,
            )
        } else if spec.image.is_some() {
            let docker = self.docker(&spec)?;
            (Which::Docker, docker.adopt(spec, pid, pid_start).await?)
        } else {
            let adopted = self.process.adopt(spec, pid, pid_start).await?;
            (Which::Process, adopted)
        };
        if info.is_some() {
            self.record(&id, which);
        }
        Ok(info)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self.which(id) {
            Some(Which::Process) => self.process.stop(id, grace).await?,
            Some(Which::Docker) => {
                if let Some(docker) = &self.docker {
                    docker.stop(id, grace).await?;
                }
            }
            Some(Which::Swarm) => {
                if let Some(swarm) = &self.swarm {
                    swarm.stop(id, grace).await?;
                }
            }
            // Unknown here: each runtime treats an id it does not know as already stopped
            // (a service that moved on to another release, too).
            None => {
                self.process.stop(id, grace).await?;
                if let Some(docker) = &self.docker {
                    docker.stop(id, grace).await?;
                }
                if let Some(swarm) = &self.swarm {
                    // A no-op unless the service runs exactly this release.
                    if swarm.check_manager().await.is_ok() {
                        swarm.stop(id, grace).await?;
                    }
                }
            }
        }
        lock(&self.owners).remove(id);
        Ok(())
    }

    async fn kill_orphan(
        &self,
        pid: u32,
        pid_start: u64,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        // A container's init process is a process on this host too: ask Docker first, so
        // it is stopped (and removed) as a container, not signalled behind Docker's back.
        match &self.docker {
            Some(docker) if docker.kill_orphan_container(pid, pid_start, grace).await? => {
                return Ok(());
            }
            Some(_) => {}
            // No daemon to ask: a container's process is left alone rather than signalled
            // behind Docker's back (its restart policy would bring it back unmanaged anyway).
            None if in_a_container(pid) => {
                tracing::warn!(pid, "not stopping a container's process without Docker");
                return Ok(());
            }
            None => {}
        }
        self.process.kill_orphan(pid, pid_start, grace).await
    }

    fn state(&self, id: &str) -> Option<InstanceState> {
        match self.which(id) {
            Some(Which::Process) => self.process.state(id),
            Some(Which::Docker) => self.docker.as_ref().and_then(|d| d.state(id)),
            Some(Which::Swarm) => self.swarm.as_ref().and_then(|s| s.state(id)),
            None => self
                .process
                .state(id)
                .or_else(|| self.docker.as_ref().and_then(|d| d.state(id))),
        }
    }

    async fn run_task(&self, task: TaskSpec) -> Result<TaskOutcome, RuntimeError> {
        self.process.run_task(task).await
    }

    async fn sweep(&self, grace: Duration) -> Result<usize, RuntimeError> {
        let mut stopped = self.process.sweep(grace).await?;
        if let Some(docker) = &self.docker {
            stopped += docker.sweep(grace).await?;
        }
        // Swarm services are kept or removed by the engine (`SwarmRuntime::remove_unwanted`).
        Ok(stopped)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn endpoints(&self, id: &str) -> Option<Vec<std::net::SocketAddr>> {
        match self.which(id) {
            Some(Which::Swarm) => self.swarm.as_ref().and_then(|s| s.endpoints(id)),
            _ => None,
        }
    }

    fn supervised(&self, id: &str) -> bool {
        self.which(id) != Some(Which::Swarm)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Does `pid` run in a Docker (containerd) container? Its cgroup path says so.
fn in_a_container(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.contains("docker") || c.contains("containerd"))
}
