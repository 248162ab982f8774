//! Services a deploy leaves out. A service removed from gantry.toml would
//! otherwise keep running with its routes, holding hosts and paths the new
//! config may give to another service. After a deploy succeeds, each one the
//! host runs that the deploy did not name is taken out of the proxy's routes,
//! drained, stopped, and forgotten as a running service (its releases stay).

use std::time::Duration;

use gantry_core::agent_api::InstanceState;
use gantry_core::agent_api::ServiceSpec;

use crate::agent::Agent;
use crate::instance;
use crate::instance::refreshed;

/// Stops the services of `project` not in `kept`; their names, sorted.
pub async fn removed_services(agent: &Agent, project: &str, kept: &[ServiceSpec]) -> Vec<String> {
    let p = project.to_owned();
    let kept: Vec<String> = kept.iter().map(|s| s.name.clone()).collect();
    let found = agent
        .db(move |s| {
            let mut gone = Vec::new();
            for (service, release) in s.current_all(&p)? {
                if kept.contains(&service) {
                    continue;
                }
                let timeout = s
                    .release(&p, &release)?
                    .and_then(|r| r.services.into_iter().find(|x| x.name == service))
                    .map_or(Duration::from_secs(10), |x| x.stop_timeout.as_std());
                let records: Vec<_> = s
                    .instances(&p)?
                    .into_iter()
                    .filter(|r| r.service == service && r.is_active())
                    .collect();
                gone.push((service, timeout, records));
            }
            Ok(gone)
        })
        .await;
    let gone = match found {
        Ok(gone) => gone,
        Err(e) => {
            tracing::warn!(project, error = %e, "cannot list the services the deploy removed");
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for (service, timeout, records) in gone {
        agent.proxy.drain_out(&records, timeout).await;
        for record in &records {
            let fresh = refreshed(agent, record).await;
            instance::stop(agent, &fresh, timeout, InstanceState::Stopped).await;
        }
        let (p, n) = (project.to_owned(), service.clone());
        let forgotten = agent.db(move |s| s.forget_service(&p, &n)).await;
        if let Err(e) = forgotten {
            tracing::warn!(project, service, error = %e, "cannot forget a removed service");
        }
        tracing::info!(
            project,
            service,
            "stopped a service the config no longer has"
        );
        removed.push(service);
    }
    agent.proxy.refresh().await;
    if !removed.is_empty() {
        crate::container_instance::remove_idle_networks(agent, project).await;
    }
    removed
}
