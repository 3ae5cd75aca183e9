//! `siptap seed-users`: existing users into the known-users store, so they do not `signup`.
use anyhow::{Context, Result, bail};
use std::io::BufRead;
use std::path::PathBuf;

pub fn seed_users(state: PathBuf, file: PathBuf) -> Result<()> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut users = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let aor = l.trim_start_matches("sip:").trim_start_matches("sips:");
        let Some((user, domain)) = aor.split_once('@') else {
            bail!("{}:{}: `{l}` is not an address of record (user@domain)", file.display(), n + 1);
        };
        if user.is_empty() || domain.is_empty() || domain.contains(['@', ' ', ';']) {
            bail!("{}:{}: `{l}` is not an address of record (user@domain)", file.display(), n + 1);
        }
        users.push((format!("{user}@{}", domain.to_ascii_lowercase()), 0));
    }
    let store = siptap::store::StateStore::open(&state, 16 << 20)?;
    let added = store.add_users(&users)?;
    println!("{added} user(s) added, {} already known", users.len() - added);
    Ok(())
}
