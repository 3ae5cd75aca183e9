//! The TOML configuration: schema, defaults and the checks that name key, file and line.
use crate::event::Kind;
use crate::sink::firebase::Secret;
use crate::sink::firebase::identity::{UserIdMode, parse_mapping};
use crate::sink::firebase::outbox::WhenFull;
use crate::state::tracker::{PushProxyAgents, Servers, TrackerConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sip_servers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    sip_ports: Option<Vec<u16>>,
    #[serde(default)]
    default_tenant: Option<Spanned<String>>,
    #[serde(default)]
    max_call_duration_secs: Option<Spanned<u64>>,
    #[serde(default)]
    duplicate_window_ms: Option<u64>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    hep: RawHep,
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    tenants: BTreeMap<String, Spanned<RawTenant>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHep {
    ports: Option<Vec<u16>>,
    listen: Option<Spanned<String>>,
    allow_any_source: Option<Spanned<bool>>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    #[serde(default)]
    sources: Vec<Spanned<RawHepSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHepSource {
    address: Option<Spanned<String>>,
    capture_id: Option<u32>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    interfaces: Option<Vec<String>>,
    buffer_mib: Option<u32>,
    metrics_listen: Option<Spanned<String>>,
    jsonl_path: Option<String>,
    log_format: Option<Spanned<String>>,
    state_dir: Option<String>,
    stop_timeout_secs: Option<u64>,
    queue_mib: Option<usize>,
    threads: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nats: Option<Spanned<Vec<Spanned<String>>>>,
    sensor: Option<Spanned<String>>,
    replicas: Option<Spanned<usize>>,
    prefix: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    duplicate_window_secs: Option<Spanned<u64>>,
    deliver: Option<bool>,
    max_stream_mib: Option<u64>,
    max_bucket_mib: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_unacked: Option<usize>,
    device_cache_entries: Option<usize>,
    device_cache_mib: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    max_in_flight: Option<usize>,
    max_outbox_events: Option<u64>,
    when_full: Option<WhenFull>,
    request_timeout_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirebase {
    #[serde(default)]
    enabled: Option<bool>,
    app_id: Spanned<String>,
    api_secret_file: Option<Spanned<String>>,
    api_secret_env: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    identity_secret_file: Option<Spanned<String>>,
    identity_secret_env: Option<Spanned<String>>,
    user_id: Option<UserIdMode>,
    app_instance_id_from: Option<String>,
    app_instance_map: Option<Spanned<String>>,
    allow_insecure_endpoint: Option<bool>,
    session: Option<crate::sink::firebase::SessionMode>,
    session_timeout_secs: Option<Spanned<u64>>,
    engagement: Option<crate::sink::firebase::EngagementMode>,
    max_engagement_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_call_legs: Option<usize>,
    max_devices: Option<usize>,
    max_fragments: Option<usize>,
    max_tcp_streams: Option<usize>,
    max_tcp_buffer_bytes: Option<usize>,
    max_pending_transactions: Option<usize>,
    max_contacts_per_register: Option<usize>,
    max_fragment_bytes: Option<usize>,
    max_fragments_per_datagram: Option<usize>,
    max_tcp_total_bytes: Option<usize>,
    max_registration_bytes: Option<usize>,
    max_pending_bytes: Option<usize>,
    max_call_legs_bytes: Option<usize>,
    max_sctp_bytes: Option<usize>,
    known_users_cache: Option<usize>,
    store_cache_mib: Option<usize>,
    store_journal_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    push_proxy_user_agents: Option<Vec<String>>,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    firebase: Option<Spanned<RawFirebase>>,
}

/// Per-event naming: a string renames, `false` disables, `true` keeps the default name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    signup: Option<Spanned<EventName>>,
    login: Option<Spanned<EventName>>,
    app_start: Option<Spanned<EventName>>,
    callout: Option<Spanned<EventName>>,
    callin: Option<Spanned<EventName>>,
    callend: Option<Spanned<EventName>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum EventName {
    Name(String),
    Enabled(bool),
}

/// One tenant (brand): its domains and event names.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub domains: Vec<String>,
    /// Name per kind; `None` = disabled.
    pub names: HashMap<Kind, Option<String>>,
    pub push_proxy_user_agents: Vec<String>,
    pub firebase: Option<FirebaseCfg>,
}

/// A tenant's Firebase delivery settings, secrets resolved.
#[derive(Debug, Clone)]
pub struct FirebaseCfg {
    pub enabled: bool,
    pub app_id: String,
    pub api_secret: Secret,
    pub base_url: String,
    pub identity_secret: Option<Secret>,
    pub user_id: UserIdMode,
    pub app_instance_id_from: Option<String>,
    pub app_instance_map: HashMap<String, String>,
    pub app_instance_map_path: Option<PathBuf>,
    /// Where the secrets came from (for the permission check), when from files.
    pub api_secret_path: Option<PathBuf>,
    pub identity_secret_path: Option<PathBuf>,
    /// Sessions and engagement as GA4 will show them.
    pub semantics: crate::sink::firebase::GaSemantics,
    /// A plain http:// endpoint was allowed explicitly (tests).
    pub insecure_endpoint: bool,
}

/// Delivery settings shared by all tenants.
#[derive(Debug, Clone)]
pub struct DeliveryCfg {
    pub max_in_flight: usize,
    pub max_outbox_events: u64,
    pub when_full: WhenFull,
    pub request_timeout_secs: u64,
    pub max_backoff_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_call_legs: usize,
    pub max_devices: usize,
    pub max_fragments: usize,
    pub max_tcp_streams: usize,
    pub max_tcp_buffer_bytes: usize,
    pub max_pending_transactions: usize,
    /// Contacts of one REGISTER (or its 2xx) that are followed; the rest are counted.
    pub max_contacts_per_register: usize,
    /// Bytes all incomplete IP datagrams may hold together.
    pub max_fragment_bytes: usize,
    pub max_fragments_per_datagram: usize,
    /// Bytes all TCP streams may hold together.
    pub max_tcp_total_bytes: usize,
    /// Bytes of the registration table (apps and contacts), of REGISTERs awaiting a response,
    /// of call legs, of SCTP messages being reassembled.
    pub max_registration_bytes: usize,
    pub max_pending_bytes: usize,
    pub max_call_legs_bytes: usize,
    pub max_sctp_bytes: usize,
    /// Known users kept in memory (the rest are read from the store when needed).
    pub known_users_cache: usize,
    /// redb's page cache per database file, in MiB.
    pub store_cache_mib: usize,
    /// The state journal's bound in MiB: reached, it is folded into the state tables.
    pub store_journal_mib: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub servers: Vec<(IpAddr, Option<u16>)>,
    pub sip_ports: Vec<u16>,
    pub default_tenant: Option<String>,
    pub max_call_duration_secs: u64,
    pub duplicate_window_ms: u64,
    pub limits: Limits,
    pub delivery: DeliveryCfg,
    pub hep: HepCfg,
    pub run: RunCfg,
    pub tenants: Vec<Tenant>,
    /// Cluster mode (several sensors sharing registration facts and one event stream on NATS
    /// JetStream); `None`: the single-box embedded default.
    pub cluster: Option<ClusterCfg>,
    /// What is allowed but unsafe or unusual (`check-config` prints them, `run` logs them).
    pub warnings: Vec<String>,
}

/// How a sensor authenticates to NATS (never logged).
#[derive(Clone)]
pub enum NatsAuth {
    None,
    /// A NATS credentials file (JWT and NKey seed).
    CredentialsFile(PathBuf),
    Token(Secret),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => write!(f, "none"),
            NatsAuth::CredentialsFile(p) => write!(f, "credentials file {}", p.display()),
            NatsAuth::Token(_) => write!(f, "token (hidden)"),
        }
    }
}

/// `[cluster]`: NATS JetStream servers and the names of what siptap keeps there.
#[derive(Debug, Clone)]
pub struct ClusterCfg {
    pub nats: Vec<String>,
    pub auth: NatsAuth,
    /// This sensor's name (metrics, logs, the events' `sensor` header).
    pub sensor: String,
    /// Replicas of the stream and buckets siptap creates (1: one server; 3: a cluster).
    pub replicas: usize,
    /// Prefix of the bucket, stream, subject and consumer names.
    pub prefix: String,
    /// JetStream's duplicate window on the event stream: longer than the skew between
    /// redundant sensors (and than a NATS outage a sensor buffers through).
    pub duplicate_window_secs: u64,
    /// Whether `siptap run` also delivers from the stream to Firebase.
    pub deliver: bool,
    /// Bytes the event stream may hold, and each bucket.
    pub max_stream_mib: u64,
    pub max_bucket_mib: u64,
    /// How long a decision may wait for NATS before it is made locally.
    pub request_timeout_ms: u64,
    /// Events a delivery worker holds unacknowledged.
    pub max_unacked: usize,
    /// Device records this sensor wrote last, kept with their revisions (entries and MiB).
    pub device_cache_entries: usize,
    pub device_cache_mib: usize,
}

impl ClusterCfg {
    pub fn bucket(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }
    pub fn stream(&self) -> String {
        format!("{}_events", self.prefix)
    }
    /// A tenant's durable delivery consumer, shared by every worker that delivers the tenant.
    pub fn consumer(&self, tenant: &str) -> String {
        format!("{}_deliver_{}", self.prefix, subject_token(tenant))
    }
    /// The subject of a tenant's events for delivery.
    pub fn subject(&self, tenant: &str) -> String {
        format!("{}.events.{}", self.prefix, subject_token(tenant))
    }
    /// The subject of a replay's events of a tenant without Firebase (kept only for the duplicate
    /// window, in the stream `PREFIX_lines`).
    pub fn lines_subject(&self, tenant: &str) -> String {
        format!("{}.lines.{}", self.prefix, subject_token(tenant))
    }
}

/// A tenant id as one NATS subject token (characters subjects do not take become `_`).
pub fn subject_token(tenant: &str) -> String {
    tenant.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// HEP input: ports recognised in captures, the live listener, accepted sources.
#[derive(Debug, Clone)]
pub struct HepCfg {
    pub ports: Vec<u16>,
    pub listen: Option<SocketAddr>,
    pub sources: Vec<crate::decode::HepSource>,
    /// Take HEP from anyone (captured or received): only when explicitly set.
    pub allow_any_source: bool,
    /// HEP-over-TCP connections served at once, and how long one may stay silent.
    pub max_connections: usize,
    pub idle_timeout_secs: u64,
}

impl HepCfg {
    pub fn trust(&self) -> crate::decode::HepTrust {
        crate::decode::HepTrust { sources: self.sources.clone(), allow_any: self.allow_any_source }
    }
}

/// `siptap run` settings.
#[derive(Debug, Clone)]
pub struct RunCfg {
    /// Interfaces to capture on (`any` works); empty: none (HEP only).
    pub interfaces: Vec<String>,
    pub buffer_mib: u32,
    pub metrics_listen: Option<SocketAddr>,
    /// Where tenants without Firebase get their events as JSON lines (`-`: stdout).
    pub jsonl_path: String,
    pub log_json: bool,
    pub state_dir: PathBuf,
    pub stop_timeout_secs: u64,
    /// Bytes of input (frames, HEP packets) waiting for the core, in MiB.
    pub queue_mib: usize,
    /// 2: decoding and parsing on one thread, state and output on another (as `replay
    /// --threads 2`); 1: both on the core thread.
    pub threads: usize,
}

pub const DEFAULT_PUSH_PROXY_AGENTS: &[&str] = &["Acrobits SIPIS"];
/// Names GA4 reserves for its own events (Measurement Protocol reference).
const RESERVED_NAMES: &[&str] = &[
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "os_update",
    "session_start",
    "session_start_with_rollout",
    "screen_view",
    "user_engagement",
];

/// An IP address; `localhost` is 127.0.0.1 (siptap resolves no other names: a configuration
/// must not depend on DNS at start).
fn ip_addr(v: &str) -> Option<IpAddr> {
    if v.eq_ignore_ascii_case("localhost") { Some(IpAddr::from([127, 0, 0, 1])) } else { v.parse().ok() }
}

/// `IP:port`, `[IPv6]:port` or `localhost:port`.
fn socket_addr(v: &str) -> Option<SocketAddr> {
    if let Ok(a) = v.parse() {
        return Some(a);
    }
    let (host, port) = v.rsplit_once(':')?;
    Some(SocketAddr::new(ip_addr(host).filter(|_| host.eq_ignore_ascii_case("localhost"))?, port.parse().ok()?))
}

/// A configuration error, rendered as `file:line: key: message`.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read config: {e}", path.display())))?;
        Config::parse(&text, path)
    }

    /// Every error in the file, not only the first: after an error the line it names is set
    /// aside (commented out) and the file checked again, up to 50 times. An error that only
    /// says a key is missing after lines were set aside may come from them, so it ends the list.
    pub fn check_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![ConfigError(format!("{}: cannot read config: {e}", path.display()))])?;
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut errors: Vec<ConfigError> = Vec::new();
        let prefix = format!("{}:", path.display());
        for _ in 0..50 {
            let attempt = lines.join("\n");
            match Config::parse(&attempt, path) {
                Ok(cfg) if errors.is_empty() => return Ok(cfg),
                Ok(_) => break,
                Err(e) => {
                    let line: Option<usize> =
                        e.0.strip_prefix(&prefix).and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok());
                    let consequence = !errors.is_empty() && e.0.contains("missing");
                    if consequence || errors.iter().any(|x| x.0 == e.0) {
                        break;
                    }
                    errors.push(e);
                    match line.and_then(|n| lines.get_mut(n.wrapping_sub(1))) {
                        Some(l) if !l.trim_start().starts_with('#') && !l.trim().is_empty() => *l = format!("# {l}"),
                        _ => break,
                    }
                }
            }
        }
        Err(errors)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, key: &str, msg: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            ConfigError(format!("{}:{line}: {key}: {msg}", path.display()))
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let Some(span) = e.span() else { return ConfigError(format!("{}: {msg}", path.display())) };
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            match dotted_key(text, line_no) {
                Some(key) => ConfigError(format!("{}:{line_no}: {key}: {msg}", path.display())),
                None => ConfigError(format!("{}:{line_no}: {msg}", path.display())),
            }
        })?;

        if raw.sip_servers.get_ref().is_empty() {
            return Err(at(raw.sip_servers.span(), "sip_servers", "must name at least one SIP server address".into()));
        }
        let mut servers = Vec::new();
        for s in raw.sip_servers.get_ref() {
            let v = s.get_ref().trim();
            let parsed = if let Some(sa) = socket_addr(v) {
                Some((sa.ip(), Some(sa.port())))
            } else {
                ip_addr(v.trim_start_matches('[').trim_end_matches(']')).map(|ip| (ip, None))
            };
            match parsed {
                Some(p @ (ip, port)) => {
                    servers.push(p);
                    // `localhost` is both loopback addresses
                    if ip == IpAddr::from([127, 0, 0, 1]) && v.to_ascii_lowercase().starts_with("localhost") {
                        servers.push((IpAddr::from(std::net::Ipv6Addr::LOCALHOST), port));
                    }
                }
                None => {
                    return Err(at(
                        s.span(),
                        "sip_servers",
                        format!("`{v}` is not an address (IP, IP:port, or [IPv6]:port)"),
                    ));
                }
            }
        }

        let mut tenants = Vec::new();
        let mut owner: HashMap<String, String> = HashMap::new();
        for (id, t) in &raw.tenants {
            let key = format!("tenants.{id}");
            let span = t.span();
            let t = t.get_ref();
            if t.domains.get_ref().is_empty() {
                return Err(at(
                    t.domains.span(),
                    &format!("{key}.domains"),
                    "must list at least one SIP domain".into(),
                ));
            }
            let mut domains = Vec::new();
            for d in t.domains.get_ref() {
                let dom = d.get_ref().trim().to_ascii_lowercase();
                if dom.is_empty() || dom.contains('@') || dom.contains(' ') {
                    return Err(at(d.span(), &format!("{key}.domains"), format!("`{}` is not a domain", d.get_ref())));
                }
                if let Some(other) = owner.insert(dom.clone(), id.clone()) {
                    return Err(at(
                        d.span(),
                        &format!("{key}.domains"),
                        format!("domain `{dom}` is already claimed by tenant `{other}`"),
                    ));
                }
                domains.push(dom);
            }
            let mut names = HashMap::new();
            let ev = &t.events;
            for (kind, v) in [
                (Kind::AccountCreated, &ev.signup),
                (Kind::AccountRegistered, &ev.login),
                (Kind::AppStarted, &ev.app_start),
                (Kind::OutgoingCall, &ev.callout),
                (Kind::IncomingCall, &ev.callin),
                (Kind::CallEnded, &ev.callend),
            ] {
                let ekey = format!("{key}.events.{}", kind.default_name());
                let name = match v.as_ref().map(|s| (s.get_ref(), s.span())) {
                    None | Some((EventName::Enabled(true), _)) => Some(kind.default_name().to_string()),
                    Some((EventName::Enabled(false), _)) => None,
                    Some((EventName::Name(n), sp)) => {
                        check_event_name(n).map_err(|m| at(sp, &ekey, m))?;
                        Some(n.clone())
                    }
                };
                names.insert(kind, name);
            }
            let _ = span;
            let firebase = match &t.firebase {
                Some(fb) => Some(firebase_cfg(fb, &key, path, &at)?),
                None => None,
            };
            tenants.push(Tenant {
                firebase,
                id: id.clone(),
                domains,
                names,
                push_proxy_user_agents: t
                    .push_proxy_user_agents
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PUSH_PROXY_AGENTS.iter().map(|s| s.to_string()).collect()),
            });
        }
        let default_tenant = match &raw.default_tenant {
            Some(d) if !raw.tenants.contains_key(d.get_ref()) => {
                return Err(at(d.span(), "default_tenant", format!("no tenant `{}` is defined", d.get_ref())));
            }
            Some(d) => Some(d.get_ref().clone()),
            None => None,
        };
        let max_call = match &raw.max_call_duration_secs {
            Some(v) if *v.get_ref() == 0 => {
                return Err(at(v.span(), "max_call_duration_secs", "must be greater than 0".into()));
            }
            Some(v) => *v.get_ref(),
            None => 4 * 3600,
        };
        let l = &raw.limits;
        let store_journal_mib = match &l.store_journal_mib {
            Some(v) if !(1..=1024).contains(v.get_ref()) => {
                return Err(at(v.span(), "limits.store_journal_mib", "must be 1 to 1024 (MiB)".into()));
            }
            Some(v) => *v.get_ref(),
            None => crate::store::embedded::FOLD_BYTES >> 20,
        };
        let d = &raw.delivery;
        let delivery = DeliveryCfg {
            max_in_flight: d.max_in_flight.unwrap_or(4).max(1),
            max_outbox_events: d.max_outbox_events.unwrap_or(1_000_000).max(1),
            when_full: d.when_full.unwrap_or(WhenFull::RejectNew),
            request_timeout_secs: d.request_timeout_secs.unwrap_or(30).max(1),
            max_backoff_secs: d.max_backoff_secs.unwrap_or(300).max(1),
        };
        let mut warnings: Vec<String> = Vec::new();
        let warn = |warnings: &mut Vec<String>, span: std::ops::Range<usize>, key: &str, msg: &str| {
            warnings.push(at(span, key, msg.to_string()).0);
        };
        let hep = {
            let h = &raw.hep;
            let listen = match &h.listen {
                Some(l) => Some(
                    socket_addr(l.get_ref())
                        .ok_or_else(|| at(l.span(), "hep.listen", format!("`{}` is not IP:port", l.get_ref())))?,
                ),
                None => None,
            };
            let mut sources = Vec::new();
            for src in &h.sources {
                let sp = src.span();
                let src = src.get_ref();
                let address = match &src.address {
                    Some(a) => Some(ip_addr(a.get_ref()).ok_or_else(|| {
                        at(a.span(), "hep.sources.address", format!("`{}` is not an IP address", a.get_ref()))
                    })?),
                    None => None,
                };
                let password = match (&src.password_env, &src.password_file) {
                    (Some(e), None) => Some(std::env::var(e.get_ref()).map_err(|_| {
                        at(
                            e.span(),
                            "hep.sources.password_env",
                            format!("environment variable `{}` is not set", e.get_ref()),
                        )
                    })?),
                    (None, Some(f)) => {
                        let p = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
                        if readable_by_others(&p) {
                            warn(
                                &mut warnings,
                                f.span(),
                                "hep.sources.password_file",
                                &format!("{} is readable by every local user", p.display()),
                            );
                        }
                        Some(
                            std::fs::read_to_string(&p)
                                .map_err(|e| {
                                    at(
                                        f.span(),
                                        "hep.sources.password_file",
                                        format!("cannot read {}: {e}", p.display()),
                                    )
                                })?
                                .trim()
                                .to_string(),
                        )
                    }
                    (Some(e), Some(_)) => {
                        return Err(at(e.span(), "hep.sources", "give password_env or password_file, not both".into()));
                    }
                    (None, None) => None,
                };
                if address.is_none() && src.capture_id.is_none() && password.is_none() {
                    return Err(at(sp, "hep.sources", "a source needs an address, a capture_id or a password".into()));
                }
                if password.is_none() {
                    warn(
                        &mut warnings,
                        sp.clone(),
                        "hep.sources",
                        "a source without a password is trusted by address and capture id only, which anyone who can send UDP to siptap (or to the captured network) can forge",
                    );
                }
                sources.push(crate::decode::HepSource { address, capture_id: src.capture_id, password });
            }
            let allow_any_source = h.allow_any_source.as_ref().is_some_and(|a| *a.get_ref());
            if let Some(l) = &h.listen {
                if sources.is_empty() && !allow_any_source {
                    return Err(at(
                        l.span(),
                        "hep.listen",
                        "refusing to take HEP from anyone who can reach it: add [[hep.sources]] (address, capture_id, password), or set hep.allow_any_source = true".into(),
                    ));
                }
                let open = listen.is_some_and(|a| !a.ip().is_loopback());
                let authenticated = !allow_any_source && sources.iter().all(|s| s.password.is_some());
                if open && !authenticated {
                    warn(
                        &mut warnings,
                        l.span(),
                        "hep.listen",
                        "listens beyond this host without a password on every source: anyone on the network can inject SIP",
                    );
                }
            }
            if let Some(a) = &h.allow_any_source
                && *a.get_ref()
            {
                warn(
                    &mut warnings,
                    a.span(),
                    "hep.allow_any_source",
                    "HEP is taken from anyone, in captures as on the listener: any sender can inject registrations and calls",
                );
            }
            HepCfg {
                ports: h.ports.clone().unwrap_or_else(|| vec![9060]),
                listen,
                sources,
                allow_any_source,
                max_connections: h.max_connections.unwrap_or(64).max(1),
                idle_timeout_secs: h.idle_timeout_secs.unwrap_or(60).max(1),
            }
        };
        let run = {
            let r = &raw.run;
            let metrics_listen =
                match &r.metrics_listen {
                    Some(m) if m.get_ref().is_empty() => None,
                    Some(m) => Some(socket_addr(m.get_ref()).ok_or_else(|| {
                        at(m.span(), "run.metrics_listen", format!("`{}` is not IP:port", m.get_ref()))
                    })?),
                    None => Some(SocketAddr::from(([127, 0, 0, 1], 9109))),
                };
            let log_json = match &r.log_format {
                Some(f) if f.get_ref() == "json" => true,
                Some(f) if f.get_ref() == "text" => false,
                Some(f) => {
                    return Err(at(f.span(), "run.log_format", format!("`{}` is not text or json", f.get_ref())));
                }
                None => false,
            };
            if let (Some(m), Some(a)) = (&r.metrics_listen, metrics_listen)
                && !a.ip().is_loopback()
            {
                warn(
                    &mut warnings,
                    m.span(),
                    "run.metrics_listen",
                    "metrics and health are served beyond this host, without authentication",
                );
            }
            let threads = match &r.threads {
                Some(t) if !(1..=2).contains(t.get_ref()) => {
                    return Err(at(t.span(), "run.threads", format!("`{}` is not 1 or 2", t.get_ref())));
                }
                Some(t) => *t.get_ref(),
                None => 2,
            };
            RunCfg {
                interfaces: r.interfaces.clone().unwrap_or_else(|| vec!["any".into()]),
                buffer_mib: r.buffer_mib.unwrap_or(12).max(1),
                metrics_listen,
                jsonl_path: r.jsonl_path.clone().unwrap_or_else(|| "-".into()),
                log_json,
                state_dir: PathBuf::from(r.state_dir.clone().unwrap_or_else(|| "/var/lib/siptap".into())),
                stop_timeout_secs: r.stop_timeout_secs.unwrap_or(10).max(1),
                queue_mib: r.queue_mib.unwrap_or(32).max(1),
                threads,
            }
        };
        for t in &tenants {
            if let Some(fb) = &t.firebase
                && fb.insecure_endpoint
            {
                warnings.push(format!(
                    "{}: tenants.{}.firebase.allow_insecure_endpoint: events (and the api_secret) go to {} over plain http",
                    path.display(),
                    t.id,
                    fb.base_url
                ));
            }
            if let Some(fb) = &t.firebase {
                for (key, p) in
                    [("api_secret_file", &fb.api_secret_path), ("identity_secret_file", &fb.identity_secret_path)]
                {
                    if let Some(p) = p
                        && readable_by_others(p)
                    {
                        warnings.push(format!(
                            "{}: tenants.{}.firebase.{key}: {} is readable by every local user",
                            path.display(),
                            t.id,
                            p.display()
                        ));
                    }
                }
            }
        }
        let cluster = match &raw.cluster {
            Some(c) => {
                // each tenant's events have a subject and a delivery consumer of their own
                let mut tokens: HashMap<String, &str> = HashMap::new();
                for t in &tenants {
                    if let Some(other) = tokens.insert(subject_token(&t.id), &t.id) {
                        return Err(at(
                            c.span(),
                            "cluster",
                            format!(
                                "tenants `{other}` and `{}` would share a NATS subject: rename one (letters, digits, - _)",
                                t.id
                            ),
                        ));
                    }
                }
                Some(cluster_cfg(c, path, &at, &mut warnings)?)
            }
            None => None,
        };
        Ok(Config {
            cluster,
            warnings,
            hep,
            run,
            delivery,
            path: path.to_path_buf(),
            servers,
            sip_ports: raw.sip_ports.unwrap_or_else(|| vec![5060, 5061, 5080]),
            default_tenant,
            max_call_duration_secs: max_call,
            duplicate_window_ms: raw.duplicate_window_ms.unwrap_or(20),
            limits: Limits {
                max_call_legs: l.max_call_legs.unwrap_or(200_000).max(1),
                max_devices: l.max_devices.unwrap_or(500_000).max(1),
                max_fragments: l.max_fragments.unwrap_or(4096).max(1),
                max_tcp_streams: l.max_tcp_streams.unwrap_or(65_536).max(1),
                max_tcp_buffer_bytes: l.max_tcp_buffer_bytes.unwrap_or(256 * 1024).max(4096),
                max_pending_transactions: l.max_pending_transactions.unwrap_or(100_000).max(1),
                max_contacts_per_register: l.max_contacts_per_register.unwrap_or(16).max(1),
                max_fragment_bytes: l.max_fragment_bytes.unwrap_or(8 << 20).max(1 << 16),
                max_fragments_per_datagram: l.max_fragments_per_datagram.unwrap_or(128).max(2),
                max_tcp_total_bytes: l.max_tcp_total_bytes.unwrap_or(32 << 20).max(1 << 16),
                max_registration_bytes: l.max_registration_bytes.unwrap_or(160 << 20).max(1 << 16),
                max_pending_bytes: l.max_pending_bytes.unwrap_or(32 << 20).max(1 << 16),
                max_call_legs_bytes: l.max_call_legs_bytes.unwrap_or(96 << 20).max(1 << 16),
                max_sctp_bytes: l.max_sctp_bytes.unwrap_or(4 << 20).max(1 << 16),
                known_users_cache: l.known_users_cache.unwrap_or(100_000).max(16),
                store_cache_mib: l.store_cache_mib.unwrap_or(4).max(1),
                store_journal_mib,
            },
            tenants,
        })
    }

    /// The state machines' settings; `fingerprint_key` comes with the state (see `state::fingerprint`).
    pub fn tracker_config(&self, fingerprint_key: [u64; 2]) -> TrackerConfig {
        let mut by_domain = HashMap::new();
        for t in &self.tenants {
            for d in &t.domains {
                by_domain.insert(d.clone(), t.push_proxy_user_agents.clone());
            }
        }
        let default = self
            .default_tenant
            .as_ref()
            .and_then(|id| self.tenants.iter().find(|t| &t.id == id))
            .map(|t| t.push_proxy_user_agents.clone())
            .unwrap_or_else(|| DEFAULT_PUSH_PROXY_AGENTS.iter().map(|s| s.to_string()).collect());
        let mut tc = TrackerConfig::new(Servers::new(self.servers.clone()));
        tc.push_proxies = PushProxyAgents { by_domain, default };
        tc.max_call_secs = self.max_call_duration_secs;
        tc.max_legs = self.limits.max_call_legs;
        tc.max_devices = self.limits.max_devices;
        tc.max_pending = self.limits.max_pending_transactions;
        tc.max_contacts_per_register = self.limits.max_contacts_per_register;
        tc.max_registration_bytes = self.limits.max_registration_bytes;
        tc.max_pending_bytes = self.limits.max_pending_bytes;
        tc.max_call_legs_bytes = self.limits.max_call_legs_bytes;
        tc.fingerprint_key = fingerprint_key;
        let mut names: Vec<String> =
            self.tenants.iter().filter_map(|t| t.firebase.as_ref()?.app_instance_id_from.clone()).collect();
        names.sort();
        names.dedup();
        tc.identity_names = names;
        tc
    }
}

fn cluster_cfg(
    c: &Spanned<RawCluster>,
    path: &Path,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
    warnings: &mut Vec<String>,
) -> Result<ClusterCfg, ConfigError> {
    let span = c.span();
    let c = c.get_ref();
    let Some(nats) = &c.nats else {
        return Err(at(
            span,
            "cluster.nats",
            "[cluster] needs the NATS servers, e.g. nats = [\"nats://127.0.0.1:4222\"]".into(),
        ));
    };
    if nats.get_ref().is_empty() {
        return Err(at(nats.span(), "cluster.nats", "must name at least one NATS server".into()));
    }
    let mut servers = Vec::new();
    for s in nats.get_ref() {
        let v = s.get_ref().trim();
        let rest = v.strip_prefix("nats://").or_else(|| v.strip_prefix("tls://")).unwrap_or(v);
        let port_ok =
            rest.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if rest.contains('@') {
            // (the value is not repeated: it holds a password)
            return Err(at(
                s.span(),
                "cluster.nats",
                "a server address carries credentials (user:password@): put them in credentials_file or token_file"
                    .into(),
            ));
        }
        if !port_ok || rest.contains('/') {
            return Err(at(
                s.span(),
                "cluster.nats",
                format!(
                    "`{v}` is not a NATS server address (nats://host:port; credentials go in credentials_file or token_file)"
                ),
            ));
        }
        servers.push(v.to_string());
    }
    let sensor = match &c.sensor {
        Some(s) => {
            let v = s.get_ref().trim();
            if v.is_empty() || v.len() > 64 || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
                return Err(at(
                    s.span(),
                    "cluster.sensor",
                    format!("`{v}` is not a sensor name (letters, digits, - _ ., at most 64)"),
                ));
            }
            v.to_string()
        }
        None => {
            return Err(at(
                span,
                "cluster.sensor",
                "[cluster] needs this sensor's name, e.g. sensor = \"node-a\"".into(),
            ));
        }
    };
    let replicas = match &c.replicas {
        Some(r) if !(1..=5).contains(r.get_ref()) => {
            return Err(at(r.span(), "cluster.replicas", "must be 1 to 5 (JetStream's limit)".into()));
        }
        Some(r) => *r.get_ref(),
        None => 1,
    };
    let prefix = match &c.prefix {
        Some(p) => {
            let v = p.get_ref();
            if v.is_empty() || v.len() > 32 || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(at(
                    p.span(),
                    "cluster.prefix",
                    format!("`{v}` is not a name prefix (letters, digits, - _)"),
                ));
            }
            v.clone()
        }
        None => "siptap".into(),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let auth = match (&c.credentials_file, &c.token_file, &c.token_env) {
        (Some(f), None, None) => {
            let p = base.join(f.get_ref());
            if let Err(e) = std::fs::metadata(&p) {
                return Err(at(f.span(), "cluster.credentials_file", format!("cannot read {}: {e}", p.display())));
            }
            if readable_by_others(&p) {
                warnings.push(
                    at(
                        f.span(),
                        "cluster.credentials_file",
                        format!("{} is readable by every local user", p.display()),
                    )
                    .0,
                );
            }
            NatsAuth::CredentialsFile(p)
        }
        (None, Some(f), None) => {
            let p = base.join(f.get_ref());
            let v = std::fs::read_to_string(&p)
                .map_err(|e| at(f.span(), "cluster.token_file", format!("cannot read {}: {e}", p.display())))?;
            if v.trim().is_empty() {
                return Err(at(f.span(), "cluster.token_file", format!("{} is empty", p.display())));
            }
            if readable_by_others(&p) {
                warnings.push(
                    at(f.span(), "cluster.token_file", format!("{} is readable by every local user", p.display())).0,
                );
            }
            NatsAuth::Token(Secret::new(v.trim().to_string()))
        }
        (None, None, Some(e)) => match std::env::var(e.get_ref()) {
            Ok(v) if !v.trim().is_empty() => NatsAuth::Token(Secret::new(v.trim().to_string())),
            _ => {
                return Err(at(
                    e.span(),
                    "cluster.token_env",
                    format!("environment variable `{}` is not set", e.get_ref()),
                ));
            }
        },
        (None, None, None) => NatsAuth::None,
        _ => {
            return Err(at(span, "cluster", "give one of credentials_file, token_file, token_env".into()));
        }
    };
    let window = match &c.duplicate_window_secs {
        Some(w) if *w.get_ref() == 0 || *w.get_ref() > 7 * 86_400 => {
            return Err(at(w.span(), "cluster.duplicate_window_secs", "must be 1 to 604800 seconds".into()));
        }
        Some(w) => *w.get_ref(),
        None => 900,
    };
    if matches!(auth, NatsAuth::None)
        && servers.iter().any(|s| !(s.contains("127.0.0.1") || s.contains("localhost") || s.contains("[::1]")))
    {
        warnings.push(
            at(
                span,
                "cluster",
                "NATS beyond this host without credentials: anyone who reaches it can read and forge events".into(),
            )
            .0,
        );
    }
    Ok(ClusterCfg {
        nats: servers,
        auth,
        sensor,
        replicas,
        prefix,
        duplicate_window_secs: window,
        deliver: c.deliver.unwrap_or(true),
        max_stream_mib: c.max_stream_mib.unwrap_or(1024).max(1),
        max_bucket_mib: c.max_bucket_mib.unwrap_or(1024).max(1),
        request_timeout_ms: c.request_timeout_ms.unwrap_or(2000).clamp(10, 60_000),
        max_unacked: c.max_unacked.unwrap_or(1000).clamp(1, 100_000),
        device_cache_entries: c.device_cache_entries.unwrap_or(100_000).max(16),
        device_cache_mib: c.device_cache_mib.unwrap_or(32).max(1),
    })
}

/// Whether other local users can read a file (a secret should be 0600 or 0640).
fn readable_by_others(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// The dotted key defined on a line (`table.key` from the nearest `[table]` above), for errors.
fn dotted_key(text: &str, line_no: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no.checked_sub(1)?)?.trim();
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = lines[..line_no - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').trim_end_matches(']').trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Resolves a tenant's `[tenants.<id>.firebase]`: secrets from files or the environment (never
/// from the config itself), region or endpoint, identity options.
fn firebase_cfg(
    fb: &Spanned<RawFirebase>,
    key: &str,
    path: &Path,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<FirebaseCfg, ConfigError> {
    let span = fb.span();
    let fb = fb.get_ref();
    let k = format!("{key}.firebase");
    let enabled = fb.enabled.unwrap_or(true);
    let app_id = fb.app_id.get_ref().trim().to_string();
    if app_id.is_empty() || !app_id.contains(':') {
        return Err(at(
            fb.app_id.span(),
            &format!("{k}.app_id"),
            format!("`{app_id}` is not a Firebase app id (like 1:1234567890:android:0a1b2c3d4e5f)"),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let secret = |file: &Option<Spanned<String>>,
                  env: &Option<Spanned<String>>,
                  name: &str,
                  required: bool|
     -> Result<Option<Secret>, ConfigError> {
        match (file, env) {
            (Some(_), Some(e)) => Err(at(
                e.span(),
                &format!("{k}.{name}_env"),
                format!("give either {name}_file or {name}_env, not both"),
            )),
            (Some(f), None) => {
                let p = base.join(f.get_ref());
                let v = std::fs::read_to_string(&p).map_err(|e| {
                    at(f.span(), &format!("{k}.{name}_file"), format!("cannot read {}: {e}", p.display()))
                })?;
                let v = v.trim().to_string();
                if v.is_empty() {
                    return Err(at(f.span(), &format!("{k}.{name}_file"), format!("{} is empty", p.display())));
                }
                Ok(Some(Secret::new(v)))
            }
            (None, Some(e)) => match std::env::var(e.get_ref()) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim().to_string()))),
                _ => Err(at(
                    e.span(),
                    &format!("{k}.{name}_env"),
                    format!("environment variable `{}` is not set", e.get_ref()),
                )),
            },
            (None, None) if required => Err(at(
                span.clone(),
                &k,
                format!("needs {name}_file or {name}_env (secrets are not read from the config itself)"),
            )),
            (None, None) => Ok(None),
        }
    };
    // a disabled tenant need not have its secret at hand
    let api_secret = secret(&fb.api_secret_file, &fb.api_secret_env, "api_secret", enabled)?
        .unwrap_or_else(|| Secret::new(String::new()));
    let identity_secret = secret(&fb.identity_secret_file, &fb.identity_secret_env, "identity_secret", false)?;
    let base_url = match (&fb.endpoint, fb.region.as_ref().map(|r| (r.get_ref().as_str(), r.span()))) {
        (Some(e), _) => {
            let u = e.get_ref().trim_end_matches('/').to_string();
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(at(e.span(), &format!("{k}.endpoint"), format!("`{u}` is not an http(s) URL")));
            }
            if u.starts_with("http://") && fb.allow_insecure_endpoint != Some(true) {
                return Err(at(
                    e.span(),
                    &format!("{k}.endpoint"),
                    format!(
                        "`{u}` is plain http: the api_secret would travel unencrypted; use https, or set allow_insecure_endpoint = true (for a local test server)"
                    ),
                ));
            }
            u
        }
        (None, None | Some(("default", _))) => "https://www.google-analytics.com".into(),
        (None, Some(("eu", _))) => "https://region1.google-analytics.com".into(),
        (None, Some((other, sp))) => {
            return Err(at(sp, &format!("{k}.region"), format!("`{other}` is not a region (default or eu)")));
        }
    };
    let (app_instance_map, app_instance_map_path) = match &fb.app_instance_map {
        Some(m) => {
            let p = base.join(m.get_ref());
            let text = std::fs::read_to_string(&p).map_err(|e| {
                at(m.span(), &format!("{k}.app_instance_map"), format!("cannot read {}: {e}", p.display()))
            })?;
            let map = parse_mapping(&text, &p.display().to_string())
                .map_err(|e| at(m.span(), &format!("{k}.app_instance_map"), e))?;
            (map, Some(p))
        }
        None => (HashMap::new(), None),
    };
    let insecure_endpoint = fb.allow_insecure_endpoint == Some(true) && base_url.starts_with("http://");
    Ok(FirebaseCfg {
        enabled,
        app_id,
        api_secret,
        base_url,
        identity_secret,
        user_id: fb.user_id.unwrap_or(UserIdMode::Hashed),
        app_instance_id_from: fb.app_instance_id_from.clone(),
        app_instance_map,
        app_instance_map_path,
        api_secret_path: fb.api_secret_file.as_ref().map(|f| base.join(f.get_ref())),
        identity_secret_path: fb.identity_secret_file.as_ref().map(|f| base.join(f.get_ref())),
        semantics: {
            let d = crate::sink::firebase::GaSemantics::default();
            let timeout = match &fb.session_timeout_secs {
                Some(t) if *t.get_ref() == 0 => {
                    return Err(at(t.span(), &format!("{k}.session_timeout_secs"), "must be greater than 0".into()));
                }
                Some(t) => *t.get_ref() as i64 * 1_000_000,
                None => d.session_timeout_micros,
            };
            crate::sink::firebase::GaSemantics {
                session: fb.session.unwrap_or(d.session),
                session_timeout_micros: timeout,
                engagement: fb.engagement.unwrap_or(d.engagement),
                max_engagement_ms: fb.max_engagement_secs.map(|s| s.saturating_mul(1000)),
            }
        },
        insecure_endpoint,
    })
}

/// GA4 event-name rules: 1-40 characters, letters, digits and underscores, starting with a
/// letter; not reserved, no reserved prefix.
pub fn check_event_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 40 {
        return Err(format!("event name `{n}` must be 1 to 40 characters"));
    }
    if !n.starts_with(|c: char| c.is_ascii_alphabetic()) || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("event name `{n}` must be letters, digits and underscores, starting with a letter"));
    }
    let lower = n.to_ascii_lowercase();
    if RESERVED_NAMES.contains(&lower.as_str()) {
        return Err(format!("event name `{n}` is reserved by Google Analytics"));
    }
    if ["firebase_", "ga_", "google_"].iter().any(|p| lower.starts_with(p)) {
        return Err(format!("event name `{n}` uses a prefix reserved by Google Analytics"));
    }
    Ok(())
}
