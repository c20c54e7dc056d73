//! The dependency graph of a pipeline: cycles (every one, found by a strongly-connected-component
//! search) and a topological order.
//!
//! Iterative throughout: a pipeline of 10,000 jobs in one chain must not overflow the stack.

use std::collections::HashMap;

use super::PipelineSpec;
use super::SpecProblem;

/// The dependency graph as far as a document gives it: `parents[i]` are the jobs job `i`
/// depends on, each as (parent's index, position of the dependency in `jobs[i].depends_on`).
/// A name stands for the first job that has it; unknown names and a job naming itself are left
/// out (both are reported by the checks across jobs).
pub(super) struct Graph {
    parents: Vec<Vec<(usize, usize)>>,
}

impl Graph {
    /// `names[i]` is job `i`'s name when it is well formed; `deps[i]` its dependencies that
    /// parse, as (position in its `depends_on`, parent's name).
    pub(super) fn new<'a, D>(names: &[Option<&str>], deps: impl IntoIterator<Item = D>) -> Graph
    where
        D: IntoIterator<Item = (usize, &'a str)>,
    {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(name) = name {
                index.entry(name).or_insert(i);
            }
        }
        let parents = deps
            .into_iter()
            .enumerate()
            .map(|(child, deps)| {
                deps.into_iter()
                    .filter_map(|(at, parent)| index.get(parent).map(|&p| (p, at)))
                    .filter(|&(p, _)| p != child)
                    .collect()
            })
            .collect();
        Graph { parents }
    }

    fn of(spec: &PipelineSpec) -> Graph {
        let names: Vec<Option<&str>> = spec.jobs.iter().map(|j| Some(j.name.as_str())).collect();
        Graph::new(
            &names,
            spec.jobs.iter().map(|j| j.depends_on.iter().enumerate().map(|(at, d)| (at, d.job.as_str()))),
        )
    }

    /// Parent indices only.
    fn edges(&self) -> Vec<Vec<usize>> {
        self.parents.iter().map(|ps| ps.iter().map(|&(p, _)| p).collect()).collect()
    }
}

/// Report every cycle: one problem per strongly connected component that holds one, naming a
/// concrete cycle through it (`a -> b -> c -> a`, read "a depends on b ..."), at the dependency
/// of its first job that the cycle goes through. `names` are the jobs' names as given to
/// [`Graph::new`] (every job on a cycle has one: it is depended on).
pub(super) fn check(graph: &Graph, names: &[Option<&str>], problems: &mut Vec<SpecProblem>) {
    let edges = graph.edges();
    for component in components(&edges) {
        if component.len() < 2 {
            // a job naming itself is no edge here (reported on its own)
            continue;
        }
        let start = *component.iter().min().expect("components are never empty");
        let path = cycle_through(&edges, &component, start);
        let shown: Vec<&str> = path.iter().map(|&i| names.get(i).copied().flatten().unwrap_or_default()).collect();
        let next = path.get(1).copied().unwrap_or(start);
        let dep = graph.parents[start].iter().find(|&&(p, _)| p == next).map_or(0, |&(_, at)| at);
        problems.push(SpecProblem {
            path: format!("jobs[{start}].depends_on[{dep}]"),
            message: format!("dependency cycle: {}", shown.join(" -> ")),
        });
    }
}

/// Tarjan's strongly connected components, iteratively.
fn components(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = graph.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0usize)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut edge)) = work.last_mut() {
            if let Some(&w) = graph[v].get(*edge) {
                *edge += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    out
}

/// A cycle from `start` back to itself inside one component (breadth-first, so the shortest).
fn cycle_through(graph: &[Vec<usize>], component: &[usize], start: usize) -> Vec<usize> {
    let inside: std::collections::HashSet<usize> = component.iter().copied().collect();
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &graph[v] {
            if !inside.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start, start]
}

/// Jobs in an order where every parent comes before its children (the spec is acyclic once
/// [`super::parse`] accepted it).
pub fn topological_order(spec: &PipelineSpec) -> Vec<usize> {
    let graph = Graph::of(spec).edges();
    let n = graph.len();
    let mut children = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = graph.iter().map(Vec::len).collect();
    for (child, ps) in graph.iter().enumerate() {
        for &p in ps {
            children[p].push(child);
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(v) = ready.pop_front() {
        order.push(v);
        for &c in &children[v] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    order
}
