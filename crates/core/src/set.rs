//! [`BackendSet`]: the candidate set of a decision, one bit per backend.
//!
//! Stages narrow candidates by clearing bits, and the per-model server sets are
//! precomputed bitsets, so starting a decision is a word copy and excluding a backend
//! is one instruction. A set grows only when it is first sized for a fleet; reusing
//! it for later decisions ([`BackendSet::copy_from`]) does not allocate.

use crate::BackendId;

/// A set of backends of one fleet, stored as a bitset over [`BackendId`] indices.
///
/// ```
/// use nexus_core::fleet::{BackendId, BackendSet};
///
/// let mut set = BackendSet::with_capacity(100);
/// set.insert(BackendId::new(3));
/// set.insert(BackendId::new(70));
/// assert!(set.contains(BackendId::new(70)));
/// assert_eq!(set.iter().collect::<Vec<_>>(), [BackendId::new(3), BackendId::new(70)]);
/// set.remove(BackendId::new(3));
/// assert_eq!(set.len(), 1);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct BackendSet {
    pub(crate) words: Vec<u64>,
}

impl BackendSet {
    /// An empty set able to hold backends `0..capacity` without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            words: vec![0; capacity.div_ceil(64)],
        }
    }

    /// The set of every backend in `0..len`.
    pub fn full(len: usize) -> Self {
        let mut set = Self::with_capacity(len);
        for i in 0..len {
            set.insert(BackendId::new(i as u32));
        }
        set
    }

    /// Adds `backend`, growing the set if needed.
    pub fn insert(&mut self, backend: BackendId) {
        let (word, bit) = Self::position(backend);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= bit;
    }

    /// Adds `backend`, which must be below the capacity the set was sized for.
    #[inline]
    pub(crate) fn insert_within(&mut self, backend: BackendId) {
        let (word, bit) = Self::position(backend);
        if let Some(w) = self.words.get_mut(word) {
            *w |= bit;
        }
    }

    /// Removes `backend`; returns whether it was present.
    pub fn remove(&mut self, backend: BackendId) -> bool {
        let (word, bit) = Self::position(backend);
        match self.words.get_mut(word) {
            Some(w) if *w & bit != 0 => {
                *w &= !bit;
                true
            }
            _ => false,
        }
    }

    /// Whether `backend` is in the set.
    #[inline]
    pub fn contains(&self, backend: BackendId) -> bool {
        let (word, bit) = Self::position(backend);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The number of backends in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Removes every backend, keeping the capacity.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Makes `self` equal to `other`, reusing `self`'s storage when it is large enough.
    pub fn copy_from(&mut self, other: &BackendSet) {
        self.words.clone_from(&other.words);
    }

    /// Removes every backend of `other` from `self`, calling `removed` for each one that
    /// was present, in ascending order.
    pub fn remove_all(&mut self, other: &BackendSet, removed: impl FnMut(BackendId)) {
        self.remove_words(|i| other.words.get(i).copied().unwrap_or(0), removed);
    }

    /// Removes the backends whose bits `mask(word index)` sets, calling `removed` for each
    /// one that was present.
    pub(crate) fn remove_words(
        &mut self,
        mask: impl Fn(usize) -> u64,
        mut removed: impl FnMut(BackendId),
    ) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let mask = mask(i);
            let mut hit = *word & mask;
            *word &= !mask;
            while hit != 0 {
                let bit = hit.trailing_zeros() as usize;
                hit &= hit - 1;
                removed(BackendId::new((i * 64 + bit) as u32));
            }
        }
    }

    /// Whether every backend of `self` is also in `other`.
    pub fn is_subset(&self, other: &BackendSet) -> bool {
        self.words
            .iter()
            .enumerate()
            .all(|(i, &w)| w & !other.words.get(i).copied().unwrap_or(0) == 0)
    }

    /// The backends in ascending index order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            words: &self.words,
            index: 0,
            current: self.words.first().copied().unwrap_or(0),
        }
    }

    #[inline]
    fn position(backend: BackendId) -> (usize, u64) {
        let i = backend.index();
        (i / 64, 1u64 << (i % 64))
    }
}

impl std::fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|b| b.index()))
            .finish()
    }
}

impl FromIterator<BackendId> for BackendSet {
    fn from_iter<I: IntoIterator<Item = BackendId>>(iter: I) -> Self {
        let mut set = BackendSet::default();
        for b in iter {
            set.insert(b);
        }
        set
    }
}

impl<'a> IntoIterator for &'a BackendSet {
    type Item = BackendId;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a [`BackendSet`] in ascending order; see [`BackendSet::iter`].
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    words: &'a [u64],
    index: usize,
    current: u64,
}

impl Iterator for Iter<'_> {
    type Item = BackendId;

    #[inline]
    fn next(&mut self) -> Option<BackendId> {
        loop {
            if self.current != 0 {
                let bit = self.current.trailing_zeros() as usize;
                self.current &= self.current - 1;
                return Some(BackendId::new((self.index * 64 + bit) as u32));
            }
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_sets_behave() {
        let set = BackendSet::default();
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert_eq!(set.iter().count(), 0);
        assert!(!set.contains(BackendId::new(5)));
    }

    #[test]
    fn remove_all_reports_what_it_removed() {
        let mut set: BackendSet = [1, 64, 65, 200].map(BackendId::new).into_iter().collect();
        let mask: BackendSet = [0, 64, 200, 300].map(BackendId::new).into_iter().collect();
        let mut removed = Vec::new();
        set.remove_all(&mask, |b| removed.push(b.index()));
        assert_eq!(removed, [64, 200]);
        assert_eq!(
            set.iter().map(BackendId::index).collect::<Vec<_>>(),
            [1, 65]
        );
    }

    #[test]
    fn copy_from_reuses_storage() {
        let source = BackendSet::full(130);
        let mut target = BackendSet::with_capacity(130);
        let before = target.words.as_ptr();
        target.copy_from(&source);
        assert_eq!(target, source);
        assert_eq!(before, target.words.as_ptr());
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0u32..300), 0..200)) {
            let mut set = BackendSet::with_capacity(10);
            let mut model = std::collections::BTreeSet::new();
            for (insert, i) in ops {
                let b = BackendId::new(i);
                if insert {
                    set.insert(b);
                    model.insert(b);
                } else {
                    prop_assert_eq!(set.remove(b), model.remove(&b));
                }
            }
            prop_assert_eq!(set.len(), model.len());
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
