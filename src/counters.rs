//! What each counter means. The core publishes its counters as plain `(name, value)` pairs (the
//! names `replay --stats` prints); this table gives each its metric name, type, unit and help,
//! for `/metrics` and for the report page. A name missing from it is a bug that
//! `every_counter_is_described` catches.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One core counter as a metric: the metric's name (without `siptap_` and, for counters,
/// `_total`), its type, a factor to base units, and its HELP.
pub struct Meta {
    pub key: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub scale: f64,
    pub help: &'static str,
}

const fn c(key: &'static str, help: &'static str) -> Meta {
    Meta { key, name: key, kind: Kind::Counter, scale: 1.0, help }
}
const fn g(key: &'static str, help: &'static str) -> Meta {
    Meta { key, name: key, kind: Kind::Gauge, scale: 1.0, help }
}

pub const META: &[Meta] = &[
    c("frames", "Link-layer frames read (capture, file or HEP)."),
    c("frames_unknown_linktype", "Frames of a link type siptap cannot decode."),
    c("frames_truncated", "Frames cut short (snap length or a malformed header)."),
    c("frames_not_ip", "Frames that carry neither IPv4 nor IPv6."),
    c("frames_tunnelled", "Frames whose IP packet was inside a tunnel (IP-in-IP, GRE, VLAN stacks)."),
    c("frames_too_deep", "Frames nested deeper than siptap unwraps (dropped)."),
    c("frames_duplicate", "Frames seen twice (the same packet on two interfaces or a mirror): counted once."),
    c("hep_packets", "HEP (Homer encapsulation) packets decoded."),
    c("hep_not_sip", "HEP packets carrying something other than SIP."),
    c("hep_malformed", "HEP packets that could not be decoded."),
    c("hep_refused", "HEP packets from a sender not in hep.sources (not trusted)."),
    c("ip_other_protocol", "IP packets neither UDP, TCP nor SCTP."),
    c("udp_datagrams", "UDP datagrams on SIP ports."),
    c("udp_not_sip", "UDP datagrams on SIP ports that are not SIP (keep-alives, STUN, garbage)."),
    c("sctp_sip_chunks", "SCTP data chunks carrying SIP."),
    c("sctp_messages_dropped", "SCTP messages dropped (fragmented or malformed)."),
    c("ip_fragments", "IP fragments received."),
    c("ip_reassembled", "IP datagrams reassembled from fragments."),
    c("ip_fragments_timed_out", "Fragmented datagrams given up after the reassembly timeout."),
    c("ip_fragments_evicted", "Fragmented datagrams evicted because the reassembly table was full."),
    c("ip_fragments_oversized", "Fragmented datagrams over the size limit (dropped)."),
    c("ip_fragments_empty", "Empty IP fragments (dropped)."),
    c("ip_fragments_overlapping", "Overlapping IP fragments (a teardrop-style attack; dropped)."),
    c("tcp_segments", "TCP segments on SIP ports."),
    c("tcp_messages", "SIP messages framed from TCP streams."),
    c("tcp_retransmitted", "TCP segments already seen (retransmissions)."),
    c("tcp_out_of_order", "TCP segments that arrived ahead of a gap."),
    c("tcp_gaps", "TCP gaps never filled (the stream resynchronised on the next message)."),
    c("tcp_skipped_bytes", "TCP stream bytes skipped to resynchronise on a SIP message."),
    c("tcp_buffer_overflows", "TCP streams whose buffer hit limits.tcp_stream_kib."),
    c("tcp_streams_evicted", "TCP streams evicted because the stream table was full."),
    c("tcp_not_sip_messages", "TCP streams on SIP ports that carry something other than SIP."),
    c("websocket_upgrades", "WebSocket upgrades seen on SIP ports."),
    c("websocket_messages", "SIP messages read from WebSocket frames."),
    c("websocket_too_long", "WebSocket messages over the size limit (dropped)."),
    c("sip_messages", "SIP messages parsed."),
    c("sip_malformed", "Messages on SIP ports that failed to parse (counted and skipped)."),
    c("sip_server_to_server", "SIP messages between two configured servers (trunks; not a client's)."),
    c("sip_client_to_client", "SIP messages between two non-servers (not through the server)."),
    c("sip_oversized_fields", "SIP messages with a field longer than siptap keeps (truncated)."),
    c("register_requests", "REGISTER requests from clients."),
    c("register_accepted", "REGISTER transactions answered 2xx."),
    c("register_challenged", "REGISTER transactions answered 401/407."),
    c("register_rejected", "REGISTER transactions refused (another final answer)."),
    c("register_push_proxy", "REGISTERs by a push proxy on a device's behalf (no app_start)."),
    c("register_unmatched_2xx", "REGISTER 2xx answers without their request."),
    c("register_unanswered", "REGISTER requests never answered (given up)."),
    c("register_pending_evicted", "REGISTER requests evicted from the pending table (full)."),
    c("contacts_evicted", "Registered contacts evicted because limits.max_contacts was reached."),
    c("devices_evicted", "Devices evicted because limits.max_devices was reached."),
    c("devices_evicted_active", "Devices evicted while still registered."),
    c("register_contacts_dropped", "Contacts beyond the per-REGISTER limit (ignored)."),
    c("invites_initial", "Initial INVITEs (not re-INVITEs)."),
    c("call_legs", "Call legs created."),
    c("invite_retransmissions", "INVITE retransmissions (no second event)."),
    c("call_attempts_unauthenticated", "INVITEs with no evidence the caller is that user (scanners): no event."),
    c("call_attempts_unaccepted", "INVITEs the server refused before any call (401/403/407 and the like)."),
    c("call_timeouts", "Call legs ended by a timer (no final answer, no BYE)."),
    c("call_legs_evicted", "Call legs evicted because limits.max_call_legs was reached."),
    c("call_legs_evicted_answered", "Answered call legs evicted (their callend was given then)."),
    c("sip_outside_calls", "In-dialog SIP messages for no known call."),
    Meta {
        key: "events",
        name: "derived_events",
        kind: Kind::Counter,
        scale: 1.0,
        help: "Events derived, all tenants and kinds together (siptap_events_total splits them).",
    },
    c("events_unrouted", "Events for a domain no tenant claims (not sent)."),
    c("events_disabled", "Events of a kind the tenant disabled (not sent)."),
    g("open_call_legs", "Call legs open now."),
    g("call_legs_bytes", "Memory held by the call-leg table."),
    g("registrations_bytes", "Memory held by the registration tables."),
    g("pending_registers", "REGISTER transactions waiting for their answer."),
    g("pending_registers_bytes", "Memory held by pending REGISTER transactions."),
    g("tcp_streams_open", "TCP streams being reassembled."),
    g("tcp_bytes_held", "Bytes held by TCP reassembly."),
    g("ip_fragment_datagrams", "Datagrams being reassembled from fragments."),
    g("ip_fragment_bytes_held", "Bytes held by IP reassembly."),
    g("active_devices", "Devices with a live registration."),
    g("known_users", "Users known to have signed up (their first REGISTER was seen)."),
    g("store_known_users", "Users in the state store."),
    g("store_aors", "Addresses of record in the state store (as of the last journal fold)."),
    g("store_contacts", "Registered contacts in the state store (as of the last journal fold)."),
    g("store_pending_registers", "Pending REGISTER transactions in the state store (as of the last journal fold)."),
    g("store_call_legs", "Open call legs in the state store (as of the last journal fold)."),
    g("store_bytes_on_disk", "Size of the state file."),
    c("store_saves", "State store commits (one a second while state changes)."),
    c("store_save_errors", "State store commits that failed (retried)."),
    Meta {
        key: "store_last_save_unix_micros",
        name: "store_last_save_timestamp_seconds",
        kind: Kind::Gauge,
        scale: 1e-6,
        help: "When the state was last saved (Unix time).",
    },
    Meta {
        key: "store_last_save_micros",
        name: "store_last_save_duration_seconds",
        kind: Kind::Gauge,
        scale: 1e-6,
        help: "How long the last state save took.",
    },
    g("store_journal_commits", "Commits in the state journal, not yet folded into the tables."),
    g("store_journal_bytes", "Bytes in the state journal, not yet folded into the tables."),
    c(
        "store_folds",
        "State journal folds into the tables (every 300 commits, 8 MiB or 100,000 changes, and at a clean stop).",
    ),
    c("store_records_loaded", "State records loaded at start."),
    c("store_records_unreadable", "State records that could not be read at start (skipped)."),
    c("store_fresh_starts", "Starts without usable state (first start, or an older format)."),
    c("store_lookup_errors", "State store reads that failed."),
    c("hep_tcp_connections", "HEP-over-TCP connections accepted."),
    c("hep_tcp_connections_refused", "HEP-over-TCP connections refused (hep.max_connections or not trusted)."),
    c("hep_tcp_connections_idle_closed", "HEP-over-TCP connections closed after hep.idle_timeout_secs."),
    c("hep_tcp_connections_out_of_sync", "HEP-over-TCP connections closed because their framing was lost."),
    c("hep_tcp_accept_errors", "Errors accepting HEP-over-TCP connections."),
    c(
        "register_shared_decisions",
        "Cluster mode: REGISTERs decided through the shared device records (compare-and-set won).",
    ),
    c("register_shared_late", "Cluster mode: REGISTERs another sensor had already gone past (nothing new to decide)."),
    c("register_shared_local", "Cluster mode: REGISTERs decided locally because NATS did not answer in time."),
    g("cluster_connected", "Cluster mode: 1 while connected to NATS."),
    g(
        "cluster_key_mismatch",
        "Cluster mode: 1 when this sensor's cached cluster keys are not the cluster's (it decides locally; delete cluster.key and restart).",
    ),
    c("cluster_reconnects", "Cluster mode: connections to NATS made (the first and every reconnection)."),
    c("cluster_kv_won", "Cluster mode: compare-and-set writes of device records that won."),
    c("cluster_kv_conflicts", "Cluster mode: compare-and-set writes lost to another sensor's write (decided again)."),
    c("cluster_signups_won", "Cluster mode: signups decided here (the user's key created by this sensor)."),
    c("cluster_signups_lost", "Cluster mode: first sightings of a user another sensor had already created."),
    c(
        "cluster_decisions_local",
        "Cluster mode: decisions made locally because NATS could not answer (a partition can duplicate a signup or app_start).",
    ),
    c("cluster_kv_errors", "Cluster mode: key-value requests that failed or timed out."),
    c("cluster_background_writes_skipped", "Cluster mode: contact writes skipped because too many were waiting."),
    c(
        "cluster_contact_lookups",
        "Cluster mode: contacts asked of the shared map (a callee registered through another node).",
    ),
    c("cluster_contacts_found", "Cluster mode: contacts the shared map knew."),
    c("cluster_published", "Cluster mode: events published to the event stream (acknowledged)."),
    c(
        "cluster_duplicates",
        "Cluster mode: published events the stream already had (another sensor's copy): stored once.",
    ),
    c("cluster_publish_errors", "Cluster mode: publishes that failed (the events stay queued)."),
    g(
        "cluster_consumer_pending",
        "Cluster mode: events in the stream not yet taken by a delivery worker (consumer lag).",
    ),
    g("cluster_consumer_ack_pending", "Cluster mode: events taken by delivery workers, not yet acknowledged."),
    c(
        "cluster_consumer_redelivered",
        "Cluster mode: events this worker got again (another worker died or a request failed).",
    ),
    c(
        "cluster_device_cache_resets",
        "Cluster mode: times the cache of device records written here was full and emptied (cluster.device_cache_entries, cluster.device_cache_mib).",
    ),
    c("input_dropped", "Packets dropped because the input queue (run.queue_mib) was full."),
    g(
        "input_queue_bytes",
        "Bytes waiting for the core: captured frames and HEP packets, and the messages decoded from them.",
    ),
];

pub fn meta(key: &str) -> Option<&'static Meta> {
    META.iter().find(|m| m.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_described() {
        let cfg = crate::config::Config::parse(
            "sip_servers = [\"127.0.0.10:5060\"]\n[tenants.a]\ndomains = [\"a.example\"]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let p = crate::pipeline::Pipeline::new(&cfg, Box::<crate::state::users::MemoryUsers>::default(), [1, 2]);
        let store = crate::store::StoreStats::default();
        let hep = crate::daemon::hep_listener::HepListenerStats::default();
        let keys: Vec<&str> = p
            .counters()
            .into_iter()
            .chain(store.counters())
            .chain(hep.counters())
            .chain(crate::store::cluster::ClusterStats::new().counters())
            .map(|(k, _)| k)
            .chain(["input_dropped", "input_queue_bytes"])
            .collect();
        for k in &keys {
            assert!(meta(k).is_some(), "{k} has no HELP/TYPE in META");
        }
        for m in META {
            assert!(keys.contains(&m.key), "{} is described but never published", m.key);
            assert!(!m.name.ends_with("_total"), "{}: _total is added for counters", m.name);
        }
    }
}
