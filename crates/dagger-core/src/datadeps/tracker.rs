//! Dependency analysis: which earlier tasks a new access must wait for.
//!
//! Each piece of region data (a *key*) keeps the accesses that still matter: the writes and the
//! reads since the last write that covered them. A new read waits for every overlapping write
//! in that list; a new write waits for every overlapping read and write, and then replaces the
//! entries it covers (later accesses that overlap them overlap the new write too, and the new
//! write already waits for them). Readers never wait for readers.

/// The part of a piece of data that one access touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Span {
    /// The whole value.
    All,
    /// Elements `start..end` of a slice.
    Range(usize, usize),
    /// Rows `r0..r1` and columns `c0..c1` of a matrix.
    Rect {
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
    },
    /// Parts declared by the type ([`Parts`](super::Parts)), as a bit set.
    Mask(u64),
}

impl Span {
    /// Whether the two spans share an element. Spans of different shapes on the same data are
    /// assumed to overlap.
    pub(crate) fn overlaps(self, other: Span) -> bool {
        match (self, other) {
            (Span::All, _) | (_, Span::All) => true,
            (Span::Range(a0, a1), Span::Range(b0, b1)) => a0 < b1 && b0 < a1 && a0 < a1 && b0 < b1,
            (
                Span::Rect { r0, r1, c0, c1 },
                Span::Rect {
                    r0: s0,
                    r1: s1,
                    c0: d0,
                    c1: d1,
                },
            ) => r0 < s1 && s0 < r1 && c0 < d1 && d0 < c1 && r0 < r1 && c0 < c1,
            (Span::Mask(a), Span::Mask(b)) => a & b != 0,
            _ => true,
        }
    }

    /// Whether `self` contains every element of `other`.
    pub(crate) fn covers(self, other: Span) -> bool {
        match (self, other) {
            (Span::All, _) => true,
            (_, Span::All) => false,
            (Span::Range(a0, a1), Span::Range(b0, b1)) => a0 <= b0 && b1 <= a1,
            (
                Span::Rect { r0, r1, c0, c1 },
                Span::Rect {
                    r0: s0,
                    r1: s1,
                    c0: d0,
                    c1: d1,
                },
            ) => r0 <= s0 && s1 <= r1 && c0 <= d0 && d1 <= c1,
            (Span::Mask(a), Span::Mask(b)) => a & b == b,
            _ => false,
        }
    }
}

/// The accesses of one key that later accesses may have to wait for.
#[derive(Default)]
pub(crate) struct KeyState {
    writes: Vec<(Span, u32)>,
    reads: Vec<(Span, u32)>,
}

impl KeyState {
    /// Records that task `task` accesses `span` (writing or not) and adds the tasks it must
    /// wait for to `preds` (possibly with repeats).
    pub(crate) fn access(&mut self, task: u32, span: Span, write: bool, preds: &mut Vec<u32>) {
        for &(s, t) in &self.writes {
            if t != task && s.overlaps(span) {
                preds.push(t);
            }
        }
        if !write {
            self.reads.push((span, task));
            return;
        }
        for &(s, t) in &self.reads {
            if t != task && s.overlaps(span) {
                preds.push(t);
            }
        }
        if span == Span::All {
            self.writes.clear();
            self.reads.clear();
        } else {
            self.writes.retain(|&(s, _)| !span.covers(s));
            self.reads.retain(|&(s, _)| !span.covers(s));
        }
        self.writes.push((span, task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(k: &mut KeyState, task: u32, span: Span, write: bool) -> Vec<u32> {
        let mut p = Vec::new();
        k.access(task, span, write, &mut p);
        p.sort_unstable();
        p.dedup();
        p
    }

    #[test]
    fn readers_wait_for_writers_only() {
        let mut k = KeyState::default();
        assert!(preds(&mut k, 0, Span::All, true).is_empty());
        assert_eq!(preds(&mut k, 1, Span::All, false), vec![0]);
        assert_eq!(preds(&mut k, 2, Span::All, false), vec![0]);
        assert_eq!(preds(&mut k, 3, Span::All, true), vec![0, 1, 2]);
        assert_eq!(preds(&mut k, 4, Span::All, false), vec![3]);
    }

    #[test]
    fn ranges_order_only_what_overlaps() {
        let mut k = KeyState::default();
        assert!(preds(&mut k, 0, Span::Range(0, 2), true).is_empty());
        assert!(preds(&mut k, 1, Span::Range(2, 4), true).is_empty());
        assert_eq!(preds(&mut k, 2, Span::Range(1, 3), true), vec![0, 1]);
        assert_eq!(preds(&mut k, 3, Span::Range(0, 1), false), vec![0]);
        // the write of 0..4 covers everything before it
        assert_eq!(preds(&mut k, 4, Span::Range(0, 4), true), vec![0, 1, 2, 3]);
        assert_eq!(preds(&mut k, 5, Span::Range(3, 4), false), vec![4]);
        assert!(preds(&mut k, 6, Span::Range(4, 8), false).is_empty());
        assert!(!Span::Range(3, 3).overlaps(Span::Range(0, 9)));
    }

    #[test]
    fn rectangles_and_masks() {
        let a = Span::Rect {
            r0: 0,
            r1: 2,
            c0: 0,
            c1: 2,
        };
        let b = Span::Rect {
            r0: 2,
            r1: 4,
            c0: 0,
            c1: 2,
        };
        let c = Span::Rect {
            r0: 1,
            r1: 3,
            c0: 1,
            c1: 2,
        };
        assert!(!a.overlaps(b));
        assert!(a.overlaps(c) && b.overlaps(c));
        assert!(Span::Mask(0b01).overlaps(Span::Mask(0b11)));
        assert!(!Span::Mask(0b01).overlaps(Span::Mask(0b10)));
        assert!(Span::Mask(0b11).covers(Span::Mask(0b10)));
        assert!(Span::All.overlaps(Span::Mask(1)) && Span::All.covers(a));
        // different shapes on one key are ordered
        assert!(Span::Range(0, 1).overlaps(Span::Mask(1)));
    }
}
