//! How a service reaches the services it depends on: for each service of
//! its `depends_on` that has a port, `GANTRY_<NAME>_HOST` and
//! `GANTRY_<NAME>_PORT` (the name upper-cased, `-` as `_`). A container
//! gets the dependency's name and port on the project network (`db`,
//! `5432`: a container dependency only); a process gets `127.0.0.1` and
//! the loopback port of the dependency's running instance (a container's
//! published port). The values are read when an instance starts; a
//! dependency replaced on another port restarts its dependents, since
//! their addresses are part of what they run (`fingerprint`).

use std::collections::BTreeMap;

use gantry_core::agent_api::InstanceState;
use gantry_core::agent_api::ServiceSpec;
use gantry_core::agent_api::v1::{Port, Workload};

use crate::agent::Agent;
use crate::store::InstanceRecord;

/// The variables `service` of `project` gets for its dependencies, as
/// they run now.
pub async fn of(agent: &Agent, project: &str, service: &ServiceSpec) -> BTreeMap<String, String> {
    if service.depends_on.is_empty() {
        return BTreeMap::new();
    }
    let (p, wanted) = (project.to_owned(), service.depends_on.clone());
    let found = agent
        .db(move |s| {
            let current = s.current_all(&p)?;
            let instances = s.instances(&p)?;
            let mut deps = Vec::new();
            for name in &wanted {
                let Some(release) = current.get(name) else {
                    continue;
                };
                let Some(spec) = s
                    .release(&p, release)?
                    .and_then(|r| r.services.into_iter().find(|x| &x.name == name))
                else {
                    continue;
                };
                let running: Vec<InstanceRecord> = instances
                    .iter()
                    .filter(|i| &i.service == name && &i.release == release && i.is_active())
                    .cloned()
                    .collect();
                deps.push((spec, running));
            }
            Ok(deps)
        })
        .await;
    match found {
        Ok(deps) => variables(service, &deps),
        Err(e) => {
            tracing::warn!(project, service = %service.name, error = %e, "cannot read the addresses of its dependencies");
            BTreeMap::new()
        }
    }
}

/// The variables for `service`, given each dependency's spec and its
/// active instances (pure).
pub fn variables(
    service: &ServiceSpec,
    deps: &[(ServiceSpec, Vec<InstanceRecord>)],
) -> BTreeMap<String, String> {
    let in_container = matches!(service.workload, Workload::Compose { .. });
    let mut vars = BTreeMap::new();
    for (dep, running) in deps {
        // A live instance first, the oldest of them.
        let instance_port = running
            .iter()
            .find(|i| i.state == InstanceState::Live)
            .or_else(|| running.first())
            .and_then(|i| i.port);
        let dep_is_container = matches!(dep.workload, Workload::Compose { .. });
        let address = match (in_container, dep_is_container, &dep.port) {
            (true, true, Some(Port::Fixed(port))) => Some((dep.name.clone(), Some(*port))),
            (true, true, Some(Port::Named(_))) => Some((dep.name.clone(), instance_port)),
            // A container does not reach the host's loopback.
            (true, false, _) => None,
            (false, _, Some(_)) => Some(("127.0.0.1".to_owned(), instance_port)),
            (_, _, None) => None,
        };
        if let Some((host, Some(port))) = address {
            let key = dep.name.to_ascii_uppercase().replace('-', "_");
            vars.insert(format!("GANTRY_{key}_HOST"), host);
            vars.insert(format!("GANTRY_{key}_PORT"), port.to_string());
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        workload: serde_json::Value,
        port: Option<serde_json::Value>,
    ) -> ServiceSpec {
        let mut json = serde_json::json!({
            "name": name, "replicas": 1, "stop_timeout": "10s", "restart": "always",
        });
        for (k, v) in workload.as_object().expect("an object") {
            json[k] = v.clone();
        }
        if let Some(port) = port {
            json["port"] = port;
        }
        serde_json::from_value(json).expect("a service spec")
    }

    fn live(id: &str, service: &str, port: u16) -> InstanceRecord {
        let mut record = InstanceRecord::new(id, "shop", service, "r1", Some(port), 1);
        record.state = InstanceState::Live;
        record
    }

    #[test]
    fn processes_reach_dependencies_on_loopback_and_containers_by_name() {
        let db = spec(
            "db",
            serde_json::json!({"driver": "compose", "image": "postgres"}),
            Some(serde_json::json!(5432)),
        );
        let api = spec(
            "read-api",
            serde_json::json!({"driver": "process", "run": "./api"}),
            Some(serde_json::json!("http")),
        );
        let worker = spec(
            "worker",
            serde_json::json!({"driver": "process", "run": "./worker"}),
            None,
        );
        let deps = vec![
            (db.clone(), vec![live("db-1", "db", 41002)]),
            (api.clone(), vec![live("api-1", "read-api", 41003)]),
        ];
        let vars = variables(&worker, &deps);
        assert_eq!(vars["GANTRY_DB_HOST"], "127.0.0.1");
        assert_eq!(vars["GANTRY_DB_PORT"], "41002", "the published port");
        assert_eq!(vars["GANTRY_READ_API_PORT"], "41003");

        let web = spec(
            "web",
            serde_json::json!({"driver": "compose", "image": "web"}),
            None,
        );
        let vars = variables(&web, &deps);
        assert_eq!(vars["GANTRY_DB_HOST"], "db");
        assert_eq!(vars["GANTRY_DB_PORT"], "5432", "the port inside");
        assert!(
            !vars.contains_key("GANTRY_READ_API_HOST"),
            "a process is not reachable from a container: {vars:?}"
        );
        let no_port = vec![(worker.clone(), vec![live("w-1", "worker", 1)])];
        assert!(variables(&web, &no_port).is_empty());
    }
}
