//! Environment deploy locks that CLIs hold across hosts: one deploy at a
//! time per (project, environment). In memory: an agent restart releases
//! them, and the CLI that held one finds it gone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use gantry_core::Code;
use gantry_core::agent_api::{LockGrant, LockHolder, LockRelease, LockRequest, LockState};
use gantry_core::clock::now_ms;

use crate::error::AgentError;

/// The locks, by (project, environment): the token and the holder.
#[derive(Default)]
pub(crate) struct EnvLocks(Mutex<HashMap<(String, String), (String, LockHolder)>>);

impl EnvLocks {
    fn held(&self) -> MutexGuard<'_, HashMap<(String, String), (String, LockHolder)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who holds the environment's lock, if anyone.
    pub(crate) fn state(&self, project: String, environment: String) -> LockState {
        LockState {
            holder: self
                .held()
                .get(&(project, environment))
                .map(|(_, holder)| holder.clone()),
        }
    }

    /// Takes the lock, or says who holds it; `force` takes it anyway and
    /// names whom it displaced.
    pub(crate) fn take(
        &self,
        project: &str,
        request: LockRequest,
    ) -> Result<LockGrant, AgentError> {
        let mut locks = self.held();
        let key = (project.to_owned(), request.environment.clone());
        let displaced = match locks.get(&key) {
            Some((_, holder)) if !request.force => {
                let ago = now_ms().saturating_sub(holder.since_ms) / 1000;
                return Err(AgentError::conflict(
                    Code::DeployLocked,
                    format!(
                        "`{}` of {project} ({}) is locked by pid {} of {}@{}, for {ago}s",
                        holder.command,
                        request.environment,
                        holder.pid,
                        holder.user,
                        holder.machine
                    ),
                    "wait for that deploy to end; if it is gone, pass --force-unlock",
                ));
            }
            Some((_, holder)) => Some(holder.clone()),
            None => None,
        };
        let token = format!("{:032x}", rand::random::<u128>());
        locks.insert(key, (token.clone(), request.holder));
        Ok(LockGrant { token, displaced })
    }

    /// Releases the lock if `request` carries its token: a forced take left
    /// the old holder's token stale, and that holder must not release the new one's.
    pub(crate) fn release(&self, project: String, request: LockRelease) {
        let mut locks = self.held();
        let key = (project, request.environment);
        if locks
            .get(&key)
            .is_some_and(|(token, _)| *token == request.token)
        {
            locks.remove(&key);
        }
    }
}
