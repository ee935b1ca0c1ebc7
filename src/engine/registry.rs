//! The table of live sessions: bounded, with idle expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mcp_meter_plugin::SessionId;
use rand::RngCore;

use super::session::Session;

/// Refused because `server.max_sessions` sessions are open.
#[derive(Debug, thiserror::Error)]
#[error("mcp-meter is serving its maximum of {0} sessions; retry later")]
pub struct SessionsFull(pub usize);

/// Live sessions by id.
#[derive(Debug)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    max_sessions: usize,
}

impl SessionRegistry {
    /// An empty registry holding at most `max_sessions`.
    pub fn new(max_sessions: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            max_sessions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh, unguessable session id (128 random bits, hex).
    pub fn new_id() -> SessionId {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        SessionId::new(hex)
    }

    /// Adds a session built by `make`, unless the registry is full.
    pub fn insert_with(
        &self,
        make: impl FnOnce(SessionId) -> Arc<Session>,
    ) -> Result<Arc<Session>, SessionsFull> {
        let mut sessions = self.lock();
        if sessions.len() >= self.max_sessions {
            return Err(SessionsFull(self.max_sessions));
        }
        let session = make(Self::new_id());
        sessions.insert(session.id().clone(), session.clone());
        Ok(session)
    }

    /// The session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(&SessionId::new(id)).cloned()
    }

    /// Removes a session (the caller closes it).
    pub fn remove(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.lock().remove(id)
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Removes and returns every session idle for `idle`.
    pub fn take_idle(&self, idle: Duration) -> Vec<Arc<Session>> {
        let now = Instant::now();
        let mut sessions = self.lock();
        let ids: Vec<SessionId> = sessions
            .iter()
            .filter(|(_, s)| s.is_idle(now, idle))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| sessions.remove(id)).collect()
    }

    /// Removes and returns every session.
    pub fn drain(&self) -> Vec<Arc<Session>> {
        self.lock().drain().map(|(_, s)| s).collect()
    }
}
