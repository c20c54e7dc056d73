//! Placement: which cluster runs a job. A pure function over plain data, tested without IO.
//!
//! Rules, in order of precedence:
//! 1. **Eligible** clusters carry every selector label, run what the job needs (its type, its
//!    secrets: [`Capabilities`]), are enabled and not dead. A job with no eligible cluster waits
//!    (its reason says why); the selector is never ignored.
//! 2. **Health**: an alive cluster beats a suspect one; a suspect cluster is used only when no
//!    eligible cluster is alive.
//! 3. **Prefer**: the `prefer` cluster is used whenever it is eligible and alive.
//! 4. **Direct flow**: fewer edges needing the relay. An edge counts against a candidate when an
//!    already placed parent's output could not reach it directly, and when a child could land on
//!    no eligible cluster that the candidate's output reaches directly (the InfraBox rule "a
//!    parent runs where it can reach its children's cluster", applied automatically).
//! 5. **Load**: fewer unfinished jobs assigned, counting the ones placed in this same call, so a
//!    batch spreads instead of piling onto the emptiest cluster.
//! 6. **Name**, so equal candidates always resolve the same way.

use std::collections::BTreeMap;

use atoll_api::gateway::ClusterState;
use atoll_api::ids::Label;
use atoll_api::spec::Capabilities;
use atoll_api::spec::ClusterSpec;
use atoll_api::spec::Needs;

/// A cluster as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub labels: &'a [Label],
    pub enabled: bool,
    pub state: ClusterState,
    /// Unfinished jobs assigned to it now.
    pub load: u64,
    /// What its executor runs.
    pub capabilities: &'a Capabilities,
}

/// One job to place.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub cluster: &'a ClusterSpec,
    /// What it asks of the cluster beyond labels.
    pub needs: Needs,
    /// Clusters where its parents ran (parents that ran nowhere, such as `wait` jobs, left out).
    pub parent_clusters: Vec<&'a str>,
    /// Its children's cluster specs and needs, to look one step ahead.
    pub children: Vec<(&'a ClusterSpec, Needs)>,
}

/// Why a job went where it went (shown in the job's details).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Preferred,
    /// Chosen on flow and load among this many eligible clusters.
    Spread {
        eligible: usize,
        relayed_edges: usize,
    },
    /// No eligible cluster was alive; this one is suspect.
    OnlySuspect,
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Assigned {
        cluster: String,
        reason: Reason,
    },
    /// Nowhere to run now; the text says why (it is shown to the user).
    Waiting(String),
}

/// Place `requests` in order. `direct(from, to)` says whether an output made in cluster `from`
/// can reach a job in cluster `to` without the relay (either direction of the pair works).
pub fn place(
    requests: &[Request<'_>],
    clusters: &[Candidate<'_>],
    direct: &dyn Fn(&str, &str) -> bool,
) -> Vec<Placement> {
    let mut load: BTreeMap<&str, u64> = clusters.iter().map(|c| (c.name, c.load)).collect();
    let flows = |from: &str, to: &str| from == to || direct(from, to);
    requests
        .iter()
        .map(|request| {
            let candidates: Vec<&Candidate<'_>> =
                clusters.iter().filter(|c| eligible(c, request.cluster, request.needs)).collect();
            if candidates.is_empty() {
                return Placement::Waiting(why_waiting(request.cluster, request.needs, clusters));
            }
            let alive: Vec<&Candidate<'_>> =
                candidates.iter().copied().filter(|c| c.state == ClusterState::Alive).collect();
            let pool = if alive.is_empty() { candidates } else { alive };
            let preferred = request
                .cluster
                .prefer
                .as_ref()
                .and_then(|p| pool.iter().find(|c| c.name == p.as_str() && c.state == ClusterState::Alive));
            let (chosen, reason) = match preferred {
                Some(c) => (c.name, Reason::Preferred),
                None => {
                    let relayed = |c: &Candidate<'_>| {
                        let inbound = request.parent_clusters.iter().filter(|p| !flows(p, c.name)).count();
                        let outbound = request
                            .children
                            .iter()
                            .filter(|(child, needs)| {
                                !clusters.iter().any(|d| eligible(d, child, *needs) && flows(c.name, d.name))
                            })
                            .count();
                        inbound + outbound
                    };
                    let best =
                        pool.iter().min_by_key(|c| (relayed(c), load[c.name], c.name)).expect("the pool is not empty");
                    let reason = if pool.iter().all(|c| c.state == ClusterState::Suspect) {
                        Reason::OnlySuspect
                    } else {
                        Reason::Spread { eligible: pool.len(), relayed_edges: relayed(best) }
                    };
                    (best.name, reason)
                }
            };
            *load.get_mut(chosen).expect("every candidate has a load") += 1;
            Placement::Assigned { cluster: chosen.to_string(), reason }
        })
        .collect()
}

fn eligible(c: &Candidate<'_>, spec: &ClusterSpec, needs: Needs) -> bool {
    c.enabled && c.state != ClusterState::Dead && spec.matches(c.labels) && c.capabilities.lacks(needs).is_empty()
}

fn why_waiting(spec: &ClusterSpec, needs: Needs, clusters: &[Candidate<'_>]) -> String {
    let labelled: Vec<&Candidate<'_>> = clusters.iter().filter(|c| spec.matches(c.labels)).collect();
    let wanted: Vec<&str> = spec.selector.iter().map(Label::as_str).collect();
    if labelled.is_empty() {
        return format!("no registered cluster has all of [{}]", wanted.join(", "));
    }
    let matching: Vec<&Candidate<'_>> =
        labelled.iter().copied().filter(|c| c.capabilities.lacks(needs).is_empty()).collect();
    if matching.is_empty() {
        let why: Vec<String> = labelled
            .iter()
            .map(|c| {
                let lacks: Vec<String> = c.capabilities.lacks(needs).into_iter().map(|(_, what)| what).collect();
                format!("{} {}", c.name, lacks.join(", "))
            })
            .collect();
        return format!("no cluster with all of [{}] can run it: {}", wanted.join(", "), why.join("; "));
    }
    let states: Vec<String> = matching
        .iter()
        .map(|c| format!("{} {}", c.name, if c.enabled { c.state.to_string() } else { "disabled".to_string() }))
        .collect();
    format!("every cluster with all of [{}] is dead or disabled ({})", wanted.join(", "), states.join(", "))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn labels(words: &[&str]) -> Vec<Label> {
        words.iter().map(|w| w.parse().unwrap()).collect()
    }

    fn spec(selector: &[&str], prefer: Option<&str>) -> ClusterSpec {
        ClusterSpec { selector: labels(selector), prefer: prefer.map(|p| p.parse().unwrap()) }
    }

    #[derive(Debug)]
    struct Mesh {
        names: Vec<&'static str>,
        labels: Vec<Vec<Label>>,
        enabled: Vec<bool>,
        state: Vec<ClusterState>,
        load: Vec<u64>,
        capabilities: Vec<Capabilities>,
    }

    impl Mesh {
        /// aws [aws, default], gcp [gcp, default], onprem [onprem]; all alive, enabled, idle.
        fn three() -> Self {
            Mesh {
                names: vec!["aws", "gcp", "onprem"],
                labels: vec![labels(&["aws", "default"]), labels(&["gcp", "default"]), labels(&["onprem"])],
                enabled: vec![true; 3],
                state: vec![ClusterState::Alive; 3],
                load: vec![0; 3],
                capabilities: vec![Capabilities::assumed(); 3],
            }
        }

        fn set(&mut self, name: &str, f: impl FnOnce(&mut bool, &mut ClusterState, &mut u64)) -> &mut Self {
            let i = self.names.iter().position(|n| *n == name).unwrap();
            f(&mut self.enabled[i], &mut self.state[i], &mut self.load[i]);
            self
        }

        fn candidates(&self) -> Vec<Candidate<'_>> {
            (0..self.names.len())
                .map(|i| Candidate {
                    name: self.names[i],
                    labels: &self.labels[i],
                    enabled: self.enabled[i],
                    state: self.state[i],
                    load: self.load[i],
                    capabilities: &self.capabilities[i],
                })
                .collect()
        }
    }

    use atoll_api::spec::JobKind;

    const COMMAND: Needs = Needs { kind: atoll_api::spec::JobKind::Command, secrets: false, registries: None };

    fn all_direct(_: &str, _: &str) -> bool {
        true
    }

    /// The default dev mesh: onprem cannot talk with gcp at all (relay); aws and onprem can
    /// (onprem reaches aws); aws and gcp can.
    fn dev_cuts(from: &str, to: &str) -> bool {
        !matches!((from, to), ("gcp", "onprem") | ("onprem", "gcp"))
    }

    fn one(req: &Request<'_>, mesh: &Mesh, direct: &dyn Fn(&str, &str) -> bool) -> Placement {
        place(std::slice::from_ref(req), &mesh.candidates(), direct).remove(0)
    }

    fn assigned(p: &Placement) -> &str {
        match p {
            Placement::Assigned { cluster, .. } => cluster,
            Placement::Waiting(why) => panic!("waiting: {why}"),
        }
    }

    fn req(cluster: &ClusterSpec) -> Request<'_> {
        Request { cluster, needs: COMMAND, parent_clusters: vec![], children: vec![] }
    }

    #[test]
    fn every_selector_label_must_match() {
        let mesh = Mesh::three();
        assert_eq!(assigned(&one(&req(&spec(&["gcp", "default"], None)), &mesh, &all_direct)), "gcp");
        assert_eq!(assigned(&one(&req(&spec(&["onprem"], None)), &mesh, &all_direct)), "onprem");
        let p = one(&req(&spec(&["onprem", "default"], None)), &mesh, &all_direct);
        assert_eq!(p, Placement::Waiting("no registered cluster has all of [onprem, default]".into()));
    }

    #[test]
    fn disabled_and_dead_clusters_are_never_chosen_and_the_wait_says_why() {
        let mut mesh = Mesh::three();
        mesh.set("aws", |e, _, _| *e = false).set("gcp", |_, s, _| *s = ClusterState::Dead);
        let p = one(&req(&spec(&["default"], None)), &mesh, &all_direct);
        assert_eq!(
            p,
            Placement::Waiting(
                "every cluster with all of [default] is dead or disabled (aws disabled, gcp dead)".into()
            )
        );
        assert_eq!(assigned(&one(&req(&spec(&[], None)), &mesh, &all_direct)), "onprem");
    }

    #[test]
    fn suspect_clusters_are_used_only_when_no_eligible_one_is_alive() {
        let mut mesh = Mesh::three();
        mesh.set("aws", |_, s, _| *s = ClusterState::Suspect).set("gcp", |_, _, l| *l = 50);
        assert_eq!(assigned(&one(&req(&spec(&["default"], None)), &mesh, &all_direct)), "gcp");
        mesh.set("gcp", |_, s, _| *s = ClusterState::Dead);
        let p = one(&req(&spec(&["default"], None)), &mesh, &all_direct);
        assert_eq!(p, Placement::Assigned { cluster: "aws".into(), reason: Reason::OnlySuspect });
    }

    #[test]
    fn prefer_wins_while_alive_and_is_ignored_otherwise() {
        let mut mesh = Mesh::three();
        mesh.set("gcp", |_, _, l| *l = 100);
        let want = spec(&["default"], Some("gcp"));
        assert_eq!(
            one(&req(&want), &mesh, &all_direct),
            Placement::Assigned { cluster: "gcp".into(), reason: Reason::Preferred }
        );
        mesh.set("gcp", |_, s, _| *s = ClusterState::Suspect);
        assert_eq!(assigned(&one(&req(&want), &mesh, &all_direct)), "aws");
        // a preferred cluster outside the selector is not eligible
        let outside = spec(&["default"], Some("onprem"));
        assert_eq!(assigned(&one(&req(&outside), &mesh, &all_direct)), "aws");
        // prefer beats flow: a preferred cluster is used even if an edge must be relayed
        let mesh = Mesh::three();
        let child_of_onprem =
            Request { cluster: &want, needs: COMMAND, parent_clusters: vec!["onprem"], children: vec![] };
        assert_eq!(assigned(&one(&child_of_onprem, &mesh, &dev_cuts)), "gcp");
    }

    #[test]
    fn a_batch_spreads_by_load_counting_its_own_placements() {
        let mut mesh = Mesh::three();
        mesh.set("aws", |_, _, l| *l = 3);
        let any = spec(&["default"], None);
        let requests: Vec<Request<'_>> = (0..9).map(|_| req(&any)).collect();
        let got: Vec<String> =
            place(&requests, &mesh.candidates(), &all_direct).iter().map(|p| assigned(p).to_string()).collect();
        let on = |name: &str| got.iter().filter(|c| *c == name).count();
        // 3 + 9 = 12 jobs over two clusters: 6 each, gcp taking the first three alone
        assert_eq!((on("aws"), on("gcp"), on("onprem")), (3, 6, 0), "{got:?}");
        assert_eq!(&got[..3], ["gcp", "gcp", "gcp"]);
    }

    #[test]
    fn equal_candidates_resolve_by_name() {
        let mesh = Mesh::three();
        assert_eq!(assigned(&one(&req(&spec(&[], None)), &mesh, &all_direct)), "aws");
    }

    #[test]
    fn a_child_avoids_clusters_its_parents_output_cannot_reach_directly() {
        let mut mesh = Mesh::three();
        // gcp is idle, aws busy: load alone would pick gcp, but the parent ran in onprem
        mesh.set("aws", |_, _, l| *l = 10);
        let any = spec(&["default"], None);
        let child = Request { cluster: &any, needs: COMMAND, parent_clusters: vec!["onprem"], children: vec![] };
        assert_eq!(
            one(&child, &mesh, &dev_cuts),
            Placement::Assigned { cluster: "aws".into(), reason: Reason::Spread { eligible: 2, relayed_edges: 0 } }
        );
        // with no direct choice left, the relay is accepted rather than waiting
        let gcp_only = spec(&["gcp"], None);
        let child = Request { cluster: &gcp_only, needs: COMMAND, parent_clusters: vec!["onprem"], children: vec![] };
        assert_eq!(
            one(&child, &mesh, &dev_cuts),
            Placement::Assigned { cluster: "gcp".into(), reason: Reason::Spread { eligible: 1, relayed_edges: 1 } }
        );
    }

    #[test]
    fn a_parent_runs_where_its_children_can_be_reached() {
        let mut mesh = Mesh::three();
        mesh.set("aws", |_, _, l| *l = 10);
        let any = spec(&["default"], None);
        let onprem_child = spec(&["onprem"], None);
        let parent = Request {
            cluster: &any,
            needs: COMMAND,
            parent_clusters: vec![],
            children: vec![(&onprem_child, COMMAND)],
        };
        assert_eq!(assigned(&one(&parent, &mesh, &dev_cuts)), "aws", "gcp cannot hand output to onprem directly");
        // a child that may land anywhere does not constrain the parent
        let anywhere = spec(&[], None);
        let parent =
            Request { cluster: &any, needs: COMMAND, parent_clusters: vec![], children: vec![(&anywhere, COMMAND)] };
        assert_eq!(assigned(&one(&parent, &mesh, &dev_cuts)), "gcp");
    }

    #[test]
    fn a_job_goes_only_where_its_type_runs_and_waits_saying_what_is_missing() {
        let mut mesh = Mesh::three();
        mesh.capabilities[1] = Capabilities {
            executor: "process".into(),
            runs: vec![JobKind::Command, JobKind::Docker],
            secrets: true,
            registries: false,
            missing: Vec::new(),
        };
        let any = spec(&["default"], None);
        let docker = Needs { kind: JobKind::Docker, secrets: false, registries: None };
        let request = Request { needs: docker, ..req(&any) };
        assert_eq!(assigned(&one(&request, &mesh, &all_direct)), "gcp", "aws runs no docker jobs");
        mesh.set("gcp", |e, _, _| *e = false);
        let Placement::Waiting(why) = one(&request, &mesh, &all_direct) else { panic!("placed") };
        assert_eq!(why, "every cluster with all of [default] is dead or disabled (gcp disabled)");
        mesh.capabilities[0].missing = vec!["no container engine (jobs.containers)".into()];
        mesh.capabilities[1] = Capabilities::assumed();
        let Placement::Waiting(why) = one(&request, &mesh, &all_direct) else { panic!("placed") };
        assert_eq!(
            why,
            "no cluster with all of [default] can run it: aws runs no docker jobs (unknown executor: no container \
             engine (jobs.containers)); gcp runs no docker jobs (unknown executor)"
        );
    }

    #[test]
    fn the_flow_rule_counts_only_edges_that_are_not_local() {
        let mesh = Mesh::three();
        let onprem = spec(&["onprem"], None);
        let child = Request {
            cluster: &onprem,
            needs: COMMAND,
            parent_clusters: vec!["onprem", "onprem"],
            children: vec![(&onprem, COMMAND)],
        };
        let never = |_: &str, _: &str| false;
        assert_eq!(
            one(&child, &mesh, &never),
            Placement::Assigned { cluster: "onprem".into(), reason: Reason::Spread { eligible: 1, relayed_edges: 0 } }
        );
    }

    fn arbitrary_mesh() -> impl Strategy<Value = Mesh> {
        let words = ["a", "b", "c", "d"];
        prop::collection::vec(
            (
                prop::collection::btree_set(prop::sample::select(words.to_vec()), 0..4),
                any::<bool>(),
                prop::sample::select(vec![ClusterState::Alive, ClusterState::Suspect, ClusterState::Dead]),
                0u64..20,
                any::<bool>(),
            ),
            1..6,
        )
        .prop_map(|clusters| {
            const NAMES: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
            Mesh {
                names: NAMES[..clusters.len()].to_vec(),
                labels: clusters.iter().map(|(l, ..)| l.iter().map(|w| w.parse().unwrap()).collect()).collect(),
                enabled: clusters.iter().map(|c| c.1).collect(),
                state: clusters.iter().map(|c| c.2).collect(),
                load: clusters.iter().map(|c| c.3).collect(),
                capabilities: clusters
                    .iter()
                    .map(|c| {
                        let mut runs = vec![JobKind::Command];
                        if c.4 {
                            runs.push(JobKind::Docker);
                        }
                        Capabilities {
                            executor: "process".into(),
                            runs,
                            secrets: true,
                            registries: false,
                            missing: Vec::new(),
                        }
                    })
                    .collect(),
            }
        })
    }

    proptest! {
        #[test]
        fn placements_always_obey_the_hard_rules(
            mesh in arbitrary_mesh(),
            selectors in prop::collection::vec(prop::collection::btree_set(prop::sample::select(vec!["a", "b", "c", "d"]), 0..3), 1..8),
            prefer in prop::option::of(0usize..6),
            cut in prop::collection::btree_set((0usize..6, 0usize..6), 0..10),
            docker in prop::collection::vec(any::<bool>(), 8),
        ) {
            let specs: Vec<ClusterSpec> = selectors
                .iter()
                .map(|s| spec(&s.iter().copied().collect::<Vec<_>>(), prefer.filter(|&p| p < mesh.names.len()).map(|p| mesh.names[p])))
                .collect();
            let needs = |i: usize| Needs { kind: if docker[i] { JobKind::Docker } else { JobKind::Command }, secrets: false, registries: None };
            let requests: Vec<Request<'_>> =
                specs.iter().enumerate().map(|(i, s)| Request { needs: needs(i), ..req(s) }).collect();
            let index = |n: &str| mesh.names.iter().position(|m| *m == n).unwrap();
            let direct = |a: &str, b: &str| !cut.contains(&(index(a), index(b)));
            let candidates = mesh.candidates();
            for (i, (p, s)) in place(&requests, &candidates, &direct).iter().zip(&specs).enumerate() {
                let eligible: BTreeSet<&str> = candidates.iter().filter(|c| eligible(c, s, needs(i))).map(|c| c.name).collect();
                for name in &eligible {
                    prop_assert!(!docker[i] || candidates[index(name)].capabilities.runs.contains(&JobKind::Docker));
                }
                match p {
                    Placement::Assigned { cluster, reason } => {
                        prop_assert!(eligible.contains(cluster.as_str()), "{cluster} not eligible for {s:?}");
                        let alive_exists = candidates.iter().any(|c| eligible.contains(c.name) && c.state == ClusterState::Alive);
                        let state = candidates[index(cluster)].state;
                        prop_assert!(!alive_exists || state == ClusterState::Alive, "suspect {cluster} chosen over an alive one");
                        if let Some(p) = &s.prefer {
                            let usable = eligible.contains(p.as_str()) && candidates[index(p.as_str())].state == ClusterState::Alive;
                            prop_assert_eq!(usable, *reason == Reason::Preferred);
                        }
                    }
                    Placement::Waiting(_) => prop_assert!(eligible.is_empty()),
                }
            }
        }
    }
}
