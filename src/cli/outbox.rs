//! `siptap outbox`: what the outbox holds per tenant and state, why events were refused (with the
//! server's answers), and the fixes: `requeue` after correcting a configuration, `drop` with a
//! confirmation. Works beside a running daemon (the outbox file is shared between processes).
use anyhow::{Result, bail};
use siptap::sink::firebase::outbox::{Outbox, RejectKind, Rejected};
use siptap::timefmt::rfc3339_micros;
use std::collections::BTreeMap;
use std::path::Path;

fn open(state: &Path) -> Result<Outbox> {
    if !state.join("outbox.redb").exists() {
        bail!("{}: no outbox here (is this siptap's state directory?)", state.display());
    }
    Outbox::open(state, u64::MAX, siptap::sink::firebase::outbox::WhenFull::RejectNew, 8 << 20)
}

/// The counts, and the rejected events grouped by reason with examples.
pub fn show(state: &Path, json: bool) -> Result<()> {
    let ob = open(state)?;
    let counts = ob.counts()?;
    let rejected = ob.rejected()?;
    // (tenant, kind, status, answer) -> (events, examples)
    type Reason = (String, &'static str, u16, String);
    let mut reasons: BTreeMap<Reason, (u64, Vec<String>)> = BTreeMap::new();
    for (_, r) in &rejected {
        let Rejected { tenant, kind, status, answer, events, .. } = r;
        let e = reasons.entry((tenant.clone(), kind.name(), *status, answer.chars().take(300).collect())).or_default();
        e.0 += events.len() as u64;
        for ev in events.iter().take(3usize.saturating_sub(e.1.len())) {
            e.1.push(format!("{} at {}", ev.name, rfc3339_micros(ev.timestamp_micros)));
        }
    }
    if json {
        let v = serde_json::json!({
            "tenants": counts,
            "reasons": reasons.iter().map(|((t, k, s, a), (n, ex))| serde_json::json!({
                "tenant": t, "state": k, "status": s, "answer": a, "events": n, "examples": ex
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if counts.is_empty() {
        println!("the outbox is empty");
        return Ok(());
    }
    for (tenant, c) in &counts {
        let rej: Vec<String> = c.rejected.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "tenant {tenant}: queued {}{}",
            c.queued,
            if rej.is_empty() { String::new() } else { format!(", {}", rej.join(", ")) }
        );
        for ((t, kind, status, answer), (n, ex)) in &reasons {
            if t != tenant {
                continue;
            }
            let st = if *status == 0 { String::new() } else { format!(" HTTP {status}") };
            println!("  {kind}{st}: {n} event(s), e.g. {}", ex.join("; "));
            if !answer.is_empty() {
                println!("    answer: {answer}");
            }
        }
    }
    Ok(())
}

fn kinds(rejected: bool, too_old: bool, dropped: bool) -> Vec<RejectKind> {
    let mut k = Vec::new();
    if rejected {
        k.extend([RejectKind::Refused, RejectKind::Invalid]);
    }
    if too_old {
        k.push(RejectKind::TooOld);
    }
    if dropped {
        k.push(RejectKind::DroppedFull);
    }
    k
}

pub fn requeue(state: &Path, tenant: Option<&str>, rejected: bool, too_old: bool, dropped: bool) -> Result<()> {
    let k = kinds(rejected || !(too_old || dropped), too_old, dropped);
    let n = open(state)?.requeue(tenant, &k)?;
    println!("{n} event(s) queued again");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn drop(
    state: &Path,
    tenant: Option<&str>,
    queued: bool,
    rejected: bool,
    too_old: bool,
    dropped: bool,
    all: bool,
    yes: bool,
) -> Result<()> {
    let (queued, k) = if all { (true, kinds(true, true, true)) } else { (queued, kinds(rejected, too_old, dropped)) };
    if !queued && k.is_empty() {
        bail!("say what to drop: --queued, --rejected, --too-old, --dropped or --all");
    }
    let ob = open(state)?;
    if !yes {
        let counts = ob.counts()?;
        let mut would = 0;
        for (t, c) in &counts {
            if tenant.is_some_and(|x| x != t) {
                continue;
            }
            if queued {
                would += c.queued;
            }
            for kind in &k {
                would += c.rejected.get(kind.name()).copied().unwrap_or(0);
            }
        }
        bail!("this would drop {would} event(s) for good; run again with --yes to do it");
    }
    let n = ob.drop_events(tenant, queued, &k)?;
    println!("{n} event(s) dropped");
    Ok(())
}
