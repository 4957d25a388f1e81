//! The write path: [`SessionStore::save`] (compare-and-set) and
//! [`SessionStore::replace`], which write the missing blocks, then swap the
//! manifest under the manifest lock, then collect what the old version alone used.

use super::*;

impl SessionStore {
    /// Saves `session` as `id`, if the store still holds the version of `id`
    /// that this session was loaded from or last saved as (or, for a session
    /// that never was `id`, if there is no session `id`). Otherwise nothing
    /// changes and the error is [`Error::SessionConflict`]: another writer
    /// saved in between (or deleted the session), and this save would have
    /// thrown its work away. Load the session again and redo the turn.
    ///
    /// Writes only the blocks the store does not hold yet, then swaps the
    /// manifest under a lock that every process takes, so of two writers that
    /// loaded the same version exactly one succeeds. Blocks that only the
    /// replaced version used are removed.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let store = SessionStore::open("my-sessions").unwrap();
    /// let mut chat = llm.chat();
    /// chat("Hi!").await.unwrap();
    /// store.save("greeting", &chat.session().unwrap()).unwrap();
    /// chat("How are you?").await.unwrap();
    /// let stats = store.save("greeting", &chat.session().unwrap()).unwrap();
    /// assert!(stats.blocks_written <= 2); // the changed last block, maybe a new one
    ///
    /// // Another copy that read the first version cannot overwrite the second.
    /// let stale = store.load("greeting").unwrap();
    /// store.save("greeting", &chat.session().unwrap()).unwrap();
    /// assert!(matches!(store.save("greeting", &stale), Err(Error::SessionConflict { .. })));
    /// # }
    /// ```
    pub fn save(&self, id: &str, session: &LlamaChatSession) -> Result<SaveStats> {
        self.write_session(id, session, true)
    }

    /// Saves `session` as `id` whatever the store holds under `id` now: the
    /// last writer wins. Use it to overwrite on purpose (a "latest" pointer,
    /// say); [`save`](Self::save) is the safe default.
    ///
    /// ```no_run
    /// # use colloquy::language::*;
    /// # #[tokio::main] async fn main() {
    /// let llm = Llama::new_chat().await.unwrap();
    /// let store = SessionStore::open("my-sessions").unwrap();
    /// store.replace("scratch", &llm.new_chat_session().unwrap()).unwrap();
    /// store.replace("scratch", &llm.new_chat_session().unwrap()).unwrap();
    /// # }
    /// ```
    pub fn replace(&self, id: &str, session: &LlamaChatSession) -> Result<SaveStats> {
        self.write_session(id, session, false)
    }

    fn write_session(&self, id: &str, session: &LlamaChatSession, check: bool) -> Result<SaveStats> {
        validate_id(id)?;
        let place = self.place(id);
        // A consistent snapshot; the block table is shared, not copied.
        let (snap, expected): (SessionState, _) = {
            let st = session.lock();
            (st.clone(), st.versions.get(&place))
        };
        // Fail early, before writing any block, when the conflict is already
        // visible; the check that counts is the backend's atomic swap.
        let found_early = self.stored_version(id, check)?;
        if check && found_early != expected {
            return Err(Error::SessionConflict { id: id.to_string(), expected, found: found_early });
        }
        let (expect, version) = match check {
            true => (Expect::from_version(expected), next_version(expected)),
            false => (Expect::Any, next_version(found_early)),
        };
        let mut writer = self.backend.begin_write()?;
        let n = snap.kv.len();
        let (global, local) = (snap.kv.layout().lane(false), snap.kv.layout().lane(true));
        // Every block with its lane and index: the global lane, then the window's.
        let mut all: Vec<(&Arc<KvBlock>, &KvLayout, usize)> =
            snap.kv.blocks().iter().enumerate().map(|(b, block)| (block, &global, b)).collect();
        let mut window_at = Vec::new();
        for (b, block) in snap.kv.window_blocks().iter().enumerate() {
            if let Some(block) = block {
                window_at.push(b);
                all.push((block, &local, b));
            }
        }
        let mut stats = SaveStats::default();
        let mut hashes = Vec::with_capacity(all.len());
        let mut written = Vec::new();
        for chunk in all.chunks(BATCH) {
            self.save_blocks(&mut *writer, chunk, n, &mut hashes, &mut written, &mut stats)?;
        }
        let window: Vec<(usize, BlockHash)> =
            window_at.iter().zip(&hashes[snap.kv.blocks().len()..]).map(|(&b, &h)| (b, h)).collect();
        let hashes = &hashes[..snap.kv.blocks().len()];
        let manifest = records::encode_manifest(&snap, version, hashes, &window);
        let previous = match writer.commit(id, expect, version, &manifest)? {
            Swap::Done { previous } => previous,
            Swap::Conflict { found } => {
                // The blocks this save wrote are garbage unless someone else uses them.
                self.backend.collect(&written)?;
                return Err(Error::SessionConflict { id: id.to_string(), expected, found });
            }
        };
        stats.version = version;
        stats.bytes_written += manifest.len() as u64;
        session.lock().versions.set(place, version);
        if let Some(old) = previous.and_then(|b| decode_manifest(&b).ok()) {
            let kept: HashSet<BlockHash> =
                hashes.iter().copied().chain(window.iter().map(|&(_, h)| h)).collect();
            let orphans: Vec<BlockHash> = old.all_blocks().filter(|h| !kept.contains(h)).collect();
            stats.blocks_removed = self.backend.collect(&orphans)?;
        }
        Ok(stats)
    }

    /// The version stored as `id`, if any. Without `strict`, a damaged
    /// manifest counts as none (there is no version in it to compare with).
    pub(super) fn stored_version(&self, id: &str, strict: bool) -> Result<Option<u64>> {
        match self.manifest(id) {
            Ok(m) => Ok(Some(m.version)),
            Err(Error::StoreSessionNotFound { .. }) => Ok(None),
            Err(Error::StoreManifestCorrupt { .. }) if !strict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hashes a batch of blocks (block, lane layout, index), asks the backend
    /// which it lacks and writes those; appends the hashes to `hashes` and
    /// the newly written ones to `written`.
    fn save_blocks(
        &self,
        writer: &mut dyn BlockWriter,
        chunk: &[(&Arc<KvBlock>, &KvLayout, usize)],
        n: usize,
        hashes: &mut Vec<BlockHash>,
        written: &mut Vec<BlockHash>,
        stats: &mut SaveStats,
    ) -> Result<()> {
        // Rows already encoded while hashing, kept for writing.
        let mut rows: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunk.len());
        let start = hashes.len();
        for &(block, layout, b) in chunk {
            let used = used_in_block(n, b);
            let known = self.cache().hash_of(block, used);
            match known {
                Some(h) => {
                    hashes.push(h);
                    rows.push(None);
                }
                None => {
                    let mut raw = Vec::new();
                    records::block_rows(layout, block, used, &mut raw);
                    let h = records::block_hash(layout, used, &raw);
                    self.cache().remember(block, used, h);
                    hashes.push(h);
                    rows.push(Some(raw));
                }
            }
        }
        let mine = &hashes[start..];
        let missing = writer.missing(mine)?;
        let mut puts = Vec::new();
        for (i, &(block, layout, b)) in chunk.iter().enumerate() {
            if !missing[i] {
                stats.blocks_reused += 1;
                continue;
            }
            let used = used_in_block(n, b);
            let raw = rows[i].take().unwrap_or_else(|| {
                let mut raw = Vec::new();
                records::block_rows(layout, block, used, &mut raw);
                raw
            });
            puts.push((mine[i], records::encode_block(layout, used, &raw, self.compression)));
        }
        for (&(block, layout, _), h) in chunk.iter().zip(mine) {
            self.remember_block(*h, layout, block);
        }
        if puts.is_empty() {
            return Ok(());
        }
        let new = writer.put(&puts)?;
        for ((hash, bytes), new) in puts.iter().zip(new) {
            if new {
                written.push(*hash);
                stats.blocks_written += 1;
                stats.bytes_written += bytes.len() as u64;
            } else {
                stats.blocks_reused += 1;
            }
        }
        Ok(())
    }
}
