//! The call legs' timer queue: a min-heap of `(deadline, leg id)` with four children per node.
//!
//! It pops in the same order as `BinaryHeap<Reverse<(Micros, u64)>>` (smallest deadline first,
//! then smallest id), but a pop walks half as many levels: with a hundred thousand legs the
//! lower levels are cache misses, and a node's four children sit in one or two cache lines.
use crate::capture::Micros;

type Entry = (Micros, u64);

#[derive(Debug, Default, Clone)]
pub struct Deadlines {
    heap: Vec<Entry>,
}

const ARITY: usize = 4;

impl Deadlines {
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The smallest entry.
    pub fn peek(&self) -> Option<Entry> {
        self.heap.first().copied()
    }

    pub fn push(&mut self, e: Entry) {
        self.heap.push(e);
        let mut i = self.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.heap[parent] <= e {
                break;
            }
            self.heap[i] = self.heap[parent];
            i = parent;
        }
        self.heap[i] = e;
    }

    /// Removes and returns the smallest entry.
    pub fn pop(&mut self) -> Option<Entry> {
        let last = self.heap.pop()?;
        if self.heap.is_empty() {
            return Some(last);
        }
        let top = self.heap[0];
        self.sift_down(0, last);
        Some(top)
    }

    /// Puts `e` at the hole `i` or below it.
    fn sift_down(&mut self, mut i: usize, e: Entry) {
        let n = self.heap.len();
        loop {
            let first = i * ARITY + 1;
            if first >= n {
                break;
            }
            let end = (first + ARITY).min(n);
            let mut c = first;
            for j in first + 1..end {
                if self.heap[j] < self.heap[c] {
                    c = j;
                }
            }
            if e <= self.heap[c] {
                break;
            }
            self.heap[i] = self.heap[c];
            i = c;
        }
        self.heap[i] = e;
    }

    /// Replaces the contents (a rebuild in linear time).
    pub fn rebuild(&mut self, entries: Vec<Entry>) {
        self.heap = entries;
        if self.heap.len() > 1 {
            for i in (0..=(self.heap.len() - 2) / ARITY).rev() {
                let e = self.heap[i];
                self.sift_down(i, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Random pushes, pops and rebuilds, with repeated entries: the same sequence as the standard
    /// binary heap.
    #[test]
    fn pops_in_the_order_of_the_standard_heap() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let (mut ours, mut std) = (Deadlines::default(), BinaryHeap::new());
            let span = [4, 100, 1_000_000][round % 3];
            for _ in 0..2_000 {
                match rnd(10) {
                    0..=5 => {
                        let e = (rnd(span) as Micros - 50, rnd(span));
                        ours.push(e);
                        std.push(Reverse(e));
                    }
                    6..=8 => assert_eq!(ours.pop(), std.pop().map(|Reverse(e)| e)),
                    _ if rnd(20) == 0 => {
                        let all: Vec<Entry> = std.iter().map(|Reverse(e)| *e).collect();
                        ours.rebuild(all);
                    }
                    _ => assert_eq!(ours.peek(), std.peek().map(|Reverse(e)| *e)),
                }
                assert_eq!(ours.len(), std.len());
            }
            while let Some(Reverse(e)) = std.pop() {
                assert_eq!(ours.pop(), Some(e));
            }
            assert!(ours.is_empty());
        }
    }
}
