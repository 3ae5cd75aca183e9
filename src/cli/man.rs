//! `siptap man`: the manual pages, generated from the command-line definition (clap_mangen), so
//! that they never drift from `--help`; siptap.1 adds what --help cannot say (files, signals).
use anyhow::{Context, Result};
use std::path::Path;

/// Files, signals, exit status: appended to siptap.1.
const EXTRA: &str = r#".SH FILES
.TP
.I /etc/siptap/config.toml
The configuration (one section per tenant); \fBsiptap check\-config\fR checks it.
.TP
.I /var/lib/siptap
The state directory: registrations and open calls (state.redb), the Firebase outbox
(outbox.redb), the known users, and the identity key. Private to the siptap user.
.TP
.I /usr/share/siptap
The Grafana dashboard and the Prometheus alert rules.
.SH SIGNALS
.TP
.B SIGHUP
Reload the configuration (tenants, names, routing); a refused file leaves the running one in
place and sets siptap_config_last_reload_successful to 0. Also reopens run.jsonl_path (after
logrotate moved it).
.TP
.B SIGTERM
Stop capturing, save the state, deliver what is queued for run.stop_timeout_secs, exit.
.SH EXIT STATUS
0 on success; 1 with a message on stderr (for configuration errors: file:line: key: message).
.SH SEE ALSO
.BR systemctl (1),
.BR logrotate (8),
.BR tcpdump (8)
"#;

pub fn write(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    // one page per command
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("siptap-{}", sub.get_name());
        let sub = sub.clone().name(&*Box::leak(name.clone().into_boxed_str())).version(env!("CARGO_PKG_VERSION"));
        let mut out = Vec::new();
        clap_mangen::Man::new(sub).render(&mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // the main page: the command list, then files and signals
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.extend_from_slice(EXTRA.as_bytes());
    man.render_version_section(&mut out)?;
    let path = dir.join("siptap.1");
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
