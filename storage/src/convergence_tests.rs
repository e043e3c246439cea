//! Property test of the pinset's replication: replicas that pin and unpin independently (a
//! partition) and exchange feeds in any order end up with identical pinsets once every pair has
//! synced, whatever the schedule — the CRDT property the cluster relies on after partitions heal.

use crate::pinset::{Clock, PinEntry};
use crate::store::{Store, Watermark};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Clone, Debug)]
enum Op {
    Pin {
        replica: usize,
        cid: u8,
    },
    Unpin {
        replica: usize,
        cid: u8,
    },
    /// `to` pulls `from`'s feed since its watermark.
    Sync {
        from: usize,
        to: usize,
    },
}

const REPLICAS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..REPLICAS, 0u8..6).prop_map(|(replica, cid)| Op::Pin { replica, cid }),
        (0..REPLICAS, 0u8..6).prop_map(|(replica, cid)| Op::Unpin { replica, cid }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

struct Replica {
    store: Store,
    clock: Clock,
    id: String,
    marks: HashMap<usize, Watermark>,
}

impl Replica {
    fn write(&mut self, cid: u8, deleted: bool) -> PinEntry {
        self.clock = Clock::tick(&self.clock, &self.id);
        let e = PinEntry {
            cid: format!("cid{cid}"),
            name: format!("{}-{}", self.id, self.clock.counter),
            replication_factor_min: -1,
            replication_factor_max: -1,
            allocations: vec![],
            timestamp: String::new(),
            deleted,
            clock: self.clock.clone(),
        };
        self.store.merge_pins(std::slice::from_ref(&e)).unwrap();
        e
    }
}

fn pull(reps: &mut [Replica], from: usize, to: usize) {
    if from == to {
        return;
    }
    let w = reps[to].marks.get(&from).copied().unwrap_or_default();
    let epoch = reps[from].store.epoch();
    let feed = reps[from].store.pins_since(w.epoch, w.seq, 2).unwrap(); // tiny pages on purpose
    let entries: Vec<PinEntry> = feed.iter().map(|(_, e)| e.clone()).collect();
    if let Some(max) = entries.iter().map(|e| e.clock.clone()).max() {
        if max > reps[to].clock {
            reps[to].clock = max;
        }
    }
    reps[to].store.merge_pins(&entries).unwrap();
    let seq = feed
        .last()
        .map(|(s, _)| *s)
        .unwrap_or(if w.epoch == epoch { w.seq } else { 0 });
    reps[to].marks.insert(from, Watermark { epoch, seq });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn replicas_converge_after_any_schedule(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut reps: Vec<Replica> = (0..REPLICAS)
            .map(|i| Replica {
                store: Store::open(&dir.path().join(format!("r{i}.redb"))).unwrap(),
                clock: Clock::default(),
                id: format!("peer{i}"),
                marks: HashMap::new(),
            })
            .collect();
        // The oracle: last writer wins, by clock, whatever the delivery order.
        let mut last: std::collections::BTreeMap<String, PinEntry> = Default::default();
        for op in ops {
            let written = match op {
                Op::Pin { replica, cid } => Some(reps[replica].write(cid, false)),
                Op::Unpin { replica, cid } => Some(reps[replica].write(cid, true)),
                Op::Sync { from, to } => {
                    pull(&mut reps, from, to);
                    None
                }
            };
            if let Some(e) = written {
                if last.get(&e.cid).is_none_or(|old| old.clock < e.clock) {
                    last.insert(e.cid.clone(), e);
                }
            }
        }
        // Heal: enough rounds of all-pairs pulls to drain every feed (pages of 2).
        for _ in 0..40 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    pull(&mut reps, from, to);
                }
            }
        }
        let states: Vec<Vec<PinEntry>> = reps.iter().map(|r| r.store.all_pins().unwrap()).collect();
        prop_assert_eq!(&states[0], &states[1]);
        prop_assert_eq!(&states[1], &states[2]);
        let expected: Vec<PinEntry> = last.into_values().collect();
        prop_assert_eq!(&states[0], &expected);
    }
}
