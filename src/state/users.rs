//! The known-users set behind `signup`. The state machines ask one question, "is this address
//! of record new? (and if so, it is known from now on)", through [`KnownUsers`]: the shells
//! answer it from memory, from the embedded store or from the cluster, without the state
//! machines touching a file or a socket themselves.
use crate::capture::Micros;
use std::collections::HashSet;

pub trait KnownUsers: Send {
    /// Records `aor` as known; `true` when it was not known before (the user signs up now).
    fn sign_up(&mut self, aor: &str, ts: Micros) -> bool;
    /// Users that signed up since the last call, with the time they did (for the shell to persist).
    fn take_new(&mut self) -> Vec<(String, Micros)>;
    /// How many users are known.
    fn count(&self) -> u64;
}

/// Known users held in memory (replay without a state directory, tests, fuzzing).
#[derive(Debug, Default)]
pub struct MemoryUsers {
    set: HashSet<Box<str>>,
    new: Vec<(String, Micros)>,
}

impl MemoryUsers {
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        MemoryUsers { set: known.into_iter().map(String::into_boxed_str).collect(), new: Vec::new() }
    }
}

impl KnownUsers for MemoryUsers {
    fn sign_up(&mut self, aor: &str, ts: Micros) -> bool {
        if self.set.contains(aor) {
            return false;
        }
        self.set.insert(aor.into());
        self.new.push((aor.to_string(), ts));
        true
    }
    fn take_new(&mut self) -> Vec<(String, Micros)> {
        std::mem::take(&mut self.new)
    }
    fn count(&self) -> u64 {
        self.set.len() as u64
    }
}
