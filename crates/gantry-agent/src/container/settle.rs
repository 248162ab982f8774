//! After an agent restart, the containers on the host are held against the
//! instances the store counts: a container counted (the same project,
//! environment, service, release and instance) is adopted, every other
//! container the agent made is removed, so no container runs that the
//! store does not count. Containers without Gantry's labels, or made by
//! another agent (`dev.gantry.agent`), are never touched.

use std::collections::HashSet;

use super::{ContainerError, ContainerState, Engine, Identity};

/// What becomes of one container of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Counted by the store: the supervisor takes it over as it is.
    Adopt(String),
    /// Not counted: removed, with the reason for the agent's log.
    Remove { container: String, why: String },
}

/// Decides each listed container's fate (pure). A container is counted by
/// its project and instance: an instance id is unique, and an unchanged
/// service's instances are carried over to later releases, while a
/// container's labels keep the release that started it.
pub fn plan(listed: &[ContainerState], counted: &HashSet<Identity>) -> Vec<Settle> {
    let counted: HashSet<(&str, &str)> = counted
        .iter()
        .map(|i| (i.project.as_str(), i.instance.as_str()))
        .collect();
    listed
        .iter()
        .map(|state| match &state.identity {
            Some(identity)
                if counted.contains(&(identity.project.as_str(), identity.instance.as_str())) =>
            {
                Settle::Adopt(state.id.clone())
            }
            Some(identity) => Settle::Remove {
                container: state.id.clone(),
                why: format!(
                    "{} (service {}, release {}, instance {}) is not an instance the store counts",
                    state.name, identity.service, identity.release, identity.instance
                ),
            },
            None => Settle::Remove {
                container: state.id.clone(),
                why: format!(
                    "{} carries the project's label but not all of Gantry's",
                    state.name
                ),
            },
        })
        .collect()
}

impl Engine {
    /// Removes every container this engine's owner made that `counted`
    /// does not name, whatever its project; returns the plan carried out.
    pub async fn settle(&self, counted: &HashSet<Identity>) -> Result<Vec<Settle>, ContainerError> {
        let listed = self.list_all().await?;
        let plan = plan(&listed, counted);
        for settle in &plan {
            if let Settle::Remove { container, .. } = settle
                && let Some(state) = listed.iter().find(|s| &s.id == container)
            {
                // By name: its secret files are kept under it.
                let name = if state.name.is_empty() {
                    &state.id
                } else {
                    &state.name
                };
                self.remove(name).await?;
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, instance: &str, release: &str) -> ContainerState {
        ContainerState {
            id: id.to_owned(),
            name: format!("gantry-shop-prod-web-{instance}"),
            identity: Some(Identity {
                project: "shop".into(),
                environment: "prod".into(),
                service: "web".into(),
                release: release.into(),
                instance: instance.into(),
            }),
            running: true,
            exit_code: None,
            host_port: None,
            image_id: None,
            address: None,
        }
    }

    #[test]
    fn counted_containers_are_adopted_and_the_rest_removed() {
        let kept = state("a", "i1", "r2");
        let counted: HashSet<Identity> = [kept.identity.clone().expect("identity")].into();
        let stale = state("b", "i0", "r1");
        // An instance carried over to a later release: its labels name the
        // release that started it.
        let carried = state("c", "i1", "r1");
        let mut partial = state("d", "i9", "r2");
        partial.identity = None;
        let mut elsewhere = state("e", "i1", "r2");
        if let Some(identity) = elsewhere.identity.as_mut() {
            identity.project = "blog".into();
        }
        let plan = plan(&[kept, stale, carried, partial, elsewhere], &counted);
        assert_eq!(plan[0], Settle::Adopt("a".into()));
        assert!(
            matches!(&plan[1], Settle::Remove { container, why } if container == "b" && why.contains("i0"))
        );
        assert_eq!(plan[2], Settle::Adopt("c".into()));
        assert!(matches!(&plan[3], Settle::Remove { container, .. } if container == "d"));
        assert!(matches!(&plan[4], Settle::Remove { container, .. } if container == "e"));
    }
}
