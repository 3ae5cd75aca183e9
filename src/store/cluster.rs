//! Cluster mode's store: what several sensors share, in NATS JetStream.
//!
//! - `PREFIX_config`: the cluster's keys (fingerprints and pseudonyms), made once by whichever
//!   sensor comes first (create-if-absent) and cached in the state directory (`cluster.key`, 0600);
//! - `PREFIX_users`: known users; creating a user's key decides its `signup` (one winner);
//! - `PREFIX_devices`: each device's boot cycle and binding; revision-checked updates decide
//!   `app_start` and `login` (see `state::shared`);
//! - `PREFIX_contacts`: contact -> address of record, with the binding's expiry in the value (the
//!   bucket's `max_age` removes what nobody refreshed for two days);
//! - the stream `PREFIX_events` (subjects `PREFIX.events.TENANT`), whose duplicate window, keyed
//!   by each event's deterministic id (`Nats-Msg-Id`), keeps one copy of what redundant sensors
//!   both derive.
//!
//! The state machines ask synchronously (`SharedRegistry`, `KnownUsers`); this shell answers from
//! NATS within `request_timeout_ms`, or says "unreachable" at once while the connection is down,
//! and the decision is then made locally and counted (`cluster_decisions_local_total`).
use crate::capture::Micros;
use crate::config::{ClusterCfg, NatsAuth};
use crate::state::fingerprint::{Fingerprinter, Fp};
use crate::state::shared::{SharedContact, SharedDevice, SharedRegistry, Unreachable};
use crate::state::users::KnownUsers;
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Writes (contacts, users another sensor may not know) sent without waiting, at most this many
/// at once; beyond, they are counted and skipped.
const MAX_BACKGROUND_WRITES: usize = 4096;
/// How long a contact stays in the bucket without a refresh.
const CONTACT_MAX_AGE: Duration = Duration::from_secs(2 * 86_400);
/// How long a device record stays without a REGISTER (the local device memory is 7 days).
const DEVICE_MAX_AGE: Duration = Duration::from_secs(8 * 86_400);

pub struct ClusterStats {
    pub connected: AtomicBool,
    /// The cached keys are not the cluster's: decisions stay local (an operator must act).
    pub key_mismatch: AtomicBool,
    pub reconnects: AtomicU64,
    /// Compare-and-set writes that won, and attempts that lost to another sensor's write.
    pub kv_won: AtomicU64,
    pub kv_conflicts: AtomicU64,
    /// Signups decided by creating the user's key: won here, or already created elsewhere.
    pub signups_won: AtomicU64,
    pub signups_lost: AtomicU64,
    /// Decisions made locally because NATS could not answer in time.
    pub decisions_local: AtomicU64,
    pub kv_errors: AtomicU64,
    pub background_writes_skipped: AtomicU64,
    pub contact_lookups: AtomicU64,
    pub contacts_found: AtomicU64,
    /// Events published, of which the stream already had (another sensor's copy), and failures.
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub publish_errors: AtomicU64,
    pub publish_latency: crate::sink::firebase::sender::Histogram,
    /// Messages of the stream not yet delivered (the delivery consumer's pending count).
    pub consumer_pending: AtomicU64,
    pub consumer_ack_pending: AtomicU64,
    pub consumer_redelivered: AtomicU64,
    pub device_cache_resets: AtomicU64,
    /// Each delivered tenant's consumer: (pending, unacknowledged); the gauges are their sums.
    consumers: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

impl Default for ClusterStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterStats {
    pub fn new() -> Self {
        ClusterStats {
            publish_latency: crate::sink::firebase::sender::Histogram::new(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
            connected: AtomicBool::new(false),
            key_mismatch: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            kv_won: AtomicU64::new(0),
            kv_conflicts: AtomicU64::new(0),
            signups_won: AtomicU64::new(0),
            signups_lost: AtomicU64::new(0),
            decisions_local: AtomicU64::new(0),
            kv_errors: AtomicU64::new(0),
            background_writes_skipped: AtomicU64::new(0),
            contact_lookups: AtomicU64::new(0),
            contacts_found: AtomicU64::new(0),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            consumer_pending: AtomicU64::new(0),
            consumer_ack_pending: AtomicU64::new(0),
            consumer_redelivered: AtomicU64::new(0),
            device_cache_resets: AtomicU64::new(0),
            consumers: Default::default(),
        }
    }

    /// A tenant consumer's backlog, as its worker last read it.
    pub fn set_consumer(&self, tenant: &str, pending: u64, unacked: u64) {
        let mut m = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(tenant.to_string(), (pending, unacked));
        self.consumer_pending.store(m.values().map(|v| v.0).sum(), Relaxed);
        self.consumer_ack_pending.store(m.values().map(|v| v.1).sum(), Relaxed);
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("cluster_connected", u64::from(self.connected.load(Relaxed))),
            ("cluster_key_mismatch", u64::from(self.key_mismatch.load(Relaxed))),
            ("cluster_reconnects", self.reconnects.load(Relaxed)),
            ("cluster_kv_won", self.kv_won.load(Relaxed)),
            ("cluster_kv_conflicts", self.kv_conflicts.load(Relaxed)),
            ("cluster_signups_won", self.signups_won.load(Relaxed)),
            ("cluster_signups_lost", self.signups_lost.load(Relaxed)),
            ("cluster_decisions_local", self.decisions_local.load(Relaxed)),
            ("cluster_kv_errors", self.kv_errors.load(Relaxed)),
            ("cluster_background_writes_skipped", self.background_writes_skipped.load(Relaxed)),
            ("cluster_contact_lookups", self.contact_lookups.load(Relaxed)),
            ("cluster_contacts_found", self.contacts_found.load(Relaxed)),
            ("cluster_published", self.published.load(Relaxed)),
            ("cluster_duplicates", self.duplicates.load(Relaxed)),
            ("cluster_publish_errors", self.publish_errors.load(Relaxed)),
            ("cluster_consumer_pending", self.consumer_pending.load(Relaxed)),
            ("cluster_consumer_ack_pending", self.consumer_ack_pending.load(Relaxed)),
            ("cluster_consumer_redelivered", self.consumer_redelivered.load(Relaxed)),
            ("cluster_device_cache_resets", self.device_cache_resets.load(Relaxed)),
        ]
    }
}

struct Buckets {
    users: kv::Store,
    devices: kv::Store,
    contacts: kv::Store,
}

/// A connection to the cluster, shared by the registry, the users, the publisher and the
/// delivery workers.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Set once NATS has answered (shared with the task that waits for it).
    buckets: Arc<OnceLock<Buckets>>,
    pub cfg: ClusterCfg,
    pub stats: Arc<ClusterStats>,
    /// The cluster's fingerprint key and pseudonym (identity) key.
    pub fingerprint_key: [u64; 2],
    pub identity_key: Vec<u8>,
    timeout: Duration,
    background: Arc<tokio::sync::Semaphore>,
    /// After a request timed out, decisions are made locally at once until then (ms since
    /// `started`): a slow NATS costs the core one timeout per few seconds, not one per REGISTER.
    degraded_until_ms: AtomicU64,
    started: Instant,
}

/// How long decisions stay local after a request to NATS timed out.
const DEGRADED_FOR: Duration = Duration::from_secs(5);

impl Cluster {
    /// Connects (in the background: a sensor starts, and decides locally, while NATS is down),
    /// creates the stream and buckets if they are missing, and reads or makes the cluster's keys.
    /// The keys are cached in `state_dir`; without a cached copy NATS must answer within 30 s.
    pub fn connect(cfg: &ClusterCfg, state_dir: &Path) -> Result<Arc<Cluster>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster")
            .enable_all()
            .build()
            .context("cannot start the cluster runtime")?;
        let stats = Arc::new(ClusterStats::new());
        let client = rt.block_on(connect(cfg, stats.clone()))?;
        let js = jetstream::new(client.clone());
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let cached = state_dir.join("cluster.key");
        let keys = match std::fs::read(&cached) {
            Ok(k) if k.len() == 48 => k,
            _ => {
                let deadline = Instant::now() + Duration::from_secs(30);
                let k: Vec<u8> = loop {
                    match rt.block_on(async {
                        tokio::time::timeout(timeout.max(Duration::from_secs(2)), cluster_keys(&js, cfg, None)).await
                    }) {
                        Ok(Ok(k)) => break k,
                        Ok(Err(e)) if Instant::now() >= deadline => {
                            return Err(e.context(format!(
                                "cannot read the cluster's keys from NATS ({})",
                                cfg.nats.join(", ")
                            )));
                        }
                        Err(_) if Instant::now() >= deadline => {
                            bail!(
                                "NATS ({}) did not answer within 30 s, and this sensor has never joined the cluster (no {}): \
                                 it needs the cluster's keys once",
                                cfg.nats.join(", "),
                                cached.display()
                            );
                        }
                        _ => std::thread::sleep(Duration::from_millis(500)),
                    }
                };
                crate::store::private_dir(state_dir)?;
                crate::store::write_private(&cached, &k)?;
                k
            }
        };
        let fingerprint_key = [
            u64::from_le_bytes(keys[..8].try_into().expect("48 bytes")),
            u64::from_le_bytes(keys[8..16].try_into().expect("48 bytes")),
        ];
        let c = Arc::new(Cluster {
            rt,
            client,
            js,
            buckets: Arc::new(OnceLock::new()),
            cfg: cfg.clone(),
            stats,
            fingerprint_key,
            identity_key: keys[16..].to_vec(),
            timeout,
            background: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_WRITES)),
            degraded_until_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        // the buckets and the stream: now if NATS answers, else as soon as it does; and the
        // cached keys checked against the cluster's (a sensor moved to another NATS, or a
        // cluster made anew, must not decide with keys the others do not share)
        // (the task holds what it needs, not the cluster: the runtime it runs on is the cluster's)
        let (js, ccfg, stats, buckets) = (c.js.clone(), c.cfg.clone(), c.stats.clone(), c.buckets.clone());
        let mine: Vec<u8> = keys.clone();
        c.rt.spawn(async move {
            let mut logged = false;
            loop {
                match ensure(&js, &ccfg).await {
                    Ok(b) => {
                        match cluster_keys(&js, &ccfg, Some(&mine)).await {
                            Ok(k) if k != mine => {
                                stats.key_mismatch.store(true, Relaxed);
                                tracing::error!(
                                    "this sensor's cached cluster keys (cluster.key in its state directory) are not the cluster's: \
                                     its decisions and pseudonyms do not match the other sensors'. Stop it, delete cluster.key, start it again"
                                );
                                // decide locally rather than with the wrong keys
                                return;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot check the cluster's keys"),
                        }
                        let _ = buckets.set(b);
                        return;
                    }
                    Err(e) => {
                        if !logged {
                            logged = true;
                            tracing::warn!(error = %format!("{e:#}"), "cluster buckets not ready yet; deciding locally until they are");
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        let until = Instant::now() + timeout.max(Duration::from_secs(5));
        while c.buckets.get().is_none() && !c.stats.key_mismatch.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if c.stats.key_mismatch.load(Relaxed) {
            bail!(
                "{}: the cluster keys cached there are not the keys of the cluster at {}: this sensor belonged to \
                 another cluster (or this one was made anew). Delete that file to join this cluster",
                cached.display(),
                cfg.nats.join(", ")
            );
        }
        Ok(c)
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// Runs a future on the cluster's runtime and waits for it (from a thread outside any
    /// runtime: the core's), within the request timeout.
    pub fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let r = self.rt.block_on(async { tokio::time::timeout(self.timeout, f).await.ok() });
        if r.is_none() {
            let until = (self.started.elapsed() + DEGRADED_FOR).as_millis() as u64;
            if self.degraded_until_ms.swap(until, Relaxed) == 0 {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "NATS did not answer in time: deciding locally for a few seconds at a time until it does (cluster.request_timeout_ms)"
                );
            }
        }
        r
    }

    pub fn block_for<T: Send + 'static>(&self, d: Duration, f: impl Future<Output = T> + Send + 'static) -> Option<T> {
        self.rt.block_on(async { tokio::time::timeout(d, f).await.ok() })
    }

    fn up(&self) -> Option<&Buckets> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return None;
        }
        if self.started.elapsed().as_millis() < u128::from(self.degraded_until_ms.load(Relaxed)) {
            return None;
        }
        self.buckets.get()
    }

    /// Starts a write without waiting for it (bounded; beyond the bound it is skipped, counted).
    fn background(&self, f: impl Future<Output = ()> + Send + 'static) {
        match self.background.clone().try_acquire_owned() {
            Ok(permit) => {
                self.rt.spawn(async move {
                    f.await;
                    drop(permit);
                });
            }
            Err(_) => {
                if self.stats.background_writes_skipped.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(
                        max = MAX_BACKGROUND_WRITES,
                        "cluster writes backing up: skipping contact updates (counted in siptap_cluster_background_writes_skipped_total)"
                    );
                }
            }
        }
    }

    fn fingerprinter(&self) -> Fingerprinter {
        Fingerprinter::new(self.fingerprint_key)
    }
}

async fn connect(cfg: &ClusterCfg, stats: Arc<ClusterStats>) -> Result<async_nats::Client> {
    let s2 = stats.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("siptap {}", cfg.sensor))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|n| Duration::from_millis((250 * n as u64).min(2000)))
        .event_callback(move |ev| {
            let stats = s2.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        stats.reconnects.fetch_add(1, Relaxed);
                        stats.connected.store(true, Relaxed);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(false, Relaxed);
                        tracing::warn!(
                            "NATS connection lost: deciding locally and buffering events in the outbox until it is back"
                        );
                    }
                    // (authorization errors, lame duck mode, slow consumers: worth a line)
                    other => tracing::warn!(event = %other, "NATS"),
                }
            }
        });
    match &cfg.auth {
        NatsAuth::None => {}
        NatsAuth::Token(t) => opts = opts.token(t.expose().to_string()),
        NatsAuth::CredentialsFile(p) => {
            opts = opts
                .credentials_file(p)
                .await
                .with_context(|| format!("cannot read the NATS credentials file {}", p.display()))?
        }
    }
    let servers: Vec<async_nats::ServerAddr> =
        cfg.nats.iter().map(|s| s.parse().map_err(|e| anyhow!("cluster.nats: `{s}`: {e}"))).collect::<Result<_>>()?;
    // (the options' Debug never shows the token: it is not logged)
    opts.connect(servers).await.map_err(|e| anyhow!("cannot connect to NATS: {e}"))
}

/// The cluster's 48 bytes of keys: created by the first sensor, read by the others.
async fn cluster_keys(js: &jetstream::Context, cfg: &ClusterCfg, proposed: Option<&[u8]>) -> Result<Vec<u8>> {
    let kv = get_or_create_bucket(js, cfg, "config", Duration::ZERO, 1 << 20).await?;
    let fresh = match proposed {
        Some(k) => k.to_vec(),
        None => crate::sink::firebase::random_bytes(48)?,
    };
    let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    match kv.create("keys", hex.into()).await {
        Ok(_) => {
            tracing::info!("made the cluster's keys (first sensor)");
            Ok(fresh)
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let v = kv.get("keys").await?.ok_or_else(|| anyhow!("the cluster's keys vanished"))?;
            let s = std::str::from_utf8(&v)?;
            let b: Vec<u8> =
                (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            if b.len() != 48 {
                bail!("the cluster's keys in bucket {} are damaged", cfg.bucket("config"));
            }
            Ok(b)
        }
        Err(e) => Err(anyhow!("cannot create the cluster's keys: {e}")),
    }
}

async fn get_or_create_bucket(
    js: &jetstream::Context,
    cfg: &ClusterCfg,
    what: &str,
    max_age: Duration,
    max_bytes: i64,
) -> Result<kv::Store> {
    let name = cfg.bucket(what);
    if let Ok(s) = js.get_key_value(&name).await {
        return Ok(s);
    }
    // the bucket's stream, as `create_key_value` makes it (which first asks for the account's
    // limits in a form nats-server 2.9 does not answer)
    js.create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(format!("siptap {what}")),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_bytes,
        max_age,
        max_message_size: 64 * 1024,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: cfg.replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("cannot create bucket {name}: {e}"))?;
    js.get_key_value(&name).await.map_err(|e| anyhow!("cannot open bucket {name}: {e}"))
}

async fn ensure(js: &jetstream::Context, cfg: &ClusterCfg) -> Result<Buckets> {
    let bytes = (cfg.max_bucket_mib << 20) as i64;
    let users = get_or_create_bucket(js, cfg, "users", Duration::ZERO, bytes).await?;
    let devices = get_or_create_bucket(js, cfg, "devices", DEVICE_MAX_AGE, bytes).await?;
    let contacts = get_or_create_bucket(js, cfg, "contacts", CONTACT_MAX_AGE, bytes).await?;
    ensure_stream(
        js,
        jetstream::stream::Config {
            name: cfg.stream(),
            description: Some("siptap events, one copy per event id".into()),
            subjects: vec![format!("{}.events.>", cfg.prefix)],
            max_bytes: (cfg.max_stream_mib << 20) as i64,
            // GA4 takes nothing older than 72 hours
            max_age: Duration::from_secs(72 * 3600),
            duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            // a full stream refuses new events (they stay in the sensors' outboxes) rather than
            // dropping undelivered ones
            discard: jetstream::stream::DiscardPolicy::New,
            // an event leaves the stream once a delivery worker has acknowledged it (the ids of
            // the duplicate window are kept apart from the messages)
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        },
    )
    .await?;
    // a replay's events of tenants without Firebase: published only so that redundant replays
    // print each once; kept no longer than the duplicate window needs
    ensure_stream(
        js,
        jetstream::stream::Config {
            name: format!("{}_lines", cfg.prefix),
            description: Some("siptap replay lines of tenants without Firebase (for deduplication only)".into()),
            subjects: vec![format!("{}.lines.>", cfg.prefix)],
            max_bytes: ((cfg.max_stream_mib << 20) / 4).max(1 << 20) as i64,
            max_age: Duration::from_secs(2 * cfg.duplicate_window_secs),
            duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            // full: the oldest lines go (they only serve deduplication)
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        jetstream::stream::Config {
            name: format!("{}_rejected", cfg.prefix),
            description: Some("siptap events Firebase refused (4xx), invalid or too old: kept 30 days".into()),
            subjects: vec![format!("{}.rejected.>", cfg.prefix)],
            max_bytes: ((cfg.max_stream_mib << 20) / 4).max(1 << 20) as i64,
            max_age: Duration::from_secs(30 * 86_400),
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    Ok(Buckets { users, devices, contacts })
}

/// Creates a stream unless it exists (an existing one is left as its operator may have tuned it).
async fn ensure_stream(js: &jetstream::Context, config: jetstream::stream::Config) -> Result<()> {
    if js.get_stream(&config.name).await.is_ok() {
        return Ok(());
    }
    let name = config.name.clone();
    js.create_stream(config).await.map_err(|e| anyhow!("cannot create stream {name}: {e}"))?;
    Ok(())
}

fn key_of(fp: Fp) -> String {
    format!("{fp:016x}")
}

/// The registration facts shared through the cluster's buckets.
pub struct ClusterRegistry {
    c: Arc<Cluster>,
    cache: std::sync::Mutex<DeviceCache>,
}

impl ClusterRegistry {
    pub fn new(c: Arc<Cluster>) -> Self {
        let cache = DeviceCache::new(c.cfg.device_cache_entries, c.cfg.device_cache_mib << 20);
        ClusterRegistry { c, cache: std::sync::Mutex::new(cache) }
    }
}

/// The device records this sensor wrote last, with their revisions (bounded in entries and
/// bytes; emptied when full, which only costs a read per refresh until it fills again).
struct DeviceCache {
    map: std::collections::HashMap<Fp, (u64, SharedDevice)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl DeviceCache {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        DeviceCache { map: Default::default(), bytes: 0, max_entries, max_bytes }
    }

    fn get(&self, key: Fp) -> Option<(u64, SharedDevice)> {
        self.map.get(&key).cloned()
    }

    fn cost(d: &SharedDevice) -> usize {
        std::mem::size_of::<(Fp, (u64, SharedDevice))>()
            + 24
            + d.device.len()
            + d.app_instance.as_ref().map_or(0, |a| a.len())
    }

    fn put(&mut self, key: Fp, rev: u64, d: SharedDevice, stats: &ClusterStats) {
        let cost = Self::cost(&d);
        if !self.map.contains_key(&key) && (self.map.len() >= self.max_entries || self.bytes + cost > self.max_bytes) {
            if stats.device_cache_resets.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(
                    entries = self.max_entries,
                    bytes = self.max_bytes,
                    "cluster device cache full: emptied (refreshes read their record again until it fills; cluster.device_cache_entries, cluster.device_cache_mib)"
                );
            }
            self.map.clear();
            self.bytes = 0;
        }
        if let Some((_, old)) = self.map.insert(key, (rev, d)) {
            self.bytes -= Self::cost(&old);
        }
        self.bytes += cost;
    }
}

impl SharedRegistry for ClusterRegistry {
    fn update_device(
        &self,
        key: Fp,
        likely_new: bool,
        decide: &mut dyn FnMut(Option<&SharedDevice>) -> Option<SharedDevice>,
    ) -> Result<(), Unreachable> {
        let c = &self.c;
        let Some(b) = c.up() else {
            c.stats.decisions_local.fetch_add(1, Relaxed);
            return Err(Unreachable);
        };
        let k = key_of(key);
        // the record this sensor wrote last, with its revision: tried without reading it again
        // (a refresh costs one round trip); if another sensor wrote since, the revision check
        // fails and the record is read
        let mut known = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key).map(|(r, d)| (r, Some(d)));
        // a device never seen here: tried as new (revision 0 creates), read only if it exists
        if known.is_none() && likely_new {
            known = Some((0, None));
        }
        for _ in 0..16 {
            let from_cache = known.is_some();
            let (cur, revision) = match known.take() {
                Some((rev, d)) => (d, rev),
                None => {
                    let store = b.devices.clone();
                    let kk = k.clone();
                    let entry = match c.block(async move { store.entry(kk).await }) {
                        Some(Ok(e)) => e,
                        _ => {
                            c.stats.kv_errors.fetch_add(1, Relaxed);
                            c.stats.decisions_local.fetch_add(1, Relaxed);
                            return Err(Unreachable);
                        }
                    };
                    match &entry {
                        Some(e) if e.operation == kv::Operation::Put => {
                            (serde_json::from_slice::<SharedDevice>(&e.value).ok(), e.revision)
                        }
                        Some(e) => (None, e.revision),
                        None => (None, 0),
                    }
                }
            };
            let Some(new) = decide(cur.as_ref()) else { return Ok(()) };
            let value: bytes::Bytes = serde_json::to_vec(&new).expect("serialisable").into();
            let store = b.devices.clone();
            let kk = k.clone();
            match c.block(async move { store.update(kk, value, revision).await }) {
                Some(Ok(rev)) => {
                    c.stats.kv_won.fetch_add(1, Relaxed);
                    self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(key, rev, new, &c.stats);
                    return Ok(());
                }
                Some(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // another sensor wrote first: decide again from what it wrote
                    if !from_cache {
                        c.stats.kv_conflicts.fetch_add(1, Relaxed);
                    }
                }
                _ => {
                    c.stats.kv_errors.fetch_add(1, Relaxed);
                    c.stats.decisions_local.fetch_add(1, Relaxed);
                    return Err(Unreachable);
                }
            }
        }
        c.stats.decisions_local.fetch_add(1, Relaxed);
        Err(Unreachable)
    }

    fn device(&self, key: Fp) -> Option<SharedDevice> {
        let b = self.c.up()?;
        let store = b.devices.clone();
        let v = self.c.block(async move { store.get(key_of(key)).await })?.ok()??;
        serde_json::from_slice(&v).ok()
    }

    fn put_contact(&self, key: Fp, contact: &SharedContact) {
        let Some(b) = self.c.up() else { return };
        let store = b.contacts.clone();
        let value: bytes::Bytes = serde_json::to_vec(contact).expect("serialisable").into();
        let stats = self.c.stats.clone();
        self.c.background(async move {
            if store.put(key_of(key), value).await.is_err() {
                stats.kv_errors.fetch_add(1, Relaxed);
            }
        });
    }

    fn contact(&self, key: Fp) -> Option<SharedContact> {
        let b = self.c.up()?;
        self.c.stats.contact_lookups.fetch_add(1, Relaxed);
        let store = b.contacts.clone();
        let v = self.c.block(async move { store.get(key_of(key)).await })?.ok()??;
        let c: SharedContact = serde_json::from_slice(&v).ok()?;
        self.c.stats.contacts_found.fetch_add(1, Relaxed);
        Some(c)
    }
}

/// Known users: the cluster's bucket decides a signup (create-if-absent); the local store keeps
/// its own copy, answers for users it knows without asking, and decides while NATS is down.
pub struct ClusterUsers {
    c: Arc<Cluster>,
    fp: Fingerprinter,
    local: Box<dyn KnownUsers>,
}

impl ClusterUsers {
    pub fn new(c: Arc<Cluster>, local: Box<dyn KnownUsers>) -> Self {
        let fp = c.fingerprinter();
        ClusterUsers { c, fp, local }
    }
}

impl KnownUsers for ClusterUsers {
    fn sign_up(&mut self, aor: &str, ts: Micros) -> bool {
        let c = &self.c;
        let key = key_of(self.fp.of(aor));
        let value: bytes::Bytes = ts.to_string().into();
        let new_here = self.local.sign_up(aor, ts);
        let Some(b) = c.up() else {
            if new_here {
                c.stats.decisions_local.fetch_add(1, Relaxed);
            }
            return new_here;
        };
        let store = b.users.clone();
        if !new_here {
            // known here: make sure the cluster knows too (a user known before cluster mode, or
            // seen during an outage), without waiting
            self.c.background(async move {
                let _ = store.create(key, value).await;
            });
            return false;
        }
        match c.block(async move { store.create(key, value).await }) {
            Some(Ok(_)) => {
                c.stats.signups_won.fetch_add(1, Relaxed);
                true
            }
            Some(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                c.stats.signups_lost.fetch_add(1, Relaxed);
                false
            }
            _ => {
                c.stats.kv_errors.fetch_add(1, Relaxed);
                c.stats.decisions_local.fetch_add(1, Relaxed);
                true
            }
        }
    }
    fn take_new(&mut self) -> Vec<(String, Micros)> {
        self.local.take_new()
    }
    fn count(&self) -> u64 {
        self.local.count()
    }
}
