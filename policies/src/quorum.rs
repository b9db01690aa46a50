//! Counting approvers against group requirements: a maximum bipartite matching of persons to
//! group slots, so that a person in two groups counts once.

use std::collections::BTreeSet;

use crate::model::{GroupRequirement, Policy};

/// Maximum bipartite matching (Kuhn's augmenting paths). `adj[l]` lists the right vertices left
/// vertex `l` may take. Returns, for each left vertex, the right vertex matched to it.
/// Deterministic: left vertices in order, right vertices in `adj` order.
pub(crate) fn max_matching(adj: &[Vec<usize>], n_right: usize) -> Vec<Option<usize>> {
    fn augment(
        l: usize,
        adj: &[Vec<usize>],
        seen: &mut [bool],
        right_of: &mut [Option<usize>],
    ) -> bool {
        for &r in &adj[l] {
            if seen[r] {
                continue;
            }
            seen[r] = true;
            let free = match right_of[r] {
                None => true,
                Some(other) => augment(other, adj, seen, right_of),
            };
            if free {
                right_of[r] = Some(l);
                return true;
            }
        }
        false
    }
    let mut right_of: Vec<Option<usize>> = vec![None; n_right];
    for l in 0..adj.len() {
        let mut seen = vec![false; n_right];
        augment(l, adj, &mut seen, &mut right_of);
    }
    let mut left_of = vec![None; adj.len()];
    for (r, l) in right_of.iter().enumerate() {
        if let Some(l) = l {
            left_of[*l] = Some(r);
        }
    }
    left_of
}

/// How well a set of approvers covers one alternative.
#[derive(Debug, Clone)]
pub(crate) struct Coverage {
    /// Per requirement (in alternative order): how many more approvals it needs.
    pub(crate) more: Vec<u32>,
    /// The persons counted, sorted.
    pub(crate) counted: Vec<String>,
}

impl Coverage {
    pub(crate) fn met(&self) -> bool {
        self.more.iter().all(|m| *m == 0)
    }
}

/// Assigns `approvers` (each at most once) to the `k` slots of every requirement of `alt`.
pub(crate) fn cover(
    policy: &Policy,
    alt: &[GroupRequirement],
    approvers: &BTreeSet<&str>,
) -> Coverage {
    let persons: Vec<&str> = approvers.iter().copied().collect();
    let mut slot_req = Vec::new();
    let mut adj = Vec::new();
    for (i, req) in alt.iter().enumerate() {
        let eligible: Vec<usize> = match policy.group(&req.group) {
            Some(g) => persons
                .iter()
                .enumerate()
                .filter(|(_, p)| g.has(p))
                .map(|(j, _)| j)
                .collect(),
            None => Vec::new(),
        };
        for _ in 0..req.k {
            slot_req.push(i);
            adj.push(eligible.clone());
        }
    }
    let matching = max_matching(&adj, persons.len());
    let mut more: Vec<u32> = alt.iter().map(|r| r.k).collect();
    let mut counted = Vec::new();
    for (slot, m) in matching.iter().enumerate() {
        if let Some(p) = m {
            more[slot_req[slot]] -= 1;
            counted.push(persons[*p].to_owned());
        }
    }
    counted.sort();
    Coverage { more, counted }
}

#[cfg(test)]
mod tests {
    use super::max_matching;

    #[test]
    fn matching_finds_augmenting_paths() {
        // Left 0 can take 0 or 1, left 1 only 0: greedy 0->0 must be undone.
        let m = max_matching(&[vec![0, 1], vec![0]], 2);
        assert_eq!(m, vec![Some(1), Some(0)]);
        // Three slots, two persons: one slot stays empty.
        let m = max_matching(&[vec![0], vec![0, 1], vec![1]], 2);
        assert_eq!(m.iter().filter(|x| x.is_some()).count(), 2);
        assert_eq!(max_matching(&[], 3), Vec::<Option<usize>>::new());
        assert_eq!(max_matching(&[vec![]], 0), vec![None]);
    }
}
