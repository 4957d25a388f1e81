//! Durable sessions: every stored conversation lives in a [`SessionStore`];
//! turns on one session take its lock one at a time, and a turn is
//! acknowledged only once its save succeeded (compare-and-set, so a save over
//! another writer's is a 409, never a silent overwrite). Also the
//! `/v1/sessions` routes: create, list, show, fork (at the end or at message
//! *k*), delete, export and import.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use colloquy::store::SessionStore;
use colloquy::{ChatModel, ChatSession, LlamaChatSession};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedMutexGuard;

use crate::error::ApiError;
use crate::{blocking, App};

/// A session's place in the server: the lock its turns take, holding the
/// session once loaded, and whether it was deleted.
#[derive(Debug, Default)]
pub struct Slot {
    session: Arc<tokio::sync::Mutex<Option<LlamaChatSession>>>,
    deleted: AtomicBool,
}

/// A session locked for one turn.
pub struct Held {
    /// Its id.
    pub id: String,
    slot: Arc<Slot>,
    guard: OwnedMutexGuard<Option<LlamaChatSession>>,
}

impl Held {
    /// The session (loaded).
    pub fn session(&self) -> &LlamaChatSession {
        self.guard.as_ref().expect("a held session is loaded")
    }
}

/// The stored sessions and their locks.
pub struct Sessions {
    store: Arc<SessionStore>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// Sessions kept loaded in memory between their turns.
pub const LOADED: usize = 64;

/// A new session id: 128 random bits, in hex (never a path).
pub fn new_id() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| ApiError::Internal(format!("no randomness for a session id: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: SessionStore) -> Sessions {
        Sessions { store: Arc::new(store), slots: Mutex::new(HashMap::new()) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<SessionStore> {
        &self.store
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(id.to_string()).or_default())
    }

    /// Locks session `id` for a turn, loading it from the store if needed.
    /// With `wait` false, a session whose turn is running gives 409.
    pub async fn hold(&self, id: &str, wait: bool) -> Result<Held, ApiError> {
        colloquy::store::validate_id(id).map_err(ApiError::from)?;
        let slot = self.slot(id);
        let mut guard = if wait {
            Arc::clone(&slot.session).lock_owned().await
        } else {
            Arc::clone(&slot.session).try_lock_owned().map_err(|_| ApiError::SessionBusy(id.to_string()))?
        };
        if slot.deleted.load(Ordering::SeqCst) {
            return Err(ApiError::SessionNotFound(id.to_string()));
        }
        if let Some(session) = guard.take() {
            // Another server on the same store may have saved a newer turn:
            // then the copy held here is stale, and is read again.
            let (store, key) = (Arc::clone(&self.store), id.to_string());
            let (current, session) = blocking_with(session, move |s| store.is_current(&key, s)).await;
            if current? {
                *guard = Some(session);
            }
        }
        if guard.is_none() {
            let (store, key) = (Arc::clone(&self.store), id.to_string());
            *guard = Some(blocking(move || store.load(&key)).await?);
        }
        Ok(Held { id: id.to_string(), slot, guard })
    }

    /// Holds a new, empty session under a fresh id (saved at once, so that it
    /// exists even before its first turn).
    pub async fn create(&self, session: LlamaChatSession) -> Result<Held, ApiError> {
        let id = new_id()?;
        let slot = self.slot(&id);
        let mut guard = Arc::clone(&slot.session).lock_owned().await;
        *guard = Some(session);
        let mut held = Held { id, slot, guard };
        held = self.save(held).await?;
        Ok(held)
    }

    /// Saves the held session: the acknowledgement of its turn. A session
    /// deleted meanwhile stays deleted (404); another writer's newer save is
    /// a 409. On failure the in-memory copy is dropped, so the next turn
    /// reads what the store holds.
    pub async fn save(&self, mut held: Held) -> Result<Held, ApiError> {
        if held.slot.deleted.load(Ordering::SeqCst) {
            return Err(ApiError::SessionNotFound(held.id.clone()));
        }
        let store = Arc::clone(&self.store);
        let (r, back) = blocking_keep(held, move |h| store.save(&h.id, h.session()).map(|_| ())).await;
        held = back;
        match r {
            Ok(()) => {
                self.trim(&held.id);
                Ok(held)
            }
            Err(e) => {
                *held.guard = None;
                Err(match e {
                    colloquy::Error::SessionConflict { found: None, .. } => {
                        ApiError::SessionNotFound(held.id.clone())
                    }
                    e => ApiError::from(e),
                })
            }
        }
    }

    /// Keeps at most [`LOADED`] sessions in memory: the others' KV is dropped
    /// (their next turn loads them from the store; the prefix cache still
    /// holds their recent blocks). The slots stay, so turns on one session
    /// keep waiting for each other.
    fn trim(&self, keep: &str) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut loaded = 0;
        for (id, slot) in slots.iter() {
            if id == keep {
                continue;
            }
            if let Ok(mut guard) = slot.session.try_lock() {
                if guard.is_some() {
                    loaded += 1;
                    if loaded >= LOADED {
                        *guard = None;
                    }
                }
            }
        }
    }

    /// Deletes `id`: a turn running on it is not saved, and the session
    /// stays deleted.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        colloquy::store::validate_id(id).map_err(ApiError::from)?;
        if let Some(slot) = self.slots.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
            slot.deleted.store(true, Ordering::SeqCst);
        }
        let (store, key) = (Arc::clone(&self.store), id.to_string());
        blocking(move || store.delete(&key)).await
    }
}

/// Runs `f(&session)` on a blocking thread and gives the session back.
async fn blocking_with<T: Send + 'static>(
    session: LlamaChatSession,
    f: impl FnOnce(&LlamaChatSession) -> colloquy::Result<T> + Send + 'static,
) -> (Result<T, ApiError>, LlamaChatSession) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let r = f(&session);
        let _ = tx.send((r, session));
    });
    let (r, session) = rx.await.unwrap_or_else(|_| panic!("a blocking store thread died"));
    (r.map_err(ApiError::from), session)
}

/// Runs `f(&held)` on a blocking thread and gives `held` back.
async fn blocking_keep<T: Send + 'static>(
    held: Held,
    f: impl FnOnce(&Held) -> colloquy::Result<T> + Send + 'static,
) -> (colloquy::Result<T>, Held) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let r = f(&held);
        let _ = tx.send((r, held));
    });
    rx.await.unwrap_or_else(|_| panic!("a blocking save thread died"))
}

fn message_json(m: &colloquy::ChatMessage, thinking_opened: bool) -> Value {
    // An answer that thought shows its thinking apart, as a reply gave it.
    let parts = if thinking_opened {
        crate::reasoning::split_opened(m.content())
    } else {
        crate::reasoning::split(m.content())
    };
    match (m.role(), parts) {
        (colloquy::MessageType::ModelAnswer, (Some(r), answer)) => {
            json!({"role": "assistant", "content": answer, "reasoning_content": r})
        }
        _ => json!({"role": m.role().as_role(), "content": m.content()}),
    }
}

/// `POST /v1/sessions`: a new, empty session.
pub async fn create(State(app): State<App>) -> Result<Response, ApiError> {
    let session = app.llm.new_chat_session()?;
    let held = app.sessions.create(session).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": held.id, "object": "session"})).into_response())
        .into_response())
}

/// `GET /v1/sessions`.
pub async fn list(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(app.sessions.store());
    let list = blocking(move || store.list()).await?;
    let data: Vec<Value> = list
        .iter()
        .map(|s| {
            let modified = s.modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            json!({"id": s.id, "object": "session", "tokens": s.tokens, "messages": s.messages,
                   "bytes": s.bytes, "modified": modified})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/sessions/{id}`: its acknowledged history and token count.
pub async fn show(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    colloquy::store::validate_id(&id)?;
    let store = Arc::clone(app.sessions.store());
    let key = id.clone();
    let m = blocking(move || store.manifest(&key)).await?;
    let opened = app.llm.opens_thinking();
    let messages: Vec<Value> = m.transcript().iter().map(|m| message_json(m, opened)).collect();
    let dropped: Vec<Value> = m.dropped.iter().map(|m| message_json(m, opened)).collect();
    Ok(Json(json!({"id": id, "object": "session", "tokens": m.tokens.len(), "messages": messages,
                   "dropped_messages": dropped, "version": m.version})))
}

/// The body of a fork.
#[derive(Debug, Default, Deserialize)]
pub struct ForkRequest {
    /// Keep the first `at` messages (default: all).
    pub at: Option<usize>,
}

/// `POST /v1/sessions/{id}/fork`: an independent copy, of all of it or of its
/// first `at` messages.
pub async fn fork(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    colloquy::store::validate_id(&id)?;
    // The body is optional: none (or `{}`) forks the whole session.
    let at = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<ForkRequest>(&body).map_err(|e| ApiError::BadJson(e.to_string()))?.at
    };
    let new = new_id()?;
    let store = Arc::clone(app.sessions.store());
    let (from, to, llm) = (id.clone(), new.clone(), app.llm.clone());
    blocking(move || match at {
        None => store.fork(&from, &to),
        Some(k) => {
            let s = store.load(&from)?;
            let copy = llm.fork_at(&s, k)?;
            store.save(&to, &copy).map(|_| ())
        }
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": new, "object": "session", "forked_from": id})))
        .into_response())
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    app.sessions.delete(&id).await?;
    Ok(Json(json!({"id": id, "object": "session", "deleted": true})))
}

/// `GET /v1/sessions/{id}/export`: the session's bytes (`to_bytes`).
pub async fn export(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    colloquy::store::validate_id(&id)?;
    let store = Arc::clone(app.sessions.store());
    let bytes = blocking(move || store.load(&id)?.to_bytes()).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/sessions/import`: stores the bytes of an exported session under a new id.
pub async fn import(State(app): State<App>, body: Bytes) -> Result<Response, ApiError> {
    let session = blocking(move || LlamaChatSession::from_bytes(&body))
        .await
        .map_err(|e| ApiError::invalid("body", format!("not a session: {e}")))?;
    if session.fingerprint() != app.llm.fingerprint() {
        return Err(ApiError::invalid(
            "body",
            "the session belongs to another model than the one this server runs",
        ));
    }
    let held = app.sessions.create(session).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": held.id, "object": "session"}))).into_response())
}
