//! How outputs flow between clusters (pure): the route of each edge, chosen from the joined
//! matrix and the edges that fell back to the relay. Placement asks it which clusters a job's
//! inputs reach directly; the transfer answers, the lease's assignments and the job views ask it
//! the route of each edge.

use std::collections::HashMap;
use std::collections::HashSet;

use atoll_api::gateway::LinkState;
use atoll_api::jobs::Route;

use crate::matrix::Grid;

/// The edges whose direct transfer failed: (child job id, parent job name). Relayed from then
/// on; recorded in the database, so a restarted gateway reloads them.
#[derive(Clone, Debug, Default)]
pub struct Fallen(HashSet<(String, String)>);

impl Fallen {
    pub fn contains(&self, child: &str, from_job: &str) -> bool {
        self.0.contains(&(child.to_string(), from_job.to_string()))
    }

    /// Add an edge; false when it had fallen already.
    pub fn insert(&mut self, child: &str, from_job: &str) -> bool {
        self.0.insert((child.to_string(), from_job.to_string()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Fallen {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(edges: I) -> Self {
        Self(edges.into_iter().collect())
    }
}

/// How outputs can flow between clusters, from the joined matrix and the edges that fell back
/// to the relay.
#[derive(Debug)]
pub struct Flow {
    index: HashMap<String, usize>,
    /// `reach[from * n + to]`: `from` measured `to` reachable.
    reach: Vec<bool>,
    fallen: Fallen,
    /// The chaos suite's deliberately broken gateway: every edge between clusters is pulled
    /// ([`crate::breakage::Breakage::matrix_ignored`]).
    matrix_ignored: bool,
}

impl Flow {
    /// The flow over `grid` (a cell is usable when measured reachable).
    pub fn new(grid: &Grid<'_>, fallen: Fallen, matrix_ignored: bool) -> Self {
        let n = grid.names().len();
        let index = grid.names().iter().enumerate().map(|(i, name)| (name.to_string(), i)).collect();
        let mut reach = vec![false; n * n];
        for from in 0..n {
            for to in 0..n {
                reach[from * n + to] = from == to || grid.cell(from, to).state == LinkState::Reachable;
            }
        }
        Self { index, reach, fallen, matrix_ignored }
    }

    fn reaches(&self, from: &str, to: &str) -> bool {
        match (self.index.get(from), self.index.get(to)) {
            (Some(&a), Some(&b)) => a == b || self.reach[a * self.index.len() + b],
            _ => false,
        }
    }

    /// Whether an output made in `from` can reach a job in `to` without the relay.
    pub fn direct(&self, from: &str, to: &str) -> bool {
        self.reaches(from, to) || self.reaches(to, from)
    }

    /// The way an output made in `from` reaches a job in `to`: the child pulls when its
    /// cluster reaches the parent's, else the parent's pushes when it reaches the child's, else
    /// the relay.
    pub fn route(&self, from: &str, to: &str) -> Route {
        if from == to {
            Route::Local
        } else if self.matrix_ignored {
            // The deliberately broken gateway: pull whatever the matrix says.
            Route::Pull
        } else if self.reaches(to, from) {
            Route::Pull
        } else if self.reaches(from, to) {
            Route::Push
        } else {
            Route::Relay
        }
    }

    /// [`Flow::route`] for the edge parent `from_job` (in `from`) -> job `child` (in `to`),
    /// honouring a fallback to the relay.
    pub fn edge(&self, child: &str, from_job: &str, from: &str, to: &str) -> Route {
        let route = self.route(from, to);
        if route != Route::Local && self.fallen.contains(child, from_job) { Route::Relay } else { route }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow over `names` where `links` lists the directed pairs measured reachable.
    fn flow(names: &[&str], links: &[(&str, &str)], fallen: &[(&str, &str)]) -> Flow {
        let n = names.len();
        let index: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();
        let mut reach = vec![false; n * n];
        for (from, to) in links {
            reach[index[*from] * n + index[*to]] = true;
        }
        let fallen = fallen.iter().map(|(j, p)| (j.to_string(), p.to_string())).collect();
        Flow { index, reach, fallen, matrix_ignored: false }
    }

    #[test]
    fn every_route_is_chosen_exactly_where_the_matrix_demands_it() {
        let names = ["a", "b"];
        // Output made in a, child in b: every combination of the two directions.
        for (a_to_b, b_to_a, expected) in [
            (true, true, Route::Pull),
            (false, true, Route::Pull),
            (true, false, Route::Push),
            (false, false, Route::Relay),
        ] {
            let mut links = Vec::new();
            if a_to_b {
                links.push(("a", "b"));
            }
            if b_to_a {
                links.push(("b", "a"));
            }
            let f = flow(&names, &links, &[]);
            assert_eq!(f.route("a", "b"), expected, "a->b {a_to_b}, b->a {b_to_a}");
            assert_eq!(f.direct("a", "b"), expected != Route::Relay);
            assert_eq!(f.route("a", "a"), Route::Local);
        }
        // An unknown cluster (not registered, no row): nothing is known to work.
        assert_eq!(flow(&names, &[("a", "b")], &[]).route("a", "zz"), Route::Relay);
    }

    #[test]
    fn an_edge_that_fell_back_is_relayed_whatever_the_matrix_says_but_local_stays_local() {
        let f = flow(&["a", "b"], &[("a", "b"), ("b", "a")], &[("p.child", "parent")]);
        assert_eq!(f.edge("p.child", "parent", "a", "b"), Route::Relay);
        assert_eq!(f.edge("p.child", "other", "a", "b"), Route::Pull);
        assert_eq!(f.edge("p.sibling", "parent", "a", "b"), Route::Pull);
        assert_eq!(f.edge("p.child", "parent", "a", "a"), Route::Local);
        assert_eq!(Route::Relay.mode(), atoll_api::jobs::InputMode::Relay);
        assert_eq!(Route::Push.mode(), atoll_api::jobs::InputMode::Direct);
    }

    #[test]
    fn a_gateway_ignoring_the_matrix_pulls_every_edge_between_clusters() {
        type Edges = &'static [(&'static str, &'static str)];
        // (links, fallen, from, to, route): the broken gateway's answers.
        let table: [(Edges, Edges, &str, &str, Route); 5] = [
            (&[], &[], "a", "b", Route::Pull),
            (&[("a", "b")], &[], "a", "b", Route::Pull),
            (&[], &[], "a", "a", Route::Local),
            (&[], &[], "a", "zz", Route::Pull),
            (&[], &[("p.child", "parent")], "a", "b", Route::Relay),
        ];
        for (links, fallen, from, to, expected) in table {
            let mut f = flow(&["a", "b"], links, fallen);
            f.matrix_ignored = true;
            assert_eq!(f.edge("p.child", "parent", from, to), expected, "{links:?} {fallen:?} {from}->{to}");
        }
    }

    #[test]
    fn fallen_edges_are_kept_once_by_child_and_parent() {
        let mut fallen = Fallen::default();
        assert!(fallen.is_empty());
        assert!(fallen.insert("p.child", "parent"));
        assert!(!fallen.insert("p.child", "parent"), "already fallen");
        assert!(fallen.contains("p.child", "parent"));
        assert!(!fallen.contains("p.child", "other"));
        assert!(!fallen.contains("p.other", "parent"));
        assert_eq!(fallen.len(), 1);
    }
}
