//! The in-process communicator: the ranks of one group are threads of one process and exchange
//! through shared memory.
//!
//! Every exchange node of a rank graph owns a *slot* (its `slot` attribute). Per slot, each rank
//! publishes one payload per step into a buffer chosen by the step's parity, so the previous
//! step's payload stays readable while this step's is written (DESIGN §3). A call to
//! [`Communicator::exchange`] is the slot's rendezvous:
//!
//! 1. wait until every peer has finished its own call at this slot for the step *after* the one
//!    whose payload is about to be overwritten (nobody can still read it), then publish;
//! 2. wait until every wanted rank has published the step to be read — this step (`fresh`) or the
//!    previous one (stale, DESIGN §2 displaced mode) — and take its payload;
//! 3. record that this rank is done with the slot for this step.
//!
//! Waiting uses a `Mutex` + `Condvar` per slot (no spinning). Payloads are `Arc`s: publishing and
//! reading hold the slot's lock only to swap or clone pointers; copies happen outside it.
//!
//! **Invariant:** all ranks of a group call `exchange` on the same slots in the same order within
//! a step (the order is checked: the first divergence fails the whole group instead of
//! deadlocking), and with increasing `step` numbers. Under that invariant no call waits forever:
//! a wait at step `t` only ever depends on calls of steps `t − 1` and `t` that precede it in the
//! common order.
//!
//! A failure anywhere [`poison`](Communicator::poison)s the communicator: every waiting and every
//! later call returns [`CommError::Poisoned`], so no rank hangs on a peer that is gone.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use half::f16;

/// Data one rank publishes at one slot for one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Payload {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Payload::F32(v) => v.len(),
            Payload::F16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type name (`f32`, `f16`).
    pub fn dtype(&self) -> &'static str {
        match self {
            Payload::F32(_) => "f32",
            Payload::F16(_) => "f16",
        }
    }
}

/// Errors of an exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommError {
    /// Another rank (or the runtime) failed; the group cannot continue.
    #[error("exchange aborted: {0}")]
    Poisoned(String),
    /// A wait lasted longer than the communicator's timeout.
    #[error(
        "rank {rank} waited more than {secs} s at slot {slot} (step {step}) for {waiting_for}; a peer is stuck or the ranks run different graphs"
    )]
    Timeout {
        rank: usize,
        slot: u32,
        step: u64,
        secs: u64,
        waiting_for: String,
    },
    /// Two ranks reached different slots at the same position of a step.
    #[error(
        "exchange order differs between ranks: exchange #{index} of step {step} is slot {slot} on rank {rank} but slot {other} on another rank"
    )]
    Order {
        rank: usize,
        step: u64,
        index: usize,
        slot: u32,
        other: u32,
    },
    /// A peer finished its step without reaching this slot.
    #[error(
        "rank {rank} waits at slot {slot} (step {step}) for ranks {peers:?}, which finished step {needed} without reaching it: the rank graphs hold different exchanges"
    )]
    Missing {
        rank: usize,
        slot: u32,
        step: u64,
        needed: u64,
        peers: Vec<usize>,
    },
    /// A stale read was asked for where there is no previous step.
    #[error("slot {slot}: step {step} has no previous step to read stale data from")]
    NoPrevious { slot: u32, step: u64 },
    /// A call named a rank outside the group.
    #[error("rank {rank} is outside a group of {size}")]
    BadRank { rank: usize, size: usize },
    /// Steps of one rank at one slot must increase.
    #[error("rank {rank}, slot {slot}: step {step} comes after step {last}; steps must increase")]
    StepOrder {
        rank: usize,
        slot: u32,
        step: u64,
        last: u64,
    },
}

/// One call of [`Communicator::exchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Position of the calling rank in its group.
    pub rank: usize,
    /// The exchange's slot.
    pub slot: u32,
    /// Step number; increases by one per model evaluation and never restarts.
    pub step: u64,
    /// Position of this call among the rank's exchanges of this step (0, 1, …).
    pub index: usize,
    /// Read this step's payloads (`true`) or the previous step's (`false`, displaced mode).
    pub fresh: bool,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    step: Option<u64>,
    data: Option<Arc<Payload>>,
}

#[derive(Debug)]
struct SlotState {
    /// `[parity][rank]`: the latest payload published into that parity's buffer.
    published: [Vec<Entry>; 2],
    /// `[rank]`: the latest step whose call at this slot the rank has finished.
    done: Vec<Option<u64>>,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct OrderLog {
    step: u64,
    slots: Vec<Option<u32>>,
}

/// Pseudo-random delays injected around every exchange, to show that results do not depend on
/// the ranks' timing: each call sleeps before publishing and after reading, for a duration in
/// `[0, max)` drawn from `(seed, rank, slot, step, call index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter {
    pub seed: u64,
    pub max: Duration,
}

impl Jitter {
    fn sleep(&self, call: &Call, phase: u8) {
        let max = self.max.as_nanos() as u64;
        if max == 0 {
            return;
        }
        let mut h = std::hash::DefaultHasher::new();
        (
            self.seed, call.rank, call.slot, call.step, call.index, phase,
        )
            .hash(&mut h);
        std::thread::sleep(Duration::from_nanos(h.finish() % max));
    }
}

/// The communicator of one group of ranks (threads of this process).
#[derive(Debug)]
pub struct Communicator {
    size: usize,
    timeout: Option<Duration>,
    jitter: Option<Jitter>,
    slots: Mutex<HashMap<u32, Arc<Slot>>>,
    poisoned: AtomicBool,
    reason: Mutex<Option<String>>,
    order: Mutex<[OrderLog; 2]>,
    /// `[rank]`: 1 + the latest step the rank has finished entirely (0: none).
    finished: Vec<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going (the
    // runtime poisons the communicator on any rank failure anyway).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Communicator {
    /// A communicator for a group of `size` ranks that waits without limit.
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            timeout: None,
            jitter: None,
            slots: Mutex::new(HashMap::new()),
            poisoned: AtomicBool::new(false),
            reason: Mutex::new(None),
            order: Mutex::new(Default::default()),
            finished: (0..size.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Fails (and poisons the group) when one wait lasts longer than `timeout`: a diagnostic
    /// for ranks that do not run matching graphs. `None` waits forever.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sleeps pseudo-randomly around every exchange (see [`Jitter`]); `None`: no delays.
    pub fn with_jitter(mut self, jitter: Option<Jitter>) -> Self {
        self.jitter = jitter;
        self
    }

    /// Number of ranks in the group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Aborts every waiting and every later exchange with `reason` (the first reason wins).
    pub fn poison(&self, reason: impl Into<String>) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.poisoned.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Records that `rank` has finished every exchange of `step`. A peer still waiting for it at
    /// that step then fails (the ranks' graphs hold different exchanges) instead of hanging.
    pub fn finish_step(&self, rank: usize, step: u64) {
        let Some(f) = self.finished.get(rank) else {
            return;
        };
        f.fetch_max(step + 1, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether `rank` has finished `step` entirely.
    fn has_finished(&self, rank: usize, step: u64) -> bool {
        self.finished[rank].load(Ordering::SeqCst) > step
    }

    fn wake_all(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            // Taking the lock orders this wake-up after any waiter's check of the condition.
            let _guard = lock(&slot.state);
            slot.cond.notify_all();
        }
    }

    /// Whether the communicator was poisoned, and why.
    pub fn poisoned(&self) -> Option<String> {
        if self.poisoned.load(Ordering::SeqCst) {
            Some(lock(&self.reason).clone().unwrap_or_default())
        } else {
            None
        }
    }

    fn check_poison(&self) -> Result<(), CommError> {
        match self.poisoned() {
            Some(reason) => Err(CommError::Poisoned(reason)),
            None => Ok(()),
        }
    }

    fn slot(&self, slot: u32) -> Arc<Slot> {
        lock(&self.slots)
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(Slot {
                    state: Mutex::new(SlotState {
                        published: [
                            vec![Entry::default(); self.size],
                            vec![Entry::default(); self.size],
                        ],
                        done: vec![None; self.size],
                    }),
                    cond: Condvar::new(),
                })
            })
            .clone()
    }

    /// Checks that every rank reaches the same slot at the same position of a step.
    fn check_order(&self, call: &Call) -> Result<(), CommError> {
        let mut logs = lock(&self.order);
        let log = &mut logs[(call.step % 2) as usize];
        if log.step != call.step {
            // Every call of step − 2 has finished before any rank makes a call of this step.
            log.step = call.step;
            log.slots.clear();
        }
        if log.slots.len() <= call.index {
            log.slots.resize(call.index + 1, None);
        }
        match log.slots[call.index] {
            None => {
                log.slots[call.index] = Some(call.slot);
                Ok(())
            }
            Some(s) if s == call.slot => Ok(()),
            Some(other) => Err(CommError::Order {
                rank: call.rank,
                step: call.step,
                index: call.index,
                slot: call.slot,
                other,
            }),
        }
    }

    /// Fails the group with `err` and returns it.
    fn fail(&self, err: CommError) -> CommError {
        if !matches!(err, CommError::Poisoned(_)) {
            self.poison(err.to_string());
        }
        err
    }

    /// Publishes `data` as this rank's payload of `call.slot` at `call.step`, and returns the
    /// payloads of the ranks in `wanted` (in that order) of this step (`call.fresh`) or of the
    /// previous step (stale). `wanted` may contain the caller itself. With a fresh call the
    /// caller's own entry is its `data`.
    pub fn exchange(
        &self,
        call: Call,
        data: Payload,
        wanted: &[usize],
    ) -> Result<Vec<Arc<Payload>>, CommError> {
        if let Some(j) = &self.jitter {
            j.sleep(&call, 0);
        }
        let got = self
            .exchange_inner(call, data, wanted)
            .map_err(|e| self.fail(e))?;
        if let Some(j) = &self.jitter {
            j.sleep(&call, 1);
        }
        Ok(got)
    }

    fn exchange_inner(
        &self,
        call: Call,
        data: Payload,
        wanted: &[usize],
    ) -> Result<Vec<Arc<Payload>>, CommError> {
        let Call {
            rank, slot, step, ..
        } = call;
        if let Some(&bad) = wanted.iter().chain([&rank]).find(|&&q| q >= self.size) {
            return Err(CommError::BadRank {
                rank: bad,
                size: self.size,
            });
        }
        if !call.fresh && step == 0 {
            return Err(CommError::NoPrevious { slot, step });
        }
        self.check_poison()?;
        self.check_order(&call)?;
        let cell = self.slot(slot);
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut state = lock(&cell.state);
        if let Some(last) = state.done[rank]
            && last >= step
        {
            return Err(CommError::StepOrder {
                rank,
                slot,
                step,
                last,
            });
        }

        // 1. Publish once nobody can still read what this parity holds.
        let parity = (step % 2) as usize;
        let old = state.published[parity][rank].step;
        if let Some(old) = old {
            state = self.wait(&cell, state, &call, deadline, |s| Pending {
                ranks: (0..self.size)
                    .filter(|&q| q != rank && s.done[q].is_none_or(|d| d <= old))
                    .collect(),
                step: old + 1,
                what: "to finish reading step",
            })?;
        }
        let data = Arc::new(data);
        state.published[parity][rank] = Entry {
            step: Some(step),
            data: Some(data),
        };
        cell.cond.notify_all();

        // 2. Read the wanted ranks' payloads of the step to read.
        let read_step = if call.fresh { step } else { step - 1 };
        let read_parity = (read_step % 2) as usize;
        state = self.wait(&cell, state, &call, deadline, |s| Pending {
            ranks: wanted
                .iter()
                .copied()
                .filter(|&q| s.published[read_parity][q].step != Some(read_step))
                .collect(),
            step: read_step,
            what: "to publish step",
        })?;
        let received = wanted
            .iter()
            .map(|&q| {
                state.published[read_parity][q]
                    .data
                    .clone()
                    .expect("a published entry holds data")
            })
            .collect();

        // 3. Done with this slot for this step.
        state.done[rank] = Some(step);
        cell.cond.notify_all();
        Ok(received)
    }

    /// Waits on `cell` until `pending` names no rank.
    fn wait<'a>(
        &self,
        cell: &'a Slot,
        mut state: MutexGuard<'a, SlotState>,
        call: &Call,
        deadline: Option<Instant>,
        pending: impl Fn(&SlotState) -> Pending,
    ) -> Result<MutexGuard<'a, SlotState>, CommError> {
        loop {
            self.check_poison()?;
            let p = pending(&state);
            if p.ranks.is_empty() {
                return Ok(state);
            }
            let gone: Vec<usize> = p
                .ranks
                .iter()
                .copied()
                .filter(|&q| self.has_finished(q, p.step))
                .collect();
            if !gone.is_empty() {
                return Err(CommError::Missing {
                    rank: call.rank,
                    slot: call.slot,
                    step: call.step,
                    needed: p.step,
                    peers: gone,
                });
            }
            match deadline {
                None => state = cell.cond.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(CommError::Timeout {
                            rank: call.rank,
                            slot: call.slot,
                            step: call.step,
                            secs: self.timeout.map(|t| t.as_secs()).unwrap_or(0),
                            waiting_for: format!("ranks {:?} {} {}", p.ranks, p.what, p.step),
                        });
                    }
                    state = cell
                        .cond
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// What a wait still needs: `ranks` to do `what` for `step`.
struct Pending {
    ranks: Vec<usize>,
    step: u64,
    what: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn call(rank: usize, slot: u32, step: u64, index: usize, fresh: bool) -> Call {
        Call {
            rank,
            slot,
            step,
            index,
            fresh,
        }
    }

    fn value(p: &Payload) -> f32 {
        match p {
            Payload::F32(v) => v[0],
            Payload::F16(v) => v[0].to_f32(),
        }
    }

    /// Each rank publishes `rank·1000 + step` and reads everybody, fresh.
    #[test]
    fn fresh_exchange_returns_this_steps_payloads() {
        let comm = Communicator::new(3);
        thread::scope(|s| {
            for rank in 0..3 {
                let comm = &comm;
                s.spawn(move || {
                    for step in 0..20u64 {
                        let data = Payload::F32(vec![(rank * 1000) as f32 + step as f32]);
                        let got = comm
                            .exchange(call(rank, 7, step, 0, true), data, &[0, 1, 2])
                            .expect("exchange");
                        let got: Vec<f32> = got.iter().map(|p| value(p)).collect();
                        let want: Vec<f32> =
                            (0..3).map(|q| (q * 1000) as f32 + step as f32).collect();
                        assert_eq!(got, want, "rank {rank} step {step}");
                    }
                });
            }
        });
    }

    /// Stale calls read the previous step's payloads, the caller's own included.
    #[test]
    fn stale_exchange_returns_previous_steps_payloads() {
        let comm = Communicator::new(2);
        thread::scope(|s| {
            for rank in 0..2 {
                let comm = &comm;
                s.spawn(move || {
                    for step in 0..30u64 {
                        let fresh = step < 3;
                        let data = Payload::F32(vec![(rank * 1000) as f32 + step as f32]);
                        let got = comm
                            .exchange(call(rank, 1, step, 0, fresh), data, &[0, 1])
                            .expect("exchange");
                        let read = if fresh { step } else { step - 1 };
                        let got: Vec<f32> = got.iter().map(|p| value(p)).collect();
                        assert_eq!(got, vec![read as f32, 1000.0 + read as f32]);
                        if rank == 1 && step % 3 == 0 {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn stale_read_at_step_zero_is_an_error() {
        let comm = Communicator::new(1);
        let err = comm
            .exchange(call(0, 0, 0, 0, false), Payload::F32(vec![1.0]), &[0])
            .expect_err("no previous step");
        assert!(matches!(err, CommError::NoPrevious { .. }), "{err}");
    }

    #[test]
    fn poison_wakes_a_waiting_rank() {
        let comm = Communicator::new(2);
        thread::scope(|s| {
            let waiter =
                s.spawn(|| comm.exchange(call(0, 3, 0, 0, true), Payload::F32(vec![0.0]), &[1]));
            thread::sleep(Duration::from_millis(50));
            comm.poison("rank 1 failed: boom");
            let err = waiter.join().expect("join").expect_err("poisoned");
            assert_eq!(err, CommError::Poisoned("rank 1 failed: boom".into()));
        });
        // Later calls fail at once.
        let err = comm
            .exchange(call(1, 3, 0, 0, true), Payload::F32(vec![0.0]), &[0])
            .expect_err("poisoned");
        assert!(matches!(err, CommError::Poisoned(_)));
    }

    #[test]
    fn different_order_on_two_ranks_fails_instead_of_deadlocking() {
        let comm = Communicator::new(2);
        let results: Vec<Result<(), CommError>> = thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let comm = &comm;
                    s.spawn(move || {
                        let order: [u32; 2] = if rank == 0 { [1, 2] } else { [2, 1] };
                        for (index, slot) in order.into_iter().enumerate() {
                            comm.exchange(
                                call(rank, slot, 0, index, true),
                                Payload::F32(vec![0.0]),
                                &[0, 1],
                            )?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(CommError::Order { .. }))),
            "{results:?}"
        );
        assert!(results.iter().all(Result::is_err), "{results:?}");
    }

    #[test]
    fn timeout_names_the_missing_ranks() {
        let comm = Communicator::new(3).with_timeout(Some(Duration::from_millis(30)));
        let err = comm
            .exchange(call(0, 5, 0, 0, true), Payload::F32(vec![0.0]), &[1, 2])
            .expect_err("nobody else comes");
        let msg = err.to_string();
        assert!(msg.contains("[1, 2]") && msg.contains("slot 5"), "{msg}");
        assert!(comm.poisoned().is_some());
    }

    #[test]
    fn a_peer_that_finished_without_the_slot_fails_the_waiter() {
        let comm = Communicator::new(2);
        thread::scope(|s| {
            let waiter =
                s.spawn(|| comm.exchange(call(0, 3, 0, 0, true), Payload::F32(vec![0.0]), &[1]));
            thread::sleep(Duration::from_millis(30));
            comm.finish_step(1, 0);
            let err = waiter.join().expect("join").expect_err("peer is gone");
            assert!(
                matches!(err, CommError::Missing { ref peers, .. } if peers == &[1]),
                "{err}"
            );
        });
    }

    #[test]
    fn steps_must_increase() {
        let comm = Communicator::new(1);
        comm.exchange(call(0, 0, 4, 0, true), Payload::F32(vec![0.0]), &[0])
            .expect("first");
        let err = comm
            .exchange(call(0, 0, 4, 0, true), Payload::F32(vec![0.0]), &[0])
            .expect_err("same step twice");
        assert!(matches!(err, CommError::StepOrder { .. }), "{err}");
    }
}
