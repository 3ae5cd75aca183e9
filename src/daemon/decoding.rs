//! The daemon's front half: captured frames and HEP packets -> batches of parsed SIP messages
//! for the core, as `replay --threads 2` splits its work. With `run.threads = 2` it runs on a
//! thread of its own, between the capture threads and the core; with 1 the core runs it inline.
//! Either way the core sees the same batches, ticks, reloads and stops, in the order their
//! inputs came, so the events are the same.
use super::{Input, InputBudget, live::BatchPool};
use crate::clock::now_micros;
use crate::decode::HepTrust;
use crate::pipeline::{Batch, Front, FrontCounters};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

/// What the core receives from the front half.
pub enum Core {
    /// Parsed messages, in capture order. Their bytes are held in the input budget until the
    /// core has applied them and gives the batch back ([`Spares::give`]).
    Batch(Batch),
    /// A clock tick, after every message that came before it: the wall-clock time it was sent
    /// (see [`super::Input::Tick`]), and the front half's counters (none when the core's own
    /// wait ran out).
    Tick {
        sent: crate::capture::Micros,
        counters: Option<Box<FrontCounters>>,
    },
    Reload,
    Stop,
    /// Everything that came before a [`Input::Flush`] has been handed on.
    Flushed,
}

/// On two threads, a batch for the core is handed on at this many messages or bytes of heads
/// (or sooner, at the end of a burst of input): small enough that the core starts on a capture
/// thread's batch (up to 16,384 frames: `live::BATCH_FRAMES`) while the rest is decoded, large
/// enough that each costs one channel send. On one, at the one-thread pipeline's
/// `STAGE_MESSAGES` and `STAGE_BYTES`, whose heads are still in the cache when the core reads them.
const CORE_MESSAGES: usize = 512;
const CORE_BYTES: usize = 256 << 10;
/// Batches (and ticks, reloads, stops) the front half may be ahead of the core on two
/// threads: 16 of at most `CORE_BYTES` and a head. Their bytes also count against
/// `run.queue_mib`, so a core that falls behind makes the capture threads drop and count.
pub const CORE_QUEUE: usize = 16;
/// Emptied batches kept for reuse.
const SPARE_BATCHES: usize = 4;

pub struct Decoding {
    front: Front,
    batch: Batch,
    /// Messages and bytes at which a batch is handed on.
    full_at: (usize, usize),
    budget: Arc<InputBudget>,
    pool: Arc<BatchPool>,
    /// A reload's new HEP trust, from the core.
    trust: Receiver<HepTrust>,
    spare: Arc<std::sync::Mutex<Vec<Batch>>>,
}

impl Decoding {
    /// `threaded`: for a core on another thread (else the core runs it inline).
    pub fn new(
        front: Front,
        threaded: bool,
        budget: Arc<InputBudget>,
        pool: Arc<BatchPool>,
        trust: Receiver<HepTrust>,
    ) -> Self {
        let full_at = if threaded {
            (CORE_MESSAGES, CORE_BYTES)
        } else {
            (crate::pipeline::STAGE_MESSAGES, crate::pipeline::STAGE_BYTES)
        };
        Decoding { front, batch: Batch::default(), full_at, budget, pool, trust, spare: Default::default() }
    }

    /// Where the core gives emptied batches back (shared with the thread that decodes).
    pub fn spares(&self) -> Spares {
        Spares { spare: self.spare.clone(), budget: self.budget.clone() }
    }

    /// One input: frames and HEP packets are decoded into batches, handed on when full; a
    /// tick, reload, stop or flush hands on what waits first, then itself.
    pub fn input(&mut self, input: Input, out: &mut dyn FnMut(Core)) {
        while let Ok(t) = self.trust.try_recv() {
            self.front.decoder.set_hep_trust(t);
        }
        match input {
            Input::Frames(b) => {
                for f in b.iter() {
                    self.front.frame(f, &mut self.batch);
                    self.hand_on_if_full(out);
                }
                self.budget.release(b.data.len());
                self.pool.give(b);
            }
            Input::Hep { ts, sender, data } => {
                self.front.hep(ts, sender, &data, &mut self.batch);
                self.budget.release(data.len());
                self.hand_on_if_full(out);
            }
            Input::Tick(sent) => {
                self.hand_on(out);
                out(Core::Tick { sent, counters: Some(Box::new(self.counters())) });
            }
            Input::Reload => {
                self.hand_on(out);
                out(Core::Reload);
            }
            Input::Stop => {
                self.hand_on(out);
                out(Core::Stop);
            }
            Input::Flush => {
                self.hand_on(out);
                out(Core::Flushed);
            }
        }
    }

    /// The end of a burst of input: what waits goes to the core now.
    pub fn burst_end(&mut self, out: &mut dyn FnMut(Core)) {
        self.hand_on(out);
    }

    fn hand_on_if_full(&mut self, out: &mut dyn FnMut(Core)) {
        if self.batch.full(self.full_at.0, self.full_at.1) {
            self.hand_on(out);
        }
    }

    fn hand_on(&mut self, out: &mut dyn FnMut(Core)) {
        if self.batch.frames == 0 {
            return;
        }
        let next = self.spare.lock().expect("not poisoned").pop().unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, next);
        // its bytes wait for the core under the input budget, as the frames did
        self.budget.hold(full.bytes());
        out(Core::Batch(full));
    }

    pub fn counters(&self) -> FrontCounters {
        FrontCounters::of(&self.front)
    }
}

/// The core's side of the batches' round trip: an applied batch's bytes leave the input budget
/// and the batch is kept for reuse.
pub struct Spares {
    spare: Arc<std::sync::Mutex<Vec<Batch>>>,
    budget: Arc<InputBudget>,
}

impl Spares {
    pub fn give(&self, mut b: Batch) {
        self.budget.release(b.bytes());
        b.clear();
        let mut v = self.spare.lock().expect("not poisoned");
        if v.len() < SPARE_BATCHES {
            v.push(b);
        }
    }
}

/// Runs the front half on a thread of its own: it takes the inputs as they come and hands
/// batches on as they fill, or when no more input waits. It ends after a flush, or when every
/// input's sender or the core has gone.
pub fn spawn(
    mut decoding: Decoding,
    inputs: Receiver<Input>,
    core: SyncSender<Core>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("decode".into()).spawn(move || {
        let (gone, flushed) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
        let mut send = |c: Core| {
            flushed.set(flushed.get() | matches!(c, Core::Flushed));
            gone.set(gone.get() | core.send(c).is_err());
        };
        let Ok(mut input) = inputs.recv() else { return };
        loop {
            decoding.input(input, &mut send);
            if gone.get() || flushed.get() {
                return;
            }
            input = match inputs.try_recv() {
                Ok(i) => i,
                Err(TryRecvError::Empty) => {
                    decoding.burst_end(&mut send);
                    match inputs.recv() {
                        Ok(i) => i,
                        Err(_) => return,
                    }
                }
                Err(TryRecvError::Disconnected) => {
                    decoding.burst_end(&mut send);
                    return;
                }
            };
        }
    })
}

/// Where the core's input comes from: decoded inline (`run.threads = 1`) or by the front
/// half's thread (2).
pub enum Feed {
    Inline { inputs: Receiver<Input>, decoding: Box<Decoding> },
    Thread { batches: Receiver<Core> },
}

/// Inputs (or batches) the core takes in one go, so that one outbox commit covers a burst.
const BURST: usize = 64;

impl Feed {
    /// Hands the core the next burst: waits up to `wait` for the first item, then takes what
    /// else waits. A wait that ends empty is a tick (the clock thread is gone, or slow); a
    /// front half that is gone is a stop. Returns whether anything came.
    pub fn burst(&mut self, wait: std::time::Duration, core: &mut dyn FnMut(Core)) -> bool {
        use std::sync::mpsc::RecvTimeoutError;
        match self {
            Feed::Inline { inputs, decoding } => {
                let (first, came) = match inputs.recv_timeout(wait) {
                    Ok(i) => (i, true),
                    Err(RecvTimeoutError::Timeout) => (Input::Tick(now_micros()), false),
                    Err(RecvTimeoutError::Disconnected) => (Input::Stop, false),
                };
                decoding.input(first, core);
                for _ in 1..BURST {
                    match inputs.try_recv() {
                        Ok(i) => decoding.input(i, core),
                        Err(_) => break,
                    }
                }
                decoding.burst_end(core);
                came
            }
            Feed::Thread { batches } => {
                match batches.recv_timeout(wait) {
                    Ok(c) => core(c),
                    Err(RecvTimeoutError::Timeout) => {
                        core(Core::Tick { sent: now_micros(), counters: None });
                        return false;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        core(Core::Stop);
                        return false;
                    }
                }
                for _ in 1..BURST {
                    match batches.try_recv() {
                        Ok(c) => core(c),
                        Err(_) => break,
                    }
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pipeline::{Pipeline, Routed};
    use crate::state::users::MemoryUsers;
    use std::sync::mpsc::sync_channel;

    /// The lab captures (sipp through Kamailio) as a capture thread hands them over: batches of
    /// a few frames, each admitted to the input budget, and a tick after the first capture;
    /// then the stop's flush. Returns them and the frames before the tick.
    fn inputs(budget: &InputBudget) -> (Vec<Input>, u64) {
        let (mut v, mut before_tick) = (Vec::new(), 0);
        for (n, c) in crate::testkit::lab_captures().into_iter().enumerate() {
            if n == 1 {
                before_tick = v.iter().map(|i| if let Input::Frames(b) = i { b.frames.len() as u64 } else { 0 }).sum();
                v.push(Input::Tick(1_000));
            }
            let mut b = super::super::live::FrameBatch::default();
            crate::capture::file::read_file(&c, |f| {
                b.linktype = f.linktype;
                b.frames.push((f.ts, b.data.len() as u32, f.data.len() as u32));
                b.data.extend_from_slice(f.data);
                if b.frames.len() == 7 {
                    assert!(budget.admit(b.data.len()));
                    v.push(Input::Frames(std::mem::take(&mut b)));
                }
            })
            .unwrap();
            assert!(budget.admit(b.data.len()));
            v.push(Input::Frames(b));
        }
        v.push(Input::Flush);
        (v, before_tick)
    }

    fn config() -> Config {
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example")).unwrap()
    }

    fn line(r: &Routed) -> String {
        format!("{} {} {:?}", r.tenant, r.name, r.event)
    }

    /// The core's loop over a feed, as the daemon runs it, until the flush: the events. Each
    /// batch's bytes are still held in the budget when it is applied; the tick comes after
    /// every frame before it.
    fn core_run(threads: usize) -> Vec<String> {
        let cfg = config();
        let (front, mut back) = Pipeline::new(&cfg, Box::new(MemoryUsers::new([])), [1, 2]).into_halves();
        let budget = Arc::new(InputBudget::new(64 << 20));
        let (_trust_tx, trust_rx) = std::sync::mpsc::channel();
        let decoding = Decoding::new(front, threads == 2, budget.clone(), Default::default(), trust_rx);
        let spares = decoding.spares();
        let (tx, rx) = sync_channel(100_000);
        let (inputs, before_tick) = inputs(&budget);
        for i in inputs {
            tx.send(i).unwrap();
        }
        let mut feed = if threads == 2 {
            let (core_tx, core_rx) = sync_channel(CORE_QUEUE);
            spawn(decoding, rx, core_tx).unwrap();
            Feed::Thread { batches: core_rx }
        } else {
            Feed::Inline { inputs: rx, decoding: Box::new(decoding) }
        };
        let (mut lines, mut applied, mut ticks, mut flushed) = (Vec::new(), 0, 0, false);
        while !flushed {
            let came = feed.burst(std::time::Duration::from_secs(10), &mut |c| match c {
                Core::Batch(b) => {
                    assert!(budget.bytes() >= b.bytes(), "a batch waiting for the core is not in the budget");
                    applied += b.frames;
                    back.apply(&b, &mut |r| lines.push(line(&r)));
                    spares.give(b);
                }
                Core::Tick { sent, counters } => {
                    assert!(counters.is_some(), "the front half's counters come with its tick");
                    assert_eq!(sent, 1_000, "the tick's time is the time it was sent");
                    assert_eq!(applied, before_tick, "the tick overtook frames, or frames overtook it");
                    ticks += 1;
                }
                Core::Flushed => flushed = true,
                Core::Reload | Core::Stop => panic!("not sent"),
            });
            assert!(came, "the front half went quiet before the flush");
        }
        assert_eq!(budget.bytes(), 0, "every frame's and batch's bytes given back to the budget");
        assert_eq!(ticks, 1);
        lines
    }

    /// The daemon's core gets the same events whether it decodes inline or takes batches from
    /// the decoding thread, the same as one pipeline fed frame by frame; and what waits for the
    /// core (frames, then decoded batches) is held in the input budget until applied.
    #[test]
    fn one_thread_or_two_the_core_derives_the_same_events_and_the_budget_empties() {
        let cfg = config();
        let mut p = Pipeline::new(&cfg, Box::new(MemoryUsers::new([])), [1, 2]);
        let mut want = Vec::new();
        for c in crate::testkit::lab_captures() {
            crate::capture::file::read_file(&c, |f| p.frame(f, &mut |r| want.push(line(&r)))).unwrap();
        }
        p.flush(&mut |r| want.push(line(&r)));
        assert!(want.len() > 100, "too few events to compare: {}", want.len());
        for threads in [1, 2] {
            assert!(core_run(threads) == want, "{threads} thread(s): the events differ");
        }
    }
}
