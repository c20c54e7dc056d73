//! A pipeline's jobs laid out as a graph for the pipeline page: pure, from what the gateway
//! knows (the jobs as users see them and the routes recorded for their inputs).
//!
//! Layers left to right: a job sits one layer right of its deepest parent. Within a layer, jobs
//! are ordered by the mean position of their parents (fewer crossings), then by spec order.
//! Nodes and edges are drawn by the template as SVG: no script, and each node is a link.

use std::collections::HashMap;

use atoll_api::jobs::JobInfo;
use atoll_api::jobs::RouteTaken;

/// A node's box, in SVG units.
pub const NODE_W: i64 = 180;
pub const NODE_H: i64 = 58;
const GAP_X: i64 = 90;
const GAP_Y: i64 = 26;
const MARGIN: i64 = 12;

pub struct Node {
    pub name: String,
    pub id: String,
    pub state: &'static str,
    pub cluster: String,
    pub attempts: u32,
    pub x: i64,
    pub y: i64,
}

pub struct Edge {
    pub from: String,
    pub to: String,
    /// The child's id (the edge's history is on the child's page).
    pub to_id: String,
    /// `local`, `pull`, `push`, `relay`; `unplaced` until both ends have a cluster; `none` when
    /// an end ended without one (a wait job, a job that never ran): nothing moves.
    pub route: &'static str,
    /// Some route it was given fell back (a direct edge that failed, then the relay).
    pub fell_back: bool,
    /// Every route recorded for it, oldest first: "attempt 1: pull from aws at ...", with the
    /// failure that made it fall back.
    pub history: Vec<String>,
    /// The SVG path, and where its label goes.
    pub path: String,
    pub label_x: i64,
    pub label_y: i64,
}

pub struct Dag {
    pub width: i64,
    pub height: i64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Lay out `jobs` (in spec order) with the routes of their inputs: (child job id, attempt,
/// route) in decision order.
pub fn layout(jobs: &[JobInfo], routes: &[(String, u32, RouteTaken)]) -> Dag {
    let index: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
    let parents: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| j.inputs.iter().filter_map(|input| index.get(input.from_job.as_str()).copied()).collect())
        .collect();
    // The deepest parent's layer plus one; a spec is acyclic, and n rounds settle any order.
    let mut layer = vec![0usize; jobs.len()];
    for _ in 0..jobs.len() {
        let mut changed = false;
        for (i, ps) in parents.iter().enumerate() {
            let want = ps.iter().map(|&p| layer[p] + 1).max().unwrap_or(0);
            if want > layer[i] && want < jobs.len() {
                layer[i] = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut row = vec![0usize; jobs.len()];
    let mut tallest = 0;
    for l in 0..layers {
        let mut members: Vec<usize> = (0..jobs.len()).filter(|&i| layer[i] == l).collect();
        let centre = |i: usize| {
            let ps = &parents[i];
            if ps.is_empty() { i as f64 } else { ps.iter().map(|&p| row[p] as f64).sum::<f64>() / ps.len() as f64 }
        };
        members.sort_by(|&a, &b| centre(a).total_cmp(&centre(b)).then(a.cmp(&b)));
        for (r, &i) in members.iter().enumerate() {
            row[i] = r;
        }
        tallest = tallest.max(members.len());
    }
    let at = |i: usize| (MARGIN + layer[i] as i64 * (NODE_W + GAP_X), MARGIN + row[i] as i64 * (NODE_H + GAP_Y));
    let nodes = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let (x, y) = at(i);
            Node {
                name: j.name.clone(),
                id: j.id.to_string(),
                state: j.state.as_str(),
                cluster: j.cluster.as_deref().unwrap_or("not placed").to_string(),
                attempts: j.attempts,
                x,
                y,
            }
        })
        .collect();
    // Each edge's routes, in decision order: (child's id, parent's name) -> (attempt, route).
    let mut by_edge: HashMap<(&str, &str), Vec<(u32, &RouteTaken)>> = HashMap::new();
    for (id, attempt, taken) in routes {
        by_edge.entry((id.as_str(), taken.from_job.as_str())).or_default().push((*attempt, taken));
    }
    let mut edges = Vec::new();
    for (child, job) in jobs.iter().enumerate() {
        for input in &job.inputs {
            let Some(&parent) = index.get(input.from_job.as_str()) else { continue };
            let taken = by_edge.remove(&(job.id.as_str(), input.from_job.as_str())).unwrap_or_default();
            let (px, py) = at(parent);
            let (cx, cy) = at(child);
            let (x1, y1, x2, y2) = (px + NODE_W, py + NODE_H / 2, cx, cy + NODE_H / 2);
            let bend = (x2 - x1) / 2;
            edges.push(Edge {
                from: input.from_job.clone(),
                to: job.name.clone(),
                to_id: job.id.to_string(),
                route: match input.route {
                    Some(route) => route.as_str(),
                    // An end that ended without a cluster (a wait job, or a job that never ran)
                    // has no output to move or none to receive: the edge only orders them.
                    None if [&jobs[parent], job].iter().any(|j| j.cluster.is_none() && j.state.is_final()) => "none",
                    None => "unplaced",
                },
                fell_back: taken.iter().any(|(_, taken)| taken.reason.is_some()),
                history: taken
                    .iter()
                    .map(|(attempt, taken)| {
                        let mut line = format!(
                            "attempt {attempt}: {} from {} at {}",
                            taken.route.as_str(),
                            taken.from_cluster,
                            super::utc(taken.at_ms)
                        );
                        if let Some(reason) = &taken.reason {
                            line.push_str(&format!(", after: {reason}"));
                        }
                        line
                    })
                    .collect(),
                path: format!("M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}", x1 + bend, x2 - bend),
                label_x: (x1 + x2) / 2,
                label_y: (y1 + y2) / 2 - 4,
            });
        }
    }
    Dag {
        width: 2 * MARGIN + layers as i64 * NODE_W + (layers as i64 - 1).max(0) * GAP_X,
        height: 2 * MARGIN + tallest as i64 * NODE_H + (tallest as i64 - 1).max(0) * GAP_Y,
        nodes,
        edges,
    }
}
