//! The dependency graph of a pipeline: cycles (every one, found by a strongly-connected-component
//! search) and a topological order.
//!
//! Iterative throughout: a pipeline of 10,000 jobs in one chain must not overflow the stack.

use std::collections::HashMap;

use super::PipelineSpec;
use super::SpecProblem;

/// Edges as indices: `parents[i]` are the jobs job `i` depends on (unknown names left out; they
/// are reported elsewhere).
fn parents(spec: &PipelineSpec) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = spec.jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
    spec.jobs.iter().map(|j| j.depends_on.iter().filter_map(|d| index.get(d.job.as_str()).copied()).collect()).collect()
}

/// Report every cycle: one problem per strongly connected component that holds one, naming a
/// concrete cycle through it (`a -> b -> c -> a`, read "a depends on b ...").
pub(super) fn check(spec: &PipelineSpec, problems: &mut Vec<SpecProblem>) {
    let graph = parents(spec);
    for component in components(&graph) {
        let cyclic = component.len() > 1 || graph[component[0]].contains(&component[0]);
        if !cyclic {
            continue;
        }
        let start = *component.iter().min().expect("components are never empty");
        let path = cycle_through(&graph, &component, start);
        let names: Vec<&str> = path.iter().map(|&i| spec.jobs[i].name.as_str()).collect();
        let dep = spec.jobs[start]
            .depends_on
            .iter()
            .position(|d| spec.jobs[path.get(1).copied().unwrap_or(start)].name == d.job)
            .unwrap_or(0);
        problems.push(SpecProblem {
            path: format!("jobs[{start}].depends_on[{dep}]"),
            message: format!("dependency cycle: {}", names.join(" -> ")),
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
    let graph = parents(spec);
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
