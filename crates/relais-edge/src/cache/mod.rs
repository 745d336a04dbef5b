//! The cache: keys, stored objects, the memory and disk tiers, and the purge index.
//!
//! Invariants:
//! - Every stored object is reachable from the purge index (site → path B-tree, tags, URL) for
//!   as long as it is in any tier, so purge by URL, prefix, tag or whole site never scans.
//! - A purge that happens while an object is being fetched wins: the object is checked against
//!   every purge since its fill started before it is admitted to any tier.
//! - The disk tier survives restarts: a body is renamed into place before its metadata, and
//!   a purge deletes metadata first, so a crash leaves either a whole object or none.

pub mod body;
pub mod disk;
pub mod policy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

pub use body::{BodySource, Filled, Growing};
pub use policy::Freshness;

use crate::config::CacheConfig;

/// Objects never stay fresh longer than this, whatever the origin says.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86400);
/// Stale objects with validators are kept this long for cheap revalidation.
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(86400);
/// How many purges are remembered for fills that started before them.
const RECENT_PURGES: usize = 4096;
/// Variants kept per URL.
pub const MAX_VARY_HEADERS: usize = 8;

pub type Key = u128;

fn hash128(parts: &[&[u8]]) -> Key {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let out = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&out.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// The primary key: one per site, host and request target. Scheme is not part of it: the same
/// URL over http and https is the same resource for our customers.
pub fn primary_key(site: &str, host: &str, path_and_query: &str) -> Key {
    hash128(&[site.as_bytes(), host.as_bytes(), path_and_query.as_bytes()])
}

/// A request header's value as Vary compares it: lines joined, whitespace around commas folded.
pub fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut out: Vec<u8> = Vec::new();
    let mut any = false;
    for v in headers.get_all(name) {
        any = true;
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(part);
        }
    }
    if !any {
        return None;
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The secondary (variant) key for a request given the names a stored response varies on.
pub fn variant_key(primary: Key, names: &[HeaderName], req: &HeaderMap) -> Key {
    if names.is_empty() {
        return primary;
    }
    let p = primary.to_le_bytes();
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(names.len() * 2 + 1);
    parts.push(p.to_vec());
    for n in names {
        parts.push(n.as_str().as_bytes().to_vec());
        match vary_value(req, n) {
            Some(v) => parts.push([b"=".as_slice(), v.as_bytes()].concat()),
            None => parts.push(b"!".to_vec()),
        }
    }
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    hash128(&refs)
}

/// Parses a response's Vary into header names (`None` for `Vary: *` or too many names).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        let s = v.to_str().ok()?;
        for p in s.split(',') {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            if p == "*" {
                return None;
            }
            let n = HeaderName::from_bytes(p.as_bytes()).ok()?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    if names.len() > MAX_VARY_HEADERS {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// Everything about a stored response except its body.
#[derive(Debug, Clone)]
pub struct Meta {
    pub key: Key,
    pub primary: Key,
    pub site: Arc<str>,
    pub path: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub vary: Vec<HeaderName>,
    pub response_time: SystemTime,
    pub initial_age: Duration,
    pub fresh: Freshness,
    pub tags: Vec<String>,
    /// Kept in storage until then (fresh lifetime plus the longest stale window).
    pub expires: SystemTime,
    /// Body length, set when the body is complete.
    pub body_len: u64,
}

impl Meta {
    pub fn current_age(&self, now: SystemTime) -> Duration {
        self.initial_age
            + now
                .duration_since(self.response_time)
                .unwrap_or(Duration::ZERO)
    }

    /// Seconds of freshness left (negative once stale).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        self.fresh.lifetime.min(MAX_LIFETIME).as_secs() as i64
            - self.current_age(now).as_secs() as i64
    }

    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.current_age(now)
            .saturating_sub(self.fresh.lifetime.min(MAX_LIFETIME))
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.current_age(now) < self.fresh.lifetime.min(MAX_LIFETIME)
    }

    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// Computes `expires` from freshness, the site's grace and validators.
    pub fn compute_expires(&mut self, grace: Duration) {
        let mut keep = grace
            .max(self.fresh.stale_if_error)
            .max(self.fresh.stale_while_revalidate);
        if self.has_validators() {
            keep = keep.max(KEEP_FOR_REVALIDATION);
        }
        let born = self
            .response_time
            .checked_sub(self.initial_age)
            .unwrap_or(self.response_time);
        self.expires = born + self.fresh.lifetime.min(MAX_LIFETIME) + keep;
    }

    fn weight(&self) -> u64 {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (h + self.path.len() + 256) as u64
    }
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct Object {
    pub meta: Arc<Meta>,
    pub body: BodySource,
}

/// What a purge targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// Every variant of one URL.
    Url { site: Arc<str>, primary: Key },
    /// One path (and query) on every host of the site.
    Path { site: Arc<str>, path: String },
    /// Every URL whose path (and query) starts with the prefix.
    Prefix { site: Arc<str>, prefix: String },
    /// Every object tagged so by the origin (`Surrogate-Key`, `Cache-Tag`, `xkey`).
    Tag { site: Arc<str>, tag: String },
    /// The whole site.
    Site { site: Arc<str> },
}

impl PurgeTarget {
    pub fn site(&self) -> &Arc<str> {
        match self {
            PurgeTarget::Url { site, .. }
            | PurgeTarget::Path { site, .. }
            | PurgeTarget::Prefix { site, .. }
            | PurgeTarget::Tag { site, .. }
            | PurgeTarget::Site { site } => site,
        }
    }

    fn matches(&self, m: &Meta) -> bool {
        match self {
            PurgeTarget::Url { site, primary } => *site == m.site && *primary == m.primary,
            PurgeTarget::Path { site, path } => *site == m.site && m.path == *path,
            PurgeTarget::Prefix { site, prefix } => {
                *site == m.site && m.path.starts_with(prefix.as_str())
            }
            PurgeTarget::Tag { site, tag } => *site == m.site && m.tags.iter().any(|t| t == tag),
            PurgeTarget::Site { site } => *site == m.site,
        }
    }
}

#[derive(Clone, Default)]
struct ObjWeighter;

impl Weighter<Key, Arc<Object>> for ObjWeighter {
    fn weight(&self, _k: &Key, o: &Arc<Object>) -> u64 {
        o.meta.weight() + o.body.len().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct DiskWeighter;

impl Weighter<Key, Arc<Meta>> for DiskWeighter {
    fn weight(&self, _k: &Key, m: &Arc<Meta>) -> u64 {
        // Files are counted in 4 KiB blocks, plus one for the metadata.
        m.body_len.div_ceil(4096) * 4096 + 4096
    }
}

#[derive(Clone, Default)]
struct Collect;

impl<K, V> Lifecycle<K, V> for Collect {
    type RequestState = Vec<(K, V)>;
    fn on_evict(&self, state: &mut Self::RequestState, key: K, val: V) {
        state.push((key, val));
    }
}

/// A set of keys that is almost always a single key (one variant per URL): no allocation
/// until a second key arrives.
#[derive(Debug)]
enum KeySet {
    One(Key),
    Many(HashSet<Key>),
}

impl KeySet {
    fn insert(&mut self, k: Key) {
        match self {
            KeySet::One(x) if *x == k => {}
            KeySet::One(x) => *self = KeySet::Many(HashSet::from([*x, k])),
            KeySet::Many(s) => {
                s.insert(k);
            }
        }
    }

    /// Removes `k`; returns true when the set is now empty.
    fn remove(&mut self, k: Key) -> bool {
        match self {
            KeySet::One(x) => *x == k,
            KeySet::Many(s) => {
                s.remove(&k);
                s.is_empty()
            }
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = Key> + '_> {
        match self {
            KeySet::One(x) => Box::new(std::iter::once(*x)),
            KeySet::Many(s) => Box::new(s.iter().copied()),
        }
    }
}

#[derive(Default)]
struct SiteIndex {
    by_path: BTreeMap<String, KeySet>,
    by_tag: HashMap<String, HashSet<Key>>,
    by_primary: HashMap<Key, KeySet>,
}

fn add_key(entry: Option<&mut KeySet>, k: Key) -> Option<KeySet> {
    match entry {
        Some(set) => {
            set.insert(k);
            None
        }
        None => Some(KeySet::One(k)),
    }
}

impl SiteIndex {
    fn add(&mut self, m: &Meta) {
        if let Some(new) = add_key(self.by_path.get_mut(&m.path), m.key) {
            self.by_path.insert(m.path.clone(), new);
        }
        for t in &m.tags {
            self.by_tag.entry(t.clone()).or_default().insert(m.key);
        }
        if let Some(new) = add_key(self.by_primary.get_mut(&m.primary), m.key) {
            self.by_primary.insert(m.primary, new);
        }
    }

    fn remove(&mut self, m: &Meta) {
        if self
            .by_path
            .get_mut(&m.path)
            .is_some_and(|s| s.remove(m.key))
        {
            self.by_path.remove(&m.path);
        }
        for t in &m.tags {
            if let Some(s) = self.by_tag.get_mut(t) {
                s.remove(&m.key);
                if s.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
        if self
            .by_primary
            .get_mut(&m.primary)
            .is_some_and(|s| s.remove(m.key))
        {
            self.by_primary.remove(&m.primary);
        }
    }

    fn keys(&self, target: &PurgeTarget) -> Vec<Key> {
        match target {
            PurgeTarget::Url { primary, .. } => self
                .by_primary
                .get(primary)
                .map(|s| s.iter().collect())
                .unwrap_or_default(),
            PurgeTarget::Path { path, .. } => self
                .by_path
                .get(path.as_str())
                .map(|s| s.iter().collect())
                .unwrap_or_default(),
            PurgeTarget::Prefix { prefix, .. } => self
                .by_path
                .range::<str, _>((
                    std::ops::Bound::Included(prefix.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(p, _)| p.starts_with(prefix.as_str()))
                .flat_map(|(_, s)| s.iter())
                .collect(),
            PurgeTarget::Tag { tag, .. } => self
                .by_tag
                .get(tag)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            PurgeTarget::Site { .. } => self.by_primary.values().flat_map(|s| s.iter()).collect(),
        }
    }
}

struct Index {
    sites: HashMap<Arc<str>, SiteIndex>,
    /// (epoch, target) of recent purges, oldest first.
    recent: std::collections::VecDeque<(u64, PurgeTarget)>,
}

/// Eviction settings for a tier (quick_cache's CLOCK-Pro). Capacity is split across shards,
/// so shards are sized to hold several of the largest objects; and 10 % of each shard is the
/// probation ring where new objects wait to prove themselves, so that a crawl of one-hit
/// objects passes through it without evicting the hot set.
fn tier_options(items: usize, capacity: u64, max_object: u64) -> quick_cache::Options {
    let per_shard_floor = max_object.max(1).saturating_mul(16);
    let wanted = (capacity / per_shard_floor).clamp(1, 64);
    let shards = 1usize << (63 - wanted.leading_zeros());
    let mut b = quick_cache::OptionsBuilder::new();
    b.estimated_items_capacity(items)
        .weight_capacity(capacity.max(1))
        .shards(shards)
        .hot_allocation(0.9)
        .ghost_allocation(0.5);
    // The builder only fails on contradictory settings, which these are not.
    b.build().unwrap_or_else(|_| unreachable_options())
}

#[allow(clippy::unwrap_used)]
fn unreachable_options() -> quick_cache::Options {
    quick_cache::OptionsBuilder::new()
        .weight_capacity(1)
        .estimated_items_capacity(1)
        .build()
        .unwrap()
}

/// Where a lookup found an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

/// Counters exposed as metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub mem_evictions: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub purged_objects: AtomicU64,
    pub disk_errors: AtomicU64,
}

pub struct Store {
    mem: Cache<Key, Arc<Object>, ObjWeighter, DefaultHashBuilder, Collect>,
    disk: Cache<Key, Arc<Meta>, DiskWeighter, DefaultHashBuilder, Collect>,
    vary: Cache<Key, Arc<[HeaderName]>>,
    index: Mutex<Index>,
    epoch: AtomicU64,
    dir: PathBuf,
    spill: PathBuf,
    /// Whether the directory was given by the operator (kept across restarts).
    persistent: bool,
    pub max_mem_object: u64,
    pub stats: StoreStats,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store; with a configured disk path, loads what a previous run left there.
    pub fn open(cfg: &CacheConfig) -> io::Result<Store> {
        let (dir, persistent) = match &cfg.disk_path {
            Some(p) => (p.clone(), true),
            None => (
                std::env::temp_dir().join(format!(
                    "relais-cache-{}-{}",
                    std::process::id(),
                    disk::unique_suffix()
                )),
                false,
            ),
        };
        let spill = disk::prepare_dir(&dir)?;
        let est_items = (cfg.memory_bytes / 8192).clamp(1024, 4_000_000) as usize;
        let disk_items = (cfg.disk_bytes / 65536).clamp(1024, 16_000_000) as usize;
        let store = Store {
            mem: Cache::with_options(
                tier_options(est_items, cfg.memory_bytes, cfg.max_memory_object),
                ObjWeighter,
                DefaultHashBuilder::default(),
                Collect,
            ),
            // Disk objects can be as large as whole videos.
            disk: Cache::with_options(
                tier_options(disk_items, cfg.disk_bytes, cfg.disk_bytes / 16),
                DiskWeighter,
                DefaultHashBuilder::default(),
                Collect,
            ),
            vary: Cache::new(est_items.min(1_000_000)),
            index: Mutex::new(Index {
                sites: HashMap::new(),
                recent: Default::default(),
            }),
            epoch: AtomicU64::new(0),
            dir,
            spill,
            persistent,
            max_mem_object: cfg.max_memory_object,
            stats: StoreStats::default(),
        };
        if persistent {
            let loaded = disk::scan(&store.dir)?;
            let n = loaded.len();
            let mut idx = store.lock_index();
            for meta in loaded {
                let meta = Arc::new(meta);
                if !meta.vary.is_empty() {
                    store.vary.insert(meta.primary, meta.vary.clone().into());
                }
                let mut ev = Vec::new();
                store
                    .disk
                    .insert_with_lifecycle(meta.key, meta.clone(), &mut ev);
                idx.sites.entry(meta.site.clone()).or_default().add(&meta);
                store.drop_disk_evicted(&mut idx, ev);
            }
            drop(idx);
            tracing::info!(objects = n, dir = %store.dir.display(), "disk cache loaded");
        }
        Ok(store)
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Directory where growing bodies spill (this process's own).
    pub fn spill_dir(&self) -> PathBuf {
        self.spill.clone()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Records the header names a URL's responses vary on.
    pub fn set_vary(&self, primary: Key, names: &[HeaderName]) {
        self.vary.insert(primary, names.to_vec().into());
    }

    pub fn vary_of(&self, primary: Key) -> Option<Arc<[HeaderName]>> {
        self.vary.get(&primary)
    }

    /// Finds an object by variant key, in memory first, then on disk.
    pub fn lookup(&self, key: Key, now: SystemTime) -> Option<(Arc<Object>, Tier)> {
        if let Some(o) = self.mem.get(&key) {
            if o.meta.expires > now {
                return Some((o, Tier::Memory));
            }
            self.remove_key(key);
            return None;
        }
        let meta = self.disk.get(&key)?;
        if meta.expires <= now {
            self.remove_key(key);
            return None;
        }
        match disk::open_body(&self.dir, key) {
            Ok((file, len)) => Some((
                Arc::new(Object {
                    meta,
                    body: BodySource::File {
                        file: Arc::new(file),
                        len,
                    },
                }),
                Tier::Disk,
            )),
            Err(e) => {
                tracing::warn!(error = %e, key = %format!("{key:032x}"), "cached body unreadable, dropping");
                self.stats.disk_errors.fetch_add(1, Ordering::Relaxed);
                self.remove_key(key);
                None
            }
        }
    }

    /// Was the object purged by something that happened after `since`?
    fn purged_since(idx: &Index, since: u64, now_epoch: u64, meta: &Meta) -> bool {
        if since == now_epoch {
            return false;
        }
        // If the ring no longer holds every purge since `since`, refuse to be sure.
        match idx.recent.front() {
            Some((first, _)) if *first <= since + 1 => {}
            _ => return true,
        }
        idx.recent
            .iter()
            .filter(|(e, _)| *e > since)
            .any(|(_, t)| t.matches(meta))
    }

    /// Admits a completed fill. `since` is the purge epoch when the fill started. Returns the
    /// stored object, or `None` if a purge since then covers it.
    pub fn admit(&self, mut meta: Meta, filled: Filled, since: u64) -> Option<Arc<Object>> {
        meta.body_len = match &filled {
            Filled::Mem(b) => b.len() as u64,
            Filled::File { len, .. } => *len,
        };
        let meta = Arc::new(meta);
        let mut idx = self.lock_index();
        if Self::purged_since(&idx, since, self.epoch(), &meta) {
            if let Filled::File { path, .. } = &filled {
                let _ = std::fs::remove_file(path);
            }
            return None;
        }
        if meta.vary.is_empty() {
            self.vary.remove(&meta.primary);
        } else {
            self.vary.insert(meta.primary, meta.vary.clone().into());
        }
        let obj = match filled {
            Filled::Mem(bytes) => {
                let len = bytes.len() as u64;
                let obj = Arc::new(Object {
                    meta: meta.clone(),
                    body: BodySource::Mem(bytes.clone()),
                });
                let mut ev = Vec::new();
                if len <= self.max_mem_object {
                    self.mem
                        .insert_with_lifecycle(meta.key, obj.clone(), &mut ev);
                }
                idx.sites.entry(meta.site.clone()).or_default().add(&meta);
                self.drop_mem_evicted(&mut idx, ev);
                // The disk copy, if any, is rewritten by `persist` in the background.
                self.disk.remove(&meta.key);
                obj
            }
            Filled::File { file, path, len } => {
                if let Err(e) = disk::install_body(&self.dir, meta.key, &path)
                    .and_then(|_| disk::write_meta(&self.dir, &meta))
                {
                    tracing::warn!(error = %e, "cannot store body on disk");
                    self.stats.disk_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
                self.mem.remove(&meta.key);
                let mut ev = Vec::new();
                self.disk
                    .insert_with_lifecycle(meta.key, meta.clone(), &mut ev);
                idx.sites.entry(meta.site.clone()).or_default().add(&meta);
                self.drop_disk_evicted(&mut idx, ev);
                Arc::new(Object {
                    meta,
                    body: BodySource::File { file, len },
                })
            }
        };
        Some(obj)
    }

    /// Writes an in-memory object to the disk tier so it survives a restart. Blocking: call
    /// from a blocking task.
    pub fn persist(&self, obj: &Object, since: u64) {
        if !self.persistent {
            return;
        }
        let BodySource::Mem(bytes) = &obj.body else {
            return;
        };
        let res = disk::write_body(&self.dir, obj.meta.key, bytes)
            .and_then(|_| disk::write_meta(&self.dir, &obj.meta));
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot persist object");
            self.stats.disk_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut idx = self.lock_index();
        if Self::purged_since(&idx, since, self.epoch(), &obj.meta) {
            disk::delete(&self.dir, obj.meta.key);
            return;
        }
        let mut ev = Vec::new();
        self.disk
            .insert_with_lifecycle(obj.meta.key, obj.meta.clone(), &mut ev);
        idx.sites
            .entry(obj.meta.site.clone())
            .or_default()
            .add(&obj.meta);
        self.drop_disk_evicted(&mut idx, ev);
    }

    /// Copies a small disk object into memory after a disk hit.
    pub fn promote(&self, meta: Arc<Meta>, bytes: bytes::Bytes) {
        if bytes.len() as u64 > self.max_mem_object {
            return;
        }
        let mut idx = self.lock_index();
        // Only if it is still the current disk object (not purged or replaced meanwhile).
        if !self
            .disk
            .get(&meta.key)
            .is_some_and(|m| Arc::ptr_eq(&m, &meta))
        {
            return;
        }
        let mut ev = Vec::new();
        self.mem.insert_with_lifecycle(
            meta.key,
            Arc::new(Object {
                meta,
                body: BodySource::Mem(bytes),
            }),
            &mut ev,
        );
        self.drop_mem_evicted(&mut idx, ev);
    }

    /// Replaces an object's metadata (after a 304 revalidation), keeping its body.
    pub fn update_meta(&self, old: &Object, meta: Meta, since: u64) -> Option<Arc<Object>> {
        let meta = Arc::new(meta);
        let mut idx = self.lock_index();
        if Self::purged_since(&idx, since, self.epoch(), &meta) {
            return None;
        }
        let obj = Arc::new(Object {
            meta: meta.clone(),
            body: old.body.clone(),
        });
        if self.mem.contains_key(&meta.key) || matches!(old.body, BodySource::Mem(_)) {
            let mut ev = Vec::new();
            if old.body.len().unwrap_or(u64::MAX) <= self.max_mem_object {
                self.mem
                    .insert_with_lifecycle(meta.key, obj.clone(), &mut ev);
            }
            self.drop_mem_evicted(&mut idx, ev);
        }
        if self.disk.contains_key(&meta.key) {
            if let Err(e) = disk::write_meta(&self.dir, &meta) {
                tracing::warn!(error = %e, "cannot update stored metadata");
            }
            let mut ev = Vec::new();
            self.disk
                .insert_with_lifecycle(meta.key, meta.clone(), &mut ev);
            self.drop_disk_evicted(&mut idx, ev);
        }
        let site = idx.sites.entry(meta.site.clone()).or_default();
        site.remove(&old.meta);
        site.add(&meta);
        Some(obj)
    }

    fn drop_mem_evicted(&self, idx: &mut Index, ev: Vec<(Key, Arc<Object>)>) {
        for (k, o) in ev {
            self.stats.mem_evictions.fetch_add(1, Ordering::Relaxed);
            if !self.disk.contains_key(&k)
                && let Some(s) = idx.sites.get_mut(&o.meta.site)
            {
                s.remove(&o.meta);
            }
        }
    }

    fn drop_disk_evicted(&self, idx: &mut Index, ev: Vec<(Key, Arc<Meta>)>) {
        for (k, m) in ev {
            self.stats.disk_evictions.fetch_add(1, Ordering::Relaxed);
            disk::delete(&self.dir, k);
            if !self.mem.contains_key(&k)
                && let Some(s) = idx.sites.get_mut(&m.site)
            {
                s.remove(&m);
            }
        }
    }

    fn remove_locked(&self, idx: &mut Index, key: Key) -> bool {
        let m = self.mem.remove(&key).map(|(_, o)| o.meta.clone());
        let d = self.disk.remove(&key).map(|(_, m)| m);
        if d.is_some() {
            disk::delete(&self.dir, key);
        }
        let found = m.is_some() || d.is_some();
        for meta in m.iter().chain(d.iter()) {
            if let Some(s) = idx.sites.get_mut(&meta.site) {
                s.remove(meta);
            }
        }
        found
    }

    /// Removes one object from every tier.
    pub fn remove_key(&self, key: Key) {
        let mut idx = self.lock_index();
        self.remove_locked(&mut idx, key);
    }

    /// Hard purge: removes every object the target covers. Returns how many were removed.
    pub fn purge(&self, target: &PurgeTarget) -> usize {
        let mut idx = self.lock_index();
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        idx.recent.push_back((epoch, target.clone()));
        while idx.recent.len() > RECENT_PURGES {
            idx.recent.pop_front();
        }
        let site = target.site().clone();
        let keys = idx
            .sites
            .get(&site)
            .map(|s| s.keys(target))
            .unwrap_or_default();
        let mut n = 0;
        for k in keys {
            if self.remove_locked(&mut idx, k) {
                n += 1;
            }
        }
        if matches!(target, PurgeTarget::Site { .. }) {
            idx.sites.remove(&site);
        }
        self.stats
            .purged_objects
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Soft purge: every object the target covers becomes stale at once but stays stored, so
    /// the next request revalidates it (a cheap 304 when it did not change) and
    /// stale-while-revalidate / grace still apply. Returns how many were marked.
    pub fn soft_purge(&self, target: &PurgeTarget, now: SystemTime) -> usize {
        let mut idx = self.lock_index();
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        idx.recent.push_back((epoch, target.clone()));
        while idx.recent.len() > RECENT_PURGES {
            idx.recent.pop_front();
        }
        let site = target.site().clone();
        let keys = idx
            .sites
            .get(&site)
            .map(|s| s.keys(target))
            .unwrap_or_default();
        let mut n = 0;
        for k in keys {
            let in_mem = self.mem.peek(&k);
            let Some(meta) = in_mem
                .as_ref()
                .map(|o| o.meta.clone())
                .or_else(|| self.disk.peek(&k))
            else {
                continue;
            };
            let mut m = (*meta).clone();
            m.fresh.lifetime = m.current_age(now).min(m.fresh.lifetime);
            let m = Arc::new(m);
            if let Some(o) = in_mem {
                let mut ev = Vec::new();
                self.mem.insert_with_lifecycle(
                    k,
                    Arc::new(Object {
                        meta: m.clone(),
                        body: o.body.clone(),
                    }),
                    &mut ev,
                );
                self.drop_mem_evicted(&mut idx, ev);
            }
            if self.disk.contains_key(&k) {
                if let Err(e) = disk::write_meta(&self.dir, &m) {
                    tracing::warn!(error = %e, "cannot update stored metadata");
                }
                let mut ev = Vec::new();
                self.disk.insert_with_lifecycle(k, m, &mut ev);
                self.drop_disk_evicted(&mut idx, ev);
            }
            n += 1;
        }
        self.stats
            .purged_objects
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem.weight()
    }

    pub fn mem_objects(&self) -> usize {
        self.mem.len()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk.weight()
    }

    pub fn disk_objects(&self) -> usize {
        self.disk.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.persistent {
            let _ = std::fs::remove_dir_all(&self.spill);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Cache tags announced by the origin, normalised from the common header names.
pub fn tags_of(headers: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for name in ["surrogate-key", "cache-tag", "xkey", "cdn-tag"] {
        for v in headers.get_all(name) {
            if let Ok(s) = v.to_str() {
                for t in s.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
                    let t = t.trim();
                    if !t.is_empty() && t.len() <= 256 && !tags.iter().any(|x: &String| x == t) {
                        tags.push(t.to_owned());
                    }
                }
            }
        }
    }
    tags.truncate(64);
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Governing;

    fn meta(site: &str, path: &str, tags: &[&str], now: SystemTime) -> Meta {
        let primary = primary_key(site, "h", path);
        let mut m = Meta {
            key: primary,
            primary,
            site: site.into(),
            path: path.into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            vary: vec![],
            response_time: now,
            initial_age: Duration::ZERO,
            fresh: Freshness {
                lifetime: Duration::from_secs(60),
                heuristic: false,
                no_cache: false,
                must_revalidate: false,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                governing: Governing::CacheControl,
            },
            tags: tags.iter().map(|s| s.to_string()).collect(),
            expires: now,
            body_len: 0,
        };
        m.compute_expires(Duration::from_secs(3600));
        m
    }

    fn mem_store(dir: &Path) -> Store {
        Store::open(&CacheConfig {
            memory_bytes: 1 << 20,
            max_memory_object: 1 << 16,
            disk_path: Some(dir.to_owned()),
            disk_bytes: 1 << 24,
        })
        .expect("store")
    }

    #[test]
    fn purge_by_url_prefix_tag_and_site_uses_the_index() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = mem_store(dir.path());
        let now = SystemTime::now();
        for (site, path, tags) in [
            ("a", "/news/1", vec!["news"]),
            ("a", "/news/2?x=1", vec!["news", "front"]),
            ("a", "/newsletter", vec![]),
            ("a", "/about", vec!["front"]),
            ("b", "/news/1", vec!["news"]),
        ] {
            let m = meta(site, path, &tags, now);
            s.admit(m, Filled::Mem(bytes::Bytes::from_static(b"x")), s.epoch())
                .expect("admitted");
        }
        let present =
            |site: &str, path: &str| s.lookup(primary_key(site, "h", path), now).is_some();
        assert_eq!(
            s.purge(&PurgeTarget::Prefix {
                site: "a".into(),
                prefix: "/news/".into()
            }),
            2
        );
        assert!(!present("a", "/news/1") && !present("a", "/news/2?x=1"));
        assert!(
            present("a", "/newsletter") && present("b", "/news/1"),
            "other paths and sites untouched"
        );
        assert_eq!(
            s.purge(&PurgeTarget::Tag {
                site: "a".into(),
                tag: "front".into()
            }),
            1
        );
        assert!(!present("a", "/about"));
        assert_eq!(
            s.purge(&PurgeTarget::Url {
                site: "a".into(),
                primary: primary_key("a", "h", "/newsletter")
            }),
            1
        );
        assert_eq!(s.purge(&PurgeTarget::Site { site: "b".into() }), 1);
        assert_eq!(s.mem_objects(), 0);
    }

    #[test]
    fn a_purge_during_a_fill_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = mem_store(dir.path());
        let now = SystemTime::now();
        let since = s.epoch();
        s.purge(&PurgeTarget::Prefix {
            site: "a".into(),
            prefix: "/x".into(),
        });
        let m = meta("a", "/x/1", &[], now);
        assert!(
            s.admit(m, Filled::Mem(bytes::Bytes::from_static(b"x")), since)
                .is_none()
        );
        let m = meta("a", "/y/1", &[], now);
        assert!(
            s.admit(m, Filled::Mem(bytes::Bytes::from_static(b"x")), since)
                .is_some(),
            "unrelated purge does not block"
        );
    }

    #[test]
    fn memory_tier_is_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = mem_store(dir.path());
        let now = SystemTime::now();
        let body = bytes::Bytes::from(vec![7u8; 60_000]);
        for i in 0..100 {
            let m = meta("a", &format!("/{i}"), &[], now);
            s.admit(m, Filled::Mem(body.clone()), s.epoch());
        }
        assert!(s.mem_bytes() <= 1 << 20, "{}", s.mem_bytes());
        assert!(s.stats.mem_evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn eviction_keeps_the_hot_set_through_a_scan() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&CacheConfig {
            memory_bytes: 1 << 20,
            max_memory_object: 1 << 16,
            disk_path: None,
            disk_bytes: 1 << 24,
        })
        .expect("store");
        let _ = dir;
        let now = SystemTime::now();
        let body = bytes::Bytes::from(vec![1u8; 10_000]);
        let hot: Vec<Key> = (0..10)
            .map(|i| {
                let m = meta("a", &format!("/hot/{i}"), &[], now);
                let k = m.key;
                s.admit(m, Filled::Mem(body.clone()), s.epoch())
                    .expect("admitted");
                k
            })
            .collect();
        for _ in 0..3 {
            for k in &hot {
                assert!(s.lookup(*k, now).is_some());
            }
        }
        // A crawler walks 500 pages once each: five times what memory holds.
        for i in 0..500 {
            let m = meta("a", &format!("/cold/{i}"), &[], now);
            s.admit(m, Filled::Mem(body.clone()), s.epoch());
        }
        let kept = hot
            .iter()
            .filter(|k| s.lookup(**k, now).is_some_and(|(_, t)| t == Tier::Memory))
            .count();
        assert!(kept >= 9, "only {kept} of 10 hot objects survived the scan");
        assert!(s.mem_bytes() <= 1 << 20);
    }

    #[test]
    fn vary_keys() {
        let mut h = HeaderMap::new();
        h.append("accept-encoding", HeaderValue::from_static("gzip,  br"));
        let mut h2 = HeaderMap::new();
        h2.append("accept-encoding", HeaderValue::from_static("gzip"));
        h2.append("accept-encoding", HeaderValue::from_static("br"));
        let names = vec![HeaderName::from_static("accept-encoding")];
        assert_eq!(
            variant_key(1, &names, &h),
            variant_key(1, &names, &h2),
            "whitespace and line folding"
        );
        assert_ne!(
            variant_key(1, &names, &h),
            variant_key(1, &names, &HeaderMap::new())
        );
        let mut resp = HeaderMap::new();
        resp.append(
            "vary",
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        assert_eq!(vary_names(&resp).expect("names").len(), 2);
        resp.append("vary", HeaderValue::from_static("*"));
        assert!(vary_names(&resp).is_none());
    }
}
