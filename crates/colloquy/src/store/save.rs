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
        // visible; the check that counts is repeated under the lock below.
        let found_early = self.stored_version(id, check)?;
        if check && found_early != expected {
            return Err(Error::SessionConflict { id: id.to_string(), expected, found: found_early });
        }
        let writing = self.begin_write()?;
        crate::files::remove_stale_temp_files(&self.tmp_dir())?;
        let blocks_dir = self.blocks_dir();
        let (global, local) = (snap.kv.layout().lane(false), snap.kv.layout().lane(true));
        let mut stats = SaveStats::default();
        let mut written = Vec::new();
        let mut raw = Vec::new();
        let n = snap.kv.len();
        let mut save_block = |layout: &KvLayout, block: &Arc<KvBlock>, b: usize| -> Result<BlockHash> {
            let (hash, bytes) = self.save_block(layout, block, used_in_block(n, b), &mut raw)?;
            match bytes {
                Some(bytes) => {
                    written.push(hash);
                    stats.blocks_written += 1;
                    stats.bytes_written += bytes;
                }
                None => stats.blocks_reused += 1,
            }
            Ok(hash)
        };
        let mut hashes = Vec::with_capacity(snap.kv.blocks().len());
        for (b, block) in snap.kv.blocks().iter().enumerate() {
            hashes.push(save_block(&global, block, b)?);
        }
        let mut window = Vec::new();
        for (b, block) in snap.kv.window_blocks().iter().enumerate() {
            if let Some(block) = block {
                window.push((b, save_block(&local, block, b)?));
            }
        }
        // The blocks' renames must be durable before a manifest names them,
        // including blocks another process wrote and did not get to sync.
        sync_dir(&blocks_dir)?;
        let sessions = self.sessions_dir();
        let swap = self.manifest_lock()?;
        let current = self.stored_manifest(id, check)?;
        let found = current.as_ref().map(|m| m.version);
        if check && found != expected {
            drop((swap, writing));
            // The blocks this save wrote are garbage unless someone else uses them.
            self.collect(&written)?;
            return Err(Error::SessionConflict { id: id.to_string(), expected, found });
        }
        let replaced = {
            let _swap = swap;
            stats.version = next_version(found);
            let manifest = records::encode_manifest(&snap, stats.version, &hashes, &window);
            write_file(&self.tmp_dir(), &sessions, id, &manifest)?;
            sync_dir(&sessions)?;
            stats.bytes_written += manifest.len() as u64;
            current
        };
        drop(writing);
        session.lock().versions.set(place, stats.version);
        if let Some(old) = replaced {
            let kept: HashSet<BlockHash> =
                hashes.iter().copied().chain(window.iter().map(|&(_, h)| h)).collect();
            let orphans: Vec<BlockHash> = old.all_blocks().filter(|h| !kept.contains(h)).collect();
            stats.blocks_removed = self.collect(&orphans)?;
        }
        Ok(stats)
    }

    /// The manifest stored as `id`, if any. Without `strict`, a damaged one
    /// counts as none (there is no version in it to compare with).
    fn stored_manifest(&self, id: &str, strict: bool) -> Result<Option<Manifest>> {
        match self.manifest(id) {
            Ok(m) => Ok(Some(m)),
            Err(Error::StoreSessionNotFound { .. }) => Ok(None),
            Err(Error::StoreManifestCorrupt { .. }) if !strict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The version stored as `id`, if any (see [`stored_manifest`](Self::stored_manifest)).
    pub(super) fn stored_version(&self, id: &str, strict: bool) -> Result<Option<u64>> {
        Ok(self.stored_manifest(id, strict)?.map(|m| m.version))
    }

    /// Writes one block's file unless the store holds it. Returns its hash,
    /// and the bytes written (`None`: the store already held it).
    fn save_block(
        &self,
        layout: &KvLayout,
        block: &Arc<KvBlock>,
        used: usize,
        raw: &mut Vec<u8>,
    ) -> Result<(BlockHash, Option<u64>)> {
        let known = self.cache().hash_of(block, used);
        raw.clear();
        let hash = match known {
            Some(h) => h,
            None => {
                records::block_rows(layout, block, used, raw);
                records::block_hash(layout, used, raw)
            }
        };
        let name = hash.to_string();
        let blocks_dir = self.blocks_dir();
        let path = blocks_dir.join(&name);
        let mut bytes = None;
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            if known.is_some() {
                records::block_rows(layout, block, used, raw);
            }
            let file = records::encode_block(layout, used, raw, self.compression);
            write_file(&self.tmp_dir(), &blocks_dir, &name, &file)?;
            bytes = Some(file.len() as u64);
        }
        if known.is_none() {
            self.cache().remember(block, used, hash);
        }
        Ok((hash, bytes))
    }
}
